/* The kernel command line: whitespace-separated `key=value` words (the loader may put the
 * kernel's own path first; words without '=' are ignored). */
#ifndef GUEST_CMDLINE_H
#define GUEST_CMDLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void cmdline_init(const char *line);
const char *cmdline_raw(void);
/* Copies the value of `key` into buf (truncated, NUL-terminated); false when absent. */
bool cmdline_get(const char *key, char *buf, size_t size);
/* Decimal or 0x-hex value of `key`; `def` when absent or malformed. */
uint32_t cmdline_u32(const char *key, uint32_t def);
/* True when `item` is one of the comma-separated entries of `list`. */
bool list_contains(const char *list, const char *item);

#endif
