"""SYSCALL, done by hand: Unicorn 2.1.4 executes it as a no-op unless an instruction hook does
the architectural work (it neither saves RCX/R11 nor loads CS/SS/RIP).

Inside the hook RIP is the SYSCALL itself, and Unicorn adds the instruction's length (2) to RIP
when the hook returns; so the hook aims RIP two bytes before the entry point (checked by the
start-up self-test in unicorn_internals). SYSRET runs natively and correctly."""
from __future__ import annotations

from unicorn import x86_const as X

from . import unicorn_internals as ui

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, \
    0xC0000083, 0xC0000084
EFER_SCE = 1 << 0
EFER_LMA = 1 << 10
SYSCALL_LEN = 2
_IF, _RF, _VM = 1 << 9, 1 << 16, 1 << 17


def do_syscall(uc, reg: ui.RawReg, raw: ui.RawState, raise_ud) -> None:
    """The effect of SYSCALL on the CPU state (Intel SDM / AMD APM, "SYSCALL"): the return RIP in
    RCX, RFLAGS in R11 (long mode), CS/SS from STAR[47:32] at CPL 0, RFLAGS masked by FMASK,
    RIP from LSTAR (64-bit caller), CSTAR (compatibility mode) or STAR[31:0] (legacy mode).
    Without EFER.SCE the instruction is invalid: `raise_ud()` delivers #UD."""
    efer = uc.msr_read(MSR_EFER)
    if not efer & EFER_SCE:
        raise_ud()
        return
    rip = reg.read(X.UC_X86_REG_RIP)
    flags = reg.read(X.UC_X86_REG_EFLAGS)
    star = uc.msr_read(MSR_STAR)
    sel = (star >> 32) & 0xFFFC
    long_mode = bool(efer & EFER_LMA)
    if long_mode:
        cs64 = bool(raw.save().hflags & ui.HF_CS64)
        target = uc.msr_read(MSR_LSTAR if cs64 else MSR_CSTAR)
        reg.write(X.UC_X86_REG_RCX, rip + SYSCALL_LEN)
        reg.write(X.UC_X86_REG_R11, flags & ~_RF)
        new_flags = flags & ~uc.msr_read(MSR_FMASK) & ~_RF
    else:
        target = star & 0xFFFFFFFF
        reg.write(X.UC_X86_REG_RCX, (rip + SYSCALL_LEN) & 0xFFFFFFFF)
        new_flags = flags & ~(_IF | _RF | _VM)
    ui.set_cpl(raw, 0)
    ui.load_seg(uc, X.UC_X86_REG_CS, sel)
    ui.load_seg(uc, X.UC_X86_REG_SS, sel + 8)
    reg.write(X.UC_X86_REG_EFLAGS, new_flags)
    reg.write(X.UC_X86_REG_RIP, (target - SYSCALL_LEN) & 0xFFFFFFFFFFFFFFFF)
