/* PCI bus 0 through configuration mechanism #1: enumeration, BAR assignment, INTx routing. */
#ifndef FW_PCI_H
#define FW_PCI_H

#include "io.h"

/* Scan bus 0, assign every BAR, route PIRQ A-D, set interrupt lines, enable decoding and bus
 * mastering, and log one line per function. */
void pci_setup(void);

/* One configuration byte of a bus 0 function (bdf = device << 3 | function). */
void pci_config_writeb(uint16_t bdf, uint8_t off, uint8_t v);

#endif
