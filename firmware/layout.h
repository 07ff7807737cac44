/* Where the firmware lives.  Everything here is shared by the assembly and the C code.
 *
 *   ROM   0xFFFF0000-0xFFFFFFFF  this 64 KiB image (code, constant data, GDT); the CPU also sees
 *                                its low alias at 0xF0000-0xFFFFF, which is where real mode runs.
 *   RAM   0x00007000-0x0000FFFF  firmware stack (grows down from FW_STACK_TOP)
 *         0x00010000-0x0001FFFF  firmware .bss: fw_cfg DMA descriptor, PCI tables, the kernel's
 *                                ELF headers, and what the kernel is handed: the Multiboot info
 *                                structure, its memory map, command line and boot loader name.
 *
 * [FW_RAM_START, FW_RAM_END) is the firmware's own RAM: kernel segments may not overlap it.  The
 * kernel may reuse it once it has read the Multiboot information it needs. */
#ifndef FW_LAYOUT_H
#define FW_LAYOUT_H

#define ROM_SIZE      0x10000
#define ROM_BASE      0xFFFF0000

#define FW_RAM_START  0x7000
#define FW_STACK_TOP  0x10000
#define FW_BSS_START  0x10000
#define FW_RAM_END    0x20000

#define CODE_SEL      0x08      /* flat 4 GiB 32-bit code */
#define DATA_SEL      0x10      /* flat 4 GiB 32-bit data */

#endif
