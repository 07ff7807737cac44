/* The BIOS-services boot sector: prints over COM1, reads sectors through int 13h both with CHS
 * (AH=02h, geometry from AH=08h) and the LBA extensions (AH=41h check, AH=42h), checks their
 * contents against the pattern the test wrote (byte i of sector n is (7n + i) & 0xff), calls
 * int 10h teletype, int 16h and int 1Ah, waits for timer ticks with HLT, then exits through
 * isa-debug-exit: status 33 when all passed, 65 + 2k for failure k. */
#include "common.h"

    BOOT_SECTOR_START
    mov %dl, drive
    /* SeaBIOS's serial console (-nographic) flushes what it still holds on timer ticks: let
     * them pass before printing, so that its text does not land inside ours. */
    mov $7, %bp
    call wait_ticks
    PRINT(hello)

    /* geometry: AH=08h gives sectors per track in CL[5:0] */
    mov $0x08, %ah
    mov drive, %dl
    xor %di, %di
    int $0x13
    mov $1, %bp
    jc fail
    and $0x3f, %cl
    xor %ch, %ch
    mov %cx, spt

    /* CHS read: cylinder 0, head 0, sectors 2..4 (LBA 1..3) to 0x7e00 */
    mov $0x0203, %ax
    mov $0x0002, %cx
    mov $0x00, %dh
    mov drive, %dl
    mov $0x7e00, %bx
    int $0x13
    mov $2, %bp
    jc fail
    mov $0x7e00, %si
    mov $1, %ax
    mov $3, %cx
    call check_sectors

    /* CHS read: cylinder 0, head 1, sector 1 = LBA spt */
    mov $0x0201, %ax
    mov $0x0001, %cx
    mov $0x01, %dh
    mov drive, %dl
    mov $0x7e00, %bx
    int $0x13
    mov $3, %bp
    jc fail
    mov $0x7e00, %si
    mov spt, %ax
    mov $1, %cx
    call check_sectors
    PRINT(chs_ok)

    /* LBA extensions present? */
    mov $0x41, %ah
    mov $0x55aa, %bx
    mov drive, %dl
    int $0x13
    mov $4, %bp
    jc fail
    cmp $0xaa55, %bx
    jne fail
    test $1, %cx                    /* fixed disk access subset (42h..44h, 47h, 48h) */
    jz fail

    /* AH=42h: 4 sectors from LBA 100 to 0x8000 */
    mov $0x42, %ah
    mov drive, %dl
    mov $dap, %si
    int $0x13
    mov $5, %bp
    jc fail
    mov $0x8000, %si
    mov $100, %ax
    mov $4, %cx
    call check_sectors
    PRINT(lba_ok)

    /* int 16h AH=01h: keystroke check, must return */
    mov $0x01, %ah
    int $0x16

    /* int 10h teletype: must return (no VGA: SeaBIOS's handler, or its serial console, which
     * prints it at a later tick: during the wait below) */
    mov $0x0e, %ah
    mov $'+', %al
    xor %bx, %bx
    int $0x10

    mov $6, %bp
    call wait_ticks
    PRINT(tick_ok)
    PRINT(pass)
    EXIT(EXIT_OK)

/* wait_ticks: halt until the int 1Ah AH=00h tick count has advanced by 2 (IRQ0 in virtual
 * time); fails with BP after 200 wake-ups */
wait_ticks:
    xor %ah, %ah
    int $0x1a
    mov %dx, %di
    mov $200, %bx
1:  sti
    hlt
    xor %ah, %ah
    int $0x1a
    mov %dx, %ax
    sub %di, %ax
    cmp $2, %ax
    jae 2f
    dec %bx
    jz fail
    jmp 1b
2:  ret

fail:
    PRINT(failed)
    mov %bp, %ax
    add $'0', %al
    call putc
    mov $'\r', %al
    call putc
    mov $'\n', %al
    call putc
    mov %bp, %ax
    add $EXIT_FAIL, %al
    out %al, $DEBUG_EXIT
    cli
3:  hlt
    jmp 3b

/* check_sectors: CX sectors at DS:SI, the first being LBA AX; fails with BP+10 */
check_sectors:
    push %ax
    mov $7, %dl
    mul %dl                         /* AL = 7n & 0xff */
    mov %al, %bl
    mov $512, %dx
1:  lodsb
    cmp %bl, %al
    jne 2f
    inc %bl
    dec %dx
    jnz 1b
    pop %ax
    inc %ax
    dec %cx
    jnz check_sectors
    ret
2:  add $10, %bp
    jmp fail

#include "serial.inc"

hello:   .asciz "MBR: hello over COM1\r\n"
chs_ok:  .asciz "MBR: CHS read ok\r\n"
lba_ok:  .asciz "MBR: LBA read ok\r\n"
tick_ok: .asciz "MBR: timer ticks ok\r\n"
pass:    .asciz "MBR: all passed\r\n"
failed:  .asciz "MBR: FAIL "

    .balign 4
dap:    .byte 16, 0
        .word 4                     /* sectors */
        .word 0x8000, 0x0000        /* buffer offset, segment */
        .quad 100                   /* first LBA */
drive:  .byte 0
spt:    .word 0

    .org 510
    .word 0xaa55
