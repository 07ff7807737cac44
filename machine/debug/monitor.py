"""The human monitor: QEMU's command names and output shapes, reached through gdb's `monitor`
(qRcmd) and through `-monitor stdio`.

`Monitor.execute(line) -> str` is the whole interface; it never raises for a bad command (the
user gets a message). Commands that need the board (`info pci`, `info mtree`, `info virtio*`)
read its objects without side effects: config space straight from the device's bytes, rings
straight from guest RAM, BAR sizes from the device's BAR table (never by sizing writes).
"""

from __future__ import annotations

import os
import shlex
import struct
from typing import Callable

from ..config import ConfigError
from ..savevm_store import SnapshotError
from ..virtio.device import VirtioDevice
from ..virtio.pci import VirtioPciDevice
from ..virtio.props import parse_size
from ..virtio.spec import (BLK_FEATURE_NAMES, DEVICE_NAMES, FEATURE_NAMES, STATUS_NAMES, VIRTIO_ID_BLOCK,
                           VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE)
from .breakpoints import BreakpointError, DeviceBreakpoints
from .target import DebugAccessError

PCI_CLASS_NAMES = {0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0180: "Storage controller",
                   0x0200: "Ethernet controller", 0x0300: "VGA controller", 0x0600: "Host bridge",
                   0x0601: "ISA bridge", 0x0680: "Bridge", 0x0780: "Communication controller",
                   0x00FF: "Unclassified device"}

HELP = """\
help|?                                  -- show this help
info registers                          -- the CPU registers
info pci                                -- PCI devices: IDs, class, IRQ, BARs
info mtree                              -- memory and I/O address maps
info virtio                             -- list virtio devices
info virtio-status DEV                  -- status, features and queues of a virtio device
info virtio-queue-status DEV Q          -- ring addresses and indices of queue Q
info virtio-queue-element DEV Q [N]     -- decode the descriptor chain of avail entry N (default: next)
info breakpoints                        -- device breakpoints
info status                             -- running, paused, or paused (io-error) by a drive's rerror/werror=stop
info snapshots                          -- the named snapshots of this machine's disks
savevm NAME                             -- save the whole machine (RAM, CPU, devices, disks) as NAME
loadvm NAME                             -- go back to snapshot NAME (RAM and disks as they were)
delvm NAME                              -- delete snapshot NAME
x /fmt addr                             -- virtual memory dump (fmt = /Nfu: count, format x|d|u|o|c|i, size b|h|w|g)
xp /fmt addr                            -- physical memory dump
break DEV request [type=T] [sector=A[-B]] -- stop when the device sees a request (T: in|out|flush|get-id|discard|write-zeroes)
break DEV notify [queue=Q]              -- stop when the driver kicks a queue
break DEV status|features|needs-reset   -- stop on a status write, feature negotiation, DEVICE_NEEDS_RESET
delete N                                -- delete device breakpoint N
stop                                    -- stop the guest (monitor console)
c|cont                                  -- resume the guest (monitor console)
system_reset                            -- reset the machine
system_powerdown                        -- press the ACPI power button (the guest decides)
block_resize DRIVE SIZE                 -- resize a drive's image (SIZE in bytes, or with k/M/G/T); the device tells the guest
quit|q                                  -- quit the emulator
"""


def _attr(obj, *names, default=None):
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


def decode_features(bits: int, table: dict) -> list[str]:
    out = []
    for bit in range(64):
        if bits >> bit & 1:
            if bit in FEATURE_NAMES:
                name, desc = FEATURE_NAMES[bit]
            elif bit in table:
                name, desc = table[bit]
            else:
                name, desc = f"bit {bit}", "unknown feature"
            out.append(f"{name}: {desc}")
    return out


def decode_status(status: int) -> str:
    names = [n for bit, n in STATUS_NAMES if status & bit]
    return ", ".join(names) if names else "(reset)"


class Monitor:
    """One monitor, shared by gdb's `monitor` and the monitor console.

    machine: the board (or a stand-in in tests) for `info pci/mtree/virtio` and `xp`.
    on_quit / on_reset / on_stop / on_cont: what the session does for those commands.
    """

    def __init__(self, target, machine=None, breakpoints: DeviceBreakpoints | None = None,
                 on_quit: Callable[[], None] | None = None, on_reset: Callable[[], None] | None = None,
                 on_stop: Callable[[], None] | None = None, on_cont: Callable[[], None] | None = None,
                 is_running: Callable[[], bool] | None = None):
        self.target = target
        self.is_running = is_running
        self.machine = machine
        self.breakpoints = breakpoints
        self.on_quit, self.on_reset, self.on_stop, self.on_cont = on_quit, on_reset, on_stop, on_cont
        self.on_snapshot_loaded: Callable[[], None] | None = None     # e.g. the debugger forgets cached state
        self._commands = {
            "help": self.cmd_help, "?": self.cmd_help, "info": self.cmd_info,
            "x": self.cmd_x, "xp": self.cmd_xp, "break": self.cmd_break, "b": self.cmd_break,
            "delete": self.cmd_delete, "d": self.cmd_delete,
            "system_reset": self.cmd_reset, "system_powerdown": self.cmd_powerdown, "quit": self.cmd_quit, "q": self.cmd_quit,
            "stop": self.cmd_stop, "c": self.cmd_cont, "cont": self.cmd_cont,
            "block_resize": self.cmd_block_resize,
            "savevm": self.cmd_savevm, "loadvm": self.cmd_loadvm, "delvm": self.cmd_delvm,
        }
        self._info = {
            "registers": self.info_registers, "pci": self.info_pci, "mtree": self.info_mtree,
            "virtio": self.info_virtio, "virtio-status": self.info_virtio_status,
            "virtio-queue-status": self.info_virtio_queue_status,
            "virtio-queue-element": self.info_virtio_queue_element,
            "breakpoints": self.info_breakpoints, "break": self.info_breakpoints,
            "status": self.info_status, "snapshots": self.info_snapshots,
        }

    # -- entry point ----------------------------------------------------------------------------
    def execute(self, line: str) -> str:
        line = line.strip()
        if not line:
            return ""
        # QEMU accepts `x/4xw addr` with the format glued to the command.
        head = line.split(None, 1)[0]
        if "/" in head and head.split("/")[0] in ("x", "xp"):
            cmd, rest = head.split("/", 1)
            args = ["/" + rest] + line.split()[1:]
        else:
            try:
                parts = shlex.split(line)
            except ValueError:
                parts = line.split()
            cmd, args = parts[0], parts[1:]
        fn = self._commands.get(cmd)
        if fn is None:
            return f"unknown command: '{cmd}'\n"
        try:
            return fn(args)
        except DebugAccessError as exc:
            return f"{exc}\n"
        except (ValueError, IndexError, KeyError) as exc:
            return f"{cmd}: {exc}\n"

    def cmd_help(self, args) -> str:
        return HELP

    def cmd_info(self, args) -> str:
        if not args:
            return "info subcommands: " + ", ".join(sorted(self._info)) + "\n"
        fn = self._info.get(args[0])
        if fn is None:
            return f"info: unknown subcommand '{args[0]}'\n"
        return fn(args[1:])

    def cmd_quit(self, args) -> str:
        if self.on_quit:
            self.on_quit()
        return ""

    def cmd_reset(self, args) -> str:
        if self.on_reset:
            self.on_reset()
            return ""
        return "system_reset is not available here\n"

    def cmd_powerdown(self, args) -> str:
        pm = _attr(self.machine, "devices", default={}).get("acpi-pm")
        if pm is None:
            return "system_powerdown is not available here\n"
        pm.power_button()
        return ""

    def cmd_block_resize(self, args) -> str:
        if len(args) != 2:
            return "block_resize: usage: block_resize DRIVE SIZE\n"
        resize = getattr(self.machine, "block_resize", None)
        if resize is None:
            return "block_resize is not available here\n"
        try:
            size = parse_size("size", args[1])
        except ConfigError as e:
            return f"block_resize: {e}\n"
        resize(args[0], size)          # ValueError: reported by execute() as one line
        return ""

    # -- snapshots (the board's savevm_store): errors as QEMU prints them ----------------------
    def _snapshot_cmd(self, what: str, args) -> str:
        fn = getattr(self.machine, what, None)
        if fn is None:
            return f"{what} is not available here\n"
        if len(args) != 1:
            return f"{what}: usage: {what} NAME\n"
        try:
            fn(args[0])
        except SnapshotError as e:      # one line; the machine is unchanged
            return f"Error: {e}\n"
        if self.on_snapshot_loaded is not None and what == "loadvm":
            self.on_snapshot_loaded()
        return ""

    def cmd_savevm(self, args) -> str:
        return self._snapshot_cmd("savevm", args)

    def cmd_loadvm(self, args) -> str:
        return self._snapshot_cmd("loadvm", args)

    def cmd_delvm(self, args) -> str:
        return self._snapshot_cmd("delvm", args)

    def info_snapshots(self, args) -> str:
        fn = getattr(self.machine, "info_snapshots", None)
        return fn() if fn is not None else "info snapshots is not available here\n"

    def cmd_stop(self, args) -> str:
        if self.on_stop:
            self.on_stop()
        return ""

    def cmd_cont(self, args) -> str:
        if self.on_cont:
            self.on_cont()
        return ""

    def info_status(self, args) -> str:
        reason = getattr(self.machine, "paused_reason", None)
        if reason:
            return f"VM status: paused ({reason})\n"
        running = self.is_running() if self.is_running is not None else False
        return "VM status: running\n" if running else "VM status: paused\n"

    # -- registers ------------------------------------------------------------------------------
    def info_registers(self, args) -> str:
        r = self.target.read_registers()

        def g(name, default=0):
            v = r.get(name)
            if v is None and name[0] == "e":
                v = r.get("r" + name[1:])
            return default if v is None else v

        long_mode = any(k in r for k in ("r8", "rip")) and getattr(self.target, "arch", "") == "x86-64"
        lines = []
        if long_mode:
            names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
            for i in range(0, 16, 4):
                lines.append(" ".join(f"{n.upper():<3}={g(n):016x}" for n in names[i:i + 4]))
            lines.append(f"RIP={g('rip'):016x} RFL={g('eflags') & 0xFFFFFFFF:08x} {self._flags(g('eflags'))}")
        else:
            lines.append(" ".join(f"{n.upper()}={g(n) & 0xFFFFFFFF:08x}" for n in ("eax", "ebx", "ecx", "edx")))
            lines.append(" ".join(f"{n.upper()}={g(n) & 0xFFFFFFFF:08x}" for n in ("esi", "edi", "ebp", "esp")))
            lines.append(f"EIP={g('eip') & 0xFFFFFFFF:08x} EFL={g('eflags') & 0xFFFFFFFF:08x} "
                         f"{self._flags(g('eflags'))} CPL={g('cs') & 3}")
        segment = getattr(getattr(self.machine, "cpu", None), "segment", None)
        for seg in ("es", "cs", "ss", "ds", "fs", "gs"):
            tail = ""
            if segment is not None:
                try:
                    _, base, limit, flags = segment(seg)
                    tail = f" {base & 0xFFFFFFFF:08x} {limit & 0xFFFFFFFF:08x} {flags & 0xFFFFFFFF:08x}"
                except Exception:
                    tail = ""
            elif r.get(f"{seg}_base") is not None:
                tail = f" {r[seg + '_base']:08x} {r.get(seg + '_limit', 0):08x}"
            lines.append(f"{seg.upper():<3}={g(seg) & 0xFFFF:04x}{tail}")
        for pair in (("gdtr", "GDT"), ("idtr", "IDT")):
            base = r.get(pair[0] + "_base", r.get(pair[0]))
            if base is not None:
                lines.append(f"{pair[1]}=     {base:08x} {r.get(pair[0] + '_limit', 0):08x}")
        crs = [c for c in ("cr0", "cr2", "cr3", "cr4") if c in r]
        if crs:
            lines.append(" ".join(f"{c.upper()}={r[c]:08x}" for c in crs))
        if "efer" in r:
            lines.append(f"EFER={r['efer']:016x}")
        mode = getattr(getattr(self.machine, "cpu", None), "mode", None)
        if isinstance(mode, str):
            lines.append(f"mode: {mode}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _flags(eflags: int) -> str:
        letters = [(11, "O"), (10, "D"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C")]
        return "[" + "".join(ch if eflags >> bit & 1 else "-" for bit, ch in letters) + "]"

    # -- PCI ------------------------------------------------------------------------------------
    def _pci_devices(self):
        bus = _attr(self.machine, "pci_bus", "pci")
        if bus is None:
            return None
        return sorted(getattr(bus, "devices", {}).items())

    def info_pci(self, args) -> str:
        devs = self._pci_devices()
        if devs is None:
            return "no PCI bus\n"
        out = []
        for devfn, dev in devs:
            cfg = bytes(dev.config)
            vendor, device = struct.unpack_from("<HH", cfg, 0)
            rev = cfg[8]
            class_code = cfg[0x0B] << 8 | cfg[0x0A]
            sub_vendor, sub_id = struct.unpack_from("<HH", cfg, 0x2C)
            cmd = struct.unpack_from("<H", cfg, 4)[0]
            out.append(f"  Bus  0, device {devfn >> 3:3d}, function {devfn & 7}:")
            cname = PCI_CLASS_NAMES.get(class_code, f"Class {class_code:04x}")
            out.append(f"    {cname}: PCI device {vendor:04x}:{device:04x}")
            out.append(f"      PCI subsystem {sub_vendor:04x}:{sub_id:04x}")
            if rev:
                out.append(f"      revision {rev}")
            pin = cfg[0x3D]
            if pin:
                out.append(f"      IRQ {cfg[0x3C]}, pin {'ABCD'[(pin - 1) & 3]}")
            out.append(f"      command: {cmd:#06x} (I/O {'on' if cmd & 1 else 'off'}, memory "
                       f"{'on' if cmd & 2 else 'off'}, bus master {'on' if cmd & 4 else 'off'})")
            for bar in getattr(dev, "bars", []) or []:
                if bar is None:
                    continue
                raw = struct.unpack_from("<I", cfg, 0x10 + 4 * bar.index)[0]
                if bar.is_io:
                    base = raw & 0xFFFFFFFC
                    kind = "I/O"
                else:
                    base = raw & 0xFFFFFFF0
                    if bar.is64:
                        base |= struct.unpack_from("<I", cfg, 0x14 + 4 * bar.index)[0] << 32
                    kind = ("64 bit" if bar.is64 else "32 bit") + \
                        (" prefetchable" if bar.prefetchable else "") + " memory"
                if base == 0 or base + bar.size - 1 > (1 << 64) - 1:
                    out.append(f"      BAR{bar.index}: {kind} at 0x{'f' * 8 if bar.is_io else 'f' * 16} [0x{bar.size - 1:x}].")
                    continue
                where = "" if bar.mapped_at is not None else " (not decoding)"
                out.append(f"      BAR{bar.index}: {kind} at {base:#x} [{base + bar.size - 1:#x}].{where}")
            caps = self._pci_caps(cfg)
            if caps:
                out.append("      capabilities: " + ", ".join(caps))
            msix = getattr(dev, "msix", None)
            if msix is not None:
                out.append("      " + msix.describe())
            vdev = _find_virtio(dev)
            dev_id = getattr(vdev, "id", None) if vdev is not None else None
            out.append(f'      id "{dev_id or getattr(dev, "name", "")}"')
        return "\n".join(out) + "\n"

    @staticmethod
    def _pci_caps(cfg: bytes) -> list[str]:
        if not struct.unpack_from("<H", cfg, 6)[0] & 0x10:
            return []
        names = {0x01: "PM", 0x05: "MSI", 0x09: "vendor", 0x10: "PCIe", 0x11: "MSI-X"}
        virtio_types = {1: "common", 2: "notify", 3: "isr", 4: "device", 5: "pci-cfg"}
        out, ptr, seen = [], cfg[0x34] & 0xFC, set()
        while ptr and ptr not in seen and ptr + 2 <= len(cfg):
            seen.add(ptr)
            cap_id = cfg[ptr]
            text = f"{names.get(cap_id, hex(cap_id))}@{ptr:#04x}"
            if cap_id == 0x09 and ptr + 4 < len(cfg):
                text += f"(virtio {virtio_types.get(cfg[ptr + 3], cfg[ptr + 3])})"
            out.append(text)
            ptr = cfg[ptr + 1] & 0xFC
        return out

    # -- address maps ---------------------------------------------------------------------------
    def info_mtree(self, args) -> str:
        m = self.machine
        if m is None:
            return "no machine\n"
        rows = []
        mem = _attr(m, "mem")
        if mem is not None:
            for r in mem.ranges:
                kind = "ram, read-only for DMA" if r.read_only else "ram"
                rows.append((r.gpa, r.gpa + r.size - 1, 0, "ram", f"{kind} @{r.host_offset:#x}"))
        mmap = _attr(m, "memory_map")
        if mmap is not None:
            for base, size, name in mmap.reserved:
                if name != "ram":
                    rows.append((base, base + size - 1, 0, "rom", name))
            for reg in mmap.regions:
                state = "" if reg.active else " [not mapped: overlaps]"
                rows.append((reg.base, reg.end - 1, 1, "i/o", reg.name + state))
        out = ["address-space: memory",
               "  0000000000000000-ffffffffffffffff (prio 0, i/o): system"]
        for lo, hi, prio, kind, name in sorted(set(rows)):
            out.append(f"    {lo:016x}-{hi:016x} (prio {prio}, {kind}): {name}")
        io = _attr(m, "io")
        if io is not None:
            out += ["", "address-space: I/O",
                    "  0000000000000000-000000000000ffff (prio 0, i/o): io"]
            for rng in sorted(io.ranges, key=lambda x: (x.base, x.size)):
                out.append(f"    {rng.base:016x}-{rng.base + rng.size - 1:016x} (prio 0, i/o): {rng.name}")
        return "\n".join(out) + "\n"

    # -- virtio ---------------------------------------------------------------------------------
    def virtio_devices(self) -> list[tuple[str, object, object]]:
        """[(path, VirtioDevice, PciDevice or None)] in bus order."""
        found, seen = [], set()
        for devfn, dev in self._pci_devices() or []:
            vdev = _find_virtio(dev)
            if vdev is not None and id(vdev) not in seen:
                seen.add(id(vdev))
                dev_id = getattr(vdev, "id", None)
                # QEMU's QOM path for a device the user named; ours by slot for the others
                path = f"/machine/peripheral/{dev_id}" if dev_id else f"/machine/pci/{devfn >> 3:02x}.{devfn & 7}"
                found.append((f"{path}/virtio-backend", vdev, dev))
        for name, dev in (getattr(self.machine, "devices", None) or {}).items():
            vdev = _find_virtio(dev)
            if vdev is not None and id(vdev) not in seen:
                seen.add(id(vdev))
                found.append((f"/machine/{name}/virtio-backend", vdev, None))
        return found

    def _virtio(self, spec: str):
        path, vdev, _pci = self._virtio_with_transport(spec)
        return path, vdev

    def _virtio_with_transport(self, spec: str):
        devs = self.virtio_devices()
        if not devs:
            raise ValueError("no virtio devices")
        for path, vdev, pci in devs:
            devfn = getattr(pci, "devfn", None)
            slot = f"{devfn >> 3:02x}.{devfn & 7}" if isinstance(devfn, int) else \
                (path.split("/")[3] if path.startswith("/machine/pci/") else None)
            dev_id = getattr(vdev, "id", None)
            names = {path, path.rsplit("/virtio-backend", 1)[0], dev_id,
                     dev_id and getattr(vdev, "label", None), slot, slot and "00:" + slot} - {None}
            if spec in names:
                return path, vdev, pci
        for path, vdev, pci in devs:          # by model: the first one (name it when there are several)
            if spec in (_virtio_name(vdev), getattr(pci, "name", None), getattr(vdev, "name", None)):
                return path, vdev, pci
        if spec.isdigit() and int(spec) < len(devs):
            return devs[int(spec)]
        raise ValueError(f"no virtio device '{spec}' (see 'info virtio')")

    def info_virtio(self, args) -> str:
        devs = self.virtio_devices()
        if not devs:
            return "No VirtIO devices\n"
        return "".join(f"{path} [{_virtio_name(vdev)}]\n" for path, vdev, _ in devs)

    def info_virtio_status(self, args) -> str:
        if not args:
            raise ValueError("usage: info virtio-status DEV")
        path, vdev, pci = self._virtio_with_transport(args[0])
        st = vdev.state()
        status = st.status
        table = BLK_FEATURE_NAMES if st.device_id == VIRTIO_ID_BLOCK else {}
        out = [f"{path}:",
               f"  device_name:             {_virtio_name(vdev)}",
               f"  device_id:               {st.device_id}",
               f"  broken:                  {'true' if st.broken else 'false'}",
               f"  started:                 {'true' if st.started else 'false'}",
               f"  num_vqs:                 {len(st.queues)}",
               f"  queue_sel:               {self._queue_sel(vdev)}",
               f"  isr:                     {st.isr}",
               f"  endianness:              little",
               f"  status: {status:#04x}",
               f"        {decode_status(status)}"]
        for title, bits in (("Guest features", st.guest_features), ("Host features", st.host_features)):
            out.append(f"  {title}: {bits:#018x}")
            out += [f"        {line}," for line in decode_features(bits, table)]
        out.append(f"  config_generation:       {st.config_generation}")
        out += _msix_lines(pci)
        return "\n".join(out) + "\n"

    def _queue_sel(self, vdev) -> int:
        """The queue the transport has selected (its common config's queue_select)."""
        for _, v, dev in self.virtio_devices():
            if v is vdev and isinstance(dev, VirtioPciDevice):
                return dev.queue_sel
        return 0

    def _queue(self, vdev, qspec: str):
        queues = vdev.state().queues
        q = int(qspec, 0)
        if not 0 <= q < len(queues):
            raise ValueError(f"invalid queue index {q} (device has {len(queues)})")
        return q, queues[q]

    def info_virtio_queue_status(self, args) -> str:
        if len(args) < 2:
            raise ValueError("usage: info virtio-queue-status DEV QUEUE")
        path, vdev, pci = self._virtio_with_transport(args[0])
        q, vq = self._queue(vdev, args[1])
        vectors = getattr(pci, "queue_vectors", None)
        vector = [] if vectors is None or getattr(pci, "msix", None) is None else \
            [f"  msix_vector:          {'NO_VECTOR' if vectors[q] == 0xFFFF else vectors[q]}"]
        if vq.packed:
            return self._packed_queue_status(path, vdev, q, vq, vector)
        shadow = self._guest_u16(vq.avail_addr + 2) if vq.avail_addr else None
        out = [f"{path}:",
               f"  device_name:          {_virtio_name(vdev)}",
               f"  queue_index:          {q}",
               f"  inuse:                {vq.inflight_count}",
               f"  used_idx:             {vq.used_idx}",
               f"  last_avail_idx:       {vq.last_avail_idx}",
               f"  shadow_avail_idx:     {shadow if shadow is not None else '?'}",
               f"  enabled:              {'true' if vq.enabled else 'false'}",
               *vector,
               "  VRing:",
               f"    num:          {vq.size}",
               f"    num_default:  {vq.max_size}",
               f"    desc:         0x{vq.desc_addr:016x}",
               f"    avail:        0x{vq.avail_addr:016x}",
               f"    used:         0x{vq.used_addr:016x}"]
        return "\n".join(out) + "\n"

    def _packed_queue_status(self, path, vdev, q, vq, vector: list[str]) -> str:
        """A packed ring (2.8): ring slots and wrap counters, and both event-suppression
        structures (off_wrap, flags) as the guest's memory holds them."""
        def event(gpa: int) -> str:
            if not gpa:
                return "?"
            off_wrap, flags = self._guest_u16(gpa), self._guest_u16(gpa + 2)
            name = {0: "ENABLE", 1: "DISABLE", 2: "DESC"}.get(flags, str(flags))
            return f"{name} off={off_wrap & 0x7FFF} wrap={off_wrap >> 15}"
        out = [f"{path}:",
               f"  device_name:          {_virtio_name(vdev)}",
               f"  queue_index:          {q}",
               f"  packed:               true",
               f"  inuse:                {vq.inflight_count}",
               f"  last_avail_idx:       {vq.last_avail_idx} (wrap counter {int(vq.avail_wrap)})",
               f"  used_idx:             {vq.used_idx} (wrap counter {int(vq.used_wrap)})",
               f"  enabled:              {'true' if vq.enabled else 'false'}",
               f"  driver event:         {event(vq.avail_addr)}",
               f"  device event:         {event(vq.used_addr)}",
               *vector,
               "  VRing:",
               f"    num:          {vq.size}",
               f"    num_default:  {vq.max_size}",
               f"    desc:         0x{vq.desc_addr:016x}",
               f"    driver:       0x{vq.avail_addr:016x}",
               f"    device:       0x{vq.used_addr:016x}"]
        return "\n".join(out) + "\n"

    def info_virtio_queue_element(self, args) -> str:
        if len(args) < 2:
            raise ValueError("usage: info virtio-queue-element DEV QUEUE [INDEX]")
        path, vdev = self._virtio(args[0])
        q, vq = self._queue(vdev, args[1])
        size, desc, avail, used = vq.size, vq.desc_addr, vq.avail_addr, vq.used_addr
        if not size or not avail:
            return f"{path}:\n  queue {q} is not set up\n"
        if vq.packed:                 # the device's own walk of the next chain (2.8)
            chain = vdev.peek_chain(q, int(args[2], 0) if len(args) > 2 else None)
            return f"{path}:\n  device_name: {_virtio_name(vdev)}\n  packed: {chain}\n"
        last = vq.last_avail_idx
        index = int(args[2], 0) if len(args) > 2 else last
        avail_flags, avail_idx = self._guest_u16(avail), self._guest_u16(avail + 2)
        used_flags, used_idx = self._guest_u16(used), self._guest_u16(used + 2)
        head = self._guest_u16(avail + 4 + 2 * (index % size))
        out = [f"{path}:",
               f"  device_name: {_virtio_name(vdev)}",
               f"  index:   {index}",
               f"  desc:",
               f"    descs:"]
        out += ["        " + line for line in self._chain(desc, size, head)]
        out += ["  avail:",
                f"    flags: {avail_flags}",
                f"    idx:   {avail_idx}",
                f"    ring:  {head}",
                "  used:",
                f"    flags: {used_flags}",
                f"    idx:   {used_idx}"]
        return "\n".join(out) + "\n"

    def _guest_u16(self, gpa: int) -> int:
        return struct.unpack("<H", self._phys(gpa, 2))[0]

    def _phys(self, gpa: int, n: int) -> bytes:
        mem = _attr(self.machine, "mem")
        if mem is not None:
            try:
                return bytes(mem.read(gpa, n))
            except Exception as exc:
                raise DebugAccessError(f"cannot read guest-physical {gpa:#x}: {exc}") from None
        return self.target.read_physical(gpa, n)

    def _chain(self, table: int, size: int, head: int) -> list[str]:
        """Decode a descriptor chain read-only, bounded like the device's own walk. The
        descriptors themselves are shown (flags, the indirect table, a chain that breaks a
        rule up to where it does), as QEMU shows them: the device's walk (`peek_chain`) keeps
        only the buffers of a valid chain."""
        lines, idx, seen = [], head, 0
        indirect_done = False
        limit = size
        while True:
            if idx >= limit:
                lines.append(f"(index {idx} beyond table of {limit})")
                break
            if seen >= limit:
                lines.append("(loop in descriptor chain)")
                break
            seen += 1
            addr, length, flags, nxt = struct.unpack("<QIHH", self._phys(table + 16 * idx, 16))
            tags = [t for bit, t in ((VIRTQ_DESC_F_WRITE, "write"), (VIRTQ_DESC_F_INDIRECT, "indirect"))
                    if flags & bit]
            lines.append(f"addr 0x{addr:x} len {length}" + (f" ({', '.join(tags)})" if tags else ""))
            if flags & VIRTQ_DESC_F_INDIRECT and not indirect_done and length >= 16 and length % 16 == 0:
                indirect_done = True
                table, limit, idx, seen = addr, length // 16, 0, 0
                lines.append("  indirect table:")
                continue
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            idx = nxt
            if len(lines) > 64:
                lines.append("...")
                break
        return lines

    # -- memory dumps -----------------------------------------------------------------------------
    def cmd_x(self, args) -> str:
        return self._dump(args, physical=False)

    def cmd_xp(self, args) -> str:
        return self._dump(args, physical=True)

    def _dump(self, args, physical: bool) -> str:
        count, fmt, size = 1, "x", 4
        if args and args[0].startswith("/"):
            count, fmt, size = parse_format(args[0][1:])
            args = args[1:]
        if not args:
            raise ValueError("missing address")
        addr = self._eval(" ".join(args))
        read = (lambda a, n: self._phys(a, n)) if physical else self.target.read_memory
        if fmt == "i":
            return self._disasm(addr, count, read)
        data = read(addr, count * size)
        per_line = {1: 8, 2: 8, 4: 4, 8: 2}[size]
        if fmt == "c":
            per_line = 16
        lines = []
        for i in range(0, count, per_line):
            items = []
            for j in range(i, min(count, i + per_line)):
                v = int.from_bytes(data[j * size:(j + 1) * size], "little")
                items.append(_fmt_value(v, fmt, size))
            sep = "" if fmt == "c" else " "
            lines.append(f"{addr + i * size:08x}: " + sep.join(items))
        return "\n".join(lines) + "\n"

    def _disasm(self, addr: int, count: int, read) -> str:
        from . import disasm
        cpu = getattr(self.machine, "cpu", None)
        code_bits = getattr(cpu, "code_bits", None)
        bits = code_bits() if callable(code_bits) else \
            {"real": 16, "long": 64}.get(getattr(cpu, "mode", ""), 32)
        data = b""
        for n in (count * 15, 64, 16):            # shrink if the tail crosses into unmapped memory
            try:
                data = read(addr, n)
                break
            except DebugAccessError:
                continue
        if not data:
            raise DebugAccessError(f"cannot access memory at {addr:#x}")
        lines = disasm.disassemble(data, addr, bits, count)
        return "\n".join(lines) + "\n"

    def _eval(self, expr: str) -> int:
        """Numbers (hex/decimal), $registers, + and -: enough for `x/8i $eip`."""
        expr = expr.replace(" ", "")
        total, sign, tok = 0, 1, ""
        for ch in expr + "+":
            if ch in "+-" and tok:
                total += sign * self._term(tok)
                sign, tok = (1 if ch == "+" else -1), ""
            elif ch in "+-":
                sign = -sign if ch == "-" else sign
            else:
                tok += ch
        return total & 0xFFFFFFFFFFFFFFFF

    def _term(self, tok: str) -> int:
        if tok.startswith("$") or tok.startswith("%"):
            regs = self.target.read_registers()
            name = tok[1:].lower()
            if name == "pc":                # QEMU's $pc: the linear address (CS base + EIP)
                pc = getattr(self.target, "pc", None)
                if callable(pc):
                    return pc()
                name = "eip"
            if name not in regs and name[0] == "e" and "r" + name[1:] in regs:
                name = "r" + name[1:]
            if name not in regs:
                raise ValueError(f"unknown register '{tok}'")
            return regs[name]
        return int(tok, 0) if tok.lower().startswith(("0x", "0o", "0b")) else int(tok, 16 if any(c in "abcdefABCDEF" for c in tok) else 10)

    # -- device breakpoints -----------------------------------------------------------------------
    def cmd_break(self, args) -> str:
        if self.breakpoints is None:
            return "device breakpoints are not available here\n"
        try:
            bp = self.breakpoints.add(" ".join(args))
        except BreakpointError as exc:
            return f"break: {exc}\n"
        return f"Device breakpoint {bp.number}: {bp.describe()}\n"

    def cmd_delete(self, args) -> str:
        if self.breakpoints is None:
            return "device breakpoints are not available here\n"
        if not args:
            self.breakpoints.clear()
            return ""
        n = int(args[0])
        return "" if self.breakpoints.delete(n) else f"No device breakpoint number {n}.\n"

    def info_breakpoints(self, args) -> str:
        if self.breakpoints is None:
            return "No device breakpoints.\n"
        return self.breakpoints.listing()


def parse_format(spec: str) -> tuple[int, str, int]:
    """QEMU's /Nfu: count, format (x d u o c i), unit size (b h w g)."""
    i = 0
    while i < len(spec) and spec[i].isdigit():
        i += 1
    count = int(spec[:i]) if i else 1
    fmt, size = "x", 4
    for ch in spec[i:]:
        if ch in "xduoci":
            fmt = ch
        elif ch in "bhwg":
            size = {"b": 1, "h": 2, "w": 4, "g": 8}[ch]
        else:
            raise ValueError(f"invalid char '{ch}' in format")
    if fmt == "c" and not any(ch in "bhwg" for ch in spec[i:]):
        size = 1
    if count > 65536:
        raise ValueError("count too large")
    return count, fmt, size


def _fmt_value(v: int, fmt: str, size: int) -> str:
    bits = 8 * size
    if fmt == "x":
        return f"0x{v:0{2 * size}x}"
    if fmt == "u":
        return f"{v:>{len(str(1 << bits))}}"
    if fmt == "d":
        s = v - (1 << bits) if v >> (bits - 1) else v
        return f"{s:>{len(str(1 << bits)) + 1}}"
    if fmt == "o":
        return f"{v:#o}"
    if fmt == "c":
        return chr(v) if 0x20 <= v < 0x7F else f"\\x{v & 0xFF:02x}"
    return hex(v)


def _msix_lines(pci) -> list[str]:
    """The transport's vector mappings, and what the MSI-X table says about each vector used."""
    msix = getattr(pci, "msix", None)
    if msix is None or not hasattr(pci, "queue_vectors"):
        return []

    def show(v: int) -> str:
        if v == 0xFFFF:
            return "NO_VECTOR"
        flags = [w for w, on in (("masked", msix.vector_masked(v)), ("pending", msix.is_pending(v))) if on]
        return f"{v}" + (f" ({', '.join(flags)})" if flags else "")

    state = "enabled" if msix.enabled else "disabled"
    if msix.function_masked:
        state += ", function masked"
    out = [f"  msix:                    {state}, {msix.nvectors} vectors",
           f"  config_vector:           {show(pci.config_vector)}"]
    out += [f"  queue {i} vector:          {show(v)}" for i, v in enumerate(pci.queue_vectors)]
    return out


def _find_virtio(dev) -> VirtioDevice | None:
    """The VirtioDevice behind a board object: itself, or the one its transport carries."""
    if isinstance(dev, VirtioDevice):
        return dev
    inner = getattr(dev, "vdev", None)          # the transports' name for their device
    return inner if isinstance(inner, VirtioDevice) else None


def _virtio_name(vdev: VirtioDevice) -> str:
    return DEVICE_NAMES.get(vdev.device_id, vdev.name)


class MonitorConsole:
    """`-monitor stdio`: a line-oriented monitor on a pair of file descriptors, read without
    blocking between slices and blocking while the guest is stopped."""

    PROMPT = "(qemu) "

    def __init__(self, infd: int, out):
        self.infd = infd
        self.out = out
        self.buf = b""
        self.pending: list[str] = []       # typed-ahead lines after a `cont`, run once resumed
        self.closed = False

    def greet(self) -> None:
        self.write("machine monitor - type 'help' for more information\n" + self.PROMPT)

    def write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass

    def read_lines(self) -> list[str]:
        try:
            data = os.read(self.infd, 4096)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.closed = True          # EOF: stop watching, keep the guest running
            return []
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]
