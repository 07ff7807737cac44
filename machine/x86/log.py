"""The CPU's own lines of QEMU's `-d int` log (one per interrupt or exception delivered) and the
register dump that `-d int` and `-d cpu` share (QEMU's layout). Written through trace.log."""

from __future__ import annotations

from .. import trace

# EFLAGS letters in the order QEMU's register dump shows them.
_FLAG_LETTERS = ((10, "D"), (11, "O"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))
_GPRS32 = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
_GPRS64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


# ---------------------------------------------------------------------------------------------
# the register dump (-d cpu, -d int)
# ---------------------------------------------------------------------------------------------

def _flags(eflags: int) -> str:
    return "[" + "".join(ch if eflags >> bit & 1 else "-" for bit, ch in _FLAG_LETTERS) + "]"


def format_cpu_state(cpu) -> str:
    """The registers in the layout of QEMU's `-d cpu` / `info registers` dump: general registers,
    EIP/EFL with the flag letters, each segment as `selector base limit attributes`, the
    descriptor tables, control registers and EFER."""
    r = cpu.read_registers()
    long_code = cpu.code_bits() == 64
    lines = []
    if long_code:
        for i in range(0, 16, 4):
            lines.append(" ".join(f"{n.upper():<3}={r[n]:016x}" for n in _GPRS64[i:i + 4]))
        lines.append(f"RIP={r['rip']:016x} RFL={r['eflags'] & 0xFFFFFFFF:08x} {_flags(r['eflags'])} "
                     f"CPL={r['cs'] & 3} II={int(cpu.interrupt_shadow())} A20=1 SMM=0 HLT=0")
    else:
        for i in (0, 4):
            lines.append(" ".join(f"{n.upper()}={r[n] & 0xFFFFFFFF:08x}" for n in _GPRS32[i:i + 4]))
        lines.append(f"EIP={r['eip']:08x} EFL={r['eflags'] & 0xFFFFFFFF:08x} {_flags(r['eflags'])} "
                     f"CPL={cpu.segment('cs')[0] & 3 if cpu.mode != 'real' else 0} "
                     f"II={int(cpu.interrupt_shadow())} A20=1 SMM=0 HLT=0")
    base_width = 16 if long_code else 8
    for name in ("es", "cs", "ss", "ds", "fs", "gs"):
        sel, base, limit, attrs = cpu.segment(name)
        lines.append(f"{name.upper():<3}={sel & 0xFFFF:04x} {base:0{base_width}x} "
                     f"{limit & 0xFFFFFFFF:08x} {attrs & 0xFFFFFFFF:08x}")
    lines.append(f"GDT=     {r['gdtr_base']:0{base_width}x} {r['gdtr_limit']:08x}")
    lines.append(f"IDT=     {r['idtr_base']:0{base_width}x} {r['idtr_limit']:08x}")
    cr_width = 16 if long_code else 8
    lines.append(f"CR0={r['cr0']:08x} CR2={r['cr2']:0{cr_width}x} CR3={r['cr3']:0{cr_width}x} "
                 f"CR4={r['cr4']:08x}")
    lines.append(f"EFER={r['efer']:016x}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# -d int
# ---------------------------------------------------------------------------------------------

_deliveries = 0


def log_interrupt(cpu, vector: int, error_code: int | None, software: bool) -> None:
    """The `-d int` lines for one delivery, before the CPU transfers control: QEMU's
    `count: v=.. e=.. i=.. cpl=.. IP=cs:eip pc=linear SP=ss:esp` line (CR2 for a page fault,
    EAX otherwise), then the register dump. (QEMU writes them for protected mode only; here
    real-mode deliveries are logged too.)"""
    global _deliveries
    try:
        r = cpu.read_registers()
        width = 16 if cpu.mode == "long" else 8
        cpl = cpu.segment("cs")[0] & 3 if cpu.mode != "real" else 0
        extra = f"CR2={r['cr2']:0{width}x}" if vector == 14 else f"EAX={r['rax']:0{width}x}"
        pc = cpu.linear_pc()
        back = _trap_length(cpu, pc) if software else 0      # QEMU shows the `int n` itself
        line = (f"{_deliveries:6d}: v={vector:02x} e={(error_code or 0) & 0xFFFF:04x} "
                f"i={int(software)} cpl={cpl} IP={r['cs']:04x}:{r['rip'] - back:0{width}x} "
                f"pc={pc - back:0{width}x} SP={r['ss']:04x}:{r['rsp']:0{width}x} {extra}")
        trace.log("int", line + "\n" + format_cpu_state(cpu))
    except Exception as exc:          # inside a CPU hook: never raise
        trace.log("int", f"{_deliveries:6d}: v={vector:02x} (registers unavailable: {exc})")
    _deliveries += 1


def _trap_length(cpu, pc: int) -> int:
    """Length of the software interrupt RIP has just passed: `int n` (CD ib) is 2 bytes,
    int3 / into / int1 are 1."""
    try:
        return 2 if cpu.read_virtual(pc - 2, 2)[:1] == b"\xcd" else 1
    except Exception:
        return 0


def log_check_exception(old: int | None, new: int) -> None:
    """A CPU exception is raised (`old`: the one being delivered when it happened, if any)."""
    trace.log("int", f"check_exception old: {0xFFFFFFFF if old is None else old:#x} new {new:#x}")


def log_hardware_interrupt(vector: int) -> None:
    trace.log("int", f"Servicing hardware INT={vector:#04x}")
