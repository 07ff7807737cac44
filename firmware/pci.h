/* PCI bus 0 through configuration mechanism #1: enumeration, BAR assignment, INTx routing. */
#ifndef FW_PCI_H
#define FW_PCI_H

#include "io.h"

/* Scan bus 0, assign every BAR, route PIRQ A-D, set interrupt lines, enable decoding and bus
 * mastering, and log one line per function. */
void pci_setup(void);

#endif
