/* A boot sector that moves out of the way, as a DOS MBR does: it copies itself to 0x0600,
 * continues there, loads the second stage (LBA 1) over its old location at 0x7c00 through
 * int 13h and jumps to it. The CPU has already run (translated) code at 0x7c00, so it must see
 * the bytes the disk DMA wrote there, not its stale translation. */
#include "common.h"

#define NEW_BASE 0x0600

    BOOT_SECTOR_START
    mov $0x7c00, %si
    mov $NEW_BASE, %di
    mov $256, %cx
    rep movsw
    ljmp $0, $(NEW_BASE + moved - _start)

moved:
    mov %dl, NEW_BASE + drive - _start
    mov $3, %cx                     /* let SeaBIOS's serial console flush on timer ticks */
1:  hlt
    loop 1b
    mov $(NEW_BASE + msg - _start), %si
    call puts_moved
    mov $0x0201, %ax                /* CHS 0/0/2 = LBA 1, one sector to 0x7c00 */
    mov $0x0002, %cx
    xor %dh, %dh
    mov NEW_BASE + drive - _start, %dl
    mov $0x7c00, %bx
    int $0x13
    jc 1f
    cmpw $0xaa55, 0x7dfe
    jne 1f
    mov NEW_BASE + drive - _start, %dl
    ljmp $0, $0x7c00
1:  mov $(EXIT_FAIL + 1), %al
    out %al, $DEBUG_EXIT
    cli
2:  hlt
    jmp 2b

/* puts for the moved copy (position-dependent labels inside it are adjusted by hand) */
puts_moved:
    lodsb
    test %al, %al
    jz 2f
    push %ax
    mov $COM1 + 5, %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    pop %ax
    mov $COM1, %dx
    out %al, %dx
    jmp puts_moved
2:  ret

msg:    .asciz "RELOC: running at 0x0600, loading stage 2 over 0x7c00\r\n"
drive:  .byte 0

    .org 510
    .word 0xaa55
