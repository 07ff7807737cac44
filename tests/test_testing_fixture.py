"""The `boot` pytest fixture (machine/testing.py): process handling with a stand-in program, the
plugin registration, and a real boot of the hello test kernel once the board exists."""

import sys

import pytest

from machine.testing import Boot, boot  # noqa: F401  (the fixture, used by name below)

pytest_plugins = ["pytester"]


def stand_in(code: str) -> Boot:
    """A Boot whose 'machine' is a tiny Python program, to exercise the process handling."""
    return Boot(program=[sys.executable, "-c", code])


def test_image_is_sparse_sized_and_prefilled(tmp_path):
    img = Boot.image(tmp_path / "d.img", size="16M", data=b"TEST")
    assert img.stat().st_size == 16 * 1024 * 1024
    assert img.read_bytes()[:8] == b"TEST\0\0\0\0"
    assert Boot.image(tmp_path / "e.img", size=4096).stat().st_size == 4096
    with pytest.raises(ValueError):
        Boot.image(tmp_path / "f.img", size=1000)


def test_run_collects_output_and_status():
    b = stand_in("import sys; data = sys.stdin.read(); sys.stdout.write('got ' + data + '\\r\\n');"
                 "print('err', file=sys.stderr); sys.exit(3)")
    run = b("-x", input="hello", timeout=30)
    assert run.exit_status == 3 and run.serial == "got hello\n" and run.stderr == "err\n"
    assert run.serial_bytes == b"got hello\r\n"          # CR LF as the guest sent it
    assert run.args == ["-x"]


def test_timeout_kills_and_fails_clearly():
    b = stand_in("import time; print('booting', flush=True); time.sleep(600)")
    with pytest.raises(pytest.fail.Exception, match=r"did not exit within 0.5 s(.|\n)*booting"):
        b(timeout=0.5)
    assert all(h.proc.poll() is not None for h in b._running)


def test_wait_for_a_long_running_guest():
    b = stand_in("import sys, time; print('ready', flush=True); line = sys.stdin.readline();"
                 "print('echo ' + line.strip(), flush=True); time.sleep(600)")
    try:
        h = b.start()
        assert "ready" in h.wait_for("ready", timeout=30)
        h.send("ping\n")
        h.wait_for("echo ping", timeout=30)
        with pytest.raises(pytest.fail.Exception, match="not seen within 0.2 s"):
            h.wait_for("never", timeout=0.2)
        assert h.exit_status is None
    finally:
        b.close()
    assert h.exit_status is not None


def test_wait_for_fails_when_the_machine_exits_first():
    b = stand_in("print('bye')")
    h = b.start()
    with pytest.raises(pytest.fail.Exception, match="exited with status 0 before printing 'ok'"):
        h.wait_for("ok", timeout=30)


def test_registered_as_a_pytest_plugin(pytester, monkeypatch):
    """A user's test suite gets the fixture through `-p machine.testing` (what the conftest
    line `pytest_plugins = ["machine.testing"]` and the pytest11 entry point both do)."""
    pytester.makepyfile(test_user="""
        def test_uses_fixture(boot, tmp_path):
            disk = boot.image(tmp_path / "d.img", size="1M", data=b"X")
            assert disk.read_bytes()[:1] == b"X"
    """)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")   # only what we name
    result = pytester.runpytest_inprocess("-p", "machine.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_boot_hello_kernel(boot, tmp_path, hello):
    kernel = hello
    run = boot("-kernel", kernel, "-append", "exit=5", "-display", "none", "-no-reboot",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", timeout=120)
    assert run.exit_status == (5 << 1) | 1, run
    assert "hello from multiboot\n" in run.serial and "\nexit 5\n" in run.serial, run


def test_boot_hello_kernel_wait_for(boot, hello):
    kernel = hello
    h = boot.start("-kernel", kernel, "-append", "exit=0", "-display", "none", "-no-reboot",
                   "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
    assert "hello from multiboot" in h.wait_for(f'cmdline "{kernel} exit=0"', timeout=120)
    assert h.wait(timeout=120).exit_status == 1


def test_a_host_error_and_a_passing_guest_both_exit_1_and_are_told_apart(boot, tmp_path, hello):
    passed = boot("-kernel", hello, "-append", "exit=0", "-no-reboot",
                  "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", timeout=120)
    refused = boot("-kernel", hello, "-drive", f"file={tmp_path / 'missing.img'},format=raw",
                   timeout=120)
    assert passed.exit_status == refused.exit_status == 1
    assert passed.host_error is None and passed.guest_status == 0, passed
    assert refused.guest_status is None
    assert "Could not open" in refused.host_error and "missing.img" in refused.host_error
    failed = boot("-kernel", hello, "-append", "exit=3", "-no-reboot",
                  "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", timeout=120)
    assert failed.host_error is None and failed.guest_status == 3
