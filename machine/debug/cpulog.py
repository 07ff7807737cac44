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
The register dump and the `-d int` lines are machine/x86/log.py (the CPU writes those itself).

The block categories need a hook Unicorn calls at every executed block, which costs about ten
times the guest's speed; the hook exists only while one of them is on (`attach` installs it; the
command line and the Python API call it once the machine is built), so a run without them pays nothing.
"""

from __future__ import annotations

from .. import trace
from ..x86.log import format_cpu_state
from . import disasm

BLOCK_CATEGORIES = ("in_asm", "exec", "cpu")
SEPARATOR = "-" * 16



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
