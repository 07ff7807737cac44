"""Builds the C/assembly parts (firmware, guest, test kernels) on demand with the system gcc and
binutils, through each directory's Makefile, so nobody has a manual build step.

Where the sources are: in a checkout (or an editable install) `firmware/` and `guest/` sit next
to the `machine` package; an installed wheel carries them as package data in
`machine/_bundled/` (see setup.py). A source directory the user cannot write (a system-wide
install, a read-only checkout), and every installed one so that `pip uninstall` leaves nothing
behind, is copied into a per-user cache directory and built there.

Builds are serialised by an exclusive `flock` on a lock file in the output folder: two machines
(or test workers) started at once on a fresh tree wait for one build instead of running two
`make`s over the same object files.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = Path(__file__).resolve().parent / "_bundled"
LOCK_NAME = ".build.lock"
ERROR_LINES = 20            # compiler output lines quoted when a build fails


class ToolchainError(Exception):
    """The C toolchain is missing or a build failed. `str()` is one line for the user;
    `details` is the compiler's own output (several lines), or "" when there is none."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class ToolchainMissing(ToolchainError):
    """A tool the build needs (make, gcc, binutils) is not installed: the one case in which a
    test may skip rather than fail."""


def cache_root() -> Path:
    """Where sources that cannot be built in place are copied: $MACHINE_CACHE_DIR, else
    $XDG_CACHE_HOME/machine, else ~/.cache/machine."""
    explicit = os.environ.get("MACHINE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "machine"


def source_dir(directory: Path | str) -> Path:
    """The directory holding the sources of `directory` (absolute paths are taken as they are):
    the copy bundled with an installed package, else the checkout's."""
    directory = Path(directory)
    if directory.is_absolute():
        return directory
    bundled = BUNDLED / directory
    if bundled.is_dir():
        return bundled
    return ROOT / directory


def load_library(target: str):
    """A native helper of native/ (`target`, e.g. "out/libicount.so") built on first use and
    loaded with ctypes. ToolchainError when it cannot be built or loaded (the command line
    reports it in one line)."""
    import ctypes
    path = ensure_built("native", target)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise ToolchainError(f"cannot load {path.name}: {exc}") from None


_native: dict[str, object] = {}


def native_library(target: str, prototypes: dict[str, tuple], install=None):
    """load_library(target) once per process, each function in `prototypes` given its ctypes
    signature ({name: (restype, [argtypes])}) and, when given, `install(lib)` run once before
    anyone else sees the library (it may raise: the next call tries again). Every ctypes helper
    module's `library()` is this with its own table."""
    lib = _native.get(target)
    if lib is None:
        lib = load_library(target)
        for name, (restype, argtypes) in prototypes.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        if install is not None:
            install(lib)
        _native[target] = lib
    return lib


def ensure_built(directory: Path | str, target: str) -> Path:
    """Run `make -C directory target` (make decides whether anything is stale) and return the
    path of `target`. When the target is newer than every other file under the directory (the
    Makefiles only use their own directory), make could only say "nothing to do": that case
    returns at once, without a make process on every start."""
    src = source_dir(directory)
    if not src.is_dir():
        raise ToolchainError(f"cannot build {directory}/{target}: the sources are not in "
                             f"this installation ({src} is missing)")
    if not _writable(src) and _up_to_date(src, target):
        return src / target        # built already where nobody can write: nothing can race
    build = src if _writable(src) and not src.is_relative_to(BUNDLED) else _cached_copy(src)
    parts = Path(target).parts
    folder = build / parts[0] if len(parts) > 1 else build
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolchainError(f"cannot build {build.name}/{target}: {err.strerror}") from None
    # Held for the up-to-date check too: a target another process's linker is still writing
    # is already newer than its sources.
    with _lock(folder / LOCK_NAME):
        if not _up_to_date(build, target):
            _make(build, target)
            if not _up_to_date(build, target):
                # make found it current (a source it does not depend on changed, e.g. another
                # helper's): say so in its time stamp, or every start would run make again.
                os.utime(build / target)
    out = build / target
    if not out.exists():
        raise ToolchainError(f"building {build.name}/{target} produced no file")
    return out


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _make(directory: Path, target: str) -> None:
    import shutil                # only needed to build: keeps them off the start-up path
    import re
    import subprocess
    for tool in ("make", "gcc", "ld", "objcopy"):
        if shutil.which(tool) is None:
            raise ToolchainMissing(f"cannot build {directory.name}/{target}: '{tool}' not found "
                                 "(install gcc, binutils and make)")
    proc = subprocess.run(["make", "-s", "-C", str(directory), target],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        lines = proc.stdout.strip().splitlines() or ["(no output)"]
        # The compiler's diagnostics are the point; make's "Error 1" trailer only says where.
        useful = [ln for ln in lines if not ln.startswith("make")] or lines
        first_error = next((ln for ln in useful if re.search(r"\b(fatal )?error:", ln)),
                           useful[0])
        raise ToolchainError(f"building {directory.name}/{target} failed: {first_error}",
                             "\n".join(useful[:ERROR_LINES]))


class _lock:
    """An exclusive flock on `path` (created if needed), dropped when the file is closed."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def _cached_copy(src: Path) -> Path:
    """A private, writable copy of `src` in the cache, named after a digest of its sources so
    that an upgraded package never builds stale sources. Made once, under a lock, atomically."""
    import hashlib
    import shutil
    digest = hashlib.sha256()
    for path in sorted(_source_files(src)):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    root = cache_root()
    dest = root / f"{src.name}-{digest.hexdigest()[:16]}"
    if dest.is_dir():
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolchainError(f"cannot build {src.name}: cannot create the cache directory "
                             f"{root}: {err.strerror}") from None
    with _lock(root / LOCK_NAME):
        if not dest.is_dir():
            tmp = root / f".{dest.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("out", "__pycache__"))
            os.rename(tmp, dest)
    return dest


def _source_files(src: Path):
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d not in ("out", "__pycache__")]
        for name in files:
            yield Path(root) / name


def _up_to_date(directory: Path, target: str) -> bool:
    """Is `target` at least as new as every file under `directory` outside its output folder
    (the first component of `target`, e.g. out/)? Documentation (*.md) is not an input. Any
    doubt (missing file, error) says no."""
    try:
        built = os.stat(directory / target).st_mtime_ns
        out_dir = Path(target).parts[0] if len(Path(target).parts) > 1 else None
        for root, dirs, files in os.walk(directory):
            if root == str(directory) and out_dir in dirs:
                dirs.remove(out_dir)
            for name in files:
                if name == LOCK_NAME or name.endswith(".md"):
                    continue
                if os.stat(os.path.join(root, name)).st_mtime_ns > built:
                    return False
        return True
    except OSError:
        return False
