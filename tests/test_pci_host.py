"""Configuration mechanism #1 at 0xCF8/0xCFC, the i440FX and PIIX3 chipset functions, and the
reset control register at 0xCF9, all driven through an IoSpace as a guest would."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machine.irq import IrqLine
from machine.memory import IoSpace, MemoryMap
from machine.pci import I440fx, PciBus, PciConfigIo, Piix3


class Board:
    def __init__(self):
        self.io = IoSpace()
        self.bus = PciBus(MemoryMap(), self.io)
        self.resets = 0
        self.cfg = PciConfigIo(self.bus, on_reset=self._reset)
        self.io.add("pci-conf", PciConfigIo.BASE, PciConfigIo.SIZE, self.cfg)
        self.pam_changes = []
        self.host = I440fx(on_pam_change=lambda off, val: self.pam_changes.append((off, val)))
        self.pic = [IrqLine(f"irq{i}") for i in range(16)]
        self.isa = Piix3(lambda n: self.pic[n])
        self.bus.plug(self.host, 0)
        self.bus.plug(self.isa, 1)

    def _reset(self):
        self.resets += 1

    def addr(self, bus, dev, fn, reg):
        return 0x80000000 | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC)

    def rd(self, dev, fn, reg, size=4, bus=0):
        self.io.write(0xCF8, 4, self.addr(bus, dev, fn, reg))
        return self.io.read(0xCFC + (reg & 3), size)

    def wr(self, dev, fn, reg, size, value, bus=0):
        self.io.write(0xCF8, 4, self.addr(bus, dev, fn, reg))
        self.io.write(0xCFC + (reg & 3), size, value)


@pytest.fixture
def b():
    return Board()


def test_config_address_register(b):
    b.io.write(0xCF8, 4, 0x80000000)
    assert b.io.read(0xCF8, 4) == 0x80000000          # SeaBIOS's host-bridge probe
    b.io.write(0xCF8, 4, 0xFFFFFFFF)
    assert b.io.read(0xCF8, 4) == 0x80FFFFFC          # reserved bits 30:24 and 1:0 read 0


def test_narrow_accesses_to_cf8_do_not_touch_config_address(b):
    b.io.write(0xCF8, 4, 0x80000800)
    b.io.write(0xCF8, 1, 0x00)
    b.io.write(0xCFA, 2, 0x1234)
    assert b.io.read(0xCF8, 4) == 0x80000800
    assert b.io.read(0xCF8, 2) == 0xFFFF and b.io.read(0xCFB, 1) == 0xFF


def test_chipset_identity(b):
    assert b.rd(0, 0, 0x00) == 0x12378086
    assert b.rd(0, 0, 0x08) == 0x06000002
    assert b.rd(0, 0, 0x2C) == 0x11001AF4
    assert b.rd(1, 0, 0x00) == 0x70008086
    assert b.rd(1, 0, 0x08) >> 8 == 0x060100
    assert b.rd(1, 0, 0x0E, 1) == 0x80                 # multifunction
    assert b.rd(0, 0, 0x0E, 1) == 0x00
    # Host bridge registers firmware sizes: no BARs, no ROM.
    for reg in range(0x10, 0x28, 4):
        b.wr(0, 0, reg, 4, 0xFFFFFFFF)
        assert b.rd(0, 0, reg) == 0
    b.wr(0, 0, 0x30, 4, 0xFFFFF800)
    assert b.rd(0, 0, 0x30) == 0


def test_byte_word_dword_data_widths(b):
    ident = b.rd(1, 0, 0x00)
    assert b.rd(1, 0, 0x00, 1) == ident & 0xFF
    assert b.rd(1, 0, 0x01, 1) == (ident >> 8) & 0xFF
    assert b.rd(1, 0, 0x02, 2) == ident >> 16
    assert b.rd(1, 0, 0x03, 1) == ident >> 24
    b.wr(1, 0, 0x3C, 1, 0x0B)
    assert b.rd(1, 0, 0x3C, 4) & 0xFF == 0x0B


@pytest.mark.parametrize("size,expect", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_absent_functions_and_buses_read_all_ones(b, size, expect):
    assert b.rd(2, 0, 0x00, size) == expect            # empty slot
    assert b.rd(0, 3, 0x00, size) == expect            # absent function of a present device
    assert b.rd(31, 7, 0xFC, size) == expect
    assert b.rd(0, 0, 0x00, size, bus=1) == expect     # no bus 1
    b.wr(2, 0, 0x04, size, 0)                          # writes to nothing vanish


def test_config_data_with_enable_clear(b):
    b.io.write(0xCF8, 4, 0x00000000)                   # bus 0 dev 0 fn 0 reg 0, but disabled
    assert b.io.read(0xCFC, 4) == 0xFFFFFFFF
    assert b.io.read(0xCFE, 2) == 0xFFFF
    b.io.write(0xCFC, 1, 0x3C)                         # ignored
    b.io.write(0xCF8, 4, 0x0000003C)
    b.io.write(0xCFC, 1, 0x55)
    assert b.rd(0, 0, 0x3C, 1) == 0


def test_pam_and_smram_are_stored(b):
    assert b.rd(0, 0, 0x59, 1) == 0                    # BIOS area starts as "ROM"
    # SeaBIOS make_bios_writable: dword read-modify-write at 0x58 and 0x5C.
    b.wr(0, 0, 0x58, 4, 0x33333330 | b.rd(0, 0, 0x58) & 0xFF)
    b.wr(0, 0, 0x5C, 4, 0x33333333)
    assert b.rd(0, 0, 0x59, 1) == 0x30
    assert b.rd(0, 0, 0x58) >> 8 == 0x333330
    assert b.rd(0, 0, 0x5C) == 0x33333333
    assert (0x59, 0x30) in b.pam_changes and (0x5F, 0x33) in b.pam_changes
    b.pam_changes.clear()
    b.wr(0, 0, 0x59, 1, 0xFF)                          # reserved bits stay 0; no change -> no call
    assert b.rd(0, 0, 0x59, 1) == 0x30 and b.pam_changes == []
    b.wr(0, 0, 0x59, 1, 0x10)
    assert b.pam_changes == [(0x59, 0x10)]


def test_smram_lock(b):
    assert b.rd(0, 0, 0x72, 1) == 0x02
    b.wr(0, 0, 0x72, 1, 0x4A)                          # D_OPEN | G_SMRAME
    assert b.rd(0, 0, 0x72, 1) == 0x4A
    b.wr(0, 0, 0x72, 1, 0x5A)                          # + D_LCK: D_OPEN drops, controls freeze
    assert b.rd(0, 0, 0x72, 1) == 0x1A
    b.wr(0, 0, 0x72, 1, 0x42)
    assert b.rd(0, 0, 0x72, 1) == 0x1A
    b.host.reset()
    assert b.rd(0, 0, 0x72, 1) == 0x02
    b.wr(0, 0, 0x72, 1, 0x48)
    assert b.rd(0, 0, 0x72, 1) == 0x4A


def test_host_reset_restores_pam(b):
    b.wr(0, 0, 0x59, 1, 0x30)
    b.pam_changes.clear()
    b.host.reset()
    assert b.rd(0, 0, 0x59, 1) == 0 and b.pam_changes == [(0x59, 0)]


def test_pirq_route_registers(b):
    assert b.rd(1, 0, 0x60) == 0x80808080              # reset: routing disabled
    b.wr(1, 0, 0x60, 4, 0x0B0B0A0A)                    # SeaBIOS's routing
    assert b.rd(1, 0, 0x60) == 0x0B0B0A0A
    b.wr(1, 0, 0x61, 1, 0xFF)                          # bits 6:4 reserved
    assert b.rd(1, 0, 0x61, 1) == 0x8F
    b.isa.reset()
    assert b.rd(1, 0, 0x60) == 0x80808080


def test_cf9_reset_control(b):
    assert b.io.read(0xCF9, 1) == 0
    b.io.write(0xCF9, 1, 0x02)                         # choose hard reset, nothing happens yet
    assert b.resets == 0 and b.io.read(0xCF9, 1) == 0x02
    b.io.write(0xCF9, 1, 0x06)                         # bit 2 with bit 1: full reset
    assert b.resets == 1
    b.io.write(0xCF9, 1, 0x04)                         # soft reset: also resets the machine
    assert b.resets == 2
    b.io.write(0xCF9, 2, 0x0606)                       # not a byte access: not the RCR
    assert b.resets == 2
    # The RCR byte does not disturb CONFIG_ADDRESS.
    b.io.write(0xCF8, 4, 0x80000800)
    b.io.write(0xCF9, 1, 0x02)
    assert b.io.read(0xCF8, 4) == 0x80000800
    b.cfg.reset()
    assert b.io.read(0xCF8, 4) == 0 and b.io.read(0xCF9, 1) == 0


def test_cf9_without_handler_is_harmless():
    io = IoSpace()
    cfg = PciConfigIo(PciBus(MemoryMap(), io))
    io.add("pci-conf", PciConfigIo.BASE, PciConfigIo.SIZE, cfg)
    io.write(0xCF9, 1, 0x06)


def test_enumeration_like_seabios(b):
    """Walk bus 0 as firmware does: vendor word of function 0, header type for functions 1-7."""
    found = []
    for dev in range(32):
        if b.rd(dev, 0, 0x00, 2) in (0x0000, 0xFFFF):
            continue
        nfn = 8 if b.rd(dev, 0, 0x0E, 1) & 0x80 else 1
        for fn in range(nfn):
            if b.rd(dev, fn, 0x00, 2) not in (0x0000, 0xFFFF):
                found.append((dev, fn, b.rd(dev, fn, 0x0A, 2)))
    assert found == [(0, 0, 0x0600), (1, 0, 0x0601)]


def test_plug_refuses_conflicts(b):
    with pytest.raises(ValueError):
        b.bus.plug(I440fx(), 0)
    with pytest.raises(ValueError):
        b.bus.plug(I440fx(), 32)
    assert b.bus.device(1) is b.isa and b.bus.device(1, 1) is None
    assert b.bus.devices[0x08] is b.isa


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0xCF8, 0xCFF), st.sampled_from([1, 2, 4]),
                          st.one_of(st.integers(0, 0xFFFFFFFF),
                                    st.sampled_from([0x80000000, 0x80000800, 0x80000060, 0x80000058, 0x06]))),
                max_size=60))
def test_random_port_traffic_never_raises(ops):
    b = Board()
    for is_write, port, size, value in ops:
        if is_write:
            b.io.write(port, size, value)
        else:
            assert 0 <= b.io.read(port, size) <= (1 << (8 * size)) - 1
    # The chipset's identity survives anything the guest does.
    assert b.rd(0, 0, 0x00) == 0x12378086 and b.rd(1, 0, 0x00) == 0x70008086
    assert b.rd(1, 0, 0x60) & 0x70707070 == 0
