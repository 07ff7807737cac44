/* Port I/O, MMIO accessors and memory barriers.
 *
 * Everything here is identity-mapped (no paging), so a pointer is also the physical address
 * the device sees for DMA. MMIO goes through volatile accesses of exactly the width the
 * register needs: virtio 1.2 4.1.3.1 requires the driver to access common-config fields with
 * their natural width. */
#ifndef GUEST_IO_H
#define GUEST_IO_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v)  { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t  inb(uint16_t port) { uint8_t v;  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint8_t  mmio_read8(uintptr_t a)  { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v)   { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

/* x86 keeps stores in order and loads in order, so ordering writes to the rings only needs the
 * compiler not to reorder (virtio 1.2 2.7.13: "suitable memory barrier"). A store followed by a
 * load of another location can pass on x86, which matters before reading the device's event
 * index or NO_NOTIFY flag after publishing avail->idx (2.7.10): that needs a full fence. */
static inline void compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void wmb(void) { compiler_barrier(); }
static inline void rmb(void) { compiler_barrier(); }
static inline void mb(void)  { __asm__ volatile("lock; addl $0, 0(%%esp)" ::: "memory", "cc"); }

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif
