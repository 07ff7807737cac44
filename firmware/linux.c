/* The Linux/x86 boot protocol (Documentation/arch/x86/boot.rst), 32-bit entry.
 *
 * The host splits the bzImage as QEMU does: the real-mode setup (boot sector + setup header +
 * setup code) in SETUP_DATA, the protected-mode kernel in KERNEL_DATA, the initrd in
 * INITRD_DATA, the -append string in CMDLINE_DATA.  We build the "zero page" (struct
 * boot_params) from the setup header, add the e820 map, the command line and the initrd, load
 * the protected-mode kernel at 1 MiB and jump to code32_start with ESI = zero page, flat
 * __BOOT_CS/__BOOT_DS segments (0x10/0x18), paging and interrupts off. */
#include "linux.h"
#include "fwcfg.h"
#include "memmap.h"
#include "debugcon.h"
#include "layout.h"

#define FW_CFG_INITRD_SIZE  0x0b
#define FW_CFG_INITRD_DATA  0x12
#define FW_CFG_SETUP_SIZE   0x17
#define FW_CFG_SETUP_DATA   0x18

/* Offsets in struct boot_params; the setup header keeps its file offsets there (0x1f1 on). */
#define BP_ALT_MEM_K        0x1e0
#define BP_E820_ENTRIES     0x1e8
#define BP_HDR              0x1f1
#define BP_E820_TABLE       0x2d0
#define BP_E820_MAX         128
#define BP_EXT_RAMDISK_IMG  0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8

#define HDR_SETUP_SECTS     0x1f1
#define HDR_BOOT_FLAG       0x1fe
#define HDR_JUMP            0x200
#define HDR_MAGIC           0x202
#define HDR_VERSION         0x206
#define HDR_TYPE_OF_LOADER  0x210
#define HDR_LOADFLAGS       0x211
#define HDR_CODE32_START    0x214
#define HDR_RAMDISK_IMAGE   0x218
#define HDR_RAMDISK_SIZE    0x21c
#define HDR_HEAP_END_PTR    0x224
#define HDR_CMD_LINE_PTR    0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_CMDLINE_SIZE    0x238

#define LOADED_HIGH         0x01
#define PROT_MODE_ADDR      0x100000u
#define MIN_VERSION         0x0206      /* cmdline_size; everything since 2.6.22 */
#define LOADER_TYPE_UNKNOWN 0xff        /* "no assigned id", as the protocol allows */
#define CMDLINE_MAX         4096

/* What the kernel gets, in firmware RAM below 1 MiB (the kernel copies both early). */
static uint8_t zero_page[4096] __attribute__((aligned(4096)));
static char cmdline[CMDLINE_MAX];

static inline uint8_t  *p8(uint32_t off)  { return &zero_page[off]; }
static inline uint16_t *p16(uint32_t off) { return (uint16_t *)&zero_page[off]; }
static inline uint32_t *p32(uint32_t off) { return (uint32_t *)&zero_page[off]; }

void boot_linux(uint32_t entry, uint32_t zero_page) __attribute__((noreturn));

bool linux_present(void)
{
    return fwcfg_read_u32(FW_CFG_SETUP_SIZE) != 0;
}

/* The setup header: the first bytes of SETUP_DATA up to the end the header's own jump says. */
static uint32_t read_header(uint32_t setup_size)
{
    static uint8_t head[1024];
    uint32_t len = setup_size < sizeof(head) ? setup_size : sizeof(head);
    fwcfg_select(FW_CFG_SETUP_DATA);
    fwcfg_read(head, len);
    if (len < HDR_MAGIC + 8 || head[HDR_MAGIC] != 'H' || head[HDR_MAGIC + 1] != 'd' ||
        head[HDR_MAGIC + 2] != 'r' || head[HDR_MAGIC + 3] != 'S')
        fatal("kernel setup (%u bytes) has no Linux setup header", setup_size);
    uint32_t end = HDR_MAGIC + head[HDR_JUMP + 1];   /* jump rel8: the header ends where it lands */
    if (end > len)
        fatal("kernel setup header runs past the setup (%u bytes)", setup_size);
    memcpy(zero_page + BP_HDR, head + BP_HDR, end - BP_HDR);
    return end;
}

static void fill_e820(void)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < memmap.count && n < BP_E820_MAX; i++, n++)
        memcpy(zero_page + BP_E820_TABLE + 20 * n, &memmap.entry[i], 20);
    *p8(BP_E820_ENTRIES) = (uint8_t)n;
    uint64_t ext = memmap_ram_end(0x100000) - 0x100000;
    *p32(BP_ALT_MEM_K) = (uint32_t)((ext > 0xFFFFFFFFull ? 0xFFFFFFFFull : ext) >> 10);
}

static void fill_cmdline(uint32_t version)
{
    uint32_t size = fwcfg_read_u32(FW_CFG_CMDLINE_SIZE);
    uint32_t limit = version >= MIN_VERSION ? *p32(HDR_CMDLINE_SIZE) : 255;
    if (limit > CMDLINE_MAX - 1)
        limit = CMDLINE_MAX - 1;
    if (size > limit + 1)
        fatal("kernel command line (%u bytes) is longer than the kernel accepts (%u)",
              size - 1, limit);
    if (size) {
        fwcfg_select(FW_CFG_CMDLINE_DATA);
        fwcfg_read(cmdline, size);
    }
    cmdline[size ? size - 1 : 0] = 0;
    *p32(HDR_CMD_LINE_PTR) = (uint32_t)cmdline;
    *p32(BP_EXT_CMD_LINE_PTR) = 0;
}

/* The initrd goes as high as the kernel allows (initrd_addr_max) and RAM below 4 GiB does (the
 * ACPI tables, if any, are already carved out of it), page aligned, clear of the kernel. */
static void load_initrd(uint32_t kernel_end)
{
    uint32_t size = fwcfg_read_u32(FW_CFG_INITRD_SIZE);
    if (!size)
        return;
    uint64_t top = memmap_ram_end(PROT_MODE_ADDR);
    if (top > 0x100000000ull)
        top = 0x100000000ull;
    uint64_t max = (uint64_t)*p32(HDR_INITRD_ADDR_MAX) + 1;
    if (top > max)
        top = max;
    if (size > top || ((top - size) & ~0xFFFull) < kernel_end)
        fatal("initrd (%u bytes) does not fit between the kernel (end 0x%x) and 0x%llx",
              size, kernel_end, top);
    uint32_t addr = (uint32_t)((top - size) & ~0xFFFull);
    dbg_printf("linux: initrd 0x%08x-0x%08x\n", addr, addr + size - 1);
    fwcfg_select(FW_CFG_INITRD_DATA);
    fwcfg_read((void *)addr, size);
    *p32(HDR_RAMDISK_IMAGE) = addr;
    *p32(HDR_RAMDISK_SIZE) = size;
    *p32(BP_EXT_RAMDISK_IMG) = 0;
    *p32(BP_EXT_RAMDISK_SIZE) = 0;
}

void linux_boot(void)
{
    uint32_t setup_size = fwcfg_read_u32(FW_CFG_SETUP_SIZE);
    uint32_t kernel_size = fwcfg_read_u32(FW_CFG_KERNEL_SIZE);
    memset(zero_page, 0, sizeof(zero_page));
    read_header(setup_size);

    uint16_t version = *p16(HDR_VERSION);
    dbg_printf("linux: boot protocol %u.%02u, setup %u bytes, kernel %u bytes\n",
               version >> 8, version & 0xff, setup_size, kernel_size);
    if (version < MIN_VERSION)
        fatal("kernel boot protocol %u.%02u is older than 2.06", version >> 8, version & 0xff);
    if (!(*p8(HDR_LOADFLAGS) & LOADED_HIGH))
        fatal("kernel is not a bzImage (loadflags 0x%x: not loaded high)", *p8(HDR_LOADFLAGS));
    uint32_t kernel_end = PROT_MODE_ADDR + kernel_size;
    if (!kernel_size || !memmap_is_ram(PROT_MODE_ADDR, kernel_end))
        fatal("kernel 0x%x-0x%x is not in RAM", PROT_MODE_ADDR, kernel_end - 1);

    fwcfg_select(FW_CFG_KERNEL_DATA);
    fwcfg_read((void *)PROT_MODE_ADDR, kernel_size);
    fill_e820();
    fill_cmdline(version);
    load_initrd((kernel_end + 0xFFF) & ~0xFFFu);

    *p8(HDR_TYPE_OF_LOADER) = LOADER_TYPE_UNKNOWN;
    *p16(HDR_HEAP_END_PTR) = 0;                 /* no real-mode heap: we skip the setup code */
    uint32_t entry = *p32(HDR_CODE32_START);
    dbg_printf("linux: cmdline \"%s\"\n", cmdline);
    dbg_printf("linux: zero page 0x%x, entry 0x%08x\n", (uint32_t)zero_page, entry);
    boot_linux(entry, (uint32_t)zero_page);
}
