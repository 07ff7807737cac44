/* A tiny printf: %d %i %u %x %X %s %c %p %%, flags '-' and '0', a width, and the length
 * modifiers l, ll (64-bit) and z. Output goes to COM1 (kprintf) or a buffer (ksnprintf). */
#ifndef GUEST_PRINTF_H
#define GUEST_PRINTF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ksnprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* 64-bit unsigned division without libgcc (we link no runtime library). */
uint64_t udiv64(uint64_t n, uint64_t d, uint64_t *rem);

#endif
