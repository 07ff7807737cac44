"""A bytecode cache for this package that works where Python's own does not write one.

With PYTHONDONTWRITEBYTECODE set (or `python -B`), and a source tree where no __pycache__ was
ever written (a checkout, not a pip install), every start recompiles the ~50 modules the board
imports: about two thirds of the time from process start to the first guest instruction. The
user asked Python not to write into the source tree; this cache honours that by keeping the
bytecode outside it, under $XDG_CACHE_HOME (default ~/.cache), in .pyc files validated
against the source's modification time (in nanoseconds) and size.

Only this package's modules, only while Python's own cache is off, and never fatal: an
unwritable or corrupt cache only means compiling, as before. MACHINE_BYTECODE_CACHE=0 turns it
off; MACHINE_BYTECODE_CACHE=<dir> puts it elsewhere.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys

_ENV = "MACHINE_BYTECODE_CACHE"


def cache_dir() -> str | None:
    """Where the cache lives, or None when it is off."""
    setting = os.environ.get(_ENV, "")
    if setting == "0":
        return None
    if setting:
        return setting
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "machine-pyc", sys.implementation.cache_tag or "python")


class _CachingLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose bytecode lives in `cache_dir`, one file per source path."""

    def __init__(self, fullname: str, path: str, cache: str):
        super().__init__(fullname, path)
        self._cache = cache

    def _pyc_path(self, source_path: str) -> str:
        # Named after the whole absolute source path: two checkouts never share an entry.
        return os.path.join(self._cache, os.path.abspath(source_path).replace(os.sep, "%") + "c")

    def get_code(self, fullname: str):
        source_path = self.get_filename(fullname)
        try:
            st = os.stat(source_path)
        except OSError:
            return super().get_code(fullname)
        # The interpreter's magic number, then the source's mtime in ns and its size: a stale
        # or foreign entry never matches.
        header = (importlib.util.MAGIC_NUMBER + st.st_mtime_ns.to_bytes(8, "little", signed=True)
                  + st.st_size.to_bytes(8, "little"))
        pyc = self._pyc_path(source_path)
        try:
            with open(pyc, "rb") as f:
                data = f.read()
            if data[:len(header)] == header:
                return marshal.loads(data[len(header):])
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = self.source_to_code(self.get_data(source_path), source_path)
        tmp = f"{pyc}.{os.getpid()}.tmp"
        try:
            os.makedirs(self._cache, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header + marshal.dumps(code))
            os.replace(tmp, pyc)          # atomic: a concurrent start reads old or new, whole
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return code


class _Finder:
    """Meta-path finder for `package`'s submodules: the normal path search, with the loader
    swapped for the caching one."""

    def __init__(self, package: str, cache: str):
        self._prefix = package + "."
        self._cache = cache

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self._prefix) or not sys.dont_write_bytecode:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return spec
        loader = _CachingLoader(fullname, spec.origin, self._cache)
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=loader,
            submodule_search_locations=spec.submodule_search_locations)

    def invalidate_caches(self) -> None:
        pass


def install(package: str) -> None:
    """Serve `package`'s submodules from the cache while Python's own bytecode cache is off.
    Idempotent; does nothing when Python writes bytecode itself or the cache is turned off."""
    if not sys.dont_write_bytecode:
        return
    cache = cache_dir()
    if cache is None:
        return
    if any(isinstance(f, _Finder) and f._prefix == package + "." for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder(package, cache))
