/* Page allocator for DMA memory: a bump pointer over the RAM above the kernel image.
 *
 * Everything is identity-mapped, so the addresses handed out are the guest-physical addresses
 * the device uses. Memory is handed out zeroed and never freed one by one; a test takes a mark
 * and releases everything allocated after it in one go. */
#ifndef GUEST_HEAP_H
#define GUEST_HEAP_H

#include <stddef.h>
#include <stdint.h>

void heap_init(uintptr_t ram_end);
/* Returns NULL when the request does not fit (never hands out memory past the end of RAM). */
void *heap_alloc(size_t size, size_t align);
uintptr_t heap_mark(void);
void heap_release(uintptr_t mark);
size_t heap_free_bytes(void);

#endif
