/* Machine-level services: leaving the emulator with a status, and time stamps. */
#ifndef GUEST_PLATFORM_H
#define GUEST_PLATFORM_H

#include <stdint.h>

/* isa-debug-exit at port 0xF4: writing v makes QEMU exit with status (v << 1) | 1, so 0 -> 1
 * (all passed) and 1 -> 3 (something failed). Halts forever if the device is absent. */
__attribute__((noreturn)) void platform_exit(uint32_t code);

/* TSC frequency in kHz measured against PIT channel 2 (1.193182 MHz), or 0 if the PIT gate
 * did not behave (e.g. an emulator without channel 2): then report raw ticks only. */
uint32_t platform_tsc_khz(void);

/* A 100 Hz tick from PIT channel 0 on IRQ 0, used as a watchdog while sleeping in HLT for a
 * device interrupt. */
#define PLATFORM_TICK_HZ 100
void platform_ticker_start(void);
void platform_ticker_stop(void);
uint32_t platform_ticks(void);

#endif
