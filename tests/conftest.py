import pytest

from building import built
from machine import trace


@pytest.fixture(autouse=True)
def _reset_trace():
    """Trace patterns and log categories are process-global: keep tests independent."""
    yield
    trace.disable_all()


@pytest.fixture(scope="module")
def hello():
    """The hello test kernel (ELF)."""
    return built("tests/kernels", "out/hello.elf")


@pytest.fixture(scope="module")
def guest():
    """The bundled virtio-blk guest (ELF)."""
    return built("guest", "out/guest.elf")
