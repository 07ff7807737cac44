import io
import sys

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


@pytest.fixture
def guest_errors():
    """The `-d guest_errors` log, captured: a StringIO the test reads with .getvalue()."""
    out = io.StringIO()
    trace.set_output(out)
    trace.enable_category("guest_errors")
    yield out
    trace.set_output(sys.stderr)


def pytest_collection_modifyitems(session, config, items):
    """Linux boots on our machine take about a minute each, the rest of the suite seconds:
    start them first, so pytest-xdist hands them round-robin to every worker instead of
    leaving them queued on one at the end."""
    slow = [i for i in items if "test_linux_e2e.py::test_linux_virtio_blk_on_our_machine" in i.nodeid
            or "test_linux_e2e.py::test_gdb_and_device_breakpoints_on_a_running_linux_kernel" in i.nodeid
            or ("test_linux_e2e.py::test_linux_poweroff_and_reboot" in i.nodeid and "ours" in i.nodeid)
            or "test_savevm.py::test_inside_linux" in i.nodeid]
    if slow:
        items[:] = slow + [i for i in items if i not in slow]
