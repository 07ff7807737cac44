/* Protected-mode interrupts: the IDT, the two cascaded 8259A PICs remapped to vectors
 * 0x20..0x2F, and per-IRQ handlers in C. */
#ifndef GUEST_INTERRUPTS_H
#define GUEST_INTERRUPTS_H

#include <stdint.h>

struct int_frame {                  /* as laid out by isr.S */
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;   /* pusha */
    uint32_t vector, error_code;
    uint32_t eip, cs, eflags;       /* pushed by the CPU */
};

#define IRQ_BASE_MASTER 0x20
#define IRQ_BASE_SLAVE  0x28
/* Message-signalled interrupts (MSI-X) arrive through the local APIC on vectors 0x30..0x3E;
 * 0x3F is the APIC's spurious vector. */
#define MSI_VECTOR_BASE 0x30
#define MSI_VECTORS     15
#define SPURIOUS_VECTOR 0x3F
#define LAPIC_BASE      0xFEE00000u

typedef void (*irq_handler_fn)(void *ctx);

/* Loads the IDT (exceptions print a report and fail the run) and reprograms the PICs with
 * every IRQ masked. Interrupts stay disabled (IF = 0). */
void interrupts_init(void);
/* Installs a handler for IRQ 0..15 and unmasks it (and the cascade, IRQ 2, for 8..15). */
void irq_install(uint8_t irq, irq_handler_fn fn, void *ctx);
/* Masks the IRQ again and removes its handler. */
void irq_remove(uint8_t irq);
/* Software-enables the local APIC (SVR) so that it takes message-signalled interrupts; the
 * 8259s keep working through LINT0 (virtual wire), as the firmware left it. Returns its ID. */
uint8_t lapic_enable(void);
/* Handler for MSI vector MSI_VECTOR_BASE + n (n < MSI_VECTORS); fn 0 removes it. Every MSI
 * vector is acknowledged with a local APIC EOI, with or without a handler. */
void msi_install(uint8_t n, irq_handler_fn fn, void *ctx);

static inline void irq_enable(void)  { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
/* Enable interrupts and halt in one step: STI's one-instruction shadow means an interrupt
 * pending at this point wakes the HLT instead of being lost before it. */
static inline void irq_wait(void)    { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

#endif
