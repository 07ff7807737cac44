/* The firmware's whole job, in order.  reset.S gets here in 32-bit protected mode with flat
 * segments, a stack at FW_STACK_TOP and a zeroed .bss; memory layout in layout.h. */
#include "acpi.h"
#include "debugcon.h"
#include "fwcfg.h"
#include "memmap.h"
#include "pci.h"
#include "pic.h"
#include "multiboot.h"
#include "linux.h"

void fw_main(void);

void fw_main(void)
{
    dbg_printf("machine firmware: protected mode\n");
    if (!fwcfg_probe())
        fatal("no fw_cfg device at port 0x510 (signature mismatch)");
    dbg_printf("fw_cfg: %s\n", fwcfg_has_dma() ? "DMA" : "port I/O");

    uint64_t ram = fwcfg_read_u64(FW_CFG_RAM_SIZE);
    dbg_printf("ram: 0x%llx bytes (%u MiB)\n", ram, (uint32_t)(ram >> 20));
    dbg_printf("cpus: %u\n", fwcfg_read_u32(FW_CFG_NB_CPUS) & 0xFFFF);   /* a u16 item */
    memmap_init(ram);

    pci_setup();
    acpi_setup();
    pic_setup();
    if (linux_present())
        linux_boot();
    multiboot_boot();
}
