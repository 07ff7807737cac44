"""Platform devices of the PC. Each is a small class with the ops protocol (read/write at offsets
from its base), a `BASE`/`SIZE` default location, a `reset()`, and no knowledge of the CPU:

    serial.Uart16550      16550A UART, COM1 (0x3F8, IRQ4)
    debug_exit.DebugExit  QEMU isa-debug-exit
    debugcon.DebugCon     QEMU isa-debugcon (0x402)
    fw_cfg.FwCfg          QEMU fw_cfg, I/O interface with DMA (0x510)
    cmos.Cmos             MC146818 RTC + CMOS memory (0x70, IRQ8)
    pic.DualPic           cascaded 8259A pair (0x20, 0xA0) + ELCR (0x4D0)
    pit.Pit               8254 PIT (0x40, IRQ0) + port 0x61
    port92.Port92         system control port A (A20, fast reset)
    i8042.I8042           8042 keyboard controller + PS/2 keyboard (0x60/0x64, IRQ1/IRQ12)
    lapic.LocalApic       local APIC page (0xFEE00000, MMIO)
"""
