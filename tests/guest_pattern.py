"""The disk pattern the bundled guest's self-test writes, as guest/pattern.h defines it."""

import struct


def pattern_sector(lba: int) -> bytes:
    """Sector `lba` as guest/pattern.h defines it: 128 little-endian words
    (lba * 2654435761 + i * 16777619 + 0x5EED) mod 2^32."""
    base = (lba * 2654435761 + 0x5EED) & 0xFFFFFFFF
    return struct.pack("<128I", *(((base + i * 16777619) & 0xFFFFFFFF) for i in range(128)))
