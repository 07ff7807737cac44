/* Reset vector, the switch from real to 32-bit protected mode, and the ways out of C:
 * halting, jumping to a Multiboot kernel and jumping to a Linux kernel.  Everything else is C. */
#include "layout.h"

/* ---- 16-bit entry, executed from the ROM's low alias (CS = 0xF000) ---- */
        .section .text.entry16, "ax"
        .code16
start16:
        cli
        cld
        /* Fast A20 gate (port 0x92 bit 1): without A20 the CPU could not reach the ROM's high
         * alias at 0xFFFFxxxx.  Bit 0 of that port resets the CPU, so it is cleared. */
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        /* The image is linked at ROM_BASE = 0xFFFF0000, so the low 16 bits of any ROM address
         * are its offset inside segment 0xF000: %cs: addressing works for either CS base
         * (0xF0000 after our far jump, 0xFFFF0000 on a real reset). */
        lgdtl   %cs:gdt_desc
        movl    %cr0, %eax
        orl     $1, %eax                /* CR0.PE; paging stays off */
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $start32     /* loads CS from the GDT: 32-bit code at the high alias */

/* ---- 32-bit protected mode, flat segments ---- */
        .code32
start32:
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $FW_STACK_TOP, %esp
        /* C expects a zeroed .bss, and RAM content at reset is undefined. */
        xorl    %eax, %eax
        movl    $__bss_start, %edi
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        rep stosb
        call    fw_main
        /* fw_main does not return; halt if it ever does */

/* void fw_halt(void): stop for good.  With interrupts off, only NMI/reset wake the CPU. */
        .globl  fw_halt
fw_halt:
        cli
        hlt
        jmp     fw_halt

/* void boot_multiboot(uint32_t entry, uint32_t mbi): Multiboot v1 hand-off ("Machine state"):
 * EAX = boot magic, EBX = physical address of the information structure, flat 32-bit
 * segments (already loaded), paging off, interrupts off (never enabled here). */
        .globl  boot_multiboot
boot_multiboot:
        movl    4(%esp), %ecx
        movl    8(%esp), %ebx
        movl    $0x2BADB002, %eax
        xorl    %edx, %edx
        xorl    %esi, %esi
        xorl    %edi, %edi
        xorl    %ebp, %ebp
        jmp     *%ecx

/* void boot_linux(uint32_t entry, uint32_t zero_page): the Linux 32-bit boot protocol hand-off.
 * CS = __BOOT_CS (0x10) and DS/ES/SS = __BOOT_DS (0x18), flat 4 GiB, in a GDT of the layout
 * the protocol names; ESI = the zero page; EBP, EDI, EBX zero; paging and interrupts off. */
        .globl  boot_linux
boot_linux:
        movl    4(%esp), %ecx
        movl    8(%esp), %esi
        lgdtl   linux_gdt_desc
        ljmpl   $0x10, $1f
1:      movw    $0x18, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        xorl    %eax, %eax
        xorl    %ebx, %ebx
        xorl    %edx, %edx
        xorl    %edi, %edi
        xorl    %ebp, %ebp
        jmp     *%ecx

/* ---- GDT: read by lgdt in real mode, so it lives in ROM ---- */
        .section .rodata.gdt, "a"
        .balign 8
gdt:
        .quad   0                       /* null descriptor */
        .quad   0x00CF9B000000FFFF      /* 0x08: code, base 0, limit 4 GiB, 32-bit, ring 0 */
        .quad   0x00CF93000000FFFF      /* 0x10: data, base 0, limit 4 GiB, 32-bit, ring 0 */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt                     /* linear address in the high alias (A20 is on) */

        .balign 8
linux_gdt:
        .quad   0
        .quad   0
        .quad   0x00CF9B000000FFFF      /* 0x10 __BOOT_CS */
        .quad   0x00CF93000000FFFF      /* 0x18 __BOOT_DS */
linux_gdt_end:
linux_gdt_desc:
        .word   linux_gdt_end - linux_gdt - 1
        .long   linux_gdt

/* ---- The reset vector: the last 16 bytes of the image, at 0xFFFFFFF0 ---- */
        .section .reset, "ax"
        .code16
        .globl  reset_vector
reset_vector:
        /* A far jump first, so CS gets a real-mode base (0xF0000) whatever it was at reset. */
        ljmp    $0xF000, $start16
        .fill   16 - (. - reset_vector), 1, 0xF4
        .section .note.GNU-stack, "", @progbits
