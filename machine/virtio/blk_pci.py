"""virtio-blk-pci: the block device (blk.py) behind the PCI transport (pci.py), built from the
-device properties. The glue alone, so neither side knows the other."""

from __future__ import annotations

from ..block import BlockBackend
from ..memory import GuestMemory
from . import props as P
from .blk import VirtioBlk
from .pci import VirtioPciDevice

TRANSPORT_PROPERTIES = ("drive", "id", "bootindex", "addr", "ioeventfd", "disable-legacy", "disable-modern")


def create_virtio_blk_pci(backend: BlockBackend, props: dict[str, str], mem: GuestMemory) -> VirtioPciDevice:
    """A realized virtio-blk-pci function on `backend`, ready for `bus.plug(dev, slot)`.
    `props` are the -device properties (strings); `drive`, `id`, `addr` and `bootindex` are the
    board's business and only accepted here. ConfigError on an unknown property or bad value."""
    props = dict(props)
    legacy_opt = P.parse_on_off_auto("disable-legacy", props.pop("disable-legacy", "auto"))
    modern_opt = P.parse_on_off_auto("disable-modern", props.pop("disable-modern", "off"))
    if "ioeventfd" in props:
        P.parse_bool("ioeventfd", props.pop("ioeventfd"))    # requests always complete in the notify
    if "bootindex" in props:
        P.parse_int("bootindex", props.pop("bootindex"), -1, 0xFFFF)
    for key in ("drive", "id", "addr"):
        props.pop(key, None)
    vdev = VirtioBlk(backend, mem, props)
    vdev.realize()
    # disable-legacy=auto means legacy on: a conventional PCI bus, as QEMU's `pc` machine.
    return VirtioPciDevice(vdev, legacy=legacy_opt != "on", modern=modern_opt != "on")
