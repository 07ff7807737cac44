"""Named snapshots in files: QEMU's savevm / loadvm / delvm / info snapshots for raw images.

QEMU keeps snapshots inside qcow2 images and refuses them on raw ones. Here they live in a
directory beside the first writable disk image, `IMAGE.snapshots/`, one set of files per name:

    <hex of the name>.vm            header + the encoded machine state (savevm.encode)
    <hex of the name>.<k>.undo      drive k's undo log (k: the writable drives in id order)

The `.vm` header: magic "PCVMTAG1", u32 id, u64 date (host seconds), u64 virtual clock (ns),
u64 instructions retired, u32 name length, the name (UTF-8). An `.undo` file: magic
"PCVMUNDO", u64 the disk size at the snapshot, then records (u64 block index, u32 length,
the block's contents before the first write after the snapshot; block/undo.py). The image
always holds what the guest last wrote; loading a snapshot writes its logged blocks back.

Every machine that opens the image writable attaches the logs of every snapshot found there
(`SnapshotStore.attach`), so its writes keep all of them loadable. A write by anything else
(another program, a machine with -snapshot or the image read-only) is not seen: such
snapshots then restore a disk that mixes both. Names are hex-encoded in file names, so any
name is safe. All files are untrusted when read: bounded, checked, one error line.
"""

from __future__ import annotations

import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from . import savevm
from .block.raw import RawImage
from .block.undo import BLOCK, UndoLog
from .vmstate import VMStateError

VM_MAGIC = b"PCVMTAG1"
UNDO_MAGIC = b"PCVMUNDO"
_HEADER = struct.Struct("<8sIQQQI")
_UNDO_HEADER = struct.Struct("<8sQ")
_RECORD = struct.Struct("<QI")
MAX_NAME = 255
MAX_STATE_FILE = 1 << 40


class SnapshotError(Exception):
    """A snapshot command that cannot be carried out; the message is QEMU's where QEMU has one."""


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    name: str
    vm_state_size: int
    date: int
    vm_clock_ns: int
    icount: int


class FileUndoLog(UndoLog):
    """An undo log appended to a file as blocks are recorded (fsync'd with the image's flush)."""

    def __init__(self, path: Path, size: int, blocks: dict[int, bytes] | None = None):
        super().__init__(size)
        self.path = path
        if blocks is None:
            self._rewrite()
        else:
            self.blocks = blocks
        self._f = open(path, "r+b")
        self._f.seek(0, os.SEEK_END)

    def _rewrite(self) -> None:
        with open(self.path, "wb") as f:
            f.write(_UNDO_HEADER.pack(UNDO_MAGIC, self.size))

    def record(self, index: int, data: bytes) -> None:
        self._f.write(_RECORD.pack(index, len(data)) + data)
        self._f.flush()
        self.blocks[index] = data

    def clear(self, size: int) -> None:
        super().clear(size)
        self._f.close()
        self._rewrite()
        self._f = open(self.path, "r+b")
        self._f.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._f.close()


def read_undo(path: Path, disk_size: int) -> tuple[int, dict[int, bytes]]:
    """(size at the snapshot, blocks) of an undo file; VMStateError if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VMStateError(f"cannot read '{path.name}': {e.strerror}") from None
    if len(data) < _UNDO_HEADER.size:
        raise VMStateError(f"'{path.name}' is truncated")
    magic, size = _UNDO_HEADER.unpack_from(data)
    if magic != UNDO_MAGIC or size % 512 or size > (1 << 50):
        raise VMStateError(f"'{path.name}' is not an undo log")
    blocks: dict[int, bytes] = {}
    pos = _UNDO_HEADER.size
    while pos < len(data):
        if pos + _RECORD.size > len(data):
            raise VMStateError(f"'{path.name}' is truncated")
        index, n = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if n > BLOCK or pos + n > len(data) or index * BLOCK >= size or index in blocks \
                or n != min(BLOCK, size - index * BLOCK):
            raise VMStateError(f"'{path.name}' is corrupted")
        blocks[index] = data[pos:pos + n]
        pos += n
    return size, blocks


def _size_to_str(n: int) -> str:
    """QEMU's size_to_str: 3 significant digits in binary units, the next unit from 1000 of one
    (so 1000 KiB shows as 0.977 MiB)."""
    exponent = math.frexp(n / (1000 / 1024))[1]
    unit = min(6, int((exponent - 1) / 10))          # C's division: truncates toward zero
    return f"{n / (1 << (10 * unit)):.3g} {('', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei')[unit]}B"


class SnapshotStore:
    """The named snapshots of one machine."""

    def __init__(self, machine, directory: Path, drives: list[tuple[str, object]]):
        self.machine = machine
        self.dir = directory
        self.drives = drives                    # [(drive id, Journal)] in file-index order
        self.logs: dict[str, list[UndoLog | None]] = {}     # name -> per-drive logs
        self.broken: dict[str, str] = {}        # name -> why it cannot be loaded

    # -- finding the store -------------------------------------------------------------------
    @staticmethod
    def _drives(machine) -> list[tuple[str, object]]:
        return sorted(((str(drive_id), journal) for drive_id, journal in machine.journals.items()),
                      key=lambda item: item[0])

    @classmethod
    def locate(cls, machine) -> "SnapshotStore":
        """The store of `machine` (its files may not exist yet), or SnapshotError in QEMU's
        words when no disk can hold one."""
        drives = cls._drives(machine)
        for drive_id, journal in drives:
            if not isinstance(journal.inner, RawImage):
                raise SnapshotError(f"Device '{drive_id}' is writable but does not support snapshots")
        if not drives:
            raise SnapshotError("no block device can store vmstate for snapshot")
        image = Path(drives[0][1].inner.filename)
        return cls(machine, image.with_name(image.name + ".snapshots"), drives)

    @classmethod
    def attach(cls, machine) -> "SnapshotStore | None":
        """At start-up: keep every existing snapshot of this image loadable from now on."""
        try:
            store = cls.locate(machine)
        except SnapshotError:
            return None
        if not store.dir.is_dir():
            return store
        for name in store.names():
            store._open_logs(name)
        return store

    # -- files -------------------------------------------------------------------------------
    def _stem(self, name: str) -> str:
        return name.encode("utf-8", "surrogateescape").hex()

    def _vm_path(self, name: str) -> Path:
        return self.dir / f"{self._stem(name)}.vm"

    def _undo_path(self, name: str, k: int) -> Path:
        return self.dir / f"{self._stem(name)}.{k}.undo"

    def _read_header(self, path: Path) -> tuple[SnapshotInfo, int]:
        """(info, offset of the state) of a .vm file."""
        with open(path, "rb") as f:
            head = f.read(_HEADER.size + MAX_NAME)
            size = os.fstat(f.fileno()).st_size
        if len(head) < _HEADER.size:
            raise VMStateError(f"'{path.name}' is truncated")
        magic, ident, date, clock, icount, n = _HEADER.unpack_from(head)
        if magic != VM_MAGIC or n > MAX_NAME or len(head) < _HEADER.size + n:
            raise VMStateError(f"'{path.name}' is not a snapshot")
        try:
            name = head[_HEADER.size:_HEADER.size + n].decode("utf-8")
        except UnicodeDecodeError:
            raise VMStateError(f"'{path.name}' has a bad name") from None
        start = _HEADER.size + n
        return SnapshotInfo(ident, name, size - start, date, clock, icount), start

    def infos(self) -> list[SnapshotInfo]:
        out = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*.vm")):
            try:
                info, _ = self._read_header(path)
            except (VMStateError, OSError):
                continue
            if path.name == f"{self._stem(info.name)}.vm":
                out.append(info)
        return sorted(out, key=lambda i: i.id)

    def names(self) -> list[str]:
        return [i.name for i in self.infos()]

    def _open_logs(self, name: str) -> None:
        logs: list[UndoLog | None] = []
        for k, (drive_id, journal) in enumerate(self.drives):
            path = self._undo_path(name, k)
            try:
                size, blocks = read_undo(path, journal.size)
                log = FileUndoLog(path, size, blocks)
            except (VMStateError, OSError) as e:
                self.broken[name] = f"Snapshot '{name}': {e}"
                logs.append(None)
                continue
            journal.logs.append(log)
            logs.append(log)
        self.logs[name] = logs

    def _close_logs(self, name: str) -> None:
        for (drive_id, journal), log in zip(self.drives, self.logs.pop(name, [])):
            if log is not None:
                journal.stop_log(log)
                log.close()
        self.broken.pop(name, None)

    # -- commands ----------------------------------------------------------------------------
    def save(self, name: str) -> SnapshotInfo:
        if not name or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise SnapshotError(f"snapshot name must be 1 to {MAX_NAME} bytes")
        m = self.machine
        existing = {i.name: i for i in self.infos()}
        ident = existing[name].id if name in existing else max((i.id for i in existing.values()), default=0) + 1
        if name in existing:
            self.delete(name)
        state = savevm.capture(m, disks=False)
        blob = savevm.encode(m, state)
        try:
            self.dir.mkdir(exist_ok=True)
            logs: list[UndoLog | None] = []
            for k, (drive_id, journal) in enumerate(self.drives):
                journal.flush()
                log = FileUndoLog(self._undo_path(name, k), journal.size)
                journal.logs.append(log)
                logs.append(log)
            self.logs[name] = logs
            info = SnapshotInfo(ident, name, len(blob), int(time.time()), m.clock.now, m.instructions)
            encoded = name.encode("utf-8", "surrogateescape")
            tmp = self.dir / f".{self._stem(name)}.vm.tmp"
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(VM_MAGIC, ident, info.date, info.vm_clock_ns, info.icount, len(encoded)))
                f.write(encoded)
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._vm_path(name))
        except OSError as e:
            self._close_logs(name)
            raise SnapshotError(f"Could not save snapshot '{name}': {e.strerror or e}") from None
        return info

    def read_state(self, name: str) -> savevm.MachineState:
        """The decoded state of snapshot `name` with its disks' undo logs (not yet loaded)."""
        if name not in self.names():
            raise SnapshotError(f"Snapshot '{name}' does not exist in one or more devices")
        if name in self.broken:
            raise SnapshotError(self.broken[name])
        path = self._vm_path(name)
        try:
            _info, start = self._read_header(path)
            size = path.stat().st_size
            if size > MAX_STATE_FILE:
                raise VMStateError("the snapshot file is too large")
            with open(path, "rb") as f:
                f.seek(start)
                blob = f.read()
            state = savevm.decode(self.machine, blob)
        except VMStateError as e:
            raise SnapshotError(f"Snapshot '{name}': {e}") from None
        except OSError as e:
            raise SnapshotError(f"Snapshot '{name}': {e.strerror or e}") from None
        for (drive_id, journal), log in zip(self.drives, self.logs.get(name, [])):
            state.undo[drive_id] = log
            state._journals[drive_id] = journal
        return state

    def load(self, name: str) -> None:
        state = self.read_state(name)
        try:
            self.machine.load_state(state)
        except VMStateError as e:
            raise SnapshotError(f"Error while loading snapshot '{name}': {e}") from None
        # The disks are now exactly as at the snapshot: its logs start over (load_state rolled
        # them back and cleared them).

    def delete(self, name: str) -> None:
        """delvm: gone from every file; a name that does not exist is no error (as QEMU)."""
        self._close_logs(name)
        paths = [self._vm_path(name)] + [self._undo_path(name, k) for k in range(len(self.drives))]
        for p in paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise SnapshotError(f"Error while deleting snapshot '{name}': {e.strerror or e}") from None

    def info_text(self) -> str:
        """`info snapshots`, in QEMU 7.2's layout."""
        infos = self.infos()
        if not infos:
            return "There is no snapshot available.\n"
        lines = ["List of snapshots present on all disks:",
                 f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"]
        for i in infos:
            secs, ms = divmod(i.vm_clock_ns // 1_000_000, 1000)
            clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms:03d}"
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.date))
            lines.append(f"{'--':<9} {i.name:<16} {_size_to_str(i.vm_state_size):>8}{date:>20}{clock:>13}{i.icount:>11}")
        return "\n".join(lines) + "\n"
