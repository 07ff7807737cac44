/* The two cascaded 8259A interrupt controllers. */
#ifndef FW_PIC_H
#define FW_PIC_H

/* Vectors 0x08-0x0F (master) and 0x70-0x77 (slave) as on a PC; everything masked but the
 * cascade input, so no interrupt arrives until the kernel unmasks one. */
void pic_setup(void);

#endif
