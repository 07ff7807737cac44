/* QEMU's fw_cfg interface: a selector port, a data port and an optional DMA engine.  Items are
 * byte streams: selecting an item rewinds it, each read continues where the last one stopped. */
#ifndef FW_FWCFG_H
#define FW_FWCFG_H

#include "io.h"

#define FW_CFG_SIGNATURE     0x00
#define FW_CFG_ID            0x01
#define FW_CFG_RAM_SIZE      0x03
#define FW_CFG_NB_CPUS       0x05
#define FW_CFG_KERNEL_SIZE   0x08
#define FW_CFG_KERNEL_DATA   0x11
#define FW_CFG_CMDLINE_SIZE  0x14
#define FW_CFG_CMDLINE_DATA  0x15
#define FW_CFG_FILE_DIR      0x19

/* True when the "QEMU" signature answers; also decides between DMA and port reads. */
bool fwcfg_probe(void);
bool fwcfg_has_dma(void);

void fwcfg_select(uint16_t key);
void fwcfg_read(void *dst, uint32_t len);       /* from the selected item's current offset */
void fwcfg_skip(uint32_t len);
/* Fill memory with zeros: by DMA when available (no guest loop; changes the selection), else
 * with memset. */
void fwcfg_zero(void *dst, uint32_t len);
uint32_t fwcfg_read_u32(uint16_t key);          /* numeric items are little-endian */
uint64_t fwcfg_read_u64(uint16_t key);

/* Look a file up in the directory: its selector key (0 if absent) and size. */
uint16_t fwcfg_find_file(const char *name, uint32_t *size);

/* An item read at arbitrary offsets: forward seeks skip, backward seeks re-select. */
struct fwcfg_stream {
    uint16_t key;
    uint32_t pos;
};
void fwcfg_stream_open(struct fwcfg_stream *s, uint16_t key);
void fwcfg_stream_read_at(struct fwcfg_stream *s, uint32_t offset, void *dst, uint32_t len);

#endif
