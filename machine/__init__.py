"""A full-system x86 PC emulator in Python, driven by Unicorn, whose star device is virtio-blk on virtio-pci."""

from . import bytecode as _bytecode

# Start-up time: keep compiled modules even where Python itself does not (machine/bytecode.py).
_bytecode.install(__name__)
