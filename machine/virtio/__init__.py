"""virtio: the transport-independent core (device.py, queue.py), the block device (blk.py), the
PCI transport (pci.py) and the glue between the two (blk_pci.py: `create_virtio_blk_pci`, what
the board calls)."""
