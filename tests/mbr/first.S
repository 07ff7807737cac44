/* For timing the firmware: the first thing this boot sector does is exit (isa-debug-exit). */
#include "common.h"

    .code16
    .text
    .globl _start
_start:
    mov $EXIT_OK, %al
    out %al, $DEBUG_EXIT
    cli
1:  hlt
    jmp 1b

    .org 510
    .word 0xaa55
