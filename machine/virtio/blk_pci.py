"""virtio-blk-pci: the block device (blk.py) behind the PCI transport (pci.py), built from the
-device properties. The glue alone, so neither side knows the other."""

from __future__ import annotations

from typing import Callable

from ..block import BlockBackend
from ..config import ConfigError
from ..iothread import IoThread
from ..memory import GuestMemory
from ..pci.msix import MSIX_MAX_VECTORS
from . import props as P
from .blk import VirtioBlk
from .device import bit
from .spec import VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET
from .pci import VirtioPciDevice

TRANSPORT_PROPERTIES = ("drive", "id", "bootindex", "addr", "ioeventfd", "disable-legacy", "disable-modern",
                        "strict", "vectors", "queue_reset", "packed", "iothread")


def create_virtio_blk_pci(backend: BlockBackend, props: dict[str, str], mem: GuestMemory,
                          msi_send: Callable[[int, int], object] | None = None,
                          iothreads: dict[str, IoThread] | None = None) -> VirtioPciDevice:
    """A realized virtio-blk-pci function on `backend`, ready for `bus.plug(dev, slot)`.
    `props` are the -device properties (strings); `drive`, `id`, `addr` and `bootindex` are the
    board's business and only accepted here. MSI-X messages go to `msi_send(address, data)`.
    `iothread=ID` names one of `iothreads` (the -object iothread's): requests run there.
    ConfigError on an unknown property or bad value."""
    props = dict(props)
    iothread = None
    if "iothread" in props:
        name = props.pop("iothread")
        iothread = (iothreads or {}).get(name)
        if iothread is None:
            raise ConfigError(f"Device '{name}' not found")
    legacy_opt = P.parse_on_off_auto("disable-legacy", props.pop("disable-legacy", "auto"))
    modern_opt = P.parse_on_off_auto("disable-modern", props.pop("disable-modern", "off"))
    if "ioeventfd" in props:
        P.parse_bool("ioeventfd", props.pop("ioeventfd"))    # where requests run is iothread='s business
    if "bootindex" in props:
        P.parse_int("bootindex", props.pop("bootindex"), -1, 0xFFFF)
    strict = P.parse_bool("strict", props.pop("strict", "off"))
    vectors = props.pop("vectors", None)
    queue_reset = P.parse_bool("queue_reset", props.pop("queue_reset", "on"))
    packed = P.parse_bool("packed", props.pop("packed", "off"))
    dev_id = props.pop("id", None)
    for key in ("drive", "addr"):
        props.pop(key, None)
    vdev = VirtioBlk(backend, mem, props)
    vdev.realize()
    vdev.strict = strict
    if not queue_reset:
        vdev.host_features &= ~bit(VIRTIO_F_RING_RESET)
    if packed:                            # QEMU's packed=on: offer VIRTIO_F_RING_PACKED (2.8)
        vdev.host_features |= bit(VIRTIO_F_RING_PACKED)
    vdev.set_id(dev_id)
    vdev.iothread = iothread
    # QEMU's default: one vector per queue plus one for config changes; 0 means no MSI-X.
    nvectors = len(vdev.queues) + 1 if vectors is None else P.parse_int("vectors", vectors, 0, MSIX_MAX_VECTORS)
    # disable-legacy=auto means legacy on: a conventional PCI bus, as QEMU's `pc` machine.
    return VirtioPciDevice(vdev, legacy=legacy_opt != "on", modern=modern_opt != "on",
                           vectors=nvectors, msi_send=msi_send)
