/* COM1 (16550A at 0x3F8): polled output for the TAP log and diagnostics. */
#ifndef GUEST_SERIAL_H
#define GUEST_SERIAL_H

void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s);

#endif
