/* Linux/x86 boot protocol loader: a bzImage handed over in fw_cfg's SETUP, KERNEL, INITRD and
 * CMDLINE items (the layout QEMU uses for -kernel/-initrd/-append), entered through the 32-bit
 * boot protocol. */
#ifndef FW_LINUX_H
#define FW_LINUX_H

#include "io.h"

/* True when fw_cfg holds a Linux kernel (a non-empty SETUP item). */
bool linux_present(void);

/* Does not return: boots the kernel, or reports on the debug console why not and halts. */
__attribute__((noreturn)) void linux_boot(void);

#endif
