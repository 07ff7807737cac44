"""`-device NAME,help` lists a device's properties as QEMU does, and the list is the one the
device accepts."""

from __future__ import annotations

import re

import pytest

from machine import cli
from machine.virtio.blk import VirtioBlk

# What the transport and the board take besides the virtio-blk device's own properties
# (machine/virtio/pci.py create_virtio_blk_pci).
TRANSPORT_PROPERTIES = {"drive", "disable-legacy", "disable-modern", "ioeventfd", "bootindex",
                        "addr", "iothread"}


@pytest.mark.parametrize("spec", ["virtio-blk-pci,help", "virtio-blk,help",
                                  "virtio-blk-pci,drive=d0,help", "virtio-blk-pci,?"])
def test_device_help_lists_every_property(capsys, spec):
    assert cli.main(["-device", spec]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "virtio-blk-pci options:"
    names = [re.match(r"  ([\w-]+)=<\w+> +- ", line).group(1) for line in out[1:]]
    assert names == sorted(names)
    assert set(names) == set(VirtioBlk.PROPERTIES) | TRANSPORT_PROPERTIES
    (queue_size,) = [line for line in out if line.startswith("  queue-size=")]
    assert queue_size.startswith("  queue-size=<uint16>") and queue_size.endswith("(default: 256)")


@pytest.mark.parametrize("driver, names", [("isa-debug-exit", ["iobase", "iosize"]),
                                           ("isa-debugcon", ["chardev", "iobase"])])
def test_the_small_devices_have_help_too(capsys, driver, names):
    assert cli.main(["-device", f"{driver},help"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{driver} options:"
    assert [line.split("=")[0].strip() for line in out[1:]] == names
