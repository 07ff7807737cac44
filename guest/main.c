/* virtio-blk guest: a freestanding Multiboot v1 kernel that drives a virtio-blk PCI device
 * and tests it (or benchmarks it), reporting over COM1 and exiting through isa-debug-exit.
 *
 * Run it, e.g.:
 *   qemu-system-x86_64 -kernel out/guest.elf -append "tests=all expect_serial=SER123" \
 *     -display none -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
 *     -drive file=disk.img,format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0,serial=SER123
 * Exit status (QEMU convention: (value << 1) | 1): 1 = every test passed, 3 = a failure.
 *
 * Command line (-append), whitespace-separated key=value words; unknown words are ignored:
 *   mode=test|bench        self-test (default) or benchmark (see bench.c)
 *   tests=all|LIST         comma list of tests to run (default all); "init" always runs first:
 *                          init config rw_sizes segments indirect inflight flush get_id
 *                          out_of_range unsupported read_only reset multiqueue interrupt pattern
 *   transport=auto|modern|legacy   which virtio PCI interface to use (default auto: modern
 *                          when the device has it)
 *   irq=intx|msix          how the device interrupts: INTx (default) or MSI-X (entry 0 for
 *                          config changes, 1.. for the queues, through the local APIC)
 *   ring=split|packed      virtqueue layout: split (default) or packed (VIRTIO_F_RING_PACKED,
 *                          the device's packed=on; init fails without it)
 *   expect_serial=STR      GET_ID must return STR (the device's serial property)
 *   expect_ro=0|1          the disk must (not) be read-only; with 1 a write must fail (IOERR)
 *   expect_queues=N        the device must report N request queues (VIRTIO_BLK_F_MQ)
 *   expect_sectors=N       the capacity must be N sectors
 *   event_idx=0|1          accept VIRTIO_F_EVENT_IDX (default 1)
 *   indirect=0|1           accept VIRTIO_F_INDIRECT_DESC (default 1)
 *   queue_size=N           cap on each queue's size (modern interface only; default 1024)
 *   max_queues=N           use at most N request queues (default and most: 16)
 *   rw_max_kib=N           largest transfer in rw_sizes (default 256)
 *   pattern_lba=N pattern_sectors=N   region the "pattern" test writes and verifies
 *                          (default 0 and 2048)
 *   bench_mib=N bench_ops=N           benchmark span and random-read count (bench.c)
 *
 * Disk layout the self-test leaves behind on a writable disk (for the host to check): every
 * sector it writes ends up holding the pattern of pattern.h; all of them lie in the first 2048
 * sectors (1 MiB), which the "pattern" test covers entirely, plus the disk's last sector (the
 * out_of_range test's boundary write). On a read-only disk the tests only read: fill the image
 * with the pattern beforehand.
 *
 * Output is TAP: "1..N", then "ok N - name", "ok N - name # SKIP why" or
 * "not ok N - name # why"; diagnostics are "# ..." lines.
 */
#include <stdint.h>
#include "cmdline.h"
#include "heap.h"
#include "interrupts.h"
#include "platform.h"
#include "printf.h"
#include "selftest.h"
#include "serial.h"
#include "string.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MB_INFO_MEMORY  (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)

/* Multiboot v1 information structure, the fields we use (Multiboot spec 3.3). */
struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;         /* KiB below 1 MiB */
    uint32_t mem_upper;         /* KiB of contiguous RAM from 1 MiB */
    uint32_t boot_device;
    uint32_t cmdline;           /* physical address of a NUL-terminated string */
};

static struct virtio_blk blk;

__attribute__((noreturn)) void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
    serial_init();
    interrupts_init();
    kprintf("# virtio-blk guest\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        kprintf("Bail out! not started by a Multiboot loader (eax=%x)\n", magic);
        platform_exit(1);
    }
    /* RAM we may use: the contiguous block above 1 MiB that the loader reported, else a
     * conservative 32 MiB. */
    uintptr_t ram_end = 32u << 20;
    if (mbi->flags & MB_INFO_MEMORY)
        ram_end = 0x100000u + mbi->mem_upper * 1024u;
    heap_init(ram_end);
    cmdline_init((mbi->flags & MB_INFO_CMDLINE) ? (const char *)mbi->cmdline : "");
    kprintf("# cmdline: %s\n", cmdline_raw());
    kprintf("# memory: %u KiB free for buffers\n", (uint32_t)(heap_free_bytes() >> 10));

    char mode[16] = "test";
    cmdline_get("mode", mode, sizeof mode);
    bool ok;
    if (!strcmp(mode, "bench")) {
        struct vblk_options o;
        options_from_cmdline(&o);
        char why[128] = "";
        ok = vblk_probe(&blk, &o) == 0 && vblk_init(&blk, why, sizeof why) == 0;
        if (!ok)
            kprintf("# bench: device initialisation failed: %s\n", why);
        else
            ok = bench_run(&blk);
        kprintf("bench done status=%s\n", ok ? "ok" : "error");
    } else {
        ok = selftest_run(&blk);
    }
    platform_exit(ok ? 0 : 1);
}
