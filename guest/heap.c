#include "heap.h"
#include "string.h"

extern char __image_end[];      /* linker.ld: first page after the kernel image */

static uintptr_t heap_next;
static uintptr_t heap_end;

void heap_init(uintptr_t ram_end)
{
    heap_next = (uintptr_t)__image_end;
    heap_end = ram_end > heap_next ? ram_end : heap_next;
}

void *heap_alloc(size_t size, size_t align)
{
    if (align == 0 || (align & (align - 1)))
        return NULL;
    uintptr_t p = (heap_next + align - 1) & ~(uintptr_t)(align - 1);
    if (p < heap_next || size > heap_end - p)
        return NULL;
    heap_next = p + size;
    memset((void *)p, 0, size);
    return (void *)p;
}

uintptr_t heap_mark(void) { return heap_next; }

void heap_release(uintptr_t mark)
{
    if (mark >= (uintptr_t)__image_end && mark <= heap_next)
        heap_next = mark;
}

size_t heap_free_bytes(void) { return heap_end - heap_next; }
