import pytest

from machine import trace


@pytest.fixture(autouse=True)
def _reset_trace():
    """Trace patterns and log categories are process-global: keep tests independent."""
    yield
    trace.disable_all()
