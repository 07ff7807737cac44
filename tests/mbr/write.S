/* Writes through SeaBIOS's int 13h: AH=43h (LBA extensions) puts two sectors of 0xA5 at
 * LBA 300, AH=03h (CHS) copies the boot sector itself to cylinder 0, head 0, sector 5 (LBA 4).
 * The test then checks the image file. */
#include "common.h"

    BOOT_SECTOR_START
    mov %dl, drive
    mov $0x8000, %di                /* 1 KiB of 0xa5 at 0x8000 */
    mov $0xa5, %al
    mov $1024, %cx
    rep stosb
    mov $0x4300, %ax                /* AH=43h, AL=0: write without verify */
    mov drive, %dl
    mov $dap, %si
    int $0x13
    jc 1f
    mov $0x0301, %ax                /* AH=03h: one sector */
    mov $0x0005, %cx                /* cylinder 0, sector 5 */
    xor %dh, %dh
    mov drive, %dl
    mov $0x7c00, %bx
    int $0x13
    jc 1f
    PRINT(done)
    EXIT(EXIT_OK)
1:  EXIT(EXIT_FAIL + 1)

#include "serial.inc"

done:   .asciz "WRITE: done\r\n"

    .balign 4
dap:    .byte 16, 0
        .word 2
        .word 0x8000, 0x0000
        .quad 300
drive:  .byte 0

    .org 510
    .word 0xaa55
