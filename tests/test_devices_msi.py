"""MSI: messages in the 0xFEE00000 window become LAPIC interrupts (destination, vector, trigger)."""

import pytest

from machine.clock import VirtualClock
from machine.devices import msi
from machine.devices.lapic import LocalApic

EOI, LDR, DFR, SVR, TMR0, IRR0 = 0xB0, 0xD0, 0xE0, 0xF0, 0x180, 0x200


@pytest.fixture
def apic():
    a = LocalApic(VirtualClock())
    a.write(SVR, 4, 0x1FF)
    return a


def bit(apic, base, v):
    return apic.read(base + 0x10 * (v // 32), 4) >> (v % 32) & 1


def test_decode_and_encode_round_trip():
    m = msi.decode(0xFEE0300C, 0xC031)
    assert (m.dest, m.logical, m.vector, m.delivery_mode, m.level_triggered) == (3, True, 0x31, 0, True)
    assert msi.decode(*m.encode()) == m


def test_fixed_edge_message_to_apic_id_0_sets_irr(apic):
    sink = msi.MsiSink(apic)
    assert sink.send(0xFEE00000, 0x0041)
    assert bit(apic, IRR0, 0x41) and not bit(apic, TMR0, 0x41)
    assert apic.acknowledge() == 0x41


def test_level_message_sets_tmr_and_its_eoi_is_broadcast(apic):
    seen = []
    apic.eoi_listeners.append(seen.append)
    msi.MsiSink(apic).send(0xFEE00000, 0xC052)
    assert bit(apic, TMR0, 0x52)
    assert apic.acknowledge() == 0x52
    apic.write(EOI, 4, 0)
    assert seen == [0x52] and not bit(apic, TMR0, 0x52)


def test_edge_eoi_is_not_broadcast(apic):
    seen = []
    apic.eoi_listeners.append(seen.append)
    msi.MsiSink(apic).send(0xFEE00000, 0x0052)
    apic.acknowledge()
    apic.write(EOI, 4, 0)
    assert seen == []


def test_physical_destination_must_match_or_broadcast(apic):
    sink = msi.MsiSink(apic)
    assert not sink.send(0xFEE01000, 0x0041)          # APIC ID 1: nobody
    assert not apic.pending()
    assert sink.send(0xFEEFF000, 0x0042)              # 0xFF: everyone
    assert bit(apic, IRR0, 0x42)


def test_logical_flat_and_cluster_destinations(apic):
    sink = msi.MsiSink(apic)
    apic.write(LDR, 4, 0x01000000)                    # flat model (DFR reset 0xFFFFFFFF): bit 0
    assert sink.send(0xFEE01004, 0x0043)
    assert not sink.send(0xFEE02004, 0x0044)
    apic.write(DFR, 4, 0x0FFFFFFF)                    # cluster model: cluster 2, member bit 1
    apic.write(LDR, 4, 0x21000000)
    assert sink.send(0xFEE21004, 0x0045)
    assert not sink.send(0xFEE11004, 0x0046)
    assert [bit(apic, IRR0, v) for v in (0x43, 0x44, 0x45, 0x46)] == [1, 0, 1, 0]


def test_lowest_priority_is_delivered_to_the_only_cpu(apic):
    assert msi.MsiSink(apic).send(0xFEE00008, 0x0150)
    assert bit(apic, IRR0, 0x50)


def test_outside_window_nmi_and_illegal_vectors_deliver_nothing(apic):
    sink = msi.MsiSink(apic)
    assert not sink.send(0xFED00000, 0x0041)
    assert not sink.send(0xFEE00000, 0x0400)          # NMI: not taken through this path
    assert not apic.pending()
    sink.send(0xFEE00000, 0x0005)                     # vector < 16: receive-illegal error
    assert not apic.pending()
    apic.write(0x280, 4, 0)
    assert apic.read(0x280, 4) & 0x40


def test_hardware_disabled_apic_takes_no_messages(apic):
    apic.hw_enabled = False
    msi.MsiSink(apic).send(0xFEE00000, 0x0041)
    apic.hw_enabled = True
    assert not bit(apic, IRR0, 0x41)
