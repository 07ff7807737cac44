"""The bundled firmware zeroes a Multiboot kernel's .bss through fw_cfg DMA (the device writes
the zeros, as QEMU prepares the image on the host), not with a guest loop."""

from __future__ import annotations

from bss_kernel import EXIT_ZEROED, bss_kernel

from machine.cli import parse_args
from machine.pc import Machine

MIB = 1 << 20


def test_a_4mib_bss_is_zeroed_without_a_guest_loop(tmp_path):
    kernel = tmp_path / "bss.elf"
    kernel.write_bytes(bss_kernel(4 * MIB))
    m = Machine(parse_args(["-kernel", str(kernel), "-serial", "null",
                            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]))
    try:
        assert m.run() == (EXIT_ZEROED << 1) | 1
        # A byte loop over 4 MiB would retire at least 4 M instructions (a rep stosb iteration
        # counts as one).
        assert m.instructions < 500_000
    finally:
        m.close()
