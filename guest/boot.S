/* Entry point. A Multiboot v1 loader (QEMU's -kernel, or our firmware) jumps to _start in 32-bit
 * protected mode with flat segments, paging off, interrupts off, EAX = 0x2BADB002 and EBX = the
 * physical address of the Multiboot information structure. The loader's GDT is not guaranteed
 * to stay valid (Multiboot spec 3.2), so we install our own before anything can take an
 * interrupt, then clear .bss and call kmain(magic, info). */

#define MB_MAGIC   0x1BADB002
#define MB_FLAGS   0x00000003          /* bit 0: page-align modules, bit 1: give us mem_* */

    .section .multiboot, "a"
    .align 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)       /* checksum: the three words sum to 0 */

    .section .bss
    .align 16
stack_bottom:
    .skip 65536
stack_top:

    .section .rodata
    .align 8
gdt:
    .quad 0                            /* 0x00: null */
    .quad 0x00CF9A000000FFFF           /* 0x08: code, base 0, limit 4 GiB, 32-bit, ring 0 */
    .quad 0x00CF92000000FFFF           /* 0x10: data, base 0, limit 4 GiB, ring 0 */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt

    .section .text
    .global _start
    .type _start, @function
_start:
    cli
    mov   $stack_top, %esp
    mov   %eax, %esi                   /* keep magic and info pointer across the set-up */
    mov   %ebx, %edi

    lgdt  gdt_descriptor
    ljmp  $0x08, $1f                   /* reload CS from our GDT */
1:  mov   $0x10, %ax
    mov   %ax, %ds
    mov   %ax, %es
    mov   %ax, %fs
    mov   %ax, %gs
    mov   %ax, %ss

    /* The loader zero-fills .bss per the ELF program header; do it again so a loader that
     * does not cannot leave stale state behind. (The stack is in .bss: we have not used it.) */
    cld
    mov   $__bss_start, %edi
    mov   $__bss_end, %ecx
    sub   %edi, %ecx
    xor   %eax, %eax
    rep stosb
    mov   %ebx, %edi                   /* rep stosb consumed EDI; EBX still holds info */

    xor   %ebp, %ebp                   /* terminates gdb backtraces */
    push  %edi                         /* kmain(magic, info) */
    push  %esi
    call  kmain

    /* kmain never returns; if it does, stop here for good. */
halt_forever:
    cli
    hlt
    jmp   halt_forever
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
