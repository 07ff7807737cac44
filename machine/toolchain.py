"""Builds the C/assembly parts (firmware, guest, test kernels) on demand with the system gcc and
binutils, through each directory's Makefile, so nobody has a manual build step."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ToolchainError(Exception):
    """The C toolchain is missing or a build failed; the message is one line for the user."""


def ensure_built(directory: Path | str, target: str) -> Path:
    """Run `make -C directory target` (make decides whether anything is stale) and return the
    path of `target` inside `directory`."""
    directory = Path(directory)
    if not directory.is_absolute():
        directory = ROOT / directory
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
