"""`python3 -m machine.img create`: the README's way to make a disk image, as qemu-img."""

import os
import subprocess
import sys

import pytest

from machine import img


def test_create_makes_a_sparse_raw_image_of_whole_sectors(tmp_path, capsys):
    path = tmp_path / "disk.img"
    assert img.main(["create", str(path), "64M"]) == 0
    assert path.stat().st_size == 64 << 20
    assert path.stat().st_blocks == 0                  # sparse
    assert capsys.readouterr().out == f"Formatting '{path}', fmt=raw size={64 << 20}\n"
    assert img.main(["create", "-f", "raw", str(path), "1.5k"]) == 0
    assert path.stat().st_size == 1536
    assert img.main(["create", str(path), "1000"]) == 0
    assert path.stat().st_size == 1024                 # rounded up to a sector


@pytest.mark.parametrize("args, message", [
    (["create", "-f", "qcow2", "{d}/x.img", "1M"], "format 'qcow2' is not supported"),
    (["create", "{d}/x.img", "abc"], "Invalid image size"),
    (["create", "{d}/no/x.img", "1M"], "No such file or directory"),
    (["create", "{d}/x.img"], "expected FILE and SIZE"),
    (["convert", "a", "b"], "Command not found: convert"),
    (["create", "{d}/fifo", "1M"], "Could not create"),     # no reader: no hang either
])
def test_bad_input_is_one_line_and_status_1(tmp_path, capsys, args, message):
    os.mkfifo(tmp_path / "fifo")
    assert img.main([a.format(d=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("machine.img: ") and message in err, err


def test_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "machine.img", "create", "d.img", "1M"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d.img").stat().st_size == 1 << 20
