"""Linear -> physical translation through the guest's page tables, walked over guest RAM.

Unicorn's own uc_vmem_read/uc_vmem_translate cannot be used on a running guest: a lookup of an
unmapped address overwrites the guest's CR2 and exception state (a later real #PF then arrives
as #DF). So the CPU layer walks the tables itself, as the MMU would for a supervisor access:
32-bit paging (4 KiB and, with CR4.PSE, 4 MiB pages), PAE paging (4 KiB, 2 MiB) and 4-level
long-mode paging (4 KiB, 2 MiB, 1 GiB). Protection bits are not checked: the callers (interrupt
delivery, the debugger) act for the supervisor. No accessed/dirty bits are set."""
from __future__ import annotations

from typing import Callable

CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

_P = 1
_PS = 1 << 7
_ADDR = 0x000FFFFFFFFFF000          # bits 51:12 of an entry


def translate(read_u64: Callable[[int], int | None], read_u32: Callable[[int], int | None],
              cr0: int, cr3: int, cr4: int, efer: int, vaddr: int) -> int | None:
    """The physical address of linear `vaddr`, or None when a level is not present or its table
    is not readable (`read_*` return None for a physical address that is not RAM)."""
    if not cr0 & CR0_PG:
        return vaddr & 0xFFFFFFFF if not efer & EFER_LMA else vaddr
    if efer & EFER_LMA:
        if cr4 & CR4_LA57:
            return None                     # 5-level paging: never enabled (CPUID has no LA57)
        table = cr3 & _ADDR
        for shift in (39, 30, 21, 12):
            entry = read_u64(table + ((vaddr >> shift) & 0x1FF) * 8)
            if entry is None or not entry & _P:
                return None
            if shift in (30, 21) and entry & _PS:
                size = 1 << shift
                return (entry & _ADDR & ~(size - 1)) | (vaddr & (size - 1))
            table = entry & _ADDR
        return table | (vaddr & 0xFFF)
    vaddr &= 0xFFFFFFFF
    if cr4 & CR4_PAE:
        pdpte = read_u64((cr3 & 0xFFFFFFE0) + ((vaddr >> 30) & 3) * 8)
        if pdpte is None or not pdpte & _P:
            return None
        pde = read_u64((pdpte & _ADDR) + ((vaddr >> 21) & 0x1FF) * 8)
        if pde is None or not pde & _P:
            return None
        if pde & _PS:
            return (pde & _ADDR & ~0x1FFFFF) | (vaddr & 0x1FFFFF)
        pte = read_u64((pde & _ADDR) + ((vaddr >> 12) & 0x1FF) * 8)
        if pte is None or not pte & _P:
            return None
        return (pte & _ADDR) | (vaddr & 0xFFF)
    pde = read_u32((cr3 & 0xFFFFF000) + (vaddr >> 22) * 4)
    if pde is None or not pde & _P:
        return None
    if pde & _PS and cr4 & CR4_PSE:
        # bits 20:13 of a 4 MiB PDE are physical address bits 39:32 (PSE-36)
        return (pde & 0xFFC00000) | ((pde >> 13 & 0xFF) << 32) | (vaddr & 0x3FFFFF)
    pte = read_u32((pde & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4)
    if pte is None or not pte & _P:
        return None
    return (pte & 0xFFFFF000) | (vaddr & 0xFFF)
