#include "platform.h"
#include "interrupts.h"
#include "io.h"

#define DEBUG_EXIT_PORT 0xF4

void platform_exit(uint32_t code)
{
    outl(DEBUG_EXIT_PORT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* 8254 PIT channel 2: its gate and output are wired to port 0x61 bits 0 and 5 on a PC. */
#define PIT_CH2      0x42
#define PIT_CMD      0x43
#define PORT_B       0x61
#define PIT_HZ       1193182u

uint32_t platform_tsc_khz(void)
{
    const uint16_t count = 11932;                 /* 10 ms at 1.193182 MHz */
    uint8_t b = inb(PORT_B);
    outb(PORT_B, (b & ~0x02) & ~0x01);            /* speaker off, gate low */
    outb(PIT_CMD, 0xB0);                          /* channel 2, lobyte/hibyte, mode 0, binary */
    outb(PIT_CH2, count & 0xFF);
    outb(PIT_CH2, count >> 8);
    uint64_t t0 = rdtsc();
    outb(PORT_B, (b & ~0x02) | 0x01);             /* gate high: counting starts */
    /* OUT2 (port 0x61 bit 5) goes high when the count reaches 0. Bound the wait so a PIT
     * that never fires cannot hang us. */
    uint32_t spins = 0;
    while (!(inb(PORT_B) & 0x20)) {
        if (++spins > 50000000u) {
            outb(PORT_B, b);
            return 0;
        }
    }
    uint64_t t1 = rdtsc();
    outb(PORT_B, b);
    if (spins == 0)                               /* OUT2 already high: no working channel 2 */
        return 0;
    uint64_t ticks = t1 - t0;                     /* ticks per 10 ms -> kHz is ticks / 10 */
    if (ticks >> 32)
        return 0;
    return (uint32_t)ticks / 10;
}

/* --- PIT channel 0 ticker ------------------------------------------------------------------ */

#define PIT_CH0 0x40
static volatile uint32_t ticks;

static void on_tick(void *ctx) { ticks++; }

void platform_ticker_start(void)
{
    uint16_t divisor = PIT_HZ / PLATFORM_TICK_HZ;
    outb(PIT_CMD, 0x34);                          /* channel 0, lobyte/hibyte, mode 2 (rate) */
    outb(PIT_CH0, divisor & 0xFF);
    outb(PIT_CH0, divisor >> 8);
    irq_install(0, on_tick, 0);
}

void platform_ticker_stop(void) { irq_remove(0); }

uint32_t platform_ticks(void) { return ticks; }
