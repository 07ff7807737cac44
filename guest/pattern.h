/* The deterministic data pattern the self-test writes, so the host can check the image.
 *
 * Sector `lba` (512 bytes) holds 128 little-endian 32-bit words; word i (0..127) is
 *     (lba * 2654435761 + i * 16777619 + 0x5EED) mod 2^32
 * The self-test also writes the bitwise complement of that, temporarily, to prove that writes
 * land; every sector it leaves behind holds the plain pattern. */
#ifndef GUEST_PATTERN_H
#define GUEST_PATTERN_H

#include <stdbool.h>
#include <stdint.h>

static inline uint32_t pattern_word(uint64_t lba, uint32_t i)
{
    return (uint32_t)lba * 2654435761u + i * 16777619u + 0x5EEDu;
}

/* buf needs no alignment. `invert` selects the complement. */
void pattern_fill(void *buf, uint64_t lba, uint32_t sectors, bool invert);
/* Returns the byte offset of the first mismatch, or -1 when the buffer matches. */
int32_t pattern_check(const void *buf, uint64_t lba, uint32_t sectors, bool invert);

#endif
