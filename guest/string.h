/* The few C library string functions the guest needs (gcc may also emit calls to memcpy,
 * memset, memmove and memcmp on its own, so these exact names must exist). */
#ifndef GUEST_STRING_H
#define GUEST_STRING_H

#include <stddef.h>
#include <stdint.h>

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

#endif
