"""isa-debugcon at 0x402."""

import io

from machine.devices.debugcon import DebugCon


def test_debugcon_output_and_readback():
    out = io.BytesIO()
    con = DebugCon(out)
    for b in b"SeaBIOS":
        con.write(0, 1, b)
    assert out.getvalue() == b"SeaBIOS"
    assert con.read(0, 1) == 0xE9
    DebugCon(None).write(0, 1, 0x41)          # no output: discarded
