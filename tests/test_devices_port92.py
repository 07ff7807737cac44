"""System control port A."""

from machine.devices.port92 import Port92


def test_a20_reads_back_and_fast_reset_fires_on_rising_bit0():
    resets = []
    port = Port92(lambda: resets.append(1))
    assert port.read(0, 1) == 0
    port.write(0, 1, port.read(0, 1) | 2)     # what firmware does on every mode switch
    assert port.read(0, 1) == 2 and port.a20 and resets == []
    port.write(0, 1, 3)
    assert resets == [1]
    port.write(0, 1, 3)                       # bit 0 already set: no new edge
    assert resets == [1]
    port.reset()
    assert port.read(0, 1) == 0
