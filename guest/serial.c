/* COM1 polled output. Registers per the 16550A datasheet; offsets from the base port. */
#include "serial.h"
#include "io.h"

#define COM1        0x3F8
#define UART_THR    0       /* transmit holding register (DLAB = 0) */
#define UART_IER    1       /* interrupt enable (DLAB = 0) */
#define UART_DLL    0       /* divisor latch low (DLAB = 1) */
#define UART_DLM    1       /* divisor latch high (DLAB = 1) */
#define UART_FCR    2
#define UART_LCR    3
#define UART_MCR    4
#define UART_LSR    5
#define LCR_DLAB    0x80
#define LCR_8N1     0x03
#define LSR_THRE    0x20    /* transmit holding register empty */

void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00);            /* polled: no UART interrupts */
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 1);               /* 115200 baud (divisor 1 of 1.8432 MHz / 16) */
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, 0x07);            /* enable and clear FIFOs */
    outb(COM1 + UART_MCR, 0x03);            /* DTR | RTS, OUT2 off: keep IRQ4 quiet */
}

void serial_putc(char c)
{
    /* Bounded wait: a missing or stuck UART reads 0xFF (THRE set) or never drains; either way
     * we must not hang the self-test on it. */
    for (int spins = 0; spins < 100000; spins++)
        if (inb(COM1 + UART_LSR) & LSR_THRE)
            break;
    outb(COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s)
{
    while (*s) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s++);
    }
}
