/* Shared by the test boot sectors: COM1 output straight through the UART ports (SeaBIOS's
 * serial console may be off), and the exit through isa-debug-exit at port 0xf4. Real mode,
 * DS = 0. */

#define COM1        0x3f8
#define DEBUG_EXIT  0xf4

/* Exit status seen by the host: (value << 1) | 1. EXIT_OK gives 33. */
#define EXIT_OK     0x10
#define EXIT_FAIL   0x20        /* + failure number */

/* Entry of a boot sector loaded at 0x7c00: segments at 0, stack just below the sector,
 * interrupts on, string operations forward. */
#define BOOT_SECTOR_START \
    .code16; .text; .globl _start; _start: \
    cli; xor %ax, %ax; mov %ax, %ds; mov %ax, %es; mov %ax, %ss; mov $0x7c00, %sp; sti; cld

/* print the NUL-terminated string at label s */
#define PRINT(s)    mov $s, %si; call puts
/* exit with status value v */
#define EXIT(v)     mov $(v), %al; out %al, $DEBUG_EXIT; cli; 9: hlt; jmp 9b
