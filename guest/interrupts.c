#include "interrupts.h"
#include "io.h"
#include "platform.h"
#include "printf.h"

/* --- IDT -------------------------------------------------------------------------------- */

struct idt_gate {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t zero;
    uint8_t type_attr;          /* 0x8E: present, ring 0, 32-bit interrupt gate (IF cleared) */
    uint16_t offset_hi;
} __attribute__((packed));

struct idt_ptr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

#define NUM_VECTORS 64
#define KERNEL_CS   0x08        /* boot.S GDT */

extern const uint32_t isr_stub_table[NUM_VECTORS];
static struct idt_gate idt[NUM_VECTORS] __attribute__((aligned(8)));

/* --- 8259A PIC (datasheet: ICW1..ICW4, OCW1 = mask, OCW2 = EOI, OCW3 = read ISR) ------------ */

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xA0
#define PIC2_DATA 0xA1
#define ICW1_INIT_ICW4  0x11    /* edge triggered, cascade, ICW4 follows */
#define ICW4_8086       0x01
#define OCW2_EOI        0x20    /* non-specific EOI */
#define OCW3_READ_ISR   0x0B

static uint16_t irq_mask = 0xFFFF;
static irq_handler_fn handlers[16];
static void *handler_ctx[16];

static void pic_apply_mask(void)
{
    outb(PIC1_DATA, irq_mask & 0xFF);
    outb(PIC2_DATA, irq_mask >> 8);
}

static void pic_init(void)
{
    outb(PIC1_CMD, ICW1_INIT_ICW4);
    outb(PIC2_CMD, ICW1_INIT_ICW4);
    outb(PIC1_DATA, IRQ_BASE_MASTER);       /* ICW2: vector base */
    outb(PIC2_DATA, IRQ_BASE_SLAVE);
    outb(PIC1_DATA, 1 << 2);                /* ICW3: slave on master input 2 */
    outb(PIC2_DATA, 2);                     /* ICW3: slave identity 2 */
    outb(PIC1_DATA, ICW4_8086);
    outb(PIC2_DATA, ICW4_8086);
    irq_mask = 0xFFFF;
    pic_apply_mask();
}

static void pic_eoi(uint8_t irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, OCW2_EOI);
    outb(PIC1_CMD, OCW2_EOI);
}

/* An IRQ 7/15 whose in-service bit is clear is spurious (the request went away before the
 * INTA cycle): it must not be EOI'd on that chip (8259A datasheet, "interrupt sequence"). */
static int pic_is_spurious(uint8_t irq)
{
    if (irq == 7) {
        outb(PIC1_CMD, OCW3_READ_ISR);
        return !(inb(PIC1_CMD) & 0x80);
    }
    if (irq == 15) {
        outb(PIC2_CMD, OCW3_READ_ISR);
        if (!(inb(PIC2_CMD) & 0x80)) {
            outb(PIC1_CMD, OCW2_EOI);       /* the master did see a real cascade request */
            return 1;
        }
    }
    return 0;
}

void interrupts_init(void)
{
    for (int v = 0; v < NUM_VECTORS; v++) {
        uint32_t a = isr_stub_table[v];
        idt[v].offset_lo = a & 0xFFFF;
        idt[v].selector = KERNEL_CS;
        idt[v].zero = 0;
        idt[v].type_attr = 0x8E;
        idt[v].offset_hi = a >> 16;
    }
    struct idt_ptr p = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(p));
    pic_init();
}

void irq_install(uint8_t irq, irq_handler_fn fn, void *ctx)
{
    if (irq >= 16)
        return;
    handler_ctx[irq] = ctx;
    handlers[irq] = fn;
    irq_mask &= ~(1u << irq);
    if (irq >= 8)
        irq_mask &= ~(1u << 2);
    pic_apply_mask();
}

void irq_remove(uint8_t irq)
{
    if (irq >= 16)
        return;
    irq_mask |= 1u << irq;
    pic_apply_mask();
    handlers[irq] = 0;
}

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound",
    "#UD invalid opcode", "#NM no FPU", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved", "#MF FPU error", "#AC alignment check", "#MC machine check",
    "#XM SIMD", "#VE virtualization", "#CP control protection",
};

/* --- Local APIC (Intel SDM vol. 3, chapter 10) -------------------------------------------- */

#define LAPIC_ID   0x020
#define LAPIC_EOI  0x0B0
#define LAPIC_SVR  0x0F0
#define SVR_ENABLE 0x100

static irq_handler_fn msi_handlers[MSI_VECTORS];
static void *msi_ctx[MSI_VECTORS];

static inline volatile uint32_t *lapic_reg(uint32_t off)
{
    return (volatile uint32_t *)(uintptr_t)(LAPIC_BASE + off);
}

uint8_t lapic_enable(void)
{
    *lapic_reg(LAPIC_SVR) = SVR_ENABLE | SPURIOUS_VECTOR;
    return (uint8_t)(*lapic_reg(LAPIC_ID) >> 24);
}

void msi_install(uint8_t n, irq_handler_fn fn, void *ctx)
{
    if (n >= MSI_VECTORS)
        return;
    msi_ctx[n] = ctx;
    msi_handlers[n] = fn;
}

void interrupt_dispatch(struct int_frame *f)
{
    if (f->vector == SPURIOUS_VECTOR)               /* no EOI for the spurious vector (SDM 10.9) */
        return;
    if (f->vector >= MSI_VECTOR_BASE) {
        uint8_t n = (uint8_t)(f->vector - MSI_VECTOR_BASE);
        if (msi_handlers[n])
            msi_handlers[n](msi_ctx[n]);
        *lapic_reg(LAPIC_EOI) = 0;
        return;
    }
    if (f->vector < 32) {
        const char *name = exception_names[f->vector] ? exception_names[f->vector] : "reserved";
        kprintf("\nBail out! CPU exception %u (%s) error=%x at %x:%x eflags=%x\n",
                f->vector, name, f->error_code, f->cs, f->eip, f->eflags);
        kprintf("# eax=%x ebx=%x ecx=%x edx=%x esi=%x edi=%x ebp=%x\n",
                f->eax, f->ebx, f->ecx, f->edx, f->esi, f->edi, f->ebp);
        platform_exit(1);
    }
    uint8_t irq = (uint8_t)(f->vector - IRQ_BASE_MASTER);
    if (pic_is_spurious(irq))
        return;
    if (handlers[irq])
        handlers[irq](handler_ctx[irq]);
    pic_eoi(irq);
}
