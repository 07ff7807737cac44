/* /init of the Linux end-to-end test: Linux's own virtio_pci + virtio_blk drive the machine's
 * disk, and this program checks what they do, byte for byte, reporting TAP on the console.
 *
 * It loads the modules listed in /modules (finit_module, in order), waits for /dev/vda, then:
 * size, serial, logical block size and read-only flag as the command line expects; an O_DIRECT
 * read of a pattern the host wrote; O_DIRECT writes read back; fsync (FLUSH); BLKZEROOUT
 * (WRITE_ZEROES) and BLKDISCARD (DISCARD); optionally unbind/bind of the driver. It leaves
 * through isa-debug-exit: port 0xf4 gets 0 when every test passed, 1 otherwise.
 *
 * Command line (read from /proc/cmdline): vt_sectors=N (512-byte sectors), vt_serial=S,
 * vt_lbs=N, vt_ro=0|1, vt_rebind=0|1.
 *
 * Disk layout (512-byte sectors; the host prepares and afterwards checks it):
 *   [0, 2048)      pattern(lba): read and checked
 *   [2048, 4096)   written here with pattern(lba + WRITE_SEED), then fsync
 *   [4096, 6144)   pattern(lba) from the host, zeroed here with BLKZEROOUT
 *   [6144, 8192)   pattern(lba) from the host, discarded here with BLKDISCARD */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SECTOR      512u
#define REGION      (2048u * SECTOR)        /* 1 MiB */
#define READ_LBA    0u
#define WRITE_LBA   2048u
#define ZERO_LBA    4096u
#define DISCARD_LBA 6144u
#define WRITE_SEED  1000000u
#define EXIT_PORT   0xf4

static int test_no, failures;
static char cmdline[4096];

static void ok(int pass, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d - ", pass ? "ok" : "not ok", ++test_no);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!pass)
        failures++;
}

static void diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* What the transport negotiated, for the host to check per mode: the virtio feature bits as
 * Linux shows them (bit 0 first) and the interrupt lines of the virtio device (MSI-X vectors
 * or the IOAPIC pin). */
static int read_file(const char *path, char *buf, size_t len);

static void report_transport(void)
{
    char text[512];
    if (read_file("/sys/block/vda/device/features", text, sizeof(text)) == 0)
        diag("virtio features: %s", text);
    FILE *f = fopen("/proc/interrupts", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        if (!strstr(line, "virtio"))
            continue;
        line[strcspn(line, "\n")] = 0;
        char squeezed[512], *out = squeezed;
        for (char *c = line; *c && out < squeezed + sizeof(squeezed) - 1; c++)
            if (*c != ' ' || (out > squeezed && out[-1] != ' '))
                *out++ = *c;
        *out = 0;
        diag("irq: %s", squeezed);
    }
    fclose(f);
}

static const char *arg(const char *key, const char *dflt);

static __attribute__((noreturn)) void finish(void)
{
    report_transport();
    printf("1..%d\n", test_no);
    printf("# %s\n", failures ? "FAILED" : "all passed");
    fflush(stdout);
    sync();
    /* vt_end=exit (default): isa-debug-exit carries the verdict; vt_end=poweroff or reboot:
     * the kernel's own paths (ACPI S5; the FADT reset register, 0xCF9 or the keyboard
     * controller), which end the machine under -no-reboot as on QEMU. */
    const char *end = arg("vt_end", "exit");
    if (!strcmp(end, "reboot"))
        reboot(RB_AUTOBOOT);
    if (strcmp(end, "poweroff") && ioperm(EXIT_PORT, 4, 1) == 0)
        outb(failures ? 1 : 0, EXIT_PORT);
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}

static const char *arg(const char *key, const char *dflt)
{
    static char value[256];
    size_t klen = strlen(key);
    for (char *p = cmdline; *p; ) {
        while (*p == ' ' || *p == '\n')
            p++;
        char *end = p + strcspn(p, " \n");
        if ((size_t)(end - p) > klen && !strncmp(p, key, klen) && p[klen] == '=') {
            size_t n = end - p - klen - 1;
            if (n >= sizeof(value))
                n = sizeof(value) - 1;
            memcpy(value, p + klen + 1, n);
            value[n] = 0;
            return value;
        }
        p = end;
    }
    return dflt;
}

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    return 0;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* As guest/pattern.h: 128 little-endian words per sector. */
static void fill_pattern(uint8_t *buf, uint32_t lba, uint32_t sectors)
{
    for (uint32_t s = 0; s < sectors; s++) {
        uint32_t base = (lba + s) * 2654435761u + 0x5EEDu;
        uint32_t *w = (uint32_t *)(buf + s * SECTOR);
        for (uint32_t i = 0; i < SECTOR / 4; i++)
            w[i] = base + i * 16777619u;
    }
}

/* Compare with the expected bytes; report the first difference. */
static int check_bytes(const char *what, const uint8_t *got, const uint8_t *want, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (got[i] != want[i]) {
            diag("%s: byte %zu (sector %zu) is 0x%02x, expected 0x%02x", what, i, i / SECTOR,
                 got[i], want[i]);
            return 0;
        }
    return 1;
}

static int load_modules(void)
{
    char list[4096];
    int fd = open("/modules", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, list, sizeof(list) - 1);
    close(fd);
    if (n < 0)
        return 0;
    list[n] = 0;
    int loaded = 0;
    for (char *name = strtok(list, "\n"); name; name = strtok(NULL, "\n")) {
        char path[256];
        snprintf(path, sizeof(path), "/lib/modules/%s", name);
        int mfd = open(path, O_RDONLY | O_CLOEXEC);
        if (mfd < 0 || (syscall(SYS_finit_module, mfd, "", 0) != 0 && errno != EEXIST)) {
            diag("cannot load %s: %s", name, strerror(errno));
            if (mfd >= 0)
                close(mfd);
            return 0;
        }
        close(mfd);
        loaded++;
    }
    diag("%d modules loaded", loaded);
    return 1;
}

static int wait_for(const char *path, int present, int ms)
{
    struct stat st;
    for (int waited = 0; waited <= ms; waited += 10) {
        if ((stat(path, &st) == 0) == present)
            return 1;
        sleep_ms(10);
    }
    return 0;
}

static int pread_all(int fd, uint8_t *buf, size_t len, off_t off)
{
    return pread(fd, buf, len, off) == (ssize_t)len;
}

static void test_read(uint8_t *buf, uint8_t *want, const char *what)
{
    int fd = open("/dev/vda", O_RDONLY | O_DIRECT);
    int pass = fd >= 0 && pread_all(fd, buf, REGION, (off_t)READ_LBA * SECTOR);
    if (!pass)
        diag("%s: %s", what, strerror(errno));
    fill_pattern(want, READ_LBA, REGION / SECTOR);
    ok(pass && check_bytes(what, buf, want, REGION), "%s: O_DIRECT read of 1 MiB, every byte", what);
    if (fd >= 0)
        close(fd);
}

static void test_writes(uint8_t *buf, uint8_t *want)
{
    int fd = open("/dev/vda", O_RDWR | O_DIRECT);
    ok(fd >= 0, "open /dev/vda read-write with O_DIRECT");
    if (fd < 0) {
        diag("open: %s", strerror(errno));
        return;
    }
    fill_pattern(want, WRITE_LBA + WRITE_SEED, REGION / SECTOR);
    memcpy(buf, want, REGION);
    ok(pwrite(fd, buf, REGION, (off_t)WRITE_LBA * SECTOR) == (ssize_t)REGION,
       "O_DIRECT write of 1 MiB");
    ok(fsync(fd) == 0, "fsync (FLUSH)");
    memset(buf, 0, REGION);
    ok(pread_all(fd, buf, REGION, (off_t)WRITE_LBA * SECTOR) &&
       check_bytes("write read-back", buf, want, REGION), "written data reads back, every byte");

    uint64_t range[2] = { (uint64_t)ZERO_LBA * SECTOR, REGION };
    int zr = ioctl(fd, BLKZEROOUT, range);
    if (zr)
        diag("BLKZEROOUT: %s", strerror(errno));
    memset(want, 0, REGION);
    ok(zr == 0 && pread_all(fd, buf, REGION, (off_t)ZERO_LBA * SECTOR) &&
       check_bytes("zeroed range", buf, want, REGION), "BLKZEROOUT (WRITE_ZEROES) reads back as zeros");

    range[0] = (uint64_t)DISCARD_LBA * SECTOR;
    int dr = ioctl(fd, BLKDISCARD, range);
    if (dr)
        diag("BLKDISCARD: %s", strerror(errno));
    ok(dr == 0, "BLKDISCARD (DISCARD)");
    ok(fsync(fd) == 0, "fsync after zeroing and discarding");
    close(fd);
}

static void test_readonly(uint8_t *buf)
{
    int fd = open("/dev/vda", O_RDWR | O_DIRECT);
    int refused = fd < 0;
    if (!refused) {
        memset(buf, 0xAB, SECTOR * 8);
        refused = pwrite(fd, buf, SECTOR * 8, (off_t)WRITE_LBA * SECTOR) < 0 || fsync(fd) < 0;
        close(fd);
    }
    ok(refused, "a read-only disk refuses writes");
}

static void test_rebind(uint8_t *buf, uint8_t *want)
{
    char target[256], dev[256];
    ssize_t n = readlink("/sys/block/vda/device", target, sizeof(target) - 1);
    if (n < 0) {
        ok(0, "rebind: /sys/block/vda/device");
        return;
    }
    target[n] = 0;
    snprintf(dev, sizeof(dev), "%s", strrchr(target, '/') ? strrchr(target, '/') + 1 : target);
    diag("virtio device %s", dev);
    ok(write_file("/sys/bus/virtio/drivers/virtio_blk/unbind", dev) == 0 &&
       wait_for("/dev/vda", 0, 5000), "unbind %s: /dev/vda goes away", dev);
    ok(write_file("/sys/bus/virtio/drivers/virtio_blk/bind", dev) == 0 &&
       wait_for("/dev/vda", 1, 5000), "bind %s again: /dev/vda comes back", dev);
    test_read(buf, want, "after rebind");
}

int main(void)
{
    mkdir("/proc", 0755);
    mkdir("/sys", 0755);
    mkdir("/dev", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    if (read_file("/proc/cmdline", cmdline, sizeof(cmdline)) < 0)
        cmdline[0] = 0;
    printf("# linux virtio-blk test: %s\n", cmdline);

    ok(load_modules(), "load the virtio modules");
    ok(wait_for("/dev/vda", 1, 10000), "/dev/vda appears");

    char text[256];
    unsigned long long want_sectors = strtoull(arg("vt_sectors", "0"), NULL, 0);
    int ro = atoi(arg("vt_ro", "0"));
    unsigned long long sectors = 0;
    if (read_file("/sys/block/vda/size", text, sizeof(text)) == 0)
        sectors = strtoull(text, NULL, 10);
    ok(sectors == want_sectors, "size: %llu sectors (expected %llu)", sectors, want_sectors);
    const char *want_serial = arg("vt_serial", "");
    if (read_file("/sys/block/vda/serial", text, sizeof(text)) < 0)
        snprintf(text, sizeof(text), "(unreadable: %s)", strerror(errno));
    ok(!strcmp(text, want_serial), "serial (GET_ID): '%s' (expected '%s')", text, want_serial);
    const char *want_lbs = arg("vt_lbs", "512");
    if (read_file("/sys/block/vda/queue/logical_block_size", text, sizeof(text)) < 0)
        text[0] = 0;
    ok(!strcmp(text, want_lbs), "logical block size %s (expected %s)", text, want_lbs);
    if (read_file("/sys/block/vda/ro", text, sizeof(text)) < 0)
        text[0] = 0;
    ok(atoi(text) == ro, "read-only flag %s (expected %d)", text, ro);

    uint8_t *buf, *want;
    if (posix_memalign((void **)&buf, 4096, REGION) || posix_memalign((void **)&want, 4096, REGION)) {
        ok(0, "memory for the buffers");
        finish();
    }
    test_read(buf, want, "read");
    if (ro)
        test_readonly(buf);
    else
        test_writes(buf, want);
    if (atoi(arg("vt_rebind", "0")))
        test_rebind(buf, want);
    finish();
}
