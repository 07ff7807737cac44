"""The snapshot loader against untrusted bytes (machine/savevm.py, machine/vmstate.py): random
files, and real snapshots with bytes changed (checksum left wrong, or made right again so the
change reaches the section decoders and the machine's checks), cut short or grown. The oracle:
decoding and loading either succeed or raise VMStateError, never anything else; a refused
snapshot leaves the machine exactly as it was; a loaded one runs (no exception escapes the
run loop, every guest access stays in what the board maps). bench/fuzz.py runs this for long."""

from __future__ import annotations

import hashlib
import struct
import tempfile
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from machine.api import Session
from machine.vmstate import VMStateError

_WORLD: dict = {}


def _world():
    """One small machine (8 MiB, the bundled guest part-way through its self-test), a snapshot
    of it as bytes, and where its non-RAM sections lie in those bytes."""
    if not _WORLD:
        from building import built
        guest = built("guest", "out/guest.elf")
        tmp = Path(tempfile.mkdtemp(prefix="savevm-fuzz-"))
        img = tmp / "d.img"
        img.write_bytes(bytes(1 << 20))
        s = Session.from_args(["-kernel", str(guest), "-m", "8", "-display", "none",
                               "-drive", f"file={img},format=raw,if=virtio",
                               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        s.run(max_instructions=3_000_000)
        state = s.save_state(disks=False)
        blob = s.machine.encode_state(state)
        _WORLD.update(session=s, state=state, blob=blob, spans=_device_spans(blob),
                      fingerprint=_fingerprint(s.machine))
    return _WORLD


def _device_spans(blob: bytes) -> list[tuple[int, int]]:
    """(start, length) of every section's header and payload except RAM's."""
    spans, pos = [], 16
    while pos < len(blob) - 4:
        n = blob[pos]
        name = blob[pos + 1:pos + 1 + n]
        size = struct.unpack_from("<Q", blob, pos + 1 + n + 8)[0]
        end = pos + 1 + n + 16 + size
        spans.append((pos, (pos + 1 + n + 16 if name == b"ram" else end) - pos))
        pos = end
    return spans


def _fingerprint(m) -> bytes:
    state = m.save_state(disks=False)
    h = hashlib.sha256()
    for s in state.sections:
        h.update(s.name.encode() + repr(s.instance_id).encode())
        if s.name == "ram":
            for off, data in s.values:
                h.update(off.to_bytes(8, "little") + data)
        else:
            h.update(repr(s.values).encode())
    return h.digest()


_edits = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255), st.booleans()), max_size=6)


@settings(deadline=None, database=None, max_examples=60, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["random", "mutate", "mutate-crc", "cut", "grow"]),
       edits=_edits, raw=st.binary(max_size=256), cut=st.integers(0, 1 << 30))
def test_any_snapshot_bytes_load_or_are_refused_cleanly(kind, edits, raw, cut):
    w = _world()
    s, blob = w["session"], w["blob"]
    m = s.machine
    if kind == "random":
        data = b"PCVMSNAP" + raw if raw[:1] != b"\0" else raw
    elif kind in ("mutate", "mutate-crc"):
        body = bytearray(blob[:-4])
        for where, value, in_devices in edits:
            if in_devices:            # mostly where the device decoders and checks will see it
                start, length = w["spans"][where % len(w["spans"])]
                body[start + (where >> 8) % length] = value
            else:
                body[where % len(body)] = value
        crc = zlib.crc32(body) if kind == "mutate-crc" else struct.unpack("<I", blob[-4:])[0]
        data = bytes(body) + struct.pack("<I", crc)
    elif kind == "cut":
        data = blob[:cut % len(blob)]
    else:
        data = blob[:-4] + raw + blob[-4:]
    try:
        state = m.decode_state(data)
    except VMStateError as e:
        assert str(e) and "\n" not in str(e)
        return
    try:
        m.load_state(state)
    except VMStateError as e:
        assert str(e) and "\n" not in str(e)
        assert _fingerprint(m) == w["fingerprint"], "a refused snapshot changed the machine"
        return
    try:
        s.run(max_instructions=20_000)     # whatever the loaded state, the run loop copes
    finally:
        s.load_state(w["state"])           # back to the pristine machine for the next input
        assert _fingerprint(m) == w["fingerprint"]
