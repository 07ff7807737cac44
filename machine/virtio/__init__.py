"""virtio: the transport-independent core (device.py, queue.py), the block device (blk.py) and
the PCI transport (pci.py). `create_virtio_blk_pci` is what the board calls."""
