#include "printf.h"
#include "serial.h"

uint64_t udiv64(uint64_t n, uint64_t d, uint64_t *rem)
{
    /* Shift-and-subtract long division: slow but only used for printing and bench maths. */
    uint64_t q = 0, r = 0;
    if (d == 0) {
        if (rem)
            *rem = 0;
        return ~0ULL;
    }
    for (int i = 63; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1);
        if (r >= d) {
            r -= d;
            q |= 1ULL << i;
        }
    }
    if (rem)
        *rem = r;
    return q;
}

struct out {
    char *buf;          /* NULL: write to the serial port */
    size_t size, len;
};

static void emit(struct out *o, char c)
{
    if (!o->buf)
        serial_putc(c);
    else if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void emit_number(struct out *o, uint64_t v, unsigned base, int upper, int negative,
                        int width, char pad, int left)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0;
    do {
        uint64_t r;
        if (base == 16) {
            r = v & 15;
            v >>= 4;
        } else if (v >> 32) {
            v = udiv64(v, base, &r);
        } else {                       /* 32-bit division is native: fast path */
            uint32_t v32 = (uint32_t)v;
            r = v32 % base;
            v = v32 / base;
        }
        tmp[n++] = digits[r];
    } while (v);
    int total = n + negative;
    if (!left && pad == '0' && negative)
        emit(o, '-');
    if (!left)
        for (; total < width; total++)
            emit(o, pad);
    if (negative && !(pad == '0' && !left))
        emit(o, '-');
    while (n)
        emit(o, tmp[--n]);
    if (left)
        for (; total < width; total++)
            emit(o, ' ');
}

static void format(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            if (*fmt == '\n' && !o->buf)
                emit(o, '\r');
            emit(o, *fmt);
            continue;
        }
        fmt++;
        int left = 0, width = 0, lng = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-') left = 1;
            else if (*fmt == '0') pad = '0';
            else break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng += (*fmt == 'l') ? 1 : 0;
            fmt++;
        }
        switch (*fmt) {
        case 'd': case 'i': {
            int64_t v = lng >= 2 ? va_arg(ap, long long) : (int64_t)va_arg(ap, int);
            emit_number(o, v < 0 ? (uint64_t)-v : (uint64_t)v, 10, 0, v < 0, width, pad, left);
            break;
        }
        case 'u': case 'x': case 'X': {
            uint64_t v = lng >= 2 ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);
            emit_number(o, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', 0, width, pad, left);
            break;
        }
        case 'p':
            emit(o, '0');
            emit(o, 'x');
            emit_number(o, (uintptr_t)va_arg(ap, void *), 16, 0, 0, 8, '0', 0);
            break;
        case 'c':
            emit(o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int n = 0;
            while (s[n])
                n++;
            if (!left)
                for (; n < width; n++)
                    emit(o, ' ');
            while (*s)
                emit(o, *s++);
            if (left)
                for (; n < width; n++)
                    emit(o, ' ');
            break;
        }
        case '%':
            emit(o, '%');
            break;
        case '\0':
            return;
        default:
            emit(o, '%');
            emit(o, *fmt);
        }
    }
}

int kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    format(&o, fmt, ap);
    if (buf && size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

int ksnprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = kvsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct out o = { 0, 0, 0 };
    format(&o, fmt, ap);
    va_end(ap);
    return (int)o.len;
}
