#include "multiboot.h"
#include "fwcfg.h"
#include "memmap.h"
#include "debugcon.h"
#include "layout.h"

/* ---- Multiboot v1 ---- */
#define MB_HEADER_MAGIC      0x1BADB002u
#define MB_BOOT_MAGIC        0x2BADB002u
#define MB_SEARCH_LIMIT      8192       /* the header sits in the first 8 KiB, 4-byte aligned */
/* Header flag bits 0-15 are requirements: we honour 0 (modules are always page aligned) and
 * 1 (memory information); 2 (video mode) and anything newer we cannot give, so we must refuse.
 * Bit 16 (load addresses in the header) is optional for ELF kernels: we use the ELF headers. */
#define MB_REQ_SUPPORTED     0x0003u

#define MBI_MEM              (1u << 0)
#define MBI_CMDLINE          (1u << 2)
#define MBI_MODS             (1u << 3)
#define MBI_MMAP             (1u << 6)
#define MBI_BOOT_LOADER_NAME (1u << 9)

struct mb_header {
    uint32_t magic, flags, checksum;
};

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;      /* KiB below 640 KiB / KiB above 1 MiB */
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr;
    uint32_t config_table;
    uint32_t boot_loader_name;
    uint32_t apm_table;
    uint32_t vbe_and_framebuffer[10];   /* flags say these are absent; kept zero */
} __attribute__((packed));

struct mb_mmap_entry {
    uint32_t size;                      /* of the rest of the entry: 20 */
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

/* ---- ELF32 ---- */
#define EI_CLASS     4
#define EI_DATA      5
#define ELFCLASS32   1
#define ELFDATA2LSB  1
#define ET_EXEC      2
#define EM_386       3
#define PT_LOAD      1

struct elf32_ehdr {
    uint8_t ident[16];
    uint16_t type, machine;
    uint32_t version, entry, phoff, shoff, flags;
    uint16_t ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
} __attribute__((packed));

struct elf32_phdr {
    uint32_t type, offset, vaddr, paddr, filesz, memsz, flags, align;
} __attribute__((packed));

#define MAX_PHDRS    32
#define CMDLINE_MAX  4096
/* The module table the board hands over in fw_cfg file opt/machine/modules (machine/pc.py
 * builds it from -initrd "file args,file args", QEMU's syntax):
 *     u32 count, u32 strings_len, count x { u32 size, u32 string_offset },
 *     strings_len bytes of NUL-terminated command lines, then the modules' bytes in order.
 * The limits are machine/kernel_image.py's too, so the host refuses what would not fit here. */
#define MODS_MAX         32
#define MOD_STRINGS_MAX  4096
#define PAGE_SIZE        4096u

struct mb_module {
    uint32_t mod_start, mod_end;        /* [start, end) */
    uint32_t string, reserved;
} __attribute__((packed));

struct mod_entry {
    uint32_t size, string_offset;
} __attribute__((packed));

static const char loader_name[] = "machine firmware";

/* What the kernel gets (in firmware RAM, below 1 MiB) */
static struct mb_info mbi;
static struct mb_mmap_entry mb_mmap[MEMMAP_MAX];
static char cmdline[CMDLINE_MAX];
static char boot_loader_name[sizeof(loader_name)];
static struct mb_module mods[MODS_MAX];
static char mod_strings[MOD_STRINGS_MAX];
static uint32_t mods_count;

/* Loader scratch */
static uint8_t head[MB_SEARCH_LIMIT] __attribute__((aligned(4)));
static struct elf32_phdr phdrs[MAX_PHDRS];

struct kernel_source {
    uint16_t key;           /* fw_cfg item holding the ELF file */
    uint32_t size;
    const char *name;       /* for messages */
};

/* Our machine passes the ELF file in KERNEL_DATA; on QEMU (which flattens -kernel itself) the
 * same file comes as opt/machine/kernel. */
static void find_kernel(struct kernel_source *k)
{
    k->size = fwcfg_read_u32(FW_CFG_KERNEL_SIZE);
    if (k->size) {
        k->key = FW_CFG_KERNEL_DATA;
        k->name = "KERNEL_DATA";
        return;
    }
    k->key = fwcfg_find_file("opt/machine/kernel", &k->size);
    k->name = "opt/machine/kernel";
    if (!k->key || !k->size)
        fatal("no kernel: fw_cfg KERNEL_SIZE is 0 and there is no opt/machine/kernel file");
}

static void read_cmdline(void)
{
    uint32_t size = fwcfg_read_u32(FW_CFG_CMDLINE_SIZE);
    uint16_t key = FW_CFG_CMDLINE_DATA;
    if (!size)
        key = fwcfg_find_file("opt/machine/cmdline", &size);
    if (!key)
        size = 0;
    if (size > CMDLINE_MAX - 1)
        size = CMDLINE_MAX - 1;
    if (size) {
        fwcfg_select(key);
        fwcfg_read(cmdline, size);
    }
    cmdline[size] = 0;
}

static const struct mb_header *find_mb_header(uint32_t len)
{
    for (uint32_t off = 0; off + sizeof(struct mb_header) <= len; off += 4) {
        const struct mb_header *h = (const void *)&head[off];
        if (h->magic == MB_HEADER_MAGIC && h->magic + h->flags + h->checksum == 0)
            return h;
    }
    return 0;
}

static const struct elf32_ehdr *check_elf(const struct kernel_source *k, uint32_t len)
{
    const struct elf32_ehdr *eh = (const void *)head;
    if (len < sizeof(*eh) || memcmp(eh->ident, "\x7f" "ELF", 4) != 0)
        fatal("kernel (%s, %u bytes) is not an ELF file", k->name, k->size);
    if (eh->ident[EI_CLASS] != ELFCLASS32 || eh->ident[EI_DATA] != ELFDATA2LSB ||
        eh->machine != EM_386)
        fatal("kernel is not a 32-bit little-endian i386 ELF file");
    if (eh->type != ET_EXEC)
        fatal("kernel ELF is not an executable (e_type %u)", eh->type);
    if (eh->phentsize != sizeof(struct elf32_phdr) || eh->phnum == 0 || eh->phnum > MAX_PHDRS)
        fatal("kernel ELF has unsupported program headers (%u of %u bytes)",
              eh->phnum, eh->phentsize);
    if ((uint64_t)eh->phoff + eh->phnum * sizeof(struct elf32_phdr) > k->size)
        fatal("kernel ELF program headers lie beyond the end of the file");
    return eh;
}

/* Every PT_LOAD segment must come from inside the file and land in RAM outside the firmware's
 * own RAM; nothing is loaded unless all segments pass. */
static void check_segment(const struct kernel_source *k, const struct elf32_phdr *ph)
{
    uint64_t start = ph->paddr, end = start + ph->memsz;
    if (ph->filesz > ph->memsz)
        fatal("kernel segment at 0x%x has more file bytes (0x%x) than memory (0x%x)",
              ph->paddr, ph->filesz, ph->memsz);
    if ((uint64_t)ph->offset + ph->filesz > k->size)
        fatal("kernel segment at 0x%x: file range 0x%x+0x%x is outside the %u-byte file",
              ph->paddr, ph->offset, ph->filesz, k->size);
    if (end > 0x100000000ull)
        fatal("kernel segment 0x%x+0x%x wraps past 4 GiB", ph->paddr, ph->memsz);
    if (start < FW_RAM_END && FW_RAM_START < end)
        fatal("kernel segment 0x%x-0x%x overlaps the firmware's RAM 0x%x-0x%x",
              ph->paddr, (uint32_t)(end - 1), FW_RAM_START, FW_RAM_END - 1);
    if (!memmap_is_ram(start, end))
        fatal("kernel segment 0x%x-0x%x is not in RAM", ph->paddr, (uint32_t)(end - 1));
}

/* Load segments in file order so the fw_cfg item is read front to back without rewinding. */
static void load_segments(struct fwcfg_stream *s, uint32_t n)
{
    bool done[MAX_PHDRS] = { false };
    for (;;) {
        int next = -1;
        for (uint32_t i = 0; i < n; i++)
            if (!done[i] && phdrs[i].type == PT_LOAD && phdrs[i].memsz &&
                (next < 0 || phdrs[i].offset < phdrs[next].offset))
                next = i;
        if (next < 0)
            return;
        done[next] = true;
        const struct elf32_phdr *ph = &phdrs[next];
        dbg_printf("kernel: load 0x%08x-0x%08x from file 0x%x+0x%x, zero 0x%x\n",
                   ph->paddr, ph->paddr + ph->memsz - 1, ph->offset, ph->filesz,
                   ph->memsz - ph->filesz);
        fwcfg_stream_read_at(s, ph->offset, (void *)ph->paddr, ph->filesz);
        /* .bss: zeroed by the device (as QEMU's own loader prepares the image on the host), not
         * by a guest loop over megabytes.  DMA zeroing selects another item: re-open the
         * stream (a forward DMA skip costs nothing). */
        fwcfg_zero((uint8_t *)ph->paddr + ph->filesz, ph->memsz - ph->filesz);
        if (fwcfg_has_dma())
            fwcfg_stream_open(s, s->key);
    }
}

/* The entry point is virtual; for a kernel linked higher-half it is translated through the
 * segment that contains it.  Either way it must lie in loaded memory. */
static uint32_t entry_address(uint32_t entry, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        const struct elf32_phdr *ph = &phdrs[i];
        if (ph->type == PT_LOAD && entry - ph->vaddr < ph->memsz)
            return entry - ph->vaddr + ph->paddr;
    }
    fatal("kernel entry point 0x%x is outside its loaded segments", entry);
}

/* The first byte past every loaded segment: modules go after it. */
static uint64_t kernel_end(uint32_t n)
{
    uint64_t end = 0;
    for (uint32_t i = 0; i < n; i++)
        if (phdrs[i].type == PT_LOAD && phdrs[i].memsz && phdrs[i].paddr + (uint64_t)phdrs[i].memsz > end)
            end = phdrs[i].paddr + (uint64_t)phdrs[i].memsz;
    return end;
}

/* Multiboot modules, page aligned one after the other above the kernel, as the kernel's
 * header flag 0 may require.  Everything is checked before anything is read into RAM. */
static void load_modules(uint64_t above)
{
    uint32_t size;
    uint16_t key = fwcfg_find_file("opt/machine/modules", &size);
    if (!key)
        return;
    struct fwcfg_stream s;
    uint32_t head_words[2];
    static struct mod_entry table[MODS_MAX];
    if (size < sizeof(head_words))
        fatal("opt/machine/modules: %u bytes is too short for its header", size);
    fwcfg_stream_open(&s, key);
    fwcfg_stream_read_at(&s, 0, head_words, sizeof(head_words));
    uint32_t count = head_words[0], strings_len = head_words[1];
    if (count > MODS_MAX || strings_len > MOD_STRINGS_MAX)
        fatal("opt/machine/modules: %u modules with %u bytes of command lines (at most %u and %u)",
              count, strings_len, MODS_MAX, MOD_STRINGS_MAX);
    uint32_t table_len = count * sizeof(struct mod_entry);
    uint64_t data = sizeof(head_words) + (uint64_t)table_len + strings_len;
    if (data > size)
        fatal("opt/machine/modules: its table runs past the file's %u bytes", size);
    fwcfg_stream_read_at(&s, sizeof(head_words), table, table_len);
    fwcfg_stream_read_at(&s, sizeof(head_words) + table_len, mod_strings, strings_len);
    if (strings_len)
        mod_strings[strings_len - 1] = 0;

    uint64_t at = (above + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1), offset = data;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t end = at + table[i].size;
        if (table[i].string_offset >= strings_len)
            fatal("module %u: command line offset %u is outside the %u-byte string table",
                  i, table[i].string_offset, strings_len);
        if (offset + table[i].size > size)
            fatal("module %u: its %u bytes run past the end of opt/machine/modules", i, table[i].size);
        if (end > 0x100000000ull || !memmap_is_ram(at, end > at ? end : at + 1))
            fatal("module %u (%u bytes) does not fit in RAM at 0x%llx", i, table[i].size, at);
        if (at < FW_RAM_END && FW_RAM_START < end)
            fatal("module %u at 0x%llx-0x%llx overlaps the firmware's RAM 0x%x-0x%x",
                  i, at, end - 1, FW_RAM_START, FW_RAM_END - 1);
        mods[i] = (struct mb_module){ .mod_start = (uint32_t)at, .mod_end = (uint32_t)end,
                                      .string = (uint32_t)&mod_strings[table[i].string_offset] };
        offset += table[i].size;
        at = (end + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    }
    for (uint32_t i = 0, pos = data; i < count; pos += table[i].size, i++) {
        dbg_printf("module %u: 0x%08x-0x%08x \"%s\"\n", i, mods[i].mod_start, mods[i].mod_end,
                   (const char *)mods[i].string);
        fwcfg_stream_read_at(&s, pos, (void *)mods[i].mod_start, table[i].size);
    }
    mods_count = count;
}

static void build_mbi(void)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < memmap.count; i++) {
        const struct e820_entry *e = &memmap.entry[i];
        mb_mmap[n++] = (struct mb_mmap_entry){ .size = sizeof(struct mb_mmap_entry) - 4,
                                               .addr = e->addr, .len = e->len, .type = e->type };
    }
    memcpy(boot_loader_name, loader_name, sizeof(loader_name));

    uint64_t lower = memmap_ram_end(0), upper = memmap_ram_end(0x100000);
    if (lower > 0xA0000)
        lower = 0xA0000;
    mbi.flags = MBI_MEM | MBI_CMDLINE | MBI_MMAP | MBI_BOOT_LOADER_NAME;
    mbi.mem_lower = (uint32_t)(lower >> 10);
    mbi.mem_upper = upper > 0x100000000ull ? (0x100000000ull - 0x100000) >> 10
                                           : (uint32_t)((upper - 0x100000) >> 10);
    mbi.cmdline = (uint32_t)cmdline;
    mbi.mmap_length = n * sizeof(struct mb_mmap_entry);
    mbi.mmap_addr = (uint32_t)mb_mmap;
    mbi.boot_loader_name = (uint32_t)boot_loader_name;
    if (mods_count) {
        mbi.flags |= MBI_MODS;
        mbi.mods_count = mods_count;
        mbi.mods_addr = (uint32_t)mods;
    }
}

void multiboot_boot(void)
{
    struct kernel_source k;
    struct fwcfg_stream s;

    find_kernel(&k);
    dbg_printf("kernel: %s, %u bytes\n", k.name, k.size);

    uint32_t len = k.size < MB_SEARCH_LIMIT ? k.size : MB_SEARCH_LIMIT;
    fwcfg_stream_open(&s, k.key);
    fwcfg_stream_read_at(&s, 0, head, len);

    const struct elf32_ehdr *eh = check_elf(&k, len);
    const struct mb_header *mh = find_mb_header(len);
    if (!mh)
        fatal("kernel has no Multiboot header in its first 8 KiB");
    dbg_printf("kernel: Multiboot header at file offset 0x%x, flags 0x%x\n",
               (uint32_t)((const uint8_t *)mh - head), mh->flags);
    if (mh->flags & 0xFFFF & ~MB_REQ_SUPPORTED)
        fatal("kernel requires Multiboot features this loader lacks (flags 0x%x)",
              mh->flags & 0xFFFF & ~MB_REQ_SUPPORTED);

    uint32_t entry = eh->entry, phnum = eh->phnum;
    fwcfg_stream_read_at(&s, eh->phoff, phdrs, phnum * sizeof(struct elf32_phdr));
    uint32_t loadable = 0;
    for (uint32_t i = 0; i < phnum; i++)
        if (phdrs[i].type == PT_LOAD && phdrs[i].memsz) {
            check_segment(&k, &phdrs[i]);
            loadable++;
        }
    if (!loadable)
        fatal("kernel ELF has no loadable segment");
    uint32_t phys_entry = entry_address(entry, phnum);

    load_segments(&s, phnum);
    load_modules(kernel_end(phnum));
    read_cmdline();
    build_mbi();

    dbg_printf("kernel: cmdline \"%s\"\n", cmdline);
    dbg_printf("kernel: mem_lower %u KiB, mem_upper %u KiB, mbi at 0x%x\n",
               mbi.mem_lower, mbi.mem_upper, (uint32_t)&mbi);
    dbg_printf("kernel: entry 0x%08x\n", phys_entry);
    boot_multiboot(phys_entry, (uint32_t)&mbi);
}
