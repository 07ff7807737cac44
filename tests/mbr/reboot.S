/* Reboots once through the 8042 (command 0xFE), counting boots in CMOS byte 0x48 (unused by
 * SeaBIOS and QEMU): the second boot must come through SeaBIOS's full POST again (shadow RAM
 * back to ROM at reset) and reach this sector. */
#include "common.h"

#define CMOS_INDEX  0x70
#define CMOS_DATA   0x71
#define BOOTS       0x48

    .code16
    .text
    .globl _start
_start:
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    cld
    mov $BOOTS, %al
    out %al, $CMOS_INDEX
    in $CMOS_DATA, %al
    cmp $0x5a, %al
    je second
    mov $BOOTS, %al
    out %al, $CMOS_INDEX
    mov $0x5a, %al
    out %al, $CMOS_DATA
    PRINT(first_msg)
    mov $0xfe, %al                  /* pulse the reset line */
    out %al, $0x64
    cli
1:  hlt
    jmp 1b

second:
    PRINT(second_msg)
    EXIT(EXIT_OK)

#include "serial.inc"

first_msg:  .asciz "REBOOT: first boot, resetting through the 8042\r\n"
second_msg: .asciz "REBOOT: second boot\r\n"

    .org 510
    .word 0xaa55
