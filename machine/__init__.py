"""A full-system x86 PC emulator in Python, driven by Unicorn, whose star device is virtio-blk on virtio-pci."""
