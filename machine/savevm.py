"""Whole-machine snapshots: every section's state in memory, and as bytes.

    state = machine.save_state()        # MachineState: cheap, in memory
    ...                                 # the guest runs on, writes its disk
    machine.load_state(state)           # RAM, CPU, devices, clock and disks as they were
    blob = encode(state)                # the snapshot file's contents (untrusted when read)
    machine.load_state(decode(blob))

A MachineState is a list of sections, as QEMU's vmstate: each has a name, an instance id (its
number among sections of that name) and the version of its field table; the values are what
`vmstate.capture()` took (plain, immutable data). Sections, in load order:

    machine   the run loop's state: instructions retired, resets, halted, pending requests
    ram       guest RAM: the 64 KiB chunks that are not all zero, as (offset, bytes)
    cpu       registers, hidden segment state, FPU/SSE, MSRs, hflags (cpu.CPU_VMSTATE)
    <device>  one per device in the board's order (pic, pit, mc146818rtc, serial, ..., each
              PCI function, the virtio devices), then pci-bus
    clock     virtual time and every armed timer, in firing order (last: devices' post_load
              must not arm timers the snapshot does not have)

Disks: a MachineState holds one undo log per writable drive (block/undo.py), started when it
was taken; loading it rolls each drive back and restarts the log, so the state can be loaded
again. `release()` stops the logs of a state no longer wanted.

Loading validates every section against this machine first (names, versions, counts, types,
ranges, the devices' own rules); only then is anything changed. Should applying still fail
(a host I/O error rolling a disk back), the machine is put back as it was before the load.

Encoding (little-endian):  magic "PCVMSNAP", u32 format version, u32 section count, then per
section: u8 name length, name, u32 instance id, u32 version, u64 payload length, payload (the
fields in table order, vmstate.py; for RAM: u64 size, u32 chunk size, u32 count, the chunks'
indices, then their bytes zlib-compressed), and a final u32 CRC-32 of everything before it.
Decoding checks the CRC, bounds every length, and refuses trailing bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from . import vmstate
from .cpu import CPU_VMSTATE
from .vmstate import VMStateError

MAGIC = b"PCVMSNAP"
FORMAT_VERSION = 1
MAX_SECTIONS = 4096

MACHINE_VMSTATE = vmstate.Description("machine", 1, (
    vmstate.Field("instructions", vmstate.U64), vmstate.Field("resets", vmstate.U32),
    vmstate.Field("halted", vmstate.BOOL),
    vmstate.Field("exit_status", vmstate.Optional(vmstate.U32)),
    vmstate.Field("reset_requested", vmstate.BOOL),
    vmstate.Field("paused_reason", vmstate.Optional(vmstate.Str(64))),
    # What the state was taken from: a snapshot of another configuration is refused.
    vmstate.Field("ram_size", vmstate.U64),
    vmstate.Field("drives", vmstate.List(vmstate.Tuple(vmstate.Str(256), vmstate.U64), 64)),
))


@dataclass
class Section:
    name: str
    instance_id: int
    version: int
    values: object            # a dict of field values; for "ram" a tuple of (offset, bytes)


@dataclass
class MachineState:
    sections: list[Section]
    # drive id -> the undo log that brings the drive back to this state (in-memory states)
    undo: dict = field(default_factory=dict)
    _journals: dict = field(default_factory=dict)

    def section(self, name: str, instance_id: int = 0) -> Section | None:
        for s in self.sections:
            if s.name == name and s.instance_id == instance_id:
                return s
        return None

    def release(self) -> None:
        """Stop this state's disk undo logs (it can no longer restore the disks)."""
        for drive_id, log in self.undo.items():
            journal = self._journals.get(drive_id)
            if journal is not None:
                journal.stop_log(log)
        self.undo.clear()


# ------------------------------------------------------------------------------------------
# RAM: only the chunks that hold something are kept, and only the chunks that differ are
# written back (so untouched guest RAM stays unallocated on the host, and going back and
# forth between nearby states costs what changed)
# ------------------------------------------------------------------------------------------
RAM_CHUNK = 64 * 1024
_ZERO_CHUNK = bytes(RAM_CHUNK)


def ram_chunks(buf) -> tuple:
    # Slices of the mmap are bytes: compared with memcmp (a memoryview compares per element).
    size = len(buf)
    out = []
    for off in range(0, size, RAM_CHUNK):
        part = buf[off:off + RAM_CHUNK]
        if part != _ZERO_CHUNK[:len(part)]:
            out.append((off, part))
    return tuple(out)


def _check_ram(chunks, size: int) -> None:
    if type(chunks) is not tuple:
        raise VMStateError("ram: not a list of chunks")
    last = -1
    for item in chunks:
        if type(item) is not tuple or len(item) != 2:
            raise VMStateError("ram: not a list of chunks")
        off, data = item
        if type(off) is not int or type(data) is not bytes or off % RAM_CHUNK or off <= last \
                or off >= size or len(data) != min(RAM_CHUNK, size - off):
            raise VMStateError("ram: a chunk outside this machine's RAM")
        last = off


def load_ram(buf, chunks) -> None:
    size = len(buf)
    given = dict(chunks)
    for off in range(0, size, RAM_CHUNK):
        end = min(size, off + RAM_CHUNK)
        want = given.get(off)
        if want is None:
            want = _ZERO_CHUNK[:end - off]
        if buf[off:end] != want:
            buf[off:end] = want


def device_sections(machine) -> list[tuple[str, int, object, vmstate.Description]]:
    """(name, instance id, object, table) of every device section, in the board's order."""
    out: list[tuple[str, int, object, vmstate.Description]] = []
    counts: dict[str, int] = {}
    seen: set[int] = set()

    def add(obj) -> None:
        desc = getattr(obj, "VMSTATE", None)
        if desc is None or id(obj) in seen:
            return
        seen.add(id(obj))
        n = counts.get(desc.name, 0)
        counts[desc.name] = n + 1
        out.append((desc.name, n, obj, desc))

    for dev in machine.devices.values():
        add(dev)
        vdev = getattr(dev, "vdev", None)
        if vdev is not None:
            add(vdev)
    add(machine.pci_bus)
    return out


def _drives(machine) -> tuple:
    return tuple(sorted((str(drive_id), backend.size) for drive_id, (backend, _vdev) in machine.drives.items()))


# ------------------------------------------------------------------------------------------
# capture / check / apply
# ------------------------------------------------------------------------------------------

def capture(machine, *, disks: bool = True) -> MachineState:
    """The machine's state now (between slices). With `disks`, an undo log starts on every
    writable drive, so loading the state also brings the disks back."""
    for dev in machine.devices.values():
        for obj in (dev, getattr(dev, "vdev", None)):
            drain = getattr(obj, "drain", None)
            if drain is not None:
                drain()
    sections = [Section("machine", 0, MACHINE_VMSTATE.version, {
        "instructions": machine.instructions, "resets": machine.resets, "halted": machine._halted,
        "exit_status": machine._exit_status, "reset_requested": machine._reset_requested,
        "paused_reason": machine.paused_reason, "ram_size": machine.mem.size,
        "drives": _drives(machine)})]
    sections.append(Section("ram", 0, 1, ram_chunks(machine.mem.buf)))
    sections.append(Section("cpu", 0, CPU_VMSTATE.version, machine.cpu.save_state()))
    for name, inst, obj, desc in device_sections(machine):
        sections.append(Section(name, inst, desc.version, vmstate.capture(obj, desc)))
    clock = machine.clock
    sections.append(Section("clock", 0, clock.VMSTATE.version, vmstate.capture(clock, clock.VMSTATE)))
    state = MachineState(sections)
    if disks:
        for drive_id, journal in machine.journals.items():
            state.undo[drive_id] = journal.start_log()
            state._journals[drive_id] = journal
    return state


def _expect(state: MachineState, name: str, inst: int, version: int) -> Section:
    s = state.section(name, inst)
    if s is None:
        raise VMStateError(f"the snapshot has no section '{name}' instance {inst}: another machine configuration")
    if s.version > version:
        raise VMStateError(f"section '{name}' has version {s.version}, newer than this build supports ({version})")
    if s.version != version:
        raise VMStateError(f"section '{name}' has version {s.version}, this build reads only version {version}")
    return s


def check(machine, state: MachineState) -> None:
    """Refuse (VMStateError, one line) a state this machine cannot take; changes nothing."""
    m = _expect(state, "machine", 0, MACHINE_VMSTATE.version)
    vmstate.check_values(MACHINE_VMSTATE, m.values)
    if m.values["ram_size"] != machine.mem.size:
        raise VMStateError(f"the snapshot has {m.values['ram_size'] >> 20} MiB of RAM, this machine "
                           f"{machine.mem.size >> 20} MiB")
    saved, current = dict(m.values["drives"]), dict(_drives(machine))
    rolled_back = {str(drive_id) for drive_id in state.undo}      # their size comes back with them
    if saved.keys() != current.keys() or any(saved[d] != current[d] for d in saved if d not in rolled_back):
        raise VMStateError("the snapshot was taken with other drives (ids or sizes)")
    _check_ram(_expect(state, "ram", 0, 1).values, machine.mem.size)
    cpu = _expect(state, "cpu", 0, CPU_VMSTATE.version)
    machine.cpu.check_state(cpu.values)
    expected = {("machine", 0), ("ram", 0), ("cpu", 0), ("clock", 0)}
    for name, inst, obj, desc in device_sections(machine):
        s = _expect(state, name, inst, desc.version)
        vmstate.check(obj, desc, s.values, f"{name}.{inst}" if inst else name)
        expected.add((name, inst))
    clock = machine.clock
    vmstate.check(clock, clock.VMSTATE, _expect(state, "clock", 0, clock.VMSTATE.version).values)
    extra = [f"{s.name}.{s.instance_id}" for s in state.sections if (s.name, s.instance_id) not in expected]
    if extra:
        raise VMStateError(f"the snapshot has sections this machine does not: {', '.join(extra[:5])}")
    if len(state.sections) != len(expected):
        raise VMStateError("the snapshot repeats a section")
    for drive_id in state.undo:
        if drive_id not in machine.journals:
            raise VMStateError(f"the snapshot's drive '{drive_id}' is not writable here")


def apply(machine, state: MachineState) -> None:
    """Load a checked state: disks, RAM, CPU, devices, clock, run loop."""
    for drive_id, log in state.undo.items():
        machine.journals[drive_id].rollback(log)
    m = state.section("machine").values
    load_ram(machine.mem.buf, state.section("ram").values)
    machine.cpu.invalidate_code()
    machine.cpu.load_state(state.section("cpu").values)
    for name, inst, obj, desc in device_sections(machine):
        vmstate.apply(obj, desc, state.section(name, inst).values)
    for line in machine.isa_irqs:
        line.resync()
    clock = machine.clock
    vmstate.apply(clock, clock.VMSTATE, state.section("clock").values)
    machine.instructions = m["instructions"]
    machine.resets = m["resets"]
    machine._halted = m["halted"]
    machine._exit_status = m["exit_status"]
    machine._reset_requested = m["reset_requested"]
    machine.paused_reason = m["paused_reason"]
    machine._stop_request = None
    machine.stop_reason = None


# ------------------------------------------------------------------------------------------
# bytes
# ------------------------------------------------------------------------------------------

def _descriptions(machine) -> dict[str, vmstate.Description]:
    descs = {"machine": MACHINE_VMSTATE, "cpu": CPU_VMSTATE, "clock": machine.clock.VMSTATE}
    for name, _inst, _obj, desc in device_sections(machine):
        descs[name] = desc
    return descs


def encode(machine, state: MachineState) -> bytes:
    descs = _descriptions(machine)
    out = bytearray(MAGIC)
    out += struct.pack("<II", FORMAT_VERSION, len(state.sections))
    for s in state.sections:
        if s.name == "ram":
            payload = _encode_ram(s.values, machine.mem.size)
        else:
            payload = vmstate.encode(descs[s.name], s.values)
        name = s.name.encode()
        out += struct.pack("<B", len(name)) + name
        out += struct.pack("<IIQ", s.instance_id, s.version, len(payload))
        out += payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


_RAM_HEAD = struct.Struct("<QII")      # RAM size, chunk size, chunk count


def _encode_ram(chunks, size: int) -> bytes:
    """RAM size, chunk size, count, the chunks' offsets / chunk size (u32 each), then the
    chunks' bytes, concatenated and zlib-compressed."""
    head = _RAM_HEAD.pack(size, RAM_CHUNK, len(chunks))
    index = struct.pack(f"<{len(chunks)}I", *(off // RAM_CHUNK for off, _ in chunks))
    return head + index + zlib.compress(b"".join(data for _, data in chunks), 1)


def _decode_ram(payload: bytes, size: int) -> tuple:
    if len(payload) < _RAM_HEAD.size:
        raise VMStateError("ram: truncated")
    saved, chunk, n = _RAM_HEAD.unpack_from(payload)
    if saved != size:
        raise VMStateError(f"the snapshot has {saved >> 20} MiB of RAM, this machine {size >> 20} MiB")
    if chunk != RAM_CHUNK or n > -(-size // RAM_CHUNK):
        raise VMStateError("ram: corrupted")
    end = _RAM_HEAD.size + 4 * n
    if len(payload) < end:
        raise VMStateError("ram: truncated")
    offsets = [i * RAM_CHUNK for i in struct.unpack_from(f"<{n}I", payload, _RAM_HEAD.size)]
    if any(b <= a for a, b in zip(offsets, offsets[1:])) or any(off >= size for off in offsets):
        raise VMStateError("ram: chunks out of order or outside this machine's RAM")
    lengths = [min(RAM_CHUNK, size - off) for off in offsets]
    total = sum(lengths)
    d = zlib.decompressobj()
    try:
        data = d.decompress(payload[end:], total + 1)
    except zlib.error as e:
        raise VMStateError(f"ram: corrupted ({e})") from None
    if len(data) != total or not d.eof or d.unused_data:
        raise VMStateError("ram: corrupted")
    chunks, pos = [], 0
    for off, n_bytes in zip(offsets, lengths):
        chunks.append((off, data[pos:pos + n_bytes]))
        pos += n_bytes
    return tuple(chunks)


def decode(machine, data: bytes) -> MachineState:
    """Parse snapshot bytes (untrusted) for `machine`: VMStateError with one line on anything
    wrong. The result still goes through check() when loaded."""
    if len(data) < len(MAGIC) + 12 or data[:len(MAGIC)] != MAGIC:
        raise VMStateError("not a snapshot file (bad magic)")
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        raise VMStateError("the snapshot is corrupted (checksum mismatch) or truncated")
    r = vmstate.Reader(body, "snapshot")
    r.take(len(MAGIC))
    version, count = r.u32(), r.u32()
    if version > FORMAT_VERSION:
        raise VMStateError(f"snapshot format version {version} is newer than this build supports ({FORMAT_VERSION})")
    if version != FORMAT_VERSION:
        raise VMStateError(f"snapshot format version {version} is not supported")
    if count > MAX_SECTIONS:
        raise VMStateError(f"{count} sections: not a snapshot of this machine")
    descs = _descriptions(machine)
    sections = []
    for _ in range(count):
        try:
            name = r.take(r.u8()).decode("ascii")
        except UnicodeDecodeError:
            raise VMStateError("a section name is not ASCII") from None
        inst, sver, n = r.u32(), r.u32(), r.u64()
        payload = r.take(n)
        if name == "ram":
            if sver != 1:
                raise VMStateError(f"section 'ram' has version {sver}, this build reads only version 1")
            sections.append(Section(name, inst, sver, _decode_ram(payload, machine.mem.size)))
            continue
        desc = descs.get(name)
        if desc is None:
            raise VMStateError(f"the snapshot has a section '{name}' this machine does not know")
        if sver != desc.version:
            newer = "newer than this build supports" if sver > desc.version else "not supported"
            raise VMStateError(f"section '{name}' has version {sver}, {newer} ({desc.version})")
        sections.append(Section(name, inst, sver, vmstate.decode(desc, payload)))
    if not r.done():
        raise VMStateError("the snapshot has trailing bytes")
    return MachineState(sections)
