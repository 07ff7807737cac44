"""Driver rules the device checks, as data: the VIRTIO 1.2 requirement each one comes from, and
what the device does when a driver breaks it.

By default a device behaves as QEMU 7.2 does (it tolerates the violation and carries on), so a
driver that works on QEMU works here; it says once per device, as a `guest_errors` log line,
which rule was broken and where the specification states it. With the `strict=on` device
property it refuses instead (the `strict` column), still saying why.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    key: str
    section: str          # of VIRTIO 1.2 (virtio-v1.2-cs01)
    text: str             # what the driver did; str.format fields come from the caller
    tolerated: str        # what the default (QEMU-compatible) device does about it
    strict: str           # what a strict=on device does instead


RULES = {r.key: r for r in (
    Rule("unoffered-features", "2.2.1",
         "driver accepted feature bits {bits:#x} the device did not offer",
         "the bits are masked off and FEATURES_OK is accepted",
         "FEATURES_OK is not set"),
    Rule("no-version-1", "6.1",
         "driver set FEATURES_OK on the modern interface without VIRTIO_F_VERSION_1",
         "FEATURES_OK is accepted; the device acts as for a legacy driver",
         "FEATURES_OK is not set"),
    Rule("driver-ok-without-features-ok", "3.1.1",
         "driver set DRIVER_OK without FEATURES_OK",
         "DRIVER_OK is accepted with the features written so far",
         "DRIVER_OK is not set"),
    Rule("kick-before-driver-ok", "3.1.1",
         "driver notified queue {queue} before setting DRIVER_OK",
         "the queue is served at once",
         "the notification is held until DRIVER_OK"),
    Rule("indirect-not-negotiated", "2.7.5.3.1",
         "driver used an indirect descriptor without VIRTIO_F_INDIRECT_DESC",
         "the indirect table is followed",
         "the device sets DEVICE_NEEDS_RESET"),
    Rule("chain-longer-than-queue", "2.7.5.3.1",
         "driver made a descriptor chain of {n} buffers available on a queue of size {size}",
         "the chain is carried out (up to 1024 buffers, as QEMU)",
         "the device sets DEVICE_NEEDS_RESET"),
    Rule("list-longer-than-queue", "2.8.17",
         "driver made a descriptor list of {n} buffers available on a packed queue of size {size}",
         "the list is carried out (up to 1024 buffers, as QEMU)",
         "the device sets DEVICE_NEEDS_RESET"),
    Rule("seg-max", "5.2.3",
         "driver sent a request of {n} data segments; seg_max is {seg_max}",
         "the request is carried out",
         "the request completes with VIRTIO_BLK_S_IOERR"),
    Rule("discard-not-negotiated", "5.2.6.1",
         "driver sent a DISCARD request without negotiating VIRTIO_BLK_F_DISCARD",
         "the request is carried out",
         "the request completes with VIRTIO_BLK_S_UNSUPP"),
    Rule("write-zeroes-not-negotiated", "5.2.6.1",
         "driver sent a WRITE_ZEROES request without negotiating VIRTIO_BLK_F_WRITE_ZEROES",
         "the request is carried out",
         "the request completes with VIRTIO_BLK_S_UNSUPP"),
)}


def describe(key: str, **fields) -> str:
    """`what the driver did (VIRTIO 1.2 §n)` for rule `key`."""
    rule = RULES[key]
    return f"{rule.text.format(**fields)} (VIRTIO 1.2 §{rule.section})"
