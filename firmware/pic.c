#include "pic.h"
#include "io.h"
#include "debugcon.h"

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xA0
#define PIC2_DATA 0xA1

#define ICW1_INIT 0x10      /* start initialisation */
#define ICW1_ICW4 0x01      /* ICW4 follows; edge-triggered mode (the ELCR decides per IRQ) */
#define ICW4_8086 0x01      /* 8086 mode, normal EOI */
#define CASCADE_IRQ 2

void pic_setup(void)
{
    outb(PIC1_CMD, ICW1_INIT | ICW1_ICW4);
    outb(PIC2_CMD, ICW1_INIT | ICW1_ICW4);
    outb(PIC1_DATA, 0x08);                  /* ICW2: vector base */
    outb(PIC2_DATA, 0x70);
    outb(PIC1_DATA, 1u << CASCADE_IRQ);     /* ICW3: master has the slave on IR2 ... */
    outb(PIC2_DATA, CASCADE_IRQ);           /* ... and the slave knows its cascade identity */
    outb(PIC1_DATA, ICW4_8086);
    outb(PIC2_DATA, ICW4_8086);
    outb(PIC1_DATA, (uint8_t)~(1u << CASCADE_IRQ));     /* OCW1: masks */
    outb(PIC2_DATA, 0xFF);
    dbg_printf("pic: vectors 0x08/0x70, all IRQs masked but the cascade\n");
}
