/* Second stage for reloc.S: LBA 1, loaded at 0x7c00 after the first stage ran there. */
#include "common.h"

    .code16
    .text
    .globl _start
_start:
    xor %ax, %ax
    mov %ax, %ds
    cld
    PRINT(msg)
    EXIT(EXIT_OK)

#include "serial.inc"

msg:    .asciz "STAGE2: fresh code at 0x7c00 runs\r\n"

    .org 510
    .word 0xaa55
