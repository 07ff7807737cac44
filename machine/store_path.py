"""Guest stores to RAM pages without translated code on the TLB fast path (native/storepath.c).

Unicorn 2.1.4 keeps a store on its "not dirty" slow path whenever the TLB entry also maps the
page for execution (its dirty-memory tracking is stubbed, so it cannot tell a page holding code
from one that does not): every store of firmware, a kernel decompressor or an early kernel, whose
mappings have no NX. QEMU keeps such stores fast until code is translated on the page. The
native helper does what QEMU does, from wrappers Unicorn calls through its PLT (unicorn_internals
9.): a fresh writable TLB entry for a page of guest RAM that never held code is marked dirty; the
first translation on a page marks it as holding code, for good, and sends every TLB entry mapping
it (by host address: aliases too) back to the slow path, where stores drop the code they
overwrite.

`attach` gives one engine its state: its CPU, the RAM buffer and the guest-physical ranges of
base RAM (`set_ranges` follows changes of the RAM map). The same record of pages that ever held
code tells the CPU which host writes need no invalidation at all (`holds_code`). An engine without one (a scratch engine,
a benchmark's raw engine) runs exactly as before: the wrappers only call through.
"""

from __future__ import annotations

import ctypes
import weakref

from . import unicorn_internals as ui
from .toolchain import ToolchainError, native_library

MAX_RANGES = 4                                  # native/storepath.c MAX_RANGES


class _Range(ctypes.Structure):
    _fields_ = [("gpa", ctypes.c_uint64), ("size", ctypes.c_uint64), ("offset", ctypes.c_uint64)]


class _State(ctypes.Structure):
    """struct storepath of native/storepath.c."""
    _fields_ = [("cpu", ctypes.c_void_p), ("uc", ctypes.c_void_p),
                ("ram", ctypes.c_void_p), ("ram_size", ctypes.c_uint64),
                ("range", _Range * MAX_RANGES), ("nranges", ctypes.c_uint32),
                ("enabled", ctypes.c_uint32), ("cleaned", ctypes.c_uint64),
                ("code_pages", ctypes.c_uint64), ("code", ctypes.c_void_p)]


class Seen(ctypes.Structure):
    """struct storepath_seen: what the wrappers saw last (for the self-test)."""
    _fields_ = [("cpu", ctypes.c_void_p), ("tb", ctypes.c_void_p), ("pc", ctypes.c_uint64),
                ("fills", ctypes.c_uint64), ("translations", ctypes.c_uint64)]


_PROTOTYPES = {
    "storepath_install": (ctypes.c_int, [ctypes.c_void_p] * 5 + [ctypes.c_uint64]),
    "storepath_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_uint64]),
    "storepath_free": (None, [ctypes.c_void_p]),
}


def _install(lib: ctypes.CDLL) -> None:
    if lib.storepath_install(*ui.store_path_functions(), ui.TB_PAGE_ADDR) != 0:
        raise ui.UnsupportedUnicorn(
            f"this emulator needs exactly unicorn {ui.REQUIRED_VERSION}; libunicorn's PLT "
            f"does not have the calls it wraps. Install it with: "
            f"pip install unicorn=={ui.REQUIRED_VERSION}")


def library() -> ctypes.CDLL:
    """native/storepath.c, built on first use, its wrappers installed in libunicorn's GOT
    (ToolchainError when it cannot be built or loaded, UnsupportedUnicorn when the GOT slots
    are not found)."""
    return native_library("out/libstorepath.so", _PROTOTYPES, _install)


def seen() -> Seen:
    return Seen.in_dll(library(), "storepath_seen")


class StorePath:
    """The state of one engine, which must have run or mapped memory (Unicorn builds its CPU
    then). `ram`: host address of the RAM buffer, `ram_size` its size; `ranges`: (gpa, size,
    offset in the buffer) of the base RAM."""

    def __init__(self, uc, ram: int, ram_size: int, ranges):
        lib = library()
        ptr = lib.storepath_new(ui.engine_cpu(uc), ui.handle(uc), ram, ram_size)
        if not ptr:
            raise MemoryError("no room for another store-path state")
        self._state = _State.from_address(ptr)
        self._code = (ctypes.c_char * ((ram_size >> 12) + 1)).from_address(self._state.code)
        self._release = weakref.finalize(uc, lib.storepath_free, ptr)
        self.set_ranges(ranges)
        self._state.enabled = 1

    def set_ranges(self, ranges) -> None:
        """The guest-physical ranges of base RAM (at most MAX_RANGES are used: the rest stays
        on the slow path)."""
        st = self._state
        ranges = list(ranges)[:MAX_RANGES]
        for i, (gpa, size, offset) in enumerate(ranges):
            st.range[i] = _Range(gpa, size, offset)
        st.nranges = len(ranges)

    def holds_code(self, offset: int, length: int) -> bool:
        """Whether code was ever translated on a page of [offset, offset+length) of the RAM
        buffer. A host write (DMA, a loader) anywhere else cannot overwrite translated code."""
        return b"\x01" in self._code[offset >> 12:((offset + length - 1) >> 12) + 1]

    @property
    def code_map(self) -> int:
        """Address of the byte per RAM buffer page that says code was translated there (for
        native code that checks it as `holds_code` does)."""
        return self._state.code

    @property
    def cleaned(self) -> int:
        """TLB entries put on the fast path."""
        return self._state.cleaned

    @property
    def code_pages(self) -> int:
        """RAM pages on which code was translated (they stay on the slow path)."""
        return self._state.code_pages


def attach(uc, ram: int, ram_size: int, ranges) -> StorePath | None:
    """A checked state for `uc`, or None where the helper cannot be built or has no room (the
    engine keeps Unicorn's slow store path: slower, same results)."""
    try:
        library()
    except ToolchainError:
        return None
    ui.self_test_store_path(StorePath, seen)
    try:
        return StorePath(uc, ram, ram_size, ranges)
    except MemoryError:
        return None
