"""Builds the C/assembly parts (firmware, guest, test kernels) on demand with the system gcc and
binutils, through each directory's Makefile, so nobody has a manual build step."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ToolchainError(Exception):
    """The C toolchain is missing or a build failed; the message is one line for the user."""


def ensure_built(directory: Path | str, target: str) -> Path:
    """Run `make -C directory target` (make decides whether anything is stale) and return the
    path of `target` inside `directory`. When the target is newer than every other file under
    `directory` (the Makefiles only use their own directory), make could only say "nothing to
    do": that case returns at once, without a make process on every start."""
    directory = Path(directory)
    if not directory.is_absolute():
        directory = ROOT / directory
    if _up_to_date(directory, target):
        return directory / target
    import shutil                # only needed to build: keeps them off the start-up path
    import subprocess
    for tool in ("make", "gcc", "ld", "objcopy"):
        if shutil.which(tool) is None:
            raise ToolchainError(f"cannot build {directory.name}/{target}: '{tool}' not found "
                                 "(install gcc, binutils and make)")
    proc = subprocess.run(["make", "-s", "-C", str(directory), target],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
        raise ToolchainError(f"building {directory.name}/{target} failed: {last[0]}")
    out = directory / target
    if not out.exists():
        raise ToolchainError(f"building {directory.name}/{target} produced no file")
    return out


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
                if not name.endswith(".md") and os.stat(os.path.join(root, name)).st_mtime_ns > built:
                    return False
        return True
    except OSError:
        return False
