"""Building our own C/assembly for a test: a missing tool (make, gcc, binutils) skips the test,
saying which; anything else (a compile error in our code) fails it with the compiler's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.toolchain import ToolchainError, ToolchainMissing, ensure_built


def built(directory: str | Path, target: str) -> Path:
    try:
        return ensure_built(directory, target)
    except ToolchainMissing as err:
        pytest.skip(str(err))
    except ToolchainError as err:
        pytest.fail(f"{err}\n{err.details}", pytrace=False)
