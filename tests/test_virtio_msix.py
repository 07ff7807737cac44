"""MSI-X on virtio-pci, as QEMU 7.2 lays it out and behaves (measured with qtest): the
capability and BAR 1, the vector registers of both interfaces, masks and pending bits, the legacy
header growing to 24 bytes, INTx while MSI-X is off, and what hostile table programming does."""

import pytest

from virtio_driver import (ACK, DRIVER, DRIVER_OK, FEATURES_OK, S_OK, T_IN, Bench, BlkRequests, benches)
from machine.config import ConfigError
from machine.pci.msix import bar_layout

NO_VECTOR = 0xFFFF
CAP = 0x98
APIC = 0xFEE00000


class Sink:
    """A stand-in for the board's MSI sink: records (address, data)."""

    def __init__(self):
        self.sent: list[tuple[int, int]] = []

    def send(self, address, data):
        self.sent.append((address, data))
        return True


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def msix_bench(make, **kw):
    b = make(**kw)
    b.sink = Sink()
    if b.dev.msix is not None:
        b.dev.msix.send = b.sink.send
    return b


def cfg(dev, off, size):
    return dev.config_read(off, size)


def table(b):
    return b.dev.bars[1].ops


def program(b, vector, address, data, masked=False):
    t = table(b)
    t.write(16 * vector, 4, address & 0xFFFFFFFF)
    t.write(16 * vector + 4, 4, address >> 32)
    t.write(16 * vector + 8, 4, data)
    t.write(16 * vector + 12, 4, int(masked))


def enable(b, on=True, function_mask=False):
    b.dev.config_write(CAP + 2, 2, (0x8000 if on else 0) | (0x4000 if function_mask else 0))


def start_msix(b, *, config_vector=0, queue_vector=1):
    """The Linux order: map vectors, then enable MSI-X, then bring the device up."""
    b.dev.config_write(0x04, 2, 0x0007)
    for v in range(b.dev.msix.nvectors):
        program(b, v, APIC, 0x40 + v)
    enable(b)
    b.drv.set_status(0)
    b.drv.common_write(0x10, 2, config_vector)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x1A, 2, queue_vector)
    b.start()
    # start() resets the device (vector mappings with it): map again, as a driver does after reset
    b.drv.common_write(0x10, 2, config_vector)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x1A, 2, queue_vector)
    return b


# -- layout ---------------------------------------------------------------------------------------

def test_capability_and_bar1_as_qemu(make):
    """QEMU 7.2, num-queues=2: cap @0x98 = 0x00028411 (3 vectors, next 0x84), table BIR 1 @0,
    PBA BIR 1 @0x800, BAR1 4 KiB 32-bit non-prefetchable memory."""
    b = make(props={"num-queues": "2"})
    d = b.dev
    assert cfg(d, 0x34, 1) == CAP
    assert [cfg(d, CAP + 4 * i, 4) for i in range(3)] == [0x00028411, 0x1, 0x801]
    d.config_write(0x14, 4, 0xFFFFFFFF)
    assert cfg(d, 0x14, 4) == 0xFFFFF000
    d.config_write(0x10, 4, 0xFFFFFFFF)
    assert cfg(d, 0x10, 4) == 0xFFFFFF81          # legacy BAR0: 128 bytes, as QEMU


def test_default_vectors_is_num_queues_plus_one_and_zero_means_none(make):
    assert make(props={"num-queues": "4"}).dev.msix.nvectors == 5
    assert make().dev.msix.nvectors == 2
    b = make(props={"vectors": "0"})
    assert b.dev.msix is None and b.dev.bars[1] is None


@pytest.mark.parametrize("nvectors,size,pba", [(2, 4096, 0x800), (128, 4096, 0x800), (129, 4096, 0x810), (300, 8192, 0x12C0),
                                               (2048, 65536, 0x8000)])
def test_bar_layout_as_qemu(nvectors, size, pba):
    """Measured on QEMU 7.2 with vectors=129, 300 and 2048."""
    assert bar_layout(nvectors) == (size, pba)


@pytest.mark.parametrize("value", ["-1", "2049", "many"])
def test_bad_vectors_property_is_one_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match="vectors"):
        Bench(tmp_path, props={"vectors": value})


def test_message_control_only_enable_and_function_mask_are_writable(make):
    b = make()
    b.dev.config_write(CAP + 2, 2, 0xFFFF)
    assert cfg(b.dev, CAP + 2, 2) == 0xC001
    b.dev.reset()
    assert cfg(b.dev, CAP + 2, 2) == 0x0001


def test_table_starts_masked_and_takes_only_dword_accesses(make):
    """QEMU: entries read 0,0,0,1; byte and word accesses read 0 and are ignored; every bit
    written to vector control reads back."""
    b = make()
    t = table(b)
    assert [t.read(4 * i, 4) for i in range(4)] == [0, 0, 0, 1]
    t.write(0, 1, 0x12)
    t.write(0, 2, 0x3456)
    t.write(2, 4, 0x3456)
    assert t.read(0, 4) == 0 and t.read(12, 1) == 0 and t.read(12, 2) == 0
    t.write(8, 4, 0xFFFFFFFF)
    t.write(12, 4, 0xFFFFFFFE)
    assert t.read(8, 4) == 0xFFFFFFFF and t.read(12, 4) == 0xFFFFFFFE
    t.write(0x800, 4, 0xFF)                    # the PBA is read-only
    assert t.read(0x800, 4) == 0 and t.read(0x40, 4) == 0 and t.read(0xFF0, 4) == 0


# -- vector registers -------------------------------------------------------------------------------

def test_modern_vector_registers_keep_valid_vectors_only(make):
    b = make(props={"num-queues": "2"})
    d = b.drv
    d.common_write(0x10, 2, 2)
    assert d.common_read(0x10, 2) == 2
    d.common_write(0x10, 2, 3)                 # no such vector: reads back NO_VECTOR (4.1.5.1.2)
    assert d.common_read(0x10, 2) == NO_VECTOR
    d.common_write(0x16, 2, 1)
    d.common_write(0x1A, 2, 1)
    d.common_write(0x16, 2, 0)
    assert d.common_read(0x1A, 2) == NO_VECTOR
    d.common_write(0x16, 2, 1)
    assert d.common_read(0x1A, 2) == 1
    d.common_write(0x16, 2, 7)                 # no such queue
    d.common_write(0x1A, 2, 0)
    assert d.common_read(0x1A, 2) == NO_VECTOR


def test_reset_unmaps_vectors_but_keeps_the_table(make):
    b = make()
    program(b, 0, APIC, 0x41)
    b.drv.common_write(0x10, 2, 0)
    b.drv.set_status(0)
    assert b.drv.common_read(0x10, 2) == NO_VECTOR
    assert table(b).read(8, 4) == 0x41


def test_legacy_header_grows_to_24_bytes_while_msix_is_enabled(make):
    """QEMU: with MSI-X enabled offsets 20/22 are the config/queue vectors (NO_VECTOR after
    reset) and the device config (capacity 0x800 sectors here) starts at 24."""
    b = make(legacy=True)
    bar0 = b.dev.bars[0].ops
    assert bar0.read(20, 4) == 0x800
    enable(b)
    assert (bar0.read(20, 2), bar0.read(22, 2), bar0.read(24, 4)) == (NO_VECTOR, NO_VECTOR, 0x800)
    bar0.write(20, 2, 1)
    bar0.write(22, 2, 0)
    bar0.write(22, 2, 5)
    assert (bar0.read(20, 2), bar0.read(22, 2)) == (1, NO_VECTOR)
    enable(b, False)
    assert bar0.read(20, 4) == 0x800


# -- delivery -----------------------------------------------------------------------------------------

def test_queue_and_config_interrupts_go_to_their_vectors_not_intx(make):
    b = start_msix(msix_bench(make))
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    assert b.sink.sent == [(APIC, 0x41)]
    assert not any(b.irq_levels[-1:])
    b.vdev.config_changed()
    assert b.sink.sent[-1] == (APIC, 0x40)


def test_no_vector_means_no_interrupt(make):
    b = start_msix(msix_bench(make), queue_vector=NO_VECTOR)
    b.run(T_IN, 0, in_len=512)
    assert b.sink.sent == [] and not any(b.irq_levels[-1:])


def test_intx_while_msix_is_off_and_enabling_msix_drops_intx(make):
    b = msix_bench(make).start()
    b.run(T_IN, 0, in_len=512)
    assert b.irq_levels[-1] is True and b.sink.sent == []
    enable(b)
    assert b.irq_levels[-1] is False


def test_masked_vector_sets_pending_and_unmasking_sends_it(make):
    b = start_msix(msix_bench(make))
    table(b).write(16 + 12, 4, 1)
    b.run(T_IN, 0, in_len=512)
    assert b.sink.sent == [] and table(b).read(0x800, 4) == 0b10
    table(b).write(16 + 12, 4, 0)
    assert b.sink.sent == [(APIC, 0x41)] and table(b).read(0x800, 4) == 0


def test_function_mask_holds_every_vector_until_cleared(make):
    b = start_msix(msix_bench(make))
    enable(b, function_mask=True)
    b.run(T_IN, 0, in_len=512)
    b.vdev.config_changed()
    assert b.sink.sent == [] and table(b).read(0x800, 4) == 0b11
    enable(b)
    assert sorted(b.sink.sent) == [(APIC, 0x40), (APIC, 0x41)] and table(b).read(0x800, 4) == 0


def test_everything_masked_stays_quiet_and_pending(make):
    b = start_msix(msix_bench(make))
    for v in range(2):
        table(b).write(16 * v + 12, 4, 1)
    enable(b, function_mask=True)
    for _ in range(5):
        b.run(T_IN, 0, in_len=512)
    assert b.sink.sent == [] and table(b).read(0x800, 4) == 0b10


def test_no_message_without_bus_mastering(make):
    b = start_msix(msix_bench(make))
    b.blk = BlkRequests(b.vqs[0])
    b.blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.sink.sent == [(APIC, 0x41)]
    b.dev.config_write(0x04, 2, 0x0003)
    b.vdev.config_changed()
    assert b.sink.sent == [(APIC, 0x41)]


def test_nonsense_addresses_and_data_reach_the_sink_or_are_dropped(make, guest_errors):
    b = start_msix(msix_bench(make))
    program(b, 1, 0x1000, 0xFFFFFFFF)
    b.run(T_IN, 0, in_len=512)
    program(b, 0, 0x1_FEE0_0000, 0x40)         # above 4 GiB: dropped, says why
    b.vdev.config_changed()
    assert b.sink.sent == [(0x1000, 0xFFFFFFFF)]
    assert "above 4 GiB" in guest_errors.getvalue()


def test_pci_reset_masks_every_vector_and_clears_pending(make):
    b = start_msix(msix_bench(make))
    table(b).write(16 + 12, 4, 1)
    b.run(T_IN, 0, in_len=512)
    b.dev.reset()
    assert table(b).read(0x800, 4) == 0 and table(b).read(12, 4) == 1 and table(b).read(8, 4) == 0
    assert not b.dev.msix.enabled


def test_msix_through_the_board_interrupts_the_cpu(tmp_path):
    """The board wires MSI-X to its MSI sink: a message for vector 0x41 is delivered to the LAPIC."""
    from machine.config import MachineConfig, DriveConfig, DeviceConfig
    from machine.pc import Machine
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    m = Machine(MachineConfig(drives=[DriveConfig(file=img, id="d0", interface="none")],
                              devices=[DeviceConfig("virtio-blk-pci", {"drive": "d0"})]))
    try:
        dev = m.devices["virtio-blk0"]
        sent = []
        real = dev.msix.send
        dev.msix.send = lambda a, d: sent.append((a, d)) or real(a, d)
        dev.config_write(0x04, 2, 0x0006)
        dev.msix.write(12, 4, 0)
        dev.msix.write(8, 4, 0x41)
        dev.msix.write(0, 4, APIC)
        enable(type("B", (), {"dev": dev})())
        dev.config_vector = 0
        dev.vdev.notify_config()
        assert sent == [(APIC, 0x41)]
    finally:
        m.close()


def test_monitor_shows_vectors_masks_and_pending(make):
    from types import SimpleNamespace
    from machine.debug.monitor import Monitor
    b = start_msix(msix_bench(make))
    table(b).write(16 + 12, 4, 1)
    b.run(T_IN, 0, in_len=512)
    bus = SimpleNamespace(devices={2 << 3: b.dev})
    mon = Monitor(None, machine=SimpleNamespace(pci_bus=bus, devices={}, mem=b.mem))
    pci = mon.execute("info pci")
    assert "MSI-X@0x98" in pci
    assert "MSI-X: enabled, 2 vectors: 0:0xfee00000/0x40 1:0xfee00000/0x41/MP" in pci
    status = mon.execute("info virtio-status virtio-blk")
    assert "msix:                    enabled, 2 vectors" in status
    assert "config_vector:           0" in status
    assert "queue 0 vector:          1 (masked, pending)" in status
    assert "msix_vector:          1" in mon.execute("info virtio-queue-status virtio-blk 0")


def test_the_boards_msi_sink_given_at_creation_gets_the_messages(tmp_path):
    from types import SimpleNamespace
    from machine.block import open_drive
    from machine.config import DriveConfig
    from machine.memory import GuestMemory
    from machine.virtio.blk_pci import create_virtio_blk_pci
    from virtio_driver import ModernPci
    p = tmp_path / "d.img"
    p.write_bytes(bytes(1 << 20))
    backend = open_drive(DriveConfig(file=p))
    sink = Sink()
    try:
        mem = GuestMemory(4 << 20)
        dev = create_virtio_blk_pci(backend, {}, mem, msi_send=sink.send)
        drv = ModernPci(dev, mem)
        b = SimpleNamespace(dev=dev)
        program(b, 0, APIC, 0x41)
        enable(b)
        drv.common_write(0x10, 2, 0)                     # config changes to vector 0
        dev.vdev.notify_config()
        assert sink.sent == [(APIC, 0x41)]
    finally:
        backend.close()
