/* The "hello" Multiboot test kernel: prints what the loader handed over on COM1, then exits
 * through isa-debug-exit with the value of `exit=N` on its command line (default 0). */
#include <stdint.h>
#include <stdbool.h>

#define COM1        0x3F8
#define LSR_THRE    0x20            /* transmit holding register empty */
#define DEBUG_EXIT  0xF4

#define MB_BOOT_MAGIC        0x2BADB002u
#define MBI_MEM              (1u << 0)
#define MBI_CMDLINE          (1u << 2)
#define MBI_MODS             (1u << 3)
#define MBI_MMAP             (1u << 6)
#define MBI_BOOT_LOADER_NAME (1u << 9)

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr, drives_length, drives_addr, config_table;
    uint32_t boot_loader_name;
} __attribute__((packed));

struct mb_module {
    uint32_t mod_start, mod_end;    /* [start, end) */
    uint32_t string, reserved;
} __attribute__((packed));

struct mb_mmap_entry {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);           /* IER: no interrupts */
    outb(COM1 + 3, 0x80);           /* LCR: DLAB to set the divisor */
    outb(COM1 + 0, 0x01);           /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);           /* 8N1 */
    outb(COM1 + 2, 0x07);           /* FIFOs on and cleared */
    outb(COM1 + 4, 0x03);           /* DTR, RTS */
}

static void putc(char c)
{
    if (c == '\n')
        putc('\r');
    while (!(inb(COM1 + 5) & LSR_THRE))
        ;
    outb(COM1, (uint8_t)c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void put_hex(uint64_t v, int digits)
{
    puts("0x");
    for (int i = digits - 1; i >= 0; i--)
        putc("0123456789abcdef"[(v >> (4 * i)) & 15]);
}

static void put_dec(uint32_t v)
{
    char buf[12];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        putc(buf[--n]);
}

/* The value of the first "exit=N" word (decimal, or hex with 0x), or 0. */
static uint32_t exit_code(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((p != s && p[-1] != ' ') || p[0] != 'e' || p[1] != 'x' || p[2] != 'i' ||
            p[3] != 't' || p[4] != '=')
            continue;
        p += 5;
        uint32_t base = 10, v = 0;
        if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
            base = 16, p += 2;
        for (;; p++) {
            uint32_t d;
            if (*p >= '0' && *p <= '9')
                d = *p - '0';
            else if (base == 16 && *p >= 'a' && *p <= 'f')
                d = *p - 'a' + 10;
            else if (base == 16 && *p >= 'A' && *p <= 'F')
                d = *p - 'A' + 10;
            else
                break;
            v = v * base + d;
        }
        return v;
    }
    return 0;
}

void kmain(uint32_t magic, const struct mb_info *mbi);

void kmain(uint32_t magic, const struct mb_info *mbi)
{
    serial_init();
    puts("hello from multiboot\n");
    puts("magic ");
    put_hex(magic, 8);
    puts(magic == MB_BOOT_MAGIC ? " ok\n" : " BAD\n");
    if (magic != MB_BOOT_MAGIC) {
        outl(DEBUG_EXIT, 0x7F);
        return;
    }
    puts("flags ");
    put_hex(mbi->flags, 8);
    putc('\n');
    if (mbi->flags & MBI_MEM) {
        puts("mem_lower ");
        put_dec(mbi->mem_lower);
        puts(" KiB mem_upper ");
        put_dec(mbi->mem_upper);
        puts(" KiB\n");
    }
    const char *cmdline = "";
    if (mbi->flags & MBI_CMDLINE)
        cmdline = (const char *)mbi->cmdline;
    puts("cmdline \"");
    puts(cmdline);
    puts("\"\n");
    if (mbi->flags & MBI_BOOT_LOADER_NAME) {
        puts("boot_loader_name \"");
        puts((const char *)mbi->boot_loader_name);
        puts("\"\n");
    }
    if (mbi->flags & MBI_MODS) {
        /* Each module's place, command line and a checksum of its bytes (FNV-1a), so a test can
         * check the contents without the kernel knowing them. */
        puts("mods ");
        put_dec(mbi->mods_count);
        putc('\n');
        const struct mb_module *m = (const void *)mbi->mods_addr;
        for (uint32_t i = 0; i < mbi->mods_count; i++, m++) {
            uint32_t h = 2166136261u;
            for (const uint8_t *b = (const uint8_t *)m->mod_start; b < (const uint8_t *)m->mod_end; b++)
                h = (h ^ *b) * 16777619u;
            puts("mod ");
            put_dec(i);
            putc(' ');
            put_hex(m->mod_start, 8);
            putc('-');
            put_hex(m->mod_end, 8);
            puts(" fnv ");
            put_hex(h, 8);
            puts(" \"");
            puts(m->string ? (const char *)m->string : "");
            puts("\"\n");
        }
    }
    if (mbi->flags & MBI_MMAP) {
        /* Each entry's size field counts the bytes after itself. */
        uint32_t off = 0;
        while (off + sizeof(struct mb_mmap_entry) <= mbi->mmap_length) {
            const struct mb_mmap_entry *e = (const void *)(mbi->mmap_addr + off);
            puts("mmap ");
            put_hex(e->addr, 16);
            putc(' ');
            put_hex(e->len, 16);
            puts(" type ");
            put_dec(e->type);
            putc('\n');
            off += e->size + 4;
        }
    }
    uint32_t code = exit_code(cmdline);
    puts("exit ");
    put_dec(code);
    putc('\n');
    outl(DEBUG_EXIT, code);
    /* Without isa-debug-exit we return to boot.S and halt.  Nothing is printed here: a machine
     * may retire a few more instructions before it acts on the exit. */
}
