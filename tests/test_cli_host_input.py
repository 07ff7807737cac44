"""Hostile host input: each gets one error line naming what is wrong and exit status 1, at once
(never a traceback, never a hang)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machine import cli

ROOT = Path(__file__).resolve().parent.parent


def one_error(capsys, argv) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("machine: "), err
    return err


@pytest.mark.parametrize("prop", ["logical_block_size", "physical_block_size", "min_io_size",
                                  "opt_io_size"])
@pytest.mark.parametrize("value", ["1.0e999", "1.5e308k", "99999999999999999999999"])
def test_a_block_size_too_big_for_any_number_is_one_error_line(tmp_path, capsys, prop, value):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    err = one_error(capsys, [
        "-drive", f"file={disk},format=raw,if=none,id=d0",
        "-device", f"virtio-blk-pci,drive=d0,{prop}={value}"])
    assert f"Property '{prop}' expects a size" in err, err


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("option", ["-drive", "-kernel", "-bios"])
def test_a_fifo_is_refused_at_once(tmp_path, option):
    """In a child process with a timeout: before the fix, opening the FIFO waited forever."""
    path = fifo(tmp_path)
    arg = f"file={path},format=raw,if=virtio" if option == "-drive" else str(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                    os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "machine", option, arg], capture_output=True,
                         text=True, timeout=60, env=env, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "a FIFO, not a regular file" in run.stderr, run.stderr


@pytest.mark.parametrize("option", ["-drive", "-kernel", "-bios"])
def test_a_character_device_is_refused(capsys, option):
    arg = "file=/dev/null,format=raw,if=virtio" if option == "-drive" else "/dev/null"
    err = one_error(capsys, [option, arg])
    assert "Could not open '/dev/null': a character device, not a regular file" in err


def test_an_empty_regular_image_is_a_zero_sector_disk_as_in_qemu(tmp_path):
    (tmp_path / "empty.img").write_bytes(b"")
    cfg = cli.parse_args(["-drive", f"file={tmp_path / 'empty.img'},format=raw,if=virtio"])
    assert cfg.drives[0].file == tmp_path / "empty.img"


@pytest.mark.parametrize("size", ["64G", "1T"])
def test_ram_the_host_cannot_give_names_dash_m(hello, capsys, monkeypatch, size):
    import mmap
    import types

    import machine.memory

    def refusing_mmap(fileno, length, *args, **kw):
        # The host refusing a big anonymous mapping, as a host without that much memory does
        # (whether it does depends on the host's overcommit policy: faked for determinism).
        if length >= 32 << 30:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return mmap.mmap(fileno, length, *args, **kw)
    fake = types.SimpleNamespace(**{k: getattr(mmap, k) for k in dir(mmap) if k.isupper()},
                                 mmap=refusing_mmap)
    monkeypatch.setattr(machine.memory, "mmap", fake)
    err = one_error(capsys, ["-m", size, "-kernel", str(hello)])
    assert "-m " in err and "cannot set up guest memory 'pc.ram': Cannot allocate memory" in err
