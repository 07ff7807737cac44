/* The self-test (TAP over COM1) and the benchmark, both driven by the command line. */
#ifndef GUEST_SELFTEST_H
#define GUEST_SELFTEST_H

#include <stdbool.h>
#include "virtio_blk.h"

/* Fills driver options from the command line (transport=, event_idx=, indirect=, ...). */
void options_from_cmdline(struct vblk_options *o);

/* Runs the tests named by tests= (default all); returns true when every test passed. */
bool selftest_run(struct virtio_blk *b);

/* mode=bench: prints "bench ..." lines; returns true unless the device failed. */
bool bench_run(struct virtio_blk *b);

#endif
