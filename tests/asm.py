"""Assemble small test programs into flat binaries with the system gcc/binutils.

    code = assemble(SOURCE, base=0x7c00)          # GNU as syntax (AT&T), flat binary at `base`

The source starts in the mode given by `.code16`/`.code32`/`.code64` inside it (default .code16).
Results are cached per (source, base) for the test session; builds happen in a temp dir.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

_cache: dict[str, bytes] = {}


def assemble(source: str, base: int = 0) -> bytes:
    key = hashlib.sha256(f"{base}:{source}".encode()).hexdigest()
    if key in _cache:
        return _cache[key]
    with tempfile.TemporaryDirectory(prefix="asm-") as tmp:
        d = Path(tmp)
        (d / "t.S").write_text(".code16\n" + source + "\n")
        subprocess.run(["gcc", "-m32", "-c", "-o", str(d / "t.o"), str(d / "t.S")],
                       check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", "elf_i386", "--oformat", "binary", "-Ttext", hex(base),
                        "-e", "0", "-o", str(d / "t.bin"), str(d / "t.o")],
                       check=True, capture_output=True, text=True)
        data = (d / "t.bin").read_bytes()
    _cache[key] = data
    return data


def rom_image(source: str, size: int = 0x10000) -> bytes:
    """A firmware ROM of `size` bytes whose last 16 bytes are the reset vector: the source is
    assembled at the top of the 1 MiB real-mode window (ROM alias), with the code starting at
    `1M - size` and a `reset:` label that the vector at F000:FFF0 jumps to.
    Labels are offsets in real-mode segment 0xF000 (linear address = 0xF0000 + label)."""
    base = 0x10000 - size
    full = (source + f"""
        .org {size - 16}
        ljmp $0xf000, $reset
        .org {size}
    """)
    data = assemble(full, base=base)
    assert len(data) == size, len(data)
    return data
