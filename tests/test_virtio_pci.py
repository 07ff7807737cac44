"""The virtio-pci transport: IDs, BARs and capabilities, the common cfg and legacy header
registers, ISR/INTx, the PCI_CFG window, reset, and what bad register writes must do."""

import pytest

from virtio_driver import (ACK, DRIVER, DRIVER_OK, F_EVENT_IDX, F_VERSION_1, FAILED, FEATURES_OK, NEEDS_RESET,
                           S_OK, T_IN, T_OUT, BlkRequests, benches, Vring, pattern)
from machine.block import open_drive
from machine.config import ConfigError, DriveConfig
from machine.memory import GuestMemory, IoSpace, MemoryMap
from machine.pci.bus import PciBus
from machine.virtio import blk as B
from machine.virtio.blk_pci import create_virtio_blk_pci


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def cfg(dev, off, size):
    return dev.config_read(off, size)


# -- identity -----------------------------------------------------------------------------------------

def test_transitional_by_default_legacy_ids_both_bars_and_five_caps(make):
    dev = make().dev
    assert (cfg(dev, 0, 2), cfg(dev, 2, 2), cfg(dev, 8, 1)) == (0x1AF4, 0x1001, 0)
    assert (cfg(dev, 0x2C, 2), cfg(dev, 0x2E, 2)) == (0x1AF4, 2)
    assert cfg(dev, 0x08, 4) >> 8 == 0x010000 and cfg(dev, 0x3D, 1) == 1
    assert cfg(dev, 0x10, 4) & 1 == 1                                  # BAR0: I/O
    assert cfg(dev, 0x20, 4) & 0xF == 0xC                              # BAR4: 64-bit prefetchable
    dev.config_write(0x20, 4, 0xFFFFFFFF)
    assert cfg(dev, 0x20, 4) & ~0xF & 0xFFFFFFFF == 0xFFFFC000          # 16 KiB
    dev.config_write(0x10, 4, 0xFFFFFFFF)
    assert cfg(dev, 0x10, 4) & 0xFFFF == 0xFF81                         # 128 ports
    assert sorted(make().drv.caps) == [1, 2, 3, 4, 5]


def test_modern_only_uses_1042_revision_1(make):
    b = make(props={"disable-legacy": "on"})
    assert (cfg(b.dev, 2, 2), cfg(b.dev, 8, 1)) == (0x1042, 1)
    assert b.dev.bars[0] is None and b.dev.bars[4] is not None


def test_legacy_only_has_no_virtio_capabilities(make):
    b = make(props={"disable-modern": "on", "vectors": "0"}, legacy=True)
    assert cfg(b.dev, 2, 2) == 0x1001 and b.dev.bars[4] is None and cfg(b.dev, 0x34, 1) == 0
    assert cfg(b.dev, 6, 2) & 0x10 == 0
    b = make(props={"disable-modern": "on"}, legacy=True)      # MSI-X only, as QEMU
    assert cfg(b.dev, cfg(b.dev, 0x34, 1), 1) == 0x11 and cfg(b.dev, cfg(b.dev, 0x34, 1) + 1, 1) == 0


def test_capabilities_point_into_bar4_pages_with_notify_multiplier(make):
    drv = make().drv
    assert {t: (c[1], c[2]) for t, c in drv.caps.items() if t != 5} == {
        1: (4, 0x0), 3: (4, 0x1000), 4: (4, 0x2000), 2: (4, 0x3000)}
    assert drv.notify_mult == 4


def test_capabilities_are_listed_in_qemus_order(make):
    """QEMU 7.2 (lspci of virtio-blk-pci): pci-cfg @0x84 -> notify @0x70 -> device @0x60 ->
    isr @0x50 -> common @0x40 (MSI-X, when present, comes first)."""
    dev = make().dev
    walked, ptr = [], cfg(dev, 0x34, 1)
    while ptr:
        walked.append((ptr, cfg(dev, ptr + 3, 1)))
        ptr = cfg(dev, ptr + 1, 1)
    assert walked[0][0] == 0x98 and cfg(dev, 0x98, 1) == 0x11
    assert walked[1:] == [(0x84, 5), (0x70, 2), (0x60, 4), (0x50, 3), (0x40, 1)]


@pytest.mark.parametrize("disk_size,secs", [(64 << 20, 56), (1 << 20, 56), (16 * 63 * 4096 * 2, 63)])
def test_geometry_sectors_with_4k_blocks_as_qemu(make, disk_size, secs):
    """Measured on QEMU 7.2 with logical_block_size=4096: 56 sectors per track unless a track
    of 16 heads x 63 sectors holds whole 4 KiB blocks."""
    b = make(disk_size=disk_size, props={"logical_block_size": "4096"})
    assert b.drv.cfg_read(19, 1) == secs
    assert make(disk_size=disk_size).drv.cfg_read(19, 1) == 63


@pytest.mark.parametrize("props,msg", [
    ({"disable-legacy": "on", "disable-modern": "on"}, "device cannot work as neither modern nor legacy mode is enabled"),
    ({"bogus": "1"}, "virtio-blk: unknown property 'bogus'"),
    ({"queue-size": "100"}, "queue-size property must be a power of 2"),
    ({"queue-size": "2048"}, "Property 'queue-size' value 2048 is out of range [2, 1024]"),
    ({"num-queues": "0"}, "Property 'num-queues' value 0 is out of range [1, 1024]"),
    ({"config-wce": "maybe"}, "Property 'config-wce' doesn't take value 'maybe' (use 'on' or 'off')"),
    ({"logical_block_size": "1000"}, "Property logical_block_size must be a power of 2"),
    ({"disable-legacy": "sometimes"}, "Property 'disable-legacy' doesn't take value 'sometimes' (use 'on', 'off' or 'auto')"),
    ({"disable-modern": "x"}, "Property 'disable-modern' doesn't take value 'x' (use 'on', 'off' or 'auto')"),
    ({"bootindex": "-2"}, "Property 'bootindex' value -2 is out of range [-1, 65535]"),
    ({"bootindex": "65536"}, "Property 'bootindex' value 65536 is out of range [-1, 65535]"),
    ({"bootindex": "x"}, "Property 'bootindex' expects an integer, not 'x'"),
    ({"ioeventfd": "maybe"}, "Property 'ioeventfd' doesn't take value 'maybe' (use 'on' or 'off')"),
    ({"strict": "2"}, "Property 'strict' doesn't take value '2' (use 'on' or 'off')"),
    ({"queue_reset": "maybe"}, "Property 'queue_reset' doesn't take value 'maybe' (use 'on' or 'off')"),
    ({"packed": "1"}, "Property 'packed' doesn't take value '1' (use 'on' or 'off')"),
    ({"vectors": "2049"}, "Property 'vectors' value 2049 is out of range [0, 2048]"),
    ({"vectors": "-1"}, "Property 'vectors' value -1 is out of range [0, 2048]"),
    ({"iothread": "io9"}, "Device 'io9' not found"),
    ({"max-discard-sectors": "1.5"}, "Property 'max-discard-sectors' expects an integer, not '1.5'"),
])
def test_bad_properties_are_config_errors(tmp_path, props, msg):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(4096))
    be = open_drive(DriveConfig(file=p))
    try:
        with pytest.raises(ConfigError) as e:
            create_virtio_blk_pci(be, props, GuestMemory(4 << 20))
        assert str(e.value) == msg
    finally:
        be.close()


@pytest.mark.parametrize("props, legacy, modern, vectors", [
    ({"bootindex": "-1", "ioeventfd": "on"}, True, True, 2),
    ({"bootindex": "65535", "ioeventfd": "off"}, True, True, 2),
    ({"disable-legacy": "auto"}, True, True, 2),            # a conventional PCI bus: legacy on
    ({"disable-legacy": " YES "}, False, True, 2),
    ({"disable-legacy": "y", "disable-modern": "n"}, False, True, 2),
    ({"disable-modern": "True", "disable-legacy": "false"}, True, False, 2),
    ({"disable-modern": "auto"}, True, True, 2),
    ({"vectors": "0"}, True, True, 0),
    ({"vectors": "2048"}, True, True, 2048),
    ({"vectors": "0x10", "num-queues": "3"}, True, True, 16),
    ({"num-queues": "3"}, True, True, 4),                    # one per queue and one for config
])
def test_property_spellings_and_defaults(tmp_path, props, legacy, modern, vectors):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(4096))
    be = open_drive(DriveConfig(file=p))
    try:
        dev = create_virtio_blk_pci(be, props, GuestMemory(4 << 20))
        assert (dev.legacy, dev.modern) == (legacy, modern)
        assert (0 if dev.msix is None else dev.msix.nvectors) == vectors
    finally:
        be.close()


def test_board_level_properties_are_accepted(make):
    make(props={"drive": "d0", "id": "v0", "bootindex": "1", "addr": "0x5", "ioeventfd": "off"})


@pytest.mark.parametrize("legacy", [False, True])
def test_queue_size_property_sets_every_queues_size_and_seg_max(make, legacy):
    b = make(props={"queue-size": "64", "num-queues": "2"}, legacy=legacy)
    d = b.drv
    if legacy:
        sizes = []
        for i in range(2):
            d.bar.write(0x0E, 2, i)
            sizes.append(d.bar.read(0x0C, 2))
    else:
        sizes = []
        for i in range(2):
            d.common_write(0x16, 2, i)
            sizes.append(d.common_read(0x18, 2))
    assert sizes == [64, 64] and d.cfg_read(12, 4) == 62         # seg_max = queue size - 2
    b.start(nqueues=2)
    assert [q.size for q in b.vdev.queues] == [64, 64]
    assert b.run(T_IN, 0, q=1, in_len=512)[1] == S_OK


def test_queue_size_property_bounds_what_the_driver_may_program(make):
    b = make(props={"queue-size": "64"})
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x18, 2, 128)                    # larger than the maximum: refused
    assert b.drv.common_read(0x18, 2) == 64
    b.drv.common_write(0x18, 2, 32)
    assert b.drv.common_read(0x18, 2) == 32


def test_queue_size_1024_is_the_largest_accepted(make):
    b = make(props={"queue-size": "1024"}).start()
    assert b.vdev.queues[0].size == 1024 and b.drv.cfg_read(12, 4) == 1022
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_config_space_matches_the_disk_and_properties(make):
    b = make(disk_size=8 << 20, props={"physical_block_size": "4096", "serial": "x"}).start()
    d = b.drv
    assert d.cfg_read(0, 4) | d.cfg_read(4, 4) << 32 == 16384
    assert d.cfg_read(12, 4) == 254                              # seg_max = queue size - 2
    assert (d.cfg_read(16, 2), d.cfg_read(18, 1), d.cfg_read(19, 1)) == (16, 16, 63)
    assert d.cfg_read(20, 4) == 512 and d.cfg_read(24, 1) == 3   # blk_size, physical_block_exp
    assert d.cfg_read(32, 1) == 1 and d.cfg_read(34, 2) == 1     # writeback, num_queues
    assert d.cfg_read(40, 4) == 1 and d.cfg_read(44, 4) == 1     # max_discard_seg, alignment
    assert d.cfg_read(52, 4) == 1 and d.cfg_read(56, 1) == 1


def test_legacy_config_at_offset_20_and_queue_num(make):
    b = make(legacy=True)
    assert b.drv.cfg_read(0, 4) == 2048
    b.drv.bar.write(0x0E, 2, 0)
    assert b.drv.bar.read(0x0C, 2) == 256
    b.drv.bar.write(0x0E, 2, 7)
    assert b.drv.bar.read(0x0C, 2) == 0


def test_legacy_offers_any_layout_but_not_version_1(make):
    b = make(legacy=True)
    f = b.drv.device_features()
    assert f >> 27 & 1 and f & (1 << 28) and f & (1 << 29)
    b.start()
    assert b.vdev.guest_features >> F_VERSION_1 & 1 == 0              # a legacy driver cannot ask
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    modern = make()                                # the same device through its modern interface
    f = modern.drv.device_features()
    assert f >> F_VERSION_1 & 1 and not f >> 27 & 1


# -- status and features -------------------------------------------------------------------------------

def test_features_ok_with_unoffered_bits_masks_them_and_says_which_rule(make, guest_errors):
    b = make()
    b.drv.set_status(ACK | DRIVER)
    offered = b.drv.device_features()
    b.drv.write_features(offered | (1 << 34))     # PACKED: not offered
    assert b.vdev.guest_features == offered        # never honoured, not even read back
    b.drv.common_write(0x08, 4, 1)
    assert b.drv.common_read(0x0C, 4) == offered >> 32
    b.drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert b.drv.status == ACK | DRIVER | FEATURES_OK
    assert "unoffered bits" not in guest_errors.getvalue()
    assert "feature bits 0x400000000 the device did not offer (VIRTIO 1.2 §2.2.1)" in guest_errors.getvalue()


def test_strict_refuses_features_ok_with_unoffered_bits(make, guest_errors):
    b = make(props={"strict": "on"})
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(b.drv.device_features() | (1 << 34))
    b.drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert b.drv.status == ACK | DRIVER
    assert "(VIRTIO 1.2 §2.2.1); strict: FEATURES_OK is not set" in guest_errors.getvalue()


def test_features_ok_without_version_1_on_modern_is_tolerated_and_reported(make, guest_errors):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << F_VERSION_1))
    assert b.drv.status & FEATURES_OK and b.drv.status & DRIVER_OK
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    assert "without VIRTIO_F_VERSION_1 (VIRTIO 1.2 §6.1)" in guest_errors.getvalue()


def test_strict_refuses_features_ok_without_version_1(make, guest_errors):
    b = make(props={"strict": "on"})
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(b.drv.device_features() & ~(1 << F_VERSION_1))
    b.drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert not b.drv.status & FEATURES_OK
    assert "§6.1); strict" in guest_errors.getvalue()


def test_each_tolerated_rule_is_reported_once_per_device(make, guest_errors):
    b = make()
    for _ in range(3):
        b.drv.set_status(0)
        b.drv.set_status(ACK | DRIVER)
        b.drv.write_features(b.drv.device_features() | (1 << 34))
        b.drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert guest_errors.getvalue().count("§2.2.1") == 1
    other = make()
    other.drv.set_status(ACK | DRIVER)
    other.drv.write_features(other.drv.device_features() | (1 << 34))
    other.drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert guest_errors.getvalue().count("§2.2.1") == 2


def test_strict_property_takes_booleans_only(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(1 << 20))
    backend = open_drive(DriveConfig(file=path))
    try:
        with pytest.raises(ConfigError, match="Property 'strict' doesn't take value 'maybe'"):
            create_virtio_blk_pci(backend, {"strict": "maybe"}, GuestMemory(4 << 20))
    finally:
        backend.close()


def test_feature_writes_after_features_ok_are_ignored(make):
    b = make().start(driver_ok=False)
    before = b.vdev.guest_features
    b.drv.write_features(0)
    assert b.vdev.guest_features == before


def test_feature_select_beyond_1_reads_0_and_ignores_writes(make):
    b = make()
    b.drv.common_write(0x00, 4, 0xFFFFFFFF)
    assert b.drv.common_read(0x04, 4) == 0
    b.drv.common_write(0x08, 4, 7)
    b.drv.common_write(0x0C, 4, 0xFFFFFFFF)
    assert b.vdev.guest_features == 0


def test_status_writes_clearing_bits_are_ignored(make):
    b = make().start()
    b.drv.set_status(ACK | DRIVER_OK)
    assert b.drv.status == ACK | DRIVER | FEATURES_OK | DRIVER_OK


def test_driver_ok_without_features_ok_serves_io_as_qemu_does(make, guest_errors):
    b = make()
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(b.drv.device_features())
    vqs = b.drv.init(b.alloc, driver_ok=False)     # a fresh init, then DRIVER_OK with no FEATURES_OK
    b.drv.set_status(0)
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(b.drv.device_features())
    b.drv.common_write(0x16, 2, 0)
    b.drv.write64(0x20, vqs[0].desc)
    b.drv.write64(0x28, vqs[0].avail)
    b.drv.write64(0x30, vqs[0].used)
    b.drv.common_write(0x1C, 2, 1)
    b.drv.set_status(ACK | DRIVER | DRIVER_OK)
    assert b.drv.status == ACK | DRIVER | DRIVER_OK
    b.vqs = vqs
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    assert "driver set DRIVER_OK without FEATURES_OK (VIRTIO 1.2 §3.1.1)" in guest_errors.getvalue()


def test_strict_refuses_driver_ok_without_features_ok(make, guest_errors):
    b = make(props={"strict": "on"})
    b.drv.set_status(ACK | DRIVER | DRIVER_OK)
    assert b.drv.status == ACK | DRIVER
    assert "§3.1.1); strict: DRIVER_OK is not set" in guest_errors.getvalue()


def test_legacy_feature_write_after_modern_features_ok_keeps_version_1(make):
    b = make().start()
    before = b.vdev.guest_features
    b.dev.bars[0].ops.write(0x04, 4, 0)
    assert b.vdev.guest_features == before and before >> F_VERSION_1 & 1


def test_legacy_driver_ok_never_honours_unoffered_bits(make, guest_errors):
    b = make()
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(1 << 34)                   # modern write of an unoffered bit only
    b.dev.bars[0].ops.write(0x12, 1, ACK | DRIVER | DRIVER_OK)   # DRIVER_OK through the legacy header
    assert b.vdev.guest_features == 0
    assert "§2.2.1" in guest_errors.getvalue()


def test_failed_status_stops_processing(make):
    b = make().start()
    b.drv.set_status(b.drv.status | FAILED)
    b.blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 0


def test_read_only_registers_ignore_writes(make):
    b = make().start(driver_ok=False)
    d = b.drv
    snapshot = [d.common_read(o, s) for o, s in ((0x04, 4), (0x12, 2), (0x15, 1), (0x1E, 2))]
    for o, s in ((0x04, 4), (0x12, 2), (0x15, 1), (0x1E, 2)):
        d.common_write(o, s, 0x5A5A5A5A & ((1 << 8 * s) - 1))
    assert [d.common_read(o, s) for o, s in ((0x04, 4), (0x12, 2), (0x15, 1), (0x1E, 2))] == snapshot


def test_pci_header_ids_are_read_only(make):
    dev = make().dev
    for off in (0x00, 0x02, 0x08, 0x2C, 0x2E):
        before = cfg(dev, off, 2)
        dev.config_write(off, 2, 0x1234)
        assert cfg(dev, off, 2) == before


def test_config_accesses_outside_256_bytes_or_odd_sizes_read_ones(make):
    dev = make().dev
    assert cfg(dev, 0x100, 4) == 0xFFFFFFFF and cfg(dev, 0xFE, 4) == 0xFFFFFFFF and cfg(dev, 0, 3) == 0xFFFFFFFF
    dev.config_write(0x200, 4, 0)          # no exception


# -- queue registers -------------------------------------------------------------------------------------

def test_queue_select_beyond_num_queues_reads_size_0_and_ignores_writes(make):
    b = make()
    d = b.drv
    d.common_write(0x16, 2, 0xFFFF)
    assert d.common_read(0x18, 2) == 0 and d.common_read(0x1A, 2) == 0xFFFF and d.common_read(0x1C, 2) == 0
    d.common_write(0x18, 2, 16)
    d.common_write(0x1C, 2, 1)
    d.write64(0x20, 0x100000)
    assert all(not q.enabled and q.desc_addr == 0 for q in b.vdev.queues)


@pytest.mark.parametrize("size", [0, 3, 100, 512, 0xFFFF])
def test_bad_queue_sizes_are_refused(make, size):
    b = make()
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x18, 2, size)
    assert b.drv.common_read(0x18, 2) == 256


def test_smaller_power_of_two_queue_size_is_accepted_and_used(make):
    b = make().start(size=16)
    assert b.vdev.queues[0].size == 16
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_queue_registers_are_frozen_once_enabled(make):
    b = make().start(driver_ok=False)
    q = b.vdev.queues[0]
    d = b.drv
    d.common_write(0x16, 2, 0)
    before = (q.size, q.desc_addr, q.avail_addr, q.used_addr)
    d.common_write(0x18, 2, 16)
    d.write64(0x20, 0x200000)
    d.write64(0x28, 0x200000)
    d.write64(0x30, 0x200000)
    assert (q.size, q.desc_addr, q.avail_addr, q.used_addr) == before


def test_queue_enable_0_is_ignored(make):
    b = make().start(driver_ok=False)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x1C, 2, 0)
    assert b.drv.common_read(0x1C, 2) == 1


def test_without_msix_vectors_read_no_vector(make):
    d = make(props={"vectors": "0"}).drv
    d.common_write(0x10, 2, 0)
    d.common_write(0x16, 2, 0)
    d.common_write(0x1A, 2, 1)
    assert d.common_read(0x10, 2) == 0xFFFF and d.common_read(0x1A, 2) == 0xFFFF


@pytest.mark.parametrize("what", ["misaligned_desc", "misaligned_used", "outside_ram", "in_pci_hole", "straddles_ram_end"])
def test_bad_ring_addresses_set_needs_reset_at_enable(make, what):
    b = make()
    d = b.drv
    d.set_status(ACK | DRIVER)
    d.write_features(d.device_features())
    d.set_status(ACK | DRIVER | FEATURES_OK)
    desc, avail, used = 0x100000, 0x104000, 0x108000
    if what == "misaligned_desc":
        desc += 8
    elif what == "misaligned_used":
        used += 2
    elif what == "outside_ram":
        desc = 1 << 40
    elif what == "in_pci_hole":
        used = 0xFEBF0000
    else:
        avail = (4 << 20) - 16
    d.common_write(0x16, 2, 0)
    d.write64(0x20, desc)
    d.write64(0x28, avail)
    d.write64(0x30, used)
    d.common_write(0x1C, 2, 1)
    assert d.status & NEEDS_RESET and b.vdev.broken
    assert b.vdev.isr == 0 and not b.dev.intx.level     # no config interrupt before DRIVER_OK


# -- notify, ISR, INTx -----------------------------------------------------------------------------------

def test_interrupt_raises_intx_and_isr_read_clears_it(make):
    b = make().start()
    b.run(T_IN, 0, in_len=512)
    assert b.dev.intx.level and b.dev.config_read(6, 2) & 0x8
    assert b.drv.isr() == 1
    assert not b.dev.intx.level and b.drv.isr() == 0


@pytest.mark.parametrize("size", [1, 2, 4])
def test_isr_is_read_to_clear_at_any_width_and_ignores_writes(make, size):
    b = make().start()
    b.run(T_IN, 0, in_len=512)
    off = b.drv._off(3)
    b.drv.bar.write(off, size, 0)
    assert b.drv.bar.read(off, size) == 1 and b.drv.bar.read(off, size) == 0


def test_no_interrupt_flag_suppresses_the_interrupt(make):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << F_EVENT_IDX))
    b.vqs[0].set_avail_flags(1)
    b.run(T_IN, 0, in_len=512)
    assert b.vdev.isr == 0 and not b.dev.intx.level
    assert b.vqs[0].used_flags() == 0          # kicks wanted again after processing


def test_event_idx_interrupts_only_when_used_event_is_crossed(make):
    b = make().start()
    assert b.vdev.queues[0].event_idx
    vq = b.vqs[0]
    vq.set_used_event(0)
    b.run(T_IN, 0, in_len=512)                   # used idx 0 -> 1 crosses used_event 0
    assert b.drv.isr() == 1
    vq.set_used_event(5)
    b.run(T_IN, 0, in_len=512)                   # 1 -> 2: not yet
    assert b.drv.isr() == 0
    for _ in range(4):
        b.run(T_IN, 0, in_len=512)               # ... -> 6 crosses 5
    assert b.drv.isr() == 1
    assert vq.avail_event() == vq.avail_idx      # device asks to be kicked for the next buffer


def test_event_idx_interrupt_comes_exactly_when_the_used_event_entry_is_used(make):
    """2.7.10: used_event = N asks for an interrupt once the device uses the entry at index N,
    i.e. when used idx goes from N to N+1: not one request earlier, not later."""
    b = make().start()
    vq = b.vqs[0]
    vq.set_used_event(3)
    seen = []
    for _ in range(6):
        b.run(T_IN, 0, in_len=512)
        seen.append((vq.used_idx(), b.drv.isr()))
    assert seen == [(1, 1), (2, 0), (3, 0), (4, 1), (5, 0), (6, 0)]


def test_garbage_used_event_only_affects_interrupts(make):
    b = make().start()
    b.vqs[0].set_used_event(0xBEEF)
    b.vqs[0].set_avail_flags(0xFFFF)
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK and not b.needs_reset


def test_notify_for_missing_queue_or_unaligned_offset_is_ignored(make):
    b = make().start()
    b.blk.submit(T_IN, 0, in_len=512)
    notify = b.drv._off(2)
    for off in (4 * 1, 4 * 1000, 2, 0xFFC):
        b.drv.bar.write(notify + off, 2, 0)
    assert b.vqs[0].used_idx() == 0 and not b.needs_reset
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 1


def test_notify_storm_without_buffers_does_nothing(make):
    b = make().start()
    for _ in range(2000):
        b.drv.kick(0)
    assert b.vqs[0].used_idx() == 0 and b.vdev.isr == 0


def test_kick_before_driver_ok_is_served_at_once_as_qemu_does(make, guest_errors):
    b = make().start(driver_ok=False)
    blk = BlkRequests(b.vqs[0])
    req = blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vqs[0].get_used() == [(req.head, 513)]
    assert "notified queue 0 before setting DRIVER_OK (VIRTIO 1.2 §3.1.1)" in guest_errors.getvalue()


def test_strict_holds_a_kick_before_driver_ok_until_driver_ok(make, guest_errors):
    b = make(props={"strict": "on"}).start(driver_ok=False)
    blk = BlkRequests(b.vqs[0])
    req = blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 0
    assert "strict: the notification is held until DRIVER_OK" in guest_errors.getvalue()
    b.drv.set_status(b.drv.status | DRIVER_OK)
    assert b.vqs[0].get_used() == [(req.head, 513)]


def test_no_dma_without_bus_mastering(make):
    b = make().start()
    b.dev.config_write(0x04, 2, 0x0003)
    b.blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 0
    b.dev.config_write(0x04, 2, 0x0007)
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 1


def test_device_cfg_out_of_range_reads_ones_and_read_only_fields_ignore_writes(make):
    d = make().start().drv
    assert d.cfg_read(60, 4) == 0xFFFFFFFF and d.cfg_read(58, 4) == 0xFFFFFFFF and d.cfg_read(0xFFC, 4) == 0xFFFFFFFF
    d.cfg_write(0, 4, 0)
    d.cfg_write(12, 4, 0)
    d.cfg_write(200, 4, 0)
    assert d.cfg_read(0, 4) == 2048 and d.cfg_read(12, 4) == 254


# -- reset -------------------------------------------------------------------------------------------------

def test_reset_with_requests_pending_reads_back_0_and_touches_nothing_after(make):
    b = make().start()
    b.run(T_IN, 0, in_len=512)
    b.drv.isr()
    b.blk.submit(T_OUT, 0, out=b"R" * 512)
    before = b.image()
    b.drv.set_status(0)
    assert b.drv.status == 0 and b.vdev.guest_features == 0
    used_before = b.mem.read(b.vqs[0].used, 16)
    b.drv.kick(0)
    assert b.mem.read(b.vqs[0].used, 16) == used_before and b.image() == before
    assert b.vdev.isr == 0 and not b.dev.intx.level
    assert all(not q.enabled and q.last_avail_idx == 0 for q in b.vdev.queues)


def test_reset_then_reinit_on_new_rings_leaves_old_rings_alone(make):
    b = make().start()
    old = b.vqs[0]
    b.run(T_IN, 0, in_len=512)
    snap = b.mem.read(old.used, 6 + 8 * old.size)
    b.start()
    assert b.run(T_IN, 1, in_len=512)[1] == S_OK
    assert b.mem.read(old.used, 6 + 8 * old.size) == snap


def test_repeated_resets_are_harmless(make):
    b = make()
    for _ in range(5):
        b.drv.set_status(0)
    b.start()
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_legacy_pfn_0_resets_the_device(make):
    b = make(legacy=True).start()
    b.drv.bar.write(0x08, 4, 0)
    assert b.drv.status == 0 and not b.vdev.queues[0].enabled


def test_pci_reset_resets_the_virtio_device(make):
    b = make().start()
    b.dev.reset()
    assert b.vdev.status == 0 and not b.vdev.queues[0].enabled


def test_legacy_ring_layout_is_4096_aligned(make):
    b = make(legacy=True).start()
    q, vq = b.vdev.queues[0], b.vqs[0]
    assert (q.desc_addr, q.avail_addr, q.used_addr) == (vq.desc, vq.avail, vq.used)
    assert q.used_addr % 4096 == 0 and b.drv.bar.read(0x08, 4) == vq.desc >> 12


# -- the PCI_CFG window and a plugged device -----------------------------------------------------------

def test_pci_cfg_window_reads_and_writes_bar4(make):
    b = make()
    dev = b.dev
    cap = b.drv.caps[5][0]
    dev.config_write(cap + 4, 1, 4)           # bar
    dev.config_write(cap + 8, 4, 0x12)        # num_queues in common cfg
    dev.config_write(cap + 12, 4, 2)
    assert dev.config_read(cap + 16, 4) & 0xFFFF == 1
    dev.config_write(cap + 8, 4, 0x14)        # device_status
    dev.config_write(cap + 12, 4, 1)
    dev.config_write(cap + 16, 4, ACK)
    assert b.drv.status == ACK


@pytest.mark.parametrize("bar,off,length", [(7, 0, 4), (4, 0x4000, 4), (4, 0x3FFE, 4), (4, 1, 2), (4, 0, 3), (4, 0, 8)])
def test_pci_cfg_window_with_bad_bar_offset_or_length_is_ignored(make, bar, off, length):
    b = make()
    dev = b.dev
    cap = b.drv.caps[5][0]
    dev.config_write(cap + 4, 1, bar)
    dev.config_write(cap + 8, 4, off)
    dev.config_write(cap + 12, 4, length)
    dev.config_write(cap + 16, 4, 0xFFFFFFFF)
    dev.config_read(cap + 16, 4)
    assert b.drv.status == 0


def test_plugged_device_serves_requests_through_the_memory_map(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(pattern(1 << 20))
    be = open_drive(DriveConfig(file=p))
    mem = GuestMemory(16 << 20)
    mm, io = MemoryMap(mem), IoSpace()
    bus = PciBus(mm, io)
    dev = create_virtio_blk_pci(be, {}, mem)
    bus.plug(dev, 2)
    dev.config_write(0x20, 4, 0xFEBF8000)
    dev.config_write(0x24, 4, 0)
    dev.config_write(0x10, 4, 0xC000)
    dev.config_write(0x04, 2, 0x0007)
    assert dev.bar_address(4) == 0xFEBF8000 and dev.bar_address(0) == 0xC000

    class ViaMap:
        def read(self, off, size):
            return mm.read(0xFEBF8000 + off, size)

        def write(self, off, size, value):
            mm.write(0xFEBF8000 + off, size, value)

    from virtio_driver import Allocator, ModernPci
    drv = ModernPci(dev, mem, bar_ops=ViaMap())
    [vq] = drv.init(Allocator(mem))
    blk = BlkRequests(vq)
    req = blk.submit(T_IN, 3, in_len=512)
    drv.kick(0)
    assert vq.get_used() == [(req.head, 513)] and blk.result(req) == (pattern(1 << 20)[1536:2048], 0)
    # legacy header through the I/O space too
    assert io.read(0xC000 + 0x12, 1) == drv.status
    be.close()


def test_bars_stop_decoding_when_memory_and_io_decode_are_off(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(1 << 16))
    be = open_drive(DriveConfig(file=p))
    mem = GuestMemory(16 << 20)
    mm, io = MemoryMap(mem), IoSpace()
    dev = create_virtio_blk_pci(be, {}, mem)
    PciBus(mm, io).plug(dev, 3)
    dev.config_write(0x20, 4, 0xFEBF8000)
    dev.config_write(0x10, 4, 0xC000)
    dev.config_write(0x04, 2, 0x0003)
    assert mm.read(0xFEBF8000 + 0x12, 2) == 1 and io.read(0xC000 + 0x0C, 2) == 256
    dev.config_write(0x04, 2, 0x0000)
    assert mm.read(0xFEBF8000 + 0x12, 2) == 0xFFFF and io.read(0xC000 + 0x0C, 2) == 0xFFFF
    mm.write(0xFEBF8000 + 0x14, 1, 1)
    assert dev.vdev.status == 0
    be.close()


@pytest.mark.parametrize("bar,off,length", [
    (0, 0x14, 1), (5, 0x14, 1), (7, 0x14, 1),         # not BAR 4: device_status must not change
    (4, 0x13, 2), (4, 0x12, 4),                        # unaligned over device_status
    (4, 0x14, 0), (4, 0x14, 3), (4, 0x14, 8),          # lengths other than 1, 2, 4
    (4, 0x4000, 4), (4, 0xFFFFFFFC, 4), (4, 0x3FFE, 4),    # past the end of the BAR
])
def test_pci_cfg_window_that_is_not_valid_neither_writes_nor_reads_the_bar(make, bar, off, length):
    """4.1.4.9: the window reaches BAR 4 only with a length of 1, 2 or 4, aligned and inside the
    BAR. Aimed at device_status (common cfg + 0x14), an access that slipped through would show;
    a read through a bad window leaves pci_cfg_data as the driver wrote it."""
    b = make()
    dev = b.dev
    cap = b.drv.caps[5][0]
    common = b.drv._off(1)
    dev.config_write(cap + 4, 1, bar)
    dev.config_write(cap + 8, 4, common + off if off < 0x4000 else off)
    dev.config_write(cap + 12, 4, length)
    dev.config_write(cap + 16, 4, 0x01010101)          # ACK in every byte
    assert b.drv.status == 0
    b.drv.set_status(ACK)
    dev.config_write(cap + 16, 4, 0x5A5A5A5A)
    assert dev.config_read(cap + 16, 4) == 0x5A5A5A5A
    assert dev.config_read(cap + 16, 1) == 0x5A and b.drv.status == ACK


def test_only_accesses_overlapping_pci_cfg_data_go_through_the_window(make):
    """Config accesses just before and just after pci_cfg_data (the window's own fields, the
    next bytes of config space) must not reach the BAR."""
    b = make()
    dev = b.dev
    cap = b.drv.caps[5][0]
    common = b.drv._off(1)
    dev.config_write(cap + 4, 1, 4)
    dev.config_write(cap + 8, 4, common + 0x16)        # queue_select, 2 bytes
    dev.config_write(cap + 12, 4, 2)
    dev.config_write(cap + 16, 4, ACK)                  # queue_select = 1; pci_cfg_data holds ACK
    dev.config_write(cap + 8, 4, common + 0x14)         # now aim at device_status, 1 byte
    dev.config_write(cap + 12, 4, 1)
    dev.config_write(cap + 20, 4, 0)                    # past the data field
    dev.config_write(cap + 12, 2, 1)                    # before it
    dev.config_read(cap + 20, 4)
    dev.config_read(cap + 12, 4)
    assert b.drv.status == 0
    dev.config_write(cap + 19, 1, 0)                    # the data field's last byte: goes through
    assert b.drv.status == ACK



# -- paths found by mutation testing (bench/mutation.sh) ------------------------------------------

def test_legacy_feature_register_keeps_what_the_driver_may_have(make):
    b = make(legacy=True)
    bar = b.drv.bar
    offered = bar.read(0x00, 4)
    b.drv.set_status(ACK | DRIVER)
    bar.write(0x04, 4, 0xFFFFFFFF)
    assert bar.read(0x04, 4) == offered                 # only offered bits stick
    bar.write(0x04, 4, 1 << F_EVENT_IDX)
    assert bar.read(0x04, 4) == 1 << F_EVENT_IDX        # and unasked ones do not
    b.drv.set_status(ACK | DRIVER | DRIVER_OK)
    bar.write(0x04, 4, 0)                               # after DRIVER_OK: ignored
    assert bar.read(0x04, 4) == 1 << F_EVENT_IDX and b.vdev.queues[0].event_idx


def test_legacy_status_write_keeps_the_queue_selector_and_0_resets_it(make):
    b = make(legacy=True, props={"num-queues": "2"})
    bar = b.drv.bar
    bar.write(0x0E, 2, 1)
    b.drv.set_status(ACK)
    b.drv.set_status(ACK | DRIVER)
    assert bar.read(0x0E, 2) == 1
    b.drv.set_status(0)
    assert bar.read(0x0E, 2) == 0


def test_legacy_pfn_reads_back_only_for_an_enabled_queue(make):
    b = make(legacy=True, props={"num-queues": "2"})
    bar = b.drv.bar
    bar.write(0x0E, 2, 1)
    assert bar.read(0x08, 4) == 0
    bar.write(0x08, 4, 0x123)
    assert bar.read(0x08, 4) == 0x123
    bar.write(0x0E, 2, 0)
    assert bar.read(0x08, 4) == 0                       # queue 0 was never given a PFN
    bar.write(0x0E, 2, 5)
    assert bar.read(0x08, 4) == 0                       # no such queue


def test_legacy_pfn_of_a_queue_programmed_but_not_enabled_through_the_modern_interface_is_0(make):
    b = make()                                          # transitional: both interfaces
    b.drv.common_write(0x16, 2, 0)
    b.drv.write64(0x20, 0x123000)                       # queue_desc, queue_enable left 0
    legacy = b.dev.bars[0].ops
    legacy.write(0x0E, 2, 0)
    assert legacy.read(0x08, 4) == 0


def test_legacy_config_writes_reach_the_writeback_field(make):
    b = make(legacy=True).start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 0 and b.vdev.config[B.OFF_WRITEBACK] == 0
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 1)
    assert b.vdev.config[B.OFF_WRITEBACK] == 1
    b.drv.cfg_write(B.OFF_WRITEBACK - 1, 1, 0)           # the byte before: read-only
    assert b.vdev.config[B.OFF_WRITEBACK - 1] == 0 and b.vdev.config[B.OFF_WRITEBACK] == 1


def test_queue_size_equal_to_the_maximum_is_accepted(make):
    b = make(props={"queue-size": "64"})
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x18, 2, 32)
    b.drv.common_write(0x18, 2, 64)
    assert b.drv.common_read(0x18, 2) == 64


def test_config_space_reads_up_to_its_last_byte(make):
    b = make()
    assert b.drv.cfg_read(B.CONFIG_SIZE - 4, 4) == 1    # write_zeroes_may_unmap, then padding
    assert b.drv.cfg_read(B.CONFIG_SIZE - 2, 4) == 0xFFFFFFFF     # past the end: all ones


def test_config_change_before_driver_ok_interrupts_nobody(make):
    b = make()
    with open(b.path, "r+b") as f:
        f.truncate(512 * 1024)
    assert b.vdev.update_capacity()
    assert b.vdev.isr == 0 and not b.dev.intx.level
    assert b.drv.cfg_read(0, 4) == 1024


def test_isr_keeps_both_causes_until_read(make):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << F_EVENT_IDX))     # every request interrupts
    with open(b.path, "r+b") as f:
        f.truncate(512 * 1024)
    b.vdev.update_capacity()                            # config change: bit 1
    b.run(T_IN, 0, in_len=512)                          # used buffer: bit 0
    assert b.drv.isr() == 3 and b.drv.isr() == 0
    b.run(T_IN, 0, in_len=512)                          # the other order
    with open(b.path, "r+b") as f:
        f.truncate(256 * 1024)
    b.vdev.update_capacity()
    assert b.drv.isr() == 3


@pytest.mark.parametrize("off", [0x20, 0x28, 0x30])       # queue_desc, queue_driver, queue_device
def test_queue_address_registers_read_back_both_halves(make, off):
    b = make()
    d = b.drv
    d.common_write(0x16, 2, 0)
    d.common_write(off, 4, 0xFFFFF000)
    d.common_write(off + 4, 4, 0x12)
    d.common_write(off, 4, 0x00345000)                   # a new low half replaces the old one
    assert (d.common_read(off, 4), d.common_read(off + 4, 4)) == (0x00345000, 0x12)
    d.common_write(off + 4, 4, 0xABCDEF01)               # and a new high half keeps the low one
    assert (d.common_read(off, 4), d.common_read(off + 4, 4)) == (0x00345000, 0xABCDEF01)
    field = {0x20: "desc_addr", 0x28: "avail_addr", 0x30: "used_addr"}[off]
    assert getattr(b.vdev.queues[0], field) == 0xABCDEF01_00345000
    d.common_write(0x16, 2, 7)                           # no such queue: reads 0
    assert d.common_read(off, 4) == 0 and d.common_read(off + 4, 4) == 0


def test_pci_cfg_window_of_4_bytes_and_at_the_last_dword_of_the_bar(make):
    b = make()
    dev = b.dev
    cap = b.drv.caps[5][0]
    common = b.drv._off(1)
    dev.config_write(cap + 4, 1, 4)
    dev.config_write(cap + 8, 4, common + 0x04)          # device_feature, 4 bytes
    dev.config_write(cap + 12, 4, 4)
    assert dev.config_read(cap + 16, 4) == b.drv.device_features() & 0xFFFFFFFF
    dev.config_write(cap + 8, 4, 0x3FFC)                 # the BAR's last dword (notify area)
    dev.config_write(cap + 16, 4, 0x5A5A5A5A)            # a notify for no queue: ignored
    assert dev.config_read(cap + 16, 4) == 0             # the area reads as 0 through the window
    assert not b.needs_reset


def test_driver_feature_reads_back_what_was_accepted(make):
    b = make()
    d = b.drv
    d.set_status(ACK | DRIVER)
    d.write_features(d.device_features())
    words = []
    for sel in (0, 1, 2):
        d.common_write(0x08, 4, sel)
        words.append(d.common_read(0x0C, 4))
    assert words[0] | words[1] << 32 == d.device_features() and words[2] == 0


def test_notify_for_a_queue_not_enabled_is_ignored(make):
    b = make(props={"num-queues": "2"}).start(nqueues=1)
    b.drv.bar.write(b.drv._off(2) + 1 * b.drv.notify_mult, 2, 1)    # queue 1 exists, not enabled
    assert not b.needs_reset and b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_legacy_pfn_write_for_a_missing_queue_is_ignored(make):
    b = make(legacy=True)
    b.drv.bar.write(0x0E, 2, 9)
    b.drv.bar.write(0x08, 4, 0x100)
    assert not any(q.enabled for q in b.vdev.queues)


# ------------------------------------------------------------------ -d guest_errors, word for word

GUEST_ERRORS = {
    # (legacy interface?, steps on the driver after start(), the exact log)
    "queue_size of a missing queue": (False, lambda b: (b.drv.common_write(0x16, 2, 5), b.drv.common_write(0x18, 2, 64)),
                                      "virtio-blk-pci: queue_size write for queue 5 which does not exist"),
    "queue_size after enable": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x18, 2, 64)),
                                "virtio-blk-pci: queue_size write to queue 0 after enable ignored"),
    "queue_size not a power of 2": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x3A, 2, 1),
                                                      b.drv.common_write(0x18, 2, 100)),
                                    "virtio-blk-pci: queue_size 100 for queue 0 refused (max 256)"),
    "queue_reset of a missing queue": (False, lambda b: (b.drv.common_write(0x16, 2, 5), b.drv.common_write(0x3A, 2, 1)),
                                       "virtio-blk-pci: queue_reset=1 for queue 5 ignored"),
    "queue_reset=2": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x3A, 2, 2)),
                      "virtio-blk-pci: queue_reset=2 for queue 0 ignored"),
    "queue_enable=2": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x1C, 2, 2)),
                       "virtio-blk-pci: queue_enable=2 ignored (only 1 is defined)"),
    "queue_enable after enable": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x1C, 2, 1)),
                                  "virtio-blk-pci: queue_enable write to queue 0 after enable ignored"),
    "queue_enable of a missing queue": (False, lambda b: (b.drv.common_write(0x16, 2, 5), b.drv.common_write(0x1C, 2, 1)),
                                        "virtio-blk-pci: queue_enable write for queue 5 which does not exist"),
    "write to read-only device_feature": (False, lambda b: b.drv.common_write(0x04, 4, 1),
                                          "virtio-blk-pci.common: write 0x1 to read-only device_feature ignored"),
    "legacy write to read-only host_features": (True, lambda b: b.drv.bar.write(0x00, 4, 1),
                                                "virtio-blk-pci.legacy: write 0x1 to read-only host_features ignored"),
    "queue vector of a missing queue": (False, lambda b: (b.drv.common_write(0x16, 2, 5), b.drv.common_write(0x1A, 2, 0)),
                                        "virtio-blk-pci: queue_msix_vector write for queue 5 which does not exist"),
    "driver_feature select 2": (False, lambda b: (b.drv.common_write(0x08, 4, 2), b.drv.common_write(0x0C, 4, 1)),
                                "virtio-blk-pci: driver_feature write with select 2 ignored"),
    "queue address after enable": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x20, 4, 0x1000)),
                                   "virtio-blk-pci: desc_addr write to queue 0 after enable ignored"),
    "queue address of a missing queue": (False, lambda b: (b.drv.common_write(0x16, 2, 5), b.drv.common_write(0x34, 4, 1)),
                                         "virtio-blk-pci: used_addr write for queue 5 which does not exist"),
    "PCI_CFG window of length 3": (False, lambda b: (b.dev.config_write(b.dev.pci_cfg_cap + 4, 1, 4),
                                                     b.dev.config_write(b.dev.pci_cfg_cap + 8, 4, 0x10),
                                                     b.dev.config_write(b.dev.pci_cfg_cap + 12, 4, 3),
                                                     b.dev.config_read(b.dev.pci_cfg_cap + 16, 4)),
                                   "virtio-blk-pci: PCI_CFG window bar=4 offset=0x10 length=3 ignored"),
    "legacy queue_pfn after enable": (True, lambda b: b.drv.bar.write(0x08, 4, 0x123),
                                      "virtio-blk-pci: queue_pfn write to queue 0 after enable ignored"),
    "legacy write to the first config byte": (True, lambda b: b.drv.bar.write(20, 1, 7),
                                              "virtio-blk: config write 0x0+1 = 0x7 ignored"),
    "legacy feature write after DRIVER_OK": (True, lambda b: b.drv.bar.write(0x04, 4, 1),
                                             "virtio-blk: legacy feature write 0x1 after negotiation ignored"),
    "feature write after FEATURES_OK": (False, lambda b: (b.drv.common_write(0x08, 4, 1), b.drv.common_write(0x0C, 4, 0)),
                                        "virtio-blk: feature write {features_lo:#x} after FEATURES_OK ignored"),
    "status write clearing bits": (False, lambda b: b.drv.set_status(1),
                                   "virtio-blk: status write 0x1 clears bits of 0xf; ignored"),
    "notify for a missing queue": (False, lambda b: b.drv.bar.write(b.drv._off(2) + 5 * b.drv.notify_mult, 2, 5),
                                   "virtio-blk: notify for queue 5 which does not exist"),
    "notify for a disabled queue": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x3A, 2, 1),
                                                      b.drv.kick(0)),
                                    "virtio-blk: notify for queue 0 which is not enabled"),
    "notify without bus mastering": (False, lambda b: (b.dev.config_write(0x04, 2, 0x0003), b.drv.kick(0)),
                                     "virtio-blk: notify while bus mastering is off; ignored"),
    "notify at an unaligned offset": (False, lambda b: b.drv.bar.write(b.drv._off(2) + 2, 2, 0),
                                      "virtio-blk-pci: notify at unaligned offset 0x2 ignored"),
    "write to the ISR": (False, lambda b: b.drv.bar.write(b.drv._off(3), 1, 1),
                         "virtio-blk-pci: write to read-only BAR4 offset 0x1000 ignored"),
    "MSI-X vector that does not exist": (False, lambda b: (b.drv.common_write(0x16, 2, 0), b.drv.common_write(0x1A, 2, 0x55)),
                                         "virtio-blk-pci: MSI-X vector 0x55 does not exist; mapped to NO_VECTOR"),
    "legacy BAD_FEATURE": (True, lambda b: (b.drv.set_status(0), b.drv.set_status(1 | 2), b.drv.bar.write(0x04, 4, 1 << 30)),
                           "virtio-blk: driver set VIRTIO_F_BAD_FEATURE"),
    "config write past the end": (False, lambda b: b.vdev.config_write(len(b.vdev.config) - 1, 2, 0),
                                  "virtio-blk: config write {end_1:#x}+2 outside {end} bytes ignored"),
    "config write at a negative offset": (False, lambda b: b.vdev.config_write(-1, 1, 0),
                                          "virtio-blk: config write -0x1+1 outside {end} bytes ignored"),
    "config write of the last byte": (False, lambda b: b.vdev.config_write(len(b.vdev.config) - 1, 1, 0),
                                      "virtio-blk: config write {end_1:#x}+1 = 0x0 ignored"),
}


@pytest.mark.parametrize("case", GUEST_ERRORS)
def test_guest_errors_name_the_register_the_queue_and_the_value(make, guest_errors, case):
    legacy, steps, expected = GUEST_ERRORS[case]
    b = make(legacy=legacy).start()
    guest_errors.truncate(0)
    guest_errors.seek(0)
    steps(b)
    end = len(b.vdev.config)
    features_lo = b.vdev.guest_features & 0xFFFFFFFF         # select 0's half as the driver wrote it
    assert guest_errors.getvalue() == expected.format(end=end, end_1=end - 1, features_lo=features_lo) + "\n"


# ------------------------------------------------------------------ the status state machine, step by step

def _negotiate_by_hand(b, features=None, *, extra=()):
    """The 3.1.1 steps one register write at a time (and any `extra` status writes on the way)."""
    d = b.drv
    d.set_status(0)
    d.set_status(ACK)
    d.set_status(ACK | DRIVER)
    for v in extra:
        d.set_status(v)
    d.write_features(d.device_features() if features is None else features)
    d.set_status(ACK | DRIVER | FEATURES_OK)


def test_a_textbook_negotiation_logs_nothing(make, guest_errors):
    b = make()
    _negotiate_by_hand(b)
    b.drv.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert guest_errors.getvalue() == "" and b.drv.status == ACK | DRIVER | FEATURES_OK | DRIVER_OK


def test_strict_features_ok_is_refused_once_for_unoffered_bits(make, guest_errors):
    b = make(props={"strict": "on"})
    _negotiate_by_hand(b, b.drv.device_features() | 1 << 63)
    assert not b.drv.status & FEATURES_OK
    b.drv.set_status(ACK | DRIVER)                         # rewriting a status negotiates nothing
    assert guest_errors.getvalue() == (
        "virtio-blk: driver accepted feature bits 0x8000000000000000 the device did not offer "
        "(VIRTIO 1.2 §2.2.1); strict: FEATURES_OK is not set\n")


def test_a_kick_before_driver_ok_waits_for_driver_ok_only(make, guest_errors):
    b = make(props={"strict": "on"})                      # strict: not served early
    vqs = b.drv.init(b.alloc, driver_ok=False)
    req = BlkRequests(vqs[0]).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vdev.queues[0].state().pending_kick is True
    b.drv.set_status(ACK | DRIVER | FEATURES_OK)           # the same status again: still waiting
    assert vqs[0].get_used() == []
    assert guest_errors.getvalue() == ("virtio-blk: driver notified queue 0 before setting DRIVER_OK "
                                       "(VIRTIO 1.2 §3.1.1); strict: the notification is held until DRIVER_OK\n")
    b.drv.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert vqs[0].get_used() == [(req.head, 513)]
    assert b.vdev.queues[0].state().pending_kick is False


def test_driver_ok_activates_only_the_enabled_queues(make):
    b = make(props={"num-queues": "2"})
    b.vqs = b.drv.init(b.alloc, nqueues=1)                 # queue 1 never enabled
    assert [q.state().active for q in b.vdev.queues] == [True, False]
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_a_queue_whose_rings_fail_at_enable_breaks_the_device_and_stays_so(make):
    b = make()
    d = b.drv
    _negotiate_by_hand(b)
    d.common_write(0x16, 2, 0)
    d.write64(0x20, 0x1000 + 8)                            # a misaligned descriptor table
    d.common_write(0x1C, 2, 1)
    message = "queue 0: misaligned rings desc=0x1008 avail=0x0 used=0x0"
    q = b.vdev.queues[0].state()
    assert q.enabled is True and q.active is False and b.vdev.state().error == message
    d.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)   # tried again at DRIVER_OK, same error
    assert b.vdev.broken and b.vdev.state().error == message


def test_a_reset_clears_isr_and_forgets_unoffered_bits(make, guest_errors):
    b = make(legacy=True).start()
    b.run(T_IN, 0, in_len=512)
    assert b.vdev.isr
    b.drv.set_status(0)
    assert b.vdev.isr == 0 and b.drv.isr() == 0
    b.drv.set_status(1 | 2 | 4)                            # DRIVER_OK without a feature write
    assert guest_errors.getvalue() == ""


@pytest.mark.parametrize("event, line", [
    ("virtio_set_status", "virtio_set_status vdev=virtio-blk val=3"),
    ("virtio_set_features", "virtio_set_features vdev=virtio-blk features=0x{features:x}"),
])
def test_status_and_feature_trace_events(make, event, line):
    import io
    import sys
    from machine import trace
    b = make()
    out = io.StringIO()
    trace.set_output(out)
    trace.enable(event)
    try:
        b.drv.set_status(ACK | DRIVER)
        b.drv.write_features(b.drv.device_features())
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
    lines = out.getvalue().splitlines()
    assert line.format(features=b.vdev.guest_features) in lines


def test_reading_past_the_isr_byte_reads_0_and_leaves_the_isr(make):
    b = make().start()
    b.run(T_IN, 0, in_len=512)
    isr = b.vdev.isr
    assert isr and b.drv.bar.read(b.drv._off(3) + 1, 1) == 0 and b.vdev.isr == isr
    assert b.drv.isr() == isr and b.vdev.isr == 0


def test_selecting_the_queue_just_past_the_last_reads_as_absent(make):
    b = make().start()
    d = b.drv
    d.common_write(0x16, 2, 1)                              # one queue: index 1 does not exist
    assert (d.common_read(0x18, 2), d.common_read(0x1E, 2), d.common_read(0x1C, 2)) == (0, 0, 0)
    d.common_write(0x16, 2, 7)
    assert d.common_read(0x1E, 2) == 0


def test_a_reset_forgets_both_halves_of_the_driver_features(make):
    b = make(props={"strict": "on"}).start()
    d = b.drv
    d.set_status(0)
    d.set_status(ACK | DRIVER)
    d.common_write(0x08, 4, 0)
    d.common_write(0x0C, 4, 1 << 28)                        # only the low half, INDIRECT_DESC
    assert b.vdev.guest_features == 1 << 28
    d.common_write(0x08, 4, 1)
    assert d.common_read(0x0C, 4) == 0
    d.set_status(0)                                          # and the other way round
    d.set_status(ACK | DRIVER)
    d.common_write(0x08, 4, 1)
    d.common_write(0x0C, 4, 1)                              # only the high half, VERSION_1
    assert b.vdev.guest_features == 1 << 32
    d.set_status(ACK | DRIVER | FEATURES_OK)                # strict: no unoffered bit left over
    assert d.status & FEATURES_OK


def test_a_pci_cfg_window_read_fills_the_data_field_only(make):
    b = make().start()
    dev, cap = b.dev, b.dev.pci_cfg_cap
    size, after = len(dev.config), bytes(dev.config[cap + 20:cap + 24])
    dev.config_write(cap + 4, 1, 4)                         # BAR 4
    dev.config_write(cap + 8, 4, 0x12)                      # num_queues
    dev.config_write(cap + 12, 4, 2)
    assert dev.config_read(cap + 16, 2) == 1
    assert len(dev.config) == size and bytes(dev.config[cap + 20:cap + 24]) == after


def test_the_notify_trace_gives_the_bar_offset_written(make):
    import io
    import sys
    from machine import trace
    b = make(props={"num-queues": "2"})
    b.drv.init(b.alloc, nqueues=2)
    out = io.StringIO()
    trace.set_output(out)
    trace.enable("virtio_pci_notify_write")
    try:
        b.drv.kick(1)
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
    assert out.getvalue() == f"virtio_pci_notify_write addr={0x3000 + b.drv.notify_mult:#x} val=0x1 size=2\n"


# ------------------------------------------------------------------ property value parsing (props.py)

@pytest.mark.parametrize("text, value", [
    ("0", 0), ("16", 16), ("4k", 4096), ("4K", 4096), (" 2M ", 2 << 20), ("1.5k", 1536), ("0x10", 16),
    ("0x1b", 27), ("0X1B", 27), ("16k", 16384), ("3b", 3), ("15e", 15 << 60), ("18446744073709551615", (1 << 64) - 1),
])
def test_sizes_take_qemus_suffixes_and_hex(text, value):
    from machine.virtio import props as P
    assert P.parse_size("s", text) == value


@pytest.mark.parametrize("text, message", [
    ("16e", "Property 's' expects a size below 2^64, not '16e'"),
    ("18446744073709551616", "Property 's' expects a size below 2^64, not '18446744073709551616'"),
    ("1.0e999", "Property 's' expects a size, not '1.0e999'"),
    ("k", "Property 's' expects a size, not 'k'"),
    ("0x", "Property 's' expects a size, not '0x'"),
])
def test_what_is_not_a_size_says_so(text, message):
    from machine.virtio import props as P
    with pytest.raises(ConfigError) as e:
        P.parse_size("s", text)
    assert str(e.value) == message


@pytest.mark.parametrize("text, value", [("on", True), ("YES", True), (" y", True), ("true", True),
                                         ("off", False), ("No", False), ("n ", False), ("FALSE", False)])
def test_switches_take_qemus_spellings(text, value):
    from machine.virtio import props as P
    assert P.parse_bool("b", text) is value
    assert P.parse_on_off_auto("b", text) == ("on" if value else "off")


def test_on_off_auto_takes_auto_and_names_itself_otherwise():
    from machine.virtio import props as P
    assert P.parse_on_off_auto("a", " Auto ") == "auto"
    with pytest.raises(ConfigError) as e:
        P.parse_on_off_auto("a", "maybe")
    assert str(e.value) == "Property 'a' doesn't take value 'maybe' (use 'on', 'off' or 'auto')"


@pytest.mark.parametrize("text, value", [("0x10", 16), (" 7 ", 7), ("0o10", 8), ("-1", -1)])
def test_integers_take_any_base_prefix(text, value):
    from machine.virtio import props as P
    assert P.parse_int("i", text, -1, 100) == value



def test_the_pci_cfg_capability_starts_zeroed_and_only_its_window_fields_are_writable(make):
    b = make().start()
    dev, cap = b.dev, b.dev.pci_cfg_cap
    assert dev.config_read(cap + 2, 1) == 20 and dev.config_read(cap + 3, 1) == 5     # cap_len, PCI_CFG
    assert bytes(dev.config[cap + 4:cap + 20]) == bytes(16)                         # bar, offset, length, data
    before = bytes(dev.config)
    for off in range(cap, cap + 21):                       # and the first byte after it
        dev.config_write(off, 1, 0xFF)
    changed = {i for i in range(len(before)) if dev.config[i] != before[i]}
    assert changed == {cap + 4} | set(range(cap + 8, cap + 20))


def test_a_driver_writing_only_the_high_feature_half_first_gets_nothing_else(make):
    b = make(props={"strict": "on"})                       # a fresh device: no reset before
    d = b.drv
    d.set_status(ACK)
    d.set_status(ACK | DRIVER)
    d.common_write(0x08, 4, 1)
    d.common_write(0x0C, 4, 1)                              # VERSION_1 (bit 32) alone
    d.set_status(ACK | DRIVER | FEATURES_OK)
    assert d.status & FEATURES_OK and b.vdev.guest_features == 1 << 32



def test_a_fresh_device_has_generation_0_no_error_and_no_unoffered_bits(make, guest_errors):
    b = make(legacy=True)
    st = b.vdev.state()
    assert (st.config_generation, st.error, st.broken) == (0, None, False)
    b.drv.set_status(1 | 2 | 4)                             # DRIVER_OK without a feature write
    assert guest_errors.getvalue() == ""
    m = make()
    assert m.drv.common_read(0x15, 1) == 0


def test_a_split_queue_may_have_a_single_entry(make):
    b = make()
    b.drv.set_status(ACK | DRIVER)
    b.drv.write_features(b.drv.device_features())
    b.drv.set_status(ACK | DRIVER | FEATURES_OK)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x18, 2, 1)
    assert b.drv.common_read(0x18, 2) == 1



def test_each_modern_capability_gives_its_length(make):
    b = make()
    lengths = {t: b.dev.config_read(off + 2, 1) for t, (off, _bar, _o, _n) in b.drv.caps.items()}
    assert lengths == {1: 16, 2: 20, 3: 16, 4: 16, 5: 20}


def test_a_pci_cfg_window_write_passes_only_the_windows_bytes(make):
    """The data field holds 4 bytes; a 2-byte window writes its low 2 only (here to
    queue_select: the 1 in the third byte must not select queue 0x10000)."""
    b = make()
    dev, cap = b.dev, b.dev.pci_cfg_cap
    dev.config_write(cap + 4, 1, 4)
    dev.config_write(cap + 8, 4, 0x16)                      # queue_select
    dev.config_write(cap + 12, 4, 2)
    dev.config_write(cap + 16, 4, 0x0001_0000)
    assert b.drv.common_read(0x16, 2) == 0 and b.drv.common_read(0x18, 2) == 256
