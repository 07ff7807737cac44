"""fw_cfg: the traditional I/O interface, the file directory and DMA."""

import io
import struct
import sys

import pytest

from machine import trace
from machine.devices import fw_cfg
from machine.devices.fw_cfg import FwCfg, e820_table
from machine.memory import GuestMemory

SEL, DATA, DMA_HI, DMA_LO = 0, 1, 4, 8


def read_item(dev, key, n):
    dev.write(SEL, 2, key)
    return bytes(dev.read(DATA, 1) for _ in range(n))


@pytest.fixture
def dev():
    return FwCfg(GuestMemory(16 << 20))


def test_signature_and_id_through_the_data_port(dev):
    assert read_item(dev, fw_cfg.SIGNATURE, 4) == b"QEMU"
    ident = struct.unpack("<I", read_item(dev, fw_cfg.ID, 4))[0]
    assert ident == fw_cfg.ID_TRADITIONAL | fw_cfg.ID_DMA
    assert read_item(dev, fw_cfg.SIGNATURE, 6) == b"QEMU\0\0"      # past the end: zeros
    assert read_item(dev, 0x1234, 2) == b"\0\0"                    # unknown key: zeros
    assert FwCfg(GuestMemory(4 << 20), dma=False).item(fw_cfg.ID) == b"\x01\0\0\0"


def test_numeric_items_are_little_endian(dev):
    dev.add_u16(fw_cfg.NB_CPUS, 1)
    dev.add_u32(fw_cfg.RAM_SIZE, 0x11223344)
    dev.add_u64(fw_cfg.KERNEL_ADDR, 0x0102030405060708)
    assert read_item(dev, fw_cfg.NB_CPUS, 2) == b"\x01\x00"
    assert read_item(dev, fw_cfg.RAM_SIZE, 4) == bytes.fromhex("44332211")
    assert read_item(dev, fw_cfg.KERNEL_ADDR, 8) == bytes.fromhex("0807060504030201")


def test_file_directory_layout_sorted_by_name(dev):
    k1 = dev.add_file("etc/e820", e820_table([(0, 0x9FC00, 1), (0x100000, 0xF00000, 1)]))
    k2 = dev.add_file("bootorder", b"/pci@i0cf8/*@2\0")
    assert (k1, k2) == (0x20, 0x21)
    directory = read_item(dev, fw_cfg.FILE_DIR, 4 + 2 * 64)
    assert struct.unpack(">I", directory[:4])[0] == 2
    entries = [struct.unpack(">IHH56s", directory[4 + 64 * i:68 + 64 * i]) for i in range(2)]
    assert [(e[3].rstrip(b"\0"), e[1], e[0]) for e in entries] == [
        (b"bootorder", 0x21, 15), (b"etc/e820", 0x20, 40)]
    assert read_item(dev, k1, 20) == struct.pack("<QQI", 0, 0x9FC00, 1)
    assert dev.add_file("etc/e820", b"x") == k1                     # replacing keeps the key
    with pytest.raises(ValueError):
        dev.add_file("n" * 56, b"")


def test_writes_through_the_data_port_are_ignored(dev):
    dev.add_bytes(0x30, b"abcd")
    dev.write(SEL, 2, 0x30)
    dev.write(DATA, 1, 0x55)
    assert read_item(dev, 0x30, 4) == b"abcd"


def test_dma_registers_read_signature(dev):
    assert dev.read(DMA_HI, 4).to_bytes(4, "little") == b"QEMU"
    assert dev.read(DMA_LO, 4).to_bytes(4, "little") == b" CFG"


def start_dma(dev, desc, byte_writes=False):
    be = struct.pack(">Q", desc)
    if byte_writes:
        for i, b in enumerate(be):
            dev.write(DMA_HI + i, 1, b)
    else:
        dev.write(DMA_HI, 4, int.from_bytes(be[:4], "little"))
        dev.write(DMA_LO, 4, int.from_bytes(be[4:], "little"))


def put_access(mem, at, control, length, address):
    mem.write(at, struct.pack(">IIQ", control, length, address))


def test_dma_select_read_and_skip():
    mem = GuestMemory(16 << 20)
    dev = FwCfg(mem)
    key = dev.add_file("etc/blob", bytes(range(100)))
    put_access(mem, 0x1000, (key << 16) | fw_cfg.DMA_SELECT | fw_cfg.DMA_READ, 10, 0x2000)
    start_dma(dev, 0x1000)
    assert mem.read_u32(0x1000) == 0                                # success: control cleared
    assert mem.read(0x2000, 10) == bytes(range(10))
    put_access(mem, 0x1000, fw_cfg.DMA_SKIP, 50, 0)
    start_dma(dev, 0x1000, byte_writes=True)
    assert mem.read_u32(0x1000) == 0
    mem.write(0x3000, b"\xAA" * 48)
    put_access(mem, 0x1000, fw_cfg.DMA_READ, 48, 0x3000)           # 40 left, then zeros
    start_dma(dev, 0x1000)
    assert mem.read(0x3000, 48) == bytes(range(60, 100)) + bytes(8)
    assert dev.read(DATA, 1) == 0                                   # offset is at the end


def test_dma_outside_ram_sets_error():
    mem = GuestMemory(16 << 20)
    dev = FwCfg(mem)
    put_access(mem, 0x1000, (fw_cfg.SIGNATURE << 16) | fw_cfg.DMA_SELECT | fw_cfg.DMA_READ, 4, 0xFEE00000)
    start_dma(dev, 0x1000)
    assert mem.read_u32(0x1000) == struct.unpack("<I", struct.pack(">I", fw_cfg.DMA_ERROR))[0]
    put_access(mem, 0x1000, fw_cfg.DMA_READ, 0xFFFFFFFF, 0x100000)  # huge zero fill past RAM
    start_dma(dev, 0x1000)
    assert mem.read(0x1000, 4) == b"\0\0\0\x01"
    start_dma(dev, 0xFFFFFFF0)                                      # descriptor itself not in RAM
    start_dma(dev, (1 << 64) - 8)


def test_dma_write_is_refused():
    mem = GuestMemory(16 << 20)
    dev = FwCfg(mem)
    put_access(mem, 0x1000, (0x20 << 16) | fw_cfg.DMA_SELECT | fw_cfg.DMA_WRITE, 4, 0x2000)
    start_dma(dev, 0x1000)
    assert mem.read(0x1000, 4) == b"\0\0\0\x01"


def test_trace_events(dev):
    seen = []
    listener = lambda name, fields: seen.append(name)  # noqa: E731
    trace.add_listener(listener)
    trace.set_output(io.StringIO())
    try:
        trace.enable("fw_cfg_*")
        read_item(dev, 0, 1)
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
        trace.remove_listener(listener)
    assert seen == ["fw_cfg_select", "fw_cfg_read"]


def test_e820_table_format():
    assert e820_table([(1, 2, 3)]) == bytes.fromhex("0100000000000000" "0200000000000000" "03000000")
