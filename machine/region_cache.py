"""A cache in front of Unicorn's physical address -> region lookup (native/mapcache.c).

Unicorn 2.1.4 finds the region of a physical address by walking QEMU's flat view on every
load and store that leaves the TLB fast path, and twice per store on its "not dirty" path,
which every store to an executable page takes (Unicorn keeps such pages' stores on the slow
path: its dirty-memory tracking is stubbed). Firmware, a kernel's decompressor and its early
boot run with most memory executable, and there the walk was a quarter of the run
(`perf record` of a Linux boot, bench/README.md). The cache remembers the region of recently
used pages, in C, installed in the engine's lookup slot (unicorn_internals 8.).

Its one rule: every change of the engine's memory map happens inside `changing()`. The lookup
then goes to Unicorn (whose own map functions look regions up between their steps), and on the
way out every cached answer is dropped (a generation number moves on). `CpuMemory` makes all of
the board's changes; `RegionCache` also wraps the engine's own map methods, so a change made
through the Uc object directly (a test, a debugger script) keeps the rule too.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref

from . import unicorn_internals as ui
from .toolchain import ToolchainError, native_library

ENTRIES = 1024                                  # native/mapcache.c ENTRIES


class _Entry(ctypes.Structure):
    _fields_ = [("page", ctypes.c_uint64), ("generation", ctypes.c_uint64), ("mr", ctypes.c_void_p)]


class _State(ctypes.Structure):
    """struct mapcache of native/mapcache.c."""
    _fields_ = [("uc", ctypes.c_void_p), ("lookup", ctypes.c_void_p),
                ("generation", ctypes.c_uint64), ("bypass", ctypes.c_uint32),
                ("unused", ctypes.c_uint32), ("hits", ctypes.c_uint64),
                ("misses", ctypes.c_uint64), ("e", _Entry * ENTRIES)]


_PROTOTYPES = {
    "mapcache_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "mapcache_free": (None, [ctypes.c_void_p]),
}


def library() -> ctypes.CDLL:
    """native/mapcache.c, built on first use (ToolchainError when it cannot be)."""
    return native_library("out/libmapcache.so", _PROTOTYPES)


# The Uc methods that change an engine's memory map.
_MAP_METHODS = ("mem_map", "mem_map_ptr", "mem_unmap", "mem_protect", "mmio_map")


class RegionCache:
    """The cached lookup of one engine, which must have mapped memory already. Raises
    ToolchainError when the helper cannot be built, UnsupportedUnicorn when the slot is not
    where expected."""

    def __init__(self, uc):
        lib = library()
        self._slot = ui.memory_mapping_slot(uc)
        self._own = self._slot.value
        ptr = lib.mapcache_new(ui.handle(uc), self._own)
        if not ptr:
            raise MemoryError("no room for another region cache")
        self._state = _State.from_address(ptr)
        self._depth = 0
        # The C state outlives a forgotten engine until the engine object goes (the lookup
        # falls back to Unicorn's own for an engine without a cache).
        self._release = weakref.finalize(uc, lib.mapcache_free, ptr)
        for name in _MAP_METHODS:
            setattr(uc, name, self._guarded(getattr(uc, name)))
        uc.map_guard = self.changing               # unicorn_internals.mmio_map takes it too
        self._slot.value = ctypes.cast(lib.mapcache_lookup, ctypes.c_void_p).value

    def _guarded(self, method):
        def call(*args, **kwargs):
            with self.changing():
                return method(*args, **kwargs)
        return call

    @contextlib.contextmanager
    def changing(self):
        """Around any change of the engine's memory map (nests). After `close` the engine has
        its own lookup again and the state is gone: nothing to do."""
        if not self._release.alive:
            yield
            return
        st = self._state
        self._depth += 1
        st.bypass = 1
        try:
            yield
        finally:
            self._depth -= 1
            st.generation += 1
            if self._depth == 0:
                st.bypass = 0

    @property
    def hits(self) -> int:
        """Lookups answered from the cache (0 once closed)."""
        return self._state.hits if self._release.alive else 0

    @property
    def misses(self) -> int:
        return self._state.misses if self._release.alive else 0

    def close(self) -> None:
        """Give the engine its own lookup back and free the cache."""
        if self._release.alive:
            self._slot.value = self._own
            self._release()


def attach(uc) -> RegionCache | None:
    """A checked region cache for `uc`, or None where the helper cannot be built or has no room
    (the engine keeps Unicorn's own lookup: slower, same results)."""
    try:
        library()
    except ToolchainError:
        return None
    ui.self_test_region_cache(RegionCache)
    try:
        return RegionCache(uc)
    except MemoryError:
        return None
