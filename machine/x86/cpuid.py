"""CPUID: a fixed, modest feature set that TCG implements and our board backs (no feature a
guest would use and find missing: no x2APIC, no TSC-deadline timer, no XSAVE)."""

from __future__ import annotations

import struct


def _regs4(s: bytes) -> tuple[int, ...]:
    return struct.unpack("<4I", s.ljust(16, b"\0"))


_BRAND = b"Python PC emulator virtual CPU".ljust(48, b"\0")
# leaf 1 EDX: FPU DE PSE TSC MSR PAE CX8 [APIC] SEP PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2
_LEAF1_EDX = sum(1 << b for b in (0, 2, 3, 4, 5, 6, 8, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26))
# leaf 1 ECX: SSE3 SSSE3 CX16 SSE4.1 SSE4.2 POPCNT, hypervisor; no x2APIC, no TSC-deadline, no XSAVE
_LEAF1_ECX = sum(1 << b for b in (0, 9, 13, 19, 20, 23, 31))


def cpuid_table(apic: bool) -> dict[int, tuple[int, int, int, int]]:
    """(eax, ebx, ecx, edx) per leaf. Unlisted leaves answer zeros."""
    vendor = b"GenuineIntel"
    hv = b"PyPCemulator"
    brand = [_regs4(_BRAND[i:i + 16]) for i in (0, 16, 32)]
    return {
        0x0: (0x7, *struct.unpack("<I", vendor[0:4]), *struct.unpack("<I", vendor[8:12]),
              *struct.unpack("<I", vendor[4:8])),
        # family 6 model 0x3c stepping 3; 1 logical CPU, APIC ID 0, CLFLUSH line 64 bytes
        0x1: (0x000306C3, (1 << 16) | (8 << 8), _LEAF1_ECX, _LEAF1_EDX | ((1 << 9) if apic else 0)),
        0x40000000: (0x40000000, *struct.unpack("<3I", hv)),
        0x80000000: (0x80000008, 0, 0, 0),
        0x80000001: (0, 0, 1, (1 << 11) | (1 << 20) | (1 << 29)),   # LAHF; SYSCALL NX LM
        0x80000002: brand[0], 0x80000003: brand[1], 0x80000004: brand[2],
        0x80000008: (0x3024, 0, 0, 0),                              # 36-bit physical, 48-bit virtual
    }
