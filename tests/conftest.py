import io
import sys

import pytest

from machine import trace


@pytest.fixture(autouse=True)
def _reset_trace():
    """Trace patterns and log categories are process-global: keep tests independent."""
    yield
    trace.disable_all()


def _built(directory: str, target: str):
    """Build a C/asm directory's target, or skip the test when the toolchain cannot."""
    from machine.toolchain import ToolchainError, ensure_built
    try:
        return ensure_built(directory, target)
    except ToolchainError as exc:
        pytest.skip(f"cannot build {directory}/{target}: {exc}")


@pytest.fixture(scope="module")
def hello():
    """The hello test kernel (ELF)."""
    return _built("tests/kernels", "out/hello.elf")


@pytest.fixture(scope="module")
def guest():
    """The bundled virtio-blk guest (ELF)."""
    return _built("guest", "out/guest.elf")


@pytest.fixture
def guest_errors():
    """The `-d guest_errors` log, captured: a StringIO the test reads with .getvalue()."""
    out = io.StringIO()
    trace.set_output(out)
    trace.enable_category("guest_errors")
    yield out
    trace.set_output(sys.stderr)
