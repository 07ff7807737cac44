"""QEMU's CPU log categories: `-d in_asm`, `-d exec`, `-d cpu` (per translated block) and the
lines of `-d int` (per interrupt or exception delivered).

    -d in_asm   each block's guest code, disassembled, the first time it runs (and again if its
                bytes change), with symbols from the -kernel ELF:
                    ----------------
                    IN: vblk_init
                    0x00101234 <vblk_init>:  55                       push ebp
    -d exec     one line per executed block:   Trace 0: [00000000/0000000000101234] vblk_init
                (CS base / linear PC, then the symbol)
    -d cpu      the registers before each executed block, in QEMU's register-dump layout
    -d int      `check_exception old: 0xffffffff new 0xd` for a CPU exception,
                `Servicing hardware INT=0x20` for an external interrupt, then for every delivery
                `     0: v=0d e=0000 i=0 cpl=0 IP=0008:00101234 pc=00101234 SP=0010:0010fff0 EAX=...`
                and the register dump.

The block categories need a hook Unicorn calls at every executed block, which costs about ten
times the guest's speed; the hook exists only while one of them is on (`attach` installs it when
the machine is built), so a run without them pays nothing.
"""

from __future__ import annotations

from .. import trace
from . import disasm

BLOCK_CATEGORIES = ("in_asm", "exec", "cpu")
SEPARATOR = "-" * 16

# EFLAGS letters in the order QEMU's register dump shows them.
_FLAG_LETTERS = ((10, "D"), (11, "O"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))
_GPRS32 = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
_GPRS64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def wanted() -> bool:
    """Is one of the per-block categories on (so the machine needs a BlockLog)?"""
    return trace.any_category_enabled(*BLOCK_CATEGORIES)


def attach(machine) -> "BlockLog | None":
    """Install the block log on a machine when -d in_asm/exec/cpu asks for it; symbols come from
    the -kernel ELF when it has a symbol table. Returns the log (None when nothing asked)."""
    if not wanted():
        return None
    return BlockLog(machine.cpu, load_symbols(getattr(machine.config, "kernel", None)))


def load_symbols(path):
    """The ELF symbol table of `path`, or None (no file, not an ELF, no symbols)."""
    if path is None:
        return None
    from .symbols import ElfSymbols
    try:
        syms = ElfSymbols.from_file(path)
    except Exception:           # unreadable, a flat binary, a truncated or corrupt ELF
        return None
    return syms if syms.symbols else None


class BlockLog:
    """The per-block logs of one CPU. `symbols` needs `lookup(addr) -> 'name+0x..' | None`."""

    def __init__(self, cpu, symbols=None):
        self.cpu = cpu
        self.symbols = symbols
        self._shown: dict[int, bytes] = {}           # block address -> the bytes last shown
        self._handle = cpu.add_block_hook(self._on_block)

    def close(self) -> None:
        if self._handle is not None:
            self.cpu.remove_block_hook(self._handle)
            self._handle = None

    def symbol(self, addr: int) -> str:
        if self.symbols is None:
            return ""
        return self.symbols.lookup(addr) or ""

    # Runs inside the engine, before the block's first instruction: it must never raise (a
    # Python exception in a hook would end emulation), so every failure becomes a log line.
    def _on_block(self, address: int, size: int) -> None:
        # The categories are looked up each time (a set lookup, nothing next to the hook call
        # itself), so a script may switch them while the machine exists.
        enabled = trace.category_enabled
        try:
            if enabled("in_asm"):
                self._log_in_asm(address, size)
            if enabled("exec"):
                self._log_exec(address)
            if enabled("cpu"):
                trace.log("cpu", format_cpu_state(self.cpu))
        except Exception as exc:
            for category in BLOCK_CATEGORIES:
                trace.log(category, f"(cannot log the block at {address:#x}: {exc})")
                break

    def _log_in_asm(self, address: int, size: int) -> None:
        size = size if 0 < size <= 4096 else 16
        try:
            code = self.cpu.read_virtual(address, size)
        except Exception:
            code = b""
        if self._shown.get(address) == code:
            return
        self._shown[address] = code
        bits = self.cpu.code_bits()
        width = 16 if bits == 64 else 8
        lines = [SEPARATOR, f"IN: {self.symbol(address)}"]
        if not code:
            lines.append(f"0x{address:0{width}x}:  (code not readable)")
        end = address
        rows = []
        for insn in disasm.instructions(code, address, bits):
            sym = self.symbol(insn.address)
            where = f"0x{insn.address:0{width}x}" + (f" <{sym}>" if sym else "") + ":"
            text = f"{insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip()
            target = self._branch_target(insn)
            if target:
                text += f" <{target}>"
            rows.append((where, text))
            end = insn.address + insn.size
        pad = max((len(w) for w, _ in rows), default=0)
        lines += [f"{where:<{pad}}  {text}" for where, text in rows]
        if code and end < address + len(code):
            lines.append(f"0x{end:0{width}x}:  {code[end - address:][:8].hex(' ')}  (undecodable)")
        lines.append("")
        trace.log("in_asm", "\n".join(lines))

    def _branch_target(self, insn) -> str:
        """The symbol a direct call or jump goes to ('' if none): `call 0x1044e0 <vpci_reset>`."""
        if not (insn.mnemonic == "call" or insn.mnemonic.startswith("j")):
            return ""
        try:
            return self.symbol(int(insn.op_str, 16))
        except ValueError:                  # an indirect one: register or memory operand
            return ""

    def _log_exec(self, address: int) -> None:
        cs_base = self.cpu.segment("cs")[1]
        trace.log("exec", f"Trace 0: [{cs_base & 0xFFFFFFFF:08x}/{address:016x}] "
                          f"{self.symbol(address)}".rstrip())


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
