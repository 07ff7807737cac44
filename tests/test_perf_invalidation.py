"""Translated-code invalidation on the DMA path: inside a device callback host writes are only
noted and dropped once per run of pages when the callback returns. The guest must still see
every byte a device wrote over code, whichever way it reached the device."""

import pytest

from asm import PM32_PROLOGUE, build_machine, result

MMIO_BASE = 0xFEB00000
PATCH_PORT = 0x81
# Three snippets "mov $N, %al; ret": two on pages far apart, one straddling a page boundary.
SITES = (0x9000, 0xAFFE, 0x30000)


class MultiPatcher:
    """A device whose first write 'DMAs' new code to every site plus unrelated bytes (as a
    virtio request writes data, status byte and ring fields), all in one callback."""

    def __init__(self, mem):
        self.mem, self.writes = mem, 0

    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        self.writes += 1
        if self.writes == 1:
            self.mem.write(0x7000, b"\x00" * 16)             # data elsewhere, before and after
            for site in SITES:
                self.mem.write(site + 1, b"\x02")          # the immediate: mov $2, %al
            self.mem.write(0x60000, b"\x00")


def program(trigger: str, paging: bool) -> str:
    setup_paging = """
        PD_CLEAR
        movl $0x83, 0x50000
        movl $0xfe800083, 0x50fe8           # 4 MiB identity page over the MMIO window
        PSE_PAGING_ON
    """ if paging else ""
    stores = "\n".join(f"""
        movb $0xb0, {site:#x}
        movb $0x01, {site + 1:#x}
        movb $0xc3, {site + 2:#x}""" for site in SITES)
    calls = "\n".join(f"""
        call {site:#x}
        add %eax, %ebx""" for site in SITES)
    return f"""
    main:
        {setup_paging}
        {stores}
    again:
        xor %ebx, %ebx
        xor %eax, %eax
        {calls}
        mov %ebx, RESULTS
        {trigger}
        cmp $6, %ebx
        jne again
        EXIT 0
    """


@pytest.mark.parametrize("paging", [False, True])
@pytest.mark.parametrize("via", ["port", "mmio"])
def test_dma_over_code_from_one_callback_is_seen_everywhere(tmp_path, via, paging):
    trigger = f"out %al, ${PATCH_PORT:#x}" if via == "port" else f"movb %al, {MMIO_BASE:#x}"
    m = build_machine(tmp_path, program(trigger, paging), prologue=PM32_PROLOGUE)
    patcher = MultiPatcher(m.mem)
    if via == "port":
        m.io.add("patcher", PATCH_PORT, 1, patcher)
    else:
        m.memory_map.add("patcher", MMIO_BASE, 0x1000, patcher)
    assert m.run(200_000) == 1
    assert patcher.writes == 2                  # old code once, then all three new snippets
    assert result(m, 0) == 6


def test_removals_are_deferred_to_the_callback_exit_and_merged_per_page_run(tmp_path):
    m = build_machine(tmp_path, "EXIT 0\n")
    cpu = m.cpu
    cpu.physmem.store_path = None               # as if every page had held code (see below)
    removed = []
    cpu.physmem._remove_code = lambda b, e: removed.append((b, e)) or 0

    m.mem.write(0x5000, b"x")                   # outside a callback: at once
    assert removed == [(0x5000, 0x5001)]
    removed.clear()

    cpu.physmem.callback_depth += 1
    for gpa, n in ((0x5000, 1), (0x1000, 0x1000), (0x2FFE, 4), (0x9000, 4), (0x2000, 1)):
        m.mem.write(gpa, b"\0" * n)
    assert removed == []                        # only noted while the device runs
    cpu.physmem.callback_depth -= 1
    cpu.physmem.flush_now()
    assert removed == [(0x1000, 0x3002), (0x5000, 0x5001), (0x9000, 0x9004)]
    assert not cpu.physmem.flush_pending and cpu.physmem._dirty == []


def test_a_run_never_crosses_into_another_ram_range(tmp_path):
    from machine.memory import RamRange
    m = build_machine(tmp_path, "EXIT 0\n")
    cpu = m.cpu
    cpu.physmem.store_path = None               # as if every page had held code
    # RAM shown again at 0xFF000 (as shadow RAM is), touching the main range at 1 MiB.
    m.mem.add_range(RamRange(0xFF000, 0x1000, 0x200000))
    removed = []
    cpu.physmem._remove_code = lambda b, e: removed.append((b, e)) or 0
    cpu.physmem.callback_depth += 1
    m.mem.write(0xFFFF0, b"\0" * 16)
    m.mem.write(0x100000, b"\0" * 16)
    m.mem.write(0x100100, b"\0" * 16)
    cpu.physmem.callback_depth -= 1
    cpu.physmem.flush_now()
    assert removed == [(0xFFFF0, 0x100000), (0x100000, 0x100110)]


def test_host_writes_to_pages_that_never_held_code_drop_nothing(tmp_path):
    """The store path's record of pages that ever held translated code: a DMA elsewhere needs
    no removal (with paging on, no full flush), one over a page that ran code still gets it."""
    m = build_machine(tmp_path, """
    main:
        call 0x9000
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    if m.cpu.physmem.store_path is None:
        pytest.skip("the native helpers cannot be built here")
    m.mem.write(0x9000, b"\xc3")                   # ret
    removed = []
    m.cpu.physmem._remove_code = lambda b, e: removed.append((b, e)) or 0
    assert m.run(100_000) == 1
    m.mem.write(0x20000, b"data")
    assert removed == []
    m.mem.write(0x9000, b"\xc3")
    assert removed == [(0x9000, 0x9001)]
