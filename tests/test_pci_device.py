"""PciDevice: type 0 header semantics, BAR sizing and mapping, capabilities, INTx, reset.

Every access goes through the real config mechanism (ports 0xCF8/0xCFC in an IoSpace) unless the
test is about the device's own API.
"""

import io
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machine import trace
from machine.memory import GuestMemory, IoSpace, MemoryMap
from machine.pci import PciBus, PciConfigIo, PciDevice

SLOT = 3


class Ops:
    """BAR ops that record what they see (offsets must arrive relative to the BAR base)."""

    def __init__(self, tag):
        self.tag, self.log = tag, []

    def read(self, off, size):
        self.log.append(("r", off, size))
        return self.tag

    def write(self, off, size, value):
        self.log.append(("w", off, size, value))


class Machine:
    def __init__(self, pin=1):
        self.io = IoSpace()
        self.mem = MemoryMap(GuestMemory(16 << 20))
        self.bus = PciBus(self.mem, self.io)
        self.cfg = PciConfigIo(self.bus)
        self.io.add("pci-conf", PciConfigIo.BASE, PciConfigIo.SIZE, self.cfg)
        self.dev = PciDevice("testdev", 0x1AF4, 0x1042, 0x010000, revision=1,
                             subsystem_vendor_id=0x1AF4, subsystem_id=0x1100, interrupt_pin=pin)
        self.io_ops, self.m32_ops, self.m64_ops = Ops(0x11), Ops(0x22), Ops(0x33)
        self.dev.add_io_bar(0, 0x40, self.io_ops)
        self.dev.add_mem_bar(1, 0x1000, self.m32_ops)
        self.dev.add_mem_bar(4, 0x4000, self.m64_ops, is64=True, prefetchable=True)
        self.bus.plug(self.dev, SLOT)

    def select(self, reg, devfn=SLOT << 3, bus=0):
        self.io.write(0xCF8, 4, 0x80000000 | bus << 16 | devfn << 8 | (reg & 0xFC))

    def rd(self, reg, size=4, devfn=SLOT << 3):
        self.select(reg, devfn)
        return self.io.read(0xCFC + (reg & 3), size)

    def wr(self, reg, size, value, devfn=SLOT << 3):
        self.select(reg, devfn)
        self.io.write(0xCFC + (reg & 3), size, value)


@pytest.fixture
def m():
    return Machine()


def test_identity_and_header_fields(m):
    assert m.rd(0x00) == 0x10421AF4
    assert m.rd(0x08) == 0x01000001           # class 01/00/00, revision 1
    assert m.rd(0x2C) == 0x11001AF4
    assert m.rd(0x3D, 1) == 1
    assert m.rd(0x0E, 1) == 0
    assert m.rd(0x30) == 0                    # no expansion ROM
    m.wr(0x30, 4, 0xFFFFF800)
    assert m.rd(0x30) == 0


def test_read_only_fields_ignore_writes(m):
    before = [m.rd(off) for off in (0x00, 0x08, 0x0C, 0x2C, 0x34, 0x3C)]
    for off in (0x00, 0x08, 0x2C):
        m.wr(off, 4, 0xDEADBEEF)
    m.wr(0x0E, 1, 0x80)                       # header type
    m.wr(0x3D, 1, 4)                          # interrupt pin
    m.wr(0x34, 1, 0x80)                       # capability pointer
    assert m.rd(0x00) == before[0] and m.rd(0x08) == before[1] and m.rd(0x2C) == before[3]
    assert m.rd(0x0E, 1) == 0 and m.rd(0x3D, 1) == 1 and m.rd(0x34, 1) == before[4]


def test_interrupt_line_is_read_write(m):
    m.wr(0x3C, 1, 10)
    assert m.rd(0x3C, 1) == 10 and m.rd(0x3C, 2) == 0x010A


def test_command_register_keeps_only_implemented_bits(m):
    m.wr(0x04, 2, 0xFFFF)
    assert m.rd(0x04, 2) == 0x0547
    m.wr(0x04, 2, 0)
    assert m.rd(0x04, 2) == 0


def test_status_error_bits_are_write_one_to_clear(m):
    m.dev.config[0x07] |= 0xF9                # hardware sets every error bit
    assert m.rd(0x06, 2) & 0xF900 == 0xF900
    m.wr(0x06, 2, 0x2000)                     # clear only "received master abort"
    assert m.rd(0x06, 2) & 0xF900 == 0xD900
    m.wr(0x06, 2, 0x0000)                     # writing 0 changes nothing
    assert m.rd(0x06, 2) & 0xF900 == 0xD900
    m.wr(0x04, 4, 0xFFFF0000)                 # dword write: command 0, status all ones
    assert m.rd(0x06, 2) & 0xF900 == 0


def test_byte_word_dword_accesses_agree(m):
    m.wr(0x3C, 1, 0x5A)
    dword = m.rd(0x3C)
    assert [m.rd(0x3C + i, 1) for i in range(4)] == [(dword >> (8 * i)) & 0xFF for i in range(4)]
    assert m.rd(0x3E, 2) == dword >> 16
    ident = m.rd(0x00)
    assert m.rd(0x01, 2) == (ident >> 8) & 0xFFFF    # unaligned word inside the dword
    assert m.rd(0x03, 1) == ident >> 24


def test_access_running_past_cfff_only_touches_config_data(m):
    ident = m.rd(0x00)
    m.select(0x00)
    # A word at 0xCFF: the low byte is register 3, the high byte is port 0xD00 (nobody there).
    assert m.io.read(0xCFF, 2) == 0xFF00 | (ident >> 24)
    assert m.io.read(0xCFD, 4) == 0xFF000000 | (ident >> 8)


def test_io_bar_sizing(m):
    m.wr(0x10, 4, 0xFFFFFFFF)
    assert m.rd(0x10) == 0xFFFFFFC1           # 64 ports, I/O type bit
    size = ((~(m.rd(0x10) & ~3)) + 1) & 0xFFFFFFFF
    assert size == 0x40
    m.wr(0x10, 4, 0xC000)
    assert m.rd(0x10) == 0xC001


def test_mem32_bar_sizing(m):
    m.wr(0x14, 4, 0xFFFFFFFF)
    assert m.rd(0x14) == 0xFFFFF000
    m.wr(0x14, 4, 0xFEBFF123)
    assert m.rd(0x14) == 0xFEBFF000


def test_mem64_prefetchable_bar_sizing_both_dwords(m):
    m.wr(0x20, 4, 0xFFFFFFFF)
    assert m.rd(0x20) == 0xFFFFC00C           # 16 KiB, 64-bit, prefetchable
    m.wr(0x24, 4, 0xFFFFFFFF)
    assert m.rd(0x24) == 0xFFFFFFFF           # high dword: a plain RW register
    m.wr(0x24, 4, 0x00000001)
    assert m.rd(0x24) == 1


def test_unimplemented_bars_read_zero(m):
    for off in (0x18, 0x1C):
        m.wr(off, 4, 0xFFFFFFFF)
        assert m.rd(off) == 0


def test_bar_mapping_follows_command_and_bar_values(m):
    m.wr(0x10, 4, 0xC000)
    m.wr(0x14, 4, 0xFEBFF000)
    m.wr(0x20, 4, 0xFEBF8000)
    m.wr(0x24, 4, 0)
    # Decoding off: nothing mapped yet.
    assert m.io.lookup(0xC000).name == "unclaimed"
    assert m.mem.find(0xFEBFF000) is None
    assert m.dev.bar_address(0) is None

    m.wr(0x04, 2, 0x0001)                     # I/O only
    assert m.io.read(0xC010, 1) == 0x11 and m.io_ops.log[-1] == ("r", 0x10, 1)
    assert m.mem.find(0xFEBFF000) is None
    assert m.dev.bar_address(0) == 0xC000

    m.wr(0x04, 2, 0x0003)                     # + memory
    assert m.mem.read(0xFEBFF008, 4) == 0x22 and m.m32_ops.log[-1] == ("r", 8, 4)
    assert m.mem.read(0xFEBF8100, 2) == 0x33 and m.m64_ops.log[-1] == ("r", 0x100, 2)
    assert m.dev.bar_address(4) == 0xFEBF8000 and m.dev.bar_address(5) is None

    m.wr(0x14, 4, 0xFEA00000)                 # move BAR1 while decoding
    assert m.mem.find(0xFEBFF000) is None
    assert m.mem.find(0xFEA00000).ops is m.m32_ops

    m.wr(0x24, 4, 0x1)                        # move BAR4 above 4 GiB via the high dword
    assert m.mem.find(0xFEBF8000) is None
    assert m.mem.find(0x1FEBF8000).ops is m.m64_ops
    assert m.dev.bar_address(4) == 0x1FEBF8000

    m.wr(0x04, 2, 0x0000)
    assert m.io.lookup(0xC000).name == "unclaimed"
    assert m.mem.find(0xFEA00000) is None and m.mem.find(0x1FEBF8000) is None
    assert all(m.dev.bar_address(i) is None for i in range(6))


def test_sizing_with_decoding_on_unmaps_then_restores(m):
    m.wr(0x14, 4, 0xFEBFF000)
    m.wr(0x04, 2, 0x0003)
    assert m.mem.find(0xFEBFF000) is not None
    m.wr(0x14, 4, 0xFFFFFFFF)                 # sizing: the all-ones value is not an address
    assert m.mem.find(0xFEBFF000) is None and m.dev.bar_address(1) is None
    assert not any(r.ops is m.m32_ops for r in m.mem.regions)
    m.wr(0x14, 4, 0xFEBFF000)
    assert m.mem.find(0xFEBFF000).ops is m.m32_ops


def test_unassigned_and_out_of_range_bars_do_not_decode(m):
    m.wr(0x04, 2, 0x0003)
    assert m.dev.bar_address(0) is None       # address 0 = unassigned
    m.wr(0x10, 4, 0x00010000)                 # I/O BAR beyond 0xFFFF
    assert m.dev.bar_address(0) is None
    assert not any(r.ops is m.io_ops for r in m.io.ranges)
    m.wr(0x10, 4, 0xFFC0)                     # the last 64 ports fit
    assert m.io.lookup(0xFFFF).ops is m.io_ops


def test_io_bar_over_config_ports_does_not_decode(m):
    m.wr(0x04, 2, 0x0001)
    m.wr(0x10, 4, 0x0CC0)                     # 0xCC0..0xCFF covers CONFIG_ADDRESS/DATA
    assert m.dev.bar_address(0) is None
    assert m.rd(0x00) == 0x10421AF4           # config access still works
    m.wr(0x10, 4, 0x0D00)
    assert m.io.lookup(0xD00).ops is m.io_ops


def test_mem_bar_overlapping_ram_stays_dead(m):
    m.wr(0x14, 4, 0x00200000)                 # inside the 16 MiB of RAM
    m.wr(0x04, 2, 0x0002)
    assert m.mem.find(0x00200000) is None     # MemoryMap refuses to activate it
    m.wr(0x14, 4, 0xFEBFF000)
    assert m.mem.find(0xFEBFF000).ops is m.m32_ops
    assert sum(r.ops is m.m32_ops for r in m.mem.regions) == 1


def test_capability_list_walk():
    dev = PciDevice("caps", 0x1AF4, 0x1042, 0x010000)
    assert dev.config_read(0x06, 2) & 0x10 == 0 and dev.config_read(0x34, 1) == 0
    a = dev.add_capability(0x09, bytes([16, 1, 0]) + bytes(13))   # 18 bytes total
    b = dev.add_capability(0x11, bytes(10))
    c = dev.add_capability(0x09, b"\x05")
    assert dev.config_read(0x06, 2) & 0x10
    walked, ptr, seen = [], dev.config_read(0x34, 1), set()
    while ptr:
        assert ptr >= 0x40 and ptr % 4 == 0 and ptr not in seen
        seen.add(ptr)
        walked.append((ptr, dev.config_read(ptr, 1)))
        ptr = dev.config_read(ptr + 1, 1)
    assert a < b < c                          # laid out in the order added ...
    assert walked == [(c, 0x09), (b, 0x11), (a, 0x09)]     # ... and linked newest first, as QEMU
    assert dev.config_read(a + 2, 1) == 16
    dev.config_write(a, 4, 0xFFFFFFFF)        # capability bytes are read-only by default
    assert dev.config_read(a, 1) == 0x09 and dev.config_read(a + 1, 1) == 0
    dev.set_writable(a + 4, 1)
    dev.config_write(a + 4, 1, 0x77)
    assert dev.config_read(a + 4, 1) == 0x77


def test_capability_overflow_is_refused():
    dev = PciDevice("caps", 1, 2, 0)
    dev.add_capability(0x09, bytes(150))
    with pytest.raises(ValueError):
        dev.add_capability(0x09, bytes(100))


def test_bad_bar_definitions_are_refused():
    dev = PciDevice("bad", 1, 2, 0)
    with pytest.raises(ValueError):
        dev.add_mem_bar(0, 0x800, Ops(0))
    with pytest.raises(ValueError):
        dev.add_io_bar(0, 0x30, Ops(0))
    dev.add_mem_bar(4, 0x1000, Ops(0), is64=True)
    with pytest.raises(ValueError):
        dev.add_io_bar(5, 0x10, Ops(0))      # high half of BAR4
    with pytest.raises(ValueError):
        dev.add_mem_bar(5, 0x1000, Ops(0), is64=True)


def test_intx_level_status_bit_and_disable():
    m = Machine()
    seen = []
    m.bus.set_intx_router(lambda devfn, pin, level: seen.append((devfn, pin, level)))
    m.dev.set_irq(True)
    assert seen == [(SLOT << 3, 1, True)]
    assert m.rd(0x06, 2) & 0x08
    m.wr(0x04, 2, 0x0400)                     # INTx disable: pin drops, status still shows it
    assert seen[-1] == (SLOT << 3, 1, False)
    assert m.rd(0x06, 2) & 0x08
    m.wr(0x04, 2, 0x0000)
    assert seen[-1] == (SLOT << 3, 1, True)
    m.dev.set_irq(False)
    assert seen[-1] == (SLOT << 3, 1, False) and not m.rd(0x06, 2) & 0x08
    m.wr(0x06, 2, 0x0008)                     # interrupt status is read-only
    assert not m.rd(0x06, 2) & 0x08


def test_router_connected_late_sees_asserted_pins():
    m = Machine()
    m.dev.set_irq(True)
    seen = []
    m.bus.set_intx_router(lambda devfn, pin, level: seen.append((devfn, pin, level)))
    assert seen == [(SLOT << 3, 1, True)]


def test_device_without_pin_has_no_intx():
    m = Machine(pin=0)
    m.dev.set_irq(True)                       # no line: only the status bit
    assert m.dev.intx is None and m.rd(0x06, 2) & 0x08


def test_bus_master_property(m):
    assert not m.dev.bus_master
    m.wr(0x04, 2, 0x0004)
    assert m.dev.bus_master


def test_reset_restores_power_on_state(m):
    m.wr(0x10, 4, 0xC000)
    m.wr(0x14, 4, 0xFEBFF000)
    m.wr(0x3C, 1, 11)
    m.wr(0x04, 2, 0x0107)
    m.dev.config[0x07] |= 0x20
    m.dev.set_irq(True)
    m.dev.reset()
    assert m.rd(0x04, 2) == 0 and m.rd(0x06, 2) == 0 and m.rd(0x3C, 1) == 0
    assert m.rd(0x10) == 0x1 and m.rd(0x14) == 0 and m.rd(0x20) == 0xC
    assert m.rd(0x00) == 0x10421AF4
    assert m.io.lookup(0xC000).name == "unclaimed" and m.mem.find(0xFEBFF000) is None
    assert not m.dev.intx.level


def test_out_of_range_and_odd_size_accesses_never_raise():
    dev = PciDevice("odd", 1, 2, 0)
    assert dev.config_read(0xFF, 2) == 0xFFFF
    assert dev.config_read(0x100, 1) == 0xFF
    assert dev.config_read(0x10, 3) == 0xFFFFFFFF
    dev.config_write(0xFE, 4, 0xFFFFFFFF)
    dev.config_write(-1, 1, 0)
    dev.config_write(0x3C, 8, 0xFF)
    assert dev.config_read(0x3C, 1) == 0


def test_trace_events_fire(m):
    got = []

    def listener(name, fields):
        got.append(name)

    trace.enable("pci_*")
    trace.set_output(io.StringIO())
    trace.add_listener(listener)
    try:
        m.wr(0x10, 4, 0xC000)
        m.wr(0x04, 2, 1)
        m.rd(0x00)
        m.wr(0x04, 2, 0)
    finally:
        trace.remove_listener(listener)
        trace.set_output(sys.stderr)
    assert {"pci_cfg_write", "pci_cfg_read", "pci_update_mappings_add", "pci_update_mappings_del"} <= set(got)


# ----------------------------------------------------------------------------------------------
# Random config writes: no exception, and the spaces always agree with the BAR registers.
# ----------------------------------------------------------------------------------------------

def _check_consistent(m):
    dev = m.dev
    cmd = dev.config_read(0x04, 2)
    for idx, ops in ((0, m.io_ops), (1, m.m32_ops), (4, m.m64_ops)):
        bar = dev.bars[idx]
        addr = dev.bar_address(idx)
        lo = dev.config_read(0x10 + 4 * idx, 4)
        in_io = [r for r in m.io.ranges if r.ops is ops]
        in_mem = [r for r in m.mem.regions if r.ops is ops]
        if bar.is_io:
            expect = lo & ~3 & 0xFFFFFFFF
            ok = (cmd & 1 and expect and expect + bar.size <= 0x10000
                  and not (expect < 0xD00 and 0xCF8 < expect + bar.size))
            assert in_mem == []
            if ok:
                assert addr == expect and len(in_io) == 1 and in_io[0].base == expect
                assert m.io.lookup(expect).ops is ops
            else:
                assert addr is None and in_io == []
        else:
            expect = lo & ~0xF
            if bar.is64:
                expect |= dev.config_read(0x10 + 4 * idx + 4, 4) << 32
            assert in_io == []
            if addr is None:
                assert in_mem == []
            else:
                assert cmd & 2 and addr == expect and len(in_mem) == 1 and in_mem[0].base == expect
                if in_mem[0].active:
                    assert m.mem.find(expect) is in_mem[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.sampled_from([0x04, 0x05, 0x10, 0x11, 0x14, 0x16, 0x20, 0x24, 0x26]),
                                   st.integers(0, 0x10F)),
                         st.sampled_from([1, 2, 4, 4, 4, 3, 8]),
                          st.one_of(st.integers(0, 0xFFFFFFFF),
                                    st.sampled_from([0xFFFFFFFF, 0, 3, 0x0103, 0xC000, 0xFEBFF000, 0xFEBF8000, 0x10000, 1, 0x00200000]))),
                max_size=40))
def test_random_config_writes_keep_bars_consistent(writes):
    m = Machine()
    for offset, size, value in writes:
        m.dev.config_write(offset, size, value)
        if offset < 0x100 and size in (1, 2, 4) and (offset & 3) + size <= 4:
            m.wr(offset, size, value)        # and the same through the ports
        _check_consistent(m)
    # Identity never changes.
    assert m.rd(0x00) == 0x10421AF4 and m.rd(0x08) == 0x01000001
