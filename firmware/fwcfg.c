#include "fwcfg.h"
#include "debugcon.h"

#define PORT_SELECTOR  0x510
#define PORT_DATA      0x511
#define PORT_DMA_HIGH  0x514    /* DMA address register, big-endian: high half ... */
#define PORT_DMA_LOW   0x518    /* ... and low half; writing it starts the transfer */

#define ID_DMA         (1u << 1)

#define DMA_CTL_ERROR  (1u << 0)
#define DMA_CTL_READ   (1u << 1)
#define DMA_CTL_SKIP   (1u << 2)

/* The DMA descriptor is read by the device from RAM; all fields are big-endian. */
struct fwcfg_dma {
    uint32_t control;
    uint32_t length;
    uint32_t address_high;
    uint32_t address_low;
} __attribute__((packed, aligned(16)));

static struct fwcfg_dma dma_desc;
static bool use_dma;
static uint8_t skip_buf[512];

bool fwcfg_has_dma(void)
{
    return use_dma;
}

void fwcfg_select(uint16_t key)
{
    outw(PORT_SELECTOR, key);
}

/* One DMA operation on the selected item.  The device clears `control` (except the error bit)
 * when done; QEMU completes before the port write returns, so the loop rarely spins. */
static void dma_op(uint32_t control, void *dst, uint32_t len)
{
    dma_desc.control = bswap32(control);
    dma_desc.length = bswap32(len);
    dma_desc.address_high = 0;
    dma_desc.address_low = bswap32((uint32_t)dst);
    __asm__ volatile("" ::: "memory");
    outl(PORT_DMA_HIGH, 0);
    outl(PORT_DMA_LOW, bswap32((uint32_t)&dma_desc));
    uint32_t ctl;
    while ((ctl = bswap32(*(volatile uint32_t *)&dma_desc.control)) & ~DMA_CTL_ERROR)
        __asm__ volatile("pause");
    if (ctl & DMA_CTL_ERROR)
        fatal("fw_cfg: DMA transfer of %u bytes failed", len);
}

void fwcfg_read(void *dst, uint32_t len)
{
    if (!len)
        return;
    if (use_dma)
        dma_op(DMA_CTL_READ, dst, len);
    else
        insb(PORT_DATA, dst, len);
}

void fwcfg_skip(uint32_t len)
{
    if (use_dma) {
        if (len)
            dma_op(DMA_CTL_SKIP, 0, len);
        return;
    }
    while (len) {
        uint32_t n = len < sizeof(skip_buf) ? len : sizeof(skip_buf);
        insb(PORT_DATA, skip_buf, n);
        len -= n;
    }
}

/* Zero `len` bytes at host speed where the device has DMA: a DMA read past the end of an item
 * writes zeros (QEMU's behaviour, and ours).  The signature item is 4 bytes long: select it,
 * skip them, read.  Without DMA, a plain memset. */
void fwcfg_zero(void *dst, uint32_t len)
{
    if (!use_dma) {
        memset(dst, 0, len);
        return;
    }
    fwcfg_select(FW_CFG_SIGNATURE);
    dma_op(DMA_CTL_SKIP, 0, 4);
    if (len)
        dma_op(DMA_CTL_READ, dst, len);
}

bool fwcfg_probe(void)
{
    char sig[4];
    fwcfg_select(FW_CFG_SIGNATURE);
    insb(PORT_DATA, sig, sizeof(sig));
    if (memcmp(sig, "QEMU", 4) != 0)
        return false;
    uint32_t id;
    fwcfg_select(FW_CFG_ID);
    insb(PORT_DATA, &id, sizeof(id));
    use_dma = (id & ID_DMA) != 0;
    return true;
}

uint32_t fwcfg_read_u32(uint16_t key)
{
    uint32_t v = 0;
    fwcfg_select(key);
    fwcfg_read(&v, sizeof(v));
    return v;
}

uint64_t fwcfg_read_u64(uint16_t key)
{
    uint64_t v = 0;
    fwcfg_select(key);
    fwcfg_read(&v, sizeof(v));
    return v;
}

struct fwcfg_file {
    uint32_t size;          /* big-endian */
    uint16_t select;        /* big-endian */
    uint16_t reserved;
    char name[56];
} __attribute__((packed));

uint16_t fwcfg_find_file(const char *name, uint32_t *size)
{
    uint32_t count;
    fwcfg_select(FW_CFG_FILE_DIR);
    fwcfg_read(&count, sizeof(count));
    count = bswap32(count);
    for (uint32_t i = 0; i < count; i++) {
        struct fwcfg_file f;
        fwcfg_read(&f, sizeof(f));
        f.name[sizeof(f.name) - 1] = 0;
        if (strcmp(f.name, name) == 0) {
            *size = bswap32(f.size);
            return bswap16(f.select);
        }
    }
    return 0;
}

void fwcfg_stream_open(struct fwcfg_stream *s, uint16_t key)
{
    s->key = key;
    s->pos = 0;
    fwcfg_select(key);
}

void fwcfg_stream_read_at(struct fwcfg_stream *s, uint32_t offset, void *dst, uint32_t len)
{
    if (offset < s->pos)
        fwcfg_stream_open(s, s->key);
    fwcfg_skip(offset - s->pos);
    fwcfg_read(dst, len);
    s->pos = offset + len;
}
