/* ACPI tables from fw_cfg: run the "etc/table-loader" commands (QEMU's interface, which SeaBIOS
 * runs too) to place the blobs in memory, patch their pointers and checksums. */
#ifndef FW_ACPI_H
#define FW_ACPI_H

#include "io.h"

/* Install the tables (a no-op, logged, when fw_cfg has no table loader).  The memory the high
 * blobs occupy is taken out of RAM in the memory map (reserved).  Call after memmap_init. */
void acpi_setup(void);

/* Physical address of the RSDP once installed, else 0 (for boot protocols that pass it on). */
extern uint32_t acpi_rsdp_addr;

#endif
