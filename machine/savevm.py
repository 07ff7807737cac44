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
    ram       guest RAM (bytes)
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
fields in table order, vmstate.py; RAM zlib-compressed), and a final u32 CRC-32 of everything
before it. Decoding checks the CRC, bounds every length, and refuses trailing bytes.
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
    values: object            # a dict of field values; bytes for "ram"


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

def capture(machine, *, disks: bool = True, ram: bool = True) -> MachineState:
    """The machine's state now (between slices). With `disks`, an undo log starts on every
    writable drive, so loading the state also brings the disks back. Without `ram` the state
    has no RAM section: the caller keeps RAM its own way (the debugger's reverse execution
    shares unchanged pages between checkpoints) and puts it back before apply()."""
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
    if ram:
        sections.append(Section("ram", 0, 1, bytes(machine.mem.buf)))
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
    if m.values["drives"] != _drives(machine):
        raise VMStateError("the snapshot was taken with other drives (ids or sizes)")
    ram = _expect(state, "ram", 0, 1).values
    if not isinstance(ram, bytes) or len(ram) != machine.mem.size:
        raise VMStateError("the snapshot's RAM does not match this machine's RAM size")
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
    ram = state.section("ram")
    if ram is not None:                  # a state taken without RAM: the caller restored it
        machine.mem.buf[:] = ram.values
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
            payload = zlib.compress(s.values, 1)
        else:
            payload = vmstate.encode(descs[s.name], s.values)
        name = s.name.encode()
        out += struct.pack("<B", len(name)) + name
        out += struct.pack("<IIQ", s.instance_id, s.version, len(payload))
        out += payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def _inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise VMStateError(f"ram: corrupted ({e})") from None
    if len(out) > limit or not d.eof or d.unused_data:
        raise VMStateError("ram: not the size of this machine's RAM")
    return out


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
            sections.append(Section(name, inst, sver, _inflate(payload, machine.mem.size)))
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
