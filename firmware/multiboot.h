/* Multiboot v1 loader: an ELF32 kernel from fw_cfg, its command line, the information structure,
 * and the jump. */
#ifndef FW_MULTIBOOT_H
#define FW_MULTIBOOT_H

/* Does not return: boots the kernel, or reports on the debug console why not and halts. */
__attribute__((noreturn)) void multiboot_boot(void);

#endif
