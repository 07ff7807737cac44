/* Progress and error lines on the debug console (port 0x402, QEMU's isa-debugcon). */
#ifndef FW_DEBUGCON_H
#define FW_DEBUGCON_H

#include "io.h"

#define DEBUGCON_PORT 0x402

/* printf subset: %s %c %d %u %x with optional '0' flag, width and 'll' (hex only for 64-bit). */
void dbg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print "error: <message>" and halt the CPU for good. */
__attribute__((noreturn)) void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
