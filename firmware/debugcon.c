#include <stdarg.h>
#include "debugcon.h"

static void put(char c)
{
    outb(DEBUGCON_PORT, (uint8_t)c);
}

static void put_str(const char *s, int width)
{
    int n = (int)strlen(s);
    for (; n < width; n++)
        put(' ');
    while (*s)
        put(*s++);
}

/* Digits of `v` in `base`; 64-bit values are only printed in hex, so no 64-bit division
 * (which would need libgcc) is ever compiled in. */
static void put_num(uint64_t v, unsigned base, int width, char pad, bool negative)
{
    char buf[24];
    int n = 0;
    do {
        unsigned digit = base == 16 ? (unsigned)(v & 15) : (unsigned)((uint32_t)v % 10);
        buf[n++] = "0123456789abcdef"[digit];
        v = base == 16 ? v >> 4 : (uint32_t)v / 10;
    } while (v);
    if (negative)
        buf[n++] = '-';
    for (; n < width; width--)
        put(pad);
    while (n)
        put(buf[--n]);
}

static void vprint(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            longs++, fmt++;
        switch (*fmt) {
        case 's': put_str(va_arg(ap, const char *), width); break;
        case 'c': put((char)va_arg(ap, int)); break;
        case 'd': {
            int32_t v = va_arg(ap, int32_t);
            put_num(v < 0 ? -(uint32_t)v : (uint32_t)v, 10, width, pad, v < 0);
            break;
        }
        case 'u': put_num(va_arg(ap, uint32_t), 10, width, pad, false); break;
        case 'x':
            put_num(longs >= 2 ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 16, width, pad, false);
            break;
        case '%': put('%'); break;
        default: put('?'); break;
        }
    }
}

void dbg_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dbg_printf("error: ");
    vprint(fmt, ap);
    va_end(ap);
    dbg_printf("\nhalted\n");
    fw_halt();
}
