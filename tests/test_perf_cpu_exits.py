"""The CPU's exits registered directly with libunicorn (machine/unicorn_internals.py lean hooks):
every width of port and MMIO access reaches the device with its value and returns the device's
answer, RDTSC and CPUID answer from the CPU layer, and a device that raises stops the run with
its exception instead of the guest carrying on with a made-up value."""

import pytest

from asm import PM32_PROLOGUE, build_machine, result

MMIO_BASE = 0xE0000000


class Recorder:
    """Device ops answering base + offset + size, recording every access."""

    def __init__(self, base: int):
        self.base = base
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return (self.base + offset + size) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


class Broken:
    def read(self, offset, size):
        raise RuntimeError("device bug on read")

    def write(self, offset, size, value):
        raise RuntimeError("device bug on write")


EXITS_PROGRAM = f"""
main:
    mov $0x10, %dx
    inb %dx, %al
    movzbl %al, %eax
    mov %eax, RESULTS
    inw %dx, %ax
    movzwl %ax, %eax
    mov %eax, RESULTS + 4
    inl %dx, %eax
    mov %eax, RESULTS + 8
    mov $0x11223344, %eax
    out %al, %dx
    out %ax, %dx
    out %eax, %dx
    movzbl {MMIO_BASE + 8:#x}, %eax
    mov %eax, RESULTS + 12
    movzwl {MMIO_BASE + 8:#x}, %eax
    mov %eax, RESULTS + 16
    mov {MMIO_BASE + 8:#x}, %eax
    mov %eax, RESULTS + 20
    movb $0xab, {MMIO_BASE + 4:#x}
    movw $0xabcd, {MMIO_BASE + 4:#x}
    movl $0xdeadbeef, {MMIO_BASE + 4:#x}
    mov $0x40000000, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, RESULTS + 24
    rdtsc
    mov %eax, RESULTS + 28
    rdtsc
    mov %eax, RESULTS + 32
    EXIT 0
"""


def test_port_mmio_cpuid_rdtsc_exits_carry_their_values(tmp_path):
    m = build_machine(tmp_path, EXITS_PROGRAM, prologue=PM32_PROLOGUE)
    port = Recorder(0x1000)
    mmio = Recorder(0x7000_0000)
    m.io.add("probe-port", 0x10, 4, port)
    m.memory_map.add("probe-mmio", MMIO_BASE, 0x1000, mmio)
    assert m.run() == 1
    assert [result(m, i) for i in range(3)] == [0x1001 & 0xFF, 0x1002, 0x1004]
    assert port.log == [("r", 0, 1), ("r", 0, 2), ("r", 0, 4),
                        ("w", 0, 1, 0x44), ("w", 0, 2, 0x3344), ("w", 0, 4, 0x11223344)]
    assert [result(m, i) for i in (3, 4, 5)] == [(0x7000_0000 + 9) & 0xFF, (0x7000_0000 + 10) & 0xFFFF,
                                                 0x7000_0000 + 12]
    assert [a for a in mmio.log if a[0] == "w"] == [("w", 4, 1, 0xAB), ("w", 4, 2, 0xABCD),
                                                    ("w", 4, 4, 0xDEADBEEF)]
    assert result(m, 6).to_bytes(4, "little") == b"PyPC"      # hypervisor leaf, EBX
    # Virtual time: consecutive RDTSCs are two instructions (1 ns each) apart.
    assert result(m, 8) - result(m, 7) == 2


@pytest.mark.parametrize("insn", ["inb %dx, %al", "out %al, %dx",
                                  f"mov {MMIO_BASE:#x}, %eax", f"movl $1, {MMIO_BASE:#x}"])
def test_a_device_exception_stops_the_run_and_surfaces(tmp_path, insn):
    m = build_machine(tmp_path, f"""
    main:
        mov $0x10, %dx
        {insn}
        OUTB 0x77
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    m.io.add("broken-port", 0x10, 1, Broken())
    m.memory_map.add("broken-mmio", MMIO_BASE, 0x1000, Broken())
    with pytest.raises(RuntimeError, match="device bug"):
        m.run()
    assert bytes(m.recorder.data) == b""          # nothing after the failing access ran
