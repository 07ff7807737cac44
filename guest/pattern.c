#include "pattern.h"

/* Buffers sit at odd offsets on purpose: access words through an alignment-1 type. */
typedef uint32_t u32_unaligned __attribute__((aligned(1), may_alias));

void pattern_fill(void *buf, uint64_t lba, uint32_t sectors, bool invert)
{
    u32_unaligned *w = buf;
    uint32_t x = invert ? 0xFFFFFFFFu : 0;
    for (uint32_t s = 0; s < sectors; s++)
        for (uint32_t i = 0; i < 128; i++)
            *w++ = pattern_word(lba + s, i) ^ x;
}

int32_t pattern_check(const void *buf, uint64_t lba, uint32_t sectors, bool invert)
{
    const u32_unaligned *w = buf;
    uint32_t x = invert ? 0xFFFFFFFFu : 0;
    for (uint32_t s = 0; s < sectors; s++)
        for (uint32_t i = 0; i < 128; i++, w++)
            if (*w != (pattern_word(lba + s, i) ^ x))
                return (int32_t)(s * 512 + i * 4);
    return -1;
}
