"""The CPU: a Unicorn x86 engine made to behave like a PC processor.

Unicorn executes instructions; this module supplies what a bare engine lacks on a PC, and hands
each concern to its own module:
* power-on state: a UC_MODE_64 engine (the only one that can resume protected/long-mode code
  after a stop) reset by hand to real mode at F000:FFF0;
* interrupt and exception delivery through the IVT and the IDT, #DF and triple faults:
  x86/deliver.py (`self.delivery`);
* physical memory (RAM, ROM, shadow windows, MMIO, open bus) and the translated code that
  depends on it: cpu_memory.py (`self.physmem`); IN/OUT dispatched to the IoSpace here;
* CPUID (x86/cpuid.py) with a stable feature set matching the devices we model, RDTSC from
  virtual time;
* a guest store into ROM skipped (x86/decode.py gives its length);
* debugger services: registers by name, virtual memory access, single step; breakpoints and
  the other hooks on executed code are cpu_hooks.py (`self.hooks`); the fatal fault report
  is x86/report.py.

Run model: the board calls `run(count)` with count > 0 and acts on the returned `SliceResult`
between slices. Device callbacks never stop the engine (Unicorn would replay the instruction);
they only record, and `request_stop_after_instruction()` ends the slice cleanly right after the
current instruction (exact mode) or at the next translated block start (fast mode).

Two clock modes (QEMU's -icount): the exact mode (the default, `-icount shift=0`) has Unicorn
count every instruction (`emu_start` with count > 0): 1 ns of virtual time per instruction,
slices end exactly at their budget, the same guest gives the same instruction count. The fast
mode (`-icount off`) runs the engine with count = 0 and charges each translated block to the
clock from a native block hook (x86/fast_clock.py): 3x (Linux) to 10x (tight loops) the
speed, virtual time estimated from block sizes, slices end at block starts. Anything that observes single
instructions (breakpoints, single steps, dynamic-hook mode, the -d block log, an attached
debugger) runs in the exact mode; the CPU switches between the two at slice boundaries.

Only the engine's modules (this one, cpu_memory.py, cpu_hooks.py, x86/deliver.py and
unicorn_internals) import unicorn.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from . import pagewalk, syscall_insn, trace, vmstate
from . import unicorn_internals as ui
from .clock import VirtualClock
from .cpu_hooks import CodeHooks
from .cpu_memory import CpuMemory, MemoryAccessError
from .x86 import log
from .x86.cpuid import cpuid_table
from .x86.deliver import ERROR_CODE_VECTORS, EFLAGS_IF, Delivery
from .x86 import exact_clock, fast_clock, rep_string, tsc
from .toolchain import ToolchainError
from .memory import PAGE, GuestMemory, IoSpace, MemoryMap

# Virtual time one IN/OUT takes, on top of its instruction: about what a cycle on the ISA/LPC bus
# costs on real hardware. Without it a guest polling a port for time to pass (the PIT channel 2
# calibration loop of every BIOS) would spin about 1000 times more often than on a real PC, each
# spin a Python callback.
IO_PORT_NS = 1000

_SEG_REGS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
             "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_GPRS = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags",
    "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base")}
# 32-bit names are views of the 64-bit registers (the debugger's i386 target uses them).
_ALIASES32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
              "ebp": "rbp", "esp": "rsp", "eip": "rip"}
_REG_RAX, _REG_RCX, _REG_RDX, _REG_RBX = X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX
_REG_RIP, _REG_RSP, _REG_EFLAGS = X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_EFLAGS
_REG_RSI, _REG_RDI = X.UC_X86_REG_RSI, X.UC_X86_REG_RDI
EFER = 0xC0000080


_CPUID_ZERO = (0, 0, 0, 0)

# ------------------------------------------------------------------------------------------
# Saved CPU state (machine/vmstate.py): everything the guest can observe or that steers the
# next instruction. The public API reads and writes most of it; the segment caches and hflags
# (CPL, interrupt shadow, mode bits) go through the raw context (unicorn_internals).
# ------------------------------------------------------------------------------------------
_STATE_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags")
_STATE_CTRL = {"cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3,
               "cr4": X.UC_X86_REG_CR4, "dr0": X.UC_X86_REG_DR0, "dr1": X.UC_X86_REG_DR1,
               "dr2": X.UC_X86_REG_DR2, "dr3": X.UC_X86_REG_DR3, "dr6": X.UC_X86_REG_DR6,
               "dr7": X.UC_X86_REG_DR7}
# The MSRs Unicorn implements that a guest may have written (EFER separately: it goes first).
STATE_MSRS = (0x174, 0x175, 0x176,                        # SYSENTER_CS/ESP/EIP
              0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,  # STAR LSTAR CSTAR FMASK
              0xC0000102, 0xC0000103,                     # KERNEL_GS_BASE, TSC_AUX
              0x277, 0x1A0, 0x17A,                        # PAT, MISC_ENABLE, MCG_STATUS
              0x2FF, 0x250, 0x258, 0x259, *range(0x268, 0x270),   # MTRR default and fixed
              *range(0x200, 0x210))                       # MTRR variable pairs
_SEG = vmstate.Tuple(vmstate.U16, vmstate.U64, vmstate.U32, vmstate.U32)   # selector base limit flags
# hflags bits QEMU defines (target/i386/cpu.h: CPL..MPX_IU); anything else is refused.
HFLAGS_KNOWN = 0x07FBFFFF
CPU_VMSTATE = vmstate.Description("cpu", 1, (
    *(vmstate.Field(n, vmstate.U64) for n in _STATE_GPRS),
    *(vmstate.Field(n, vmstate.U64) for n in _STATE_CTRL),
    vmstate.Field("efer", vmstate.U64),
    vmstate.Field("msrs", vmstate.List(vmstate.U64, len(STATE_MSRS), len(STATE_MSRS))),
    vmstate.Field("segs", vmstate.List(_SEG, 6, 6)),
    vmstate.Field("ldtr", _SEG), vmstate.Field("tr", _SEG),
    vmstate.Field("gdtr", vmstate.Tuple(vmstate.U64, vmstate.U32)),
    vmstate.Field("idtr", vmstate.Tuple(vmstate.U64, vmstate.U32)),
    vmstate.Field("fpregs", vmstate.List(vmstate.Tuple(vmstate.U64, vmstate.U16), 8, 8)),
    vmstate.Field("fpcw", vmstate.U16), vmstate.Field("fpsw", vmstate.U16),
    vmstate.Field("fptag", vmstate.U16), vmstate.Field("mxcsr", vmstate.U32),
    vmstate.Field("xmm", vmstate.List(vmstate.U128, 16, 16)),
    vmstate.Field("hflags", vmstate.U32), vmstate.Field("hflags2", vmstate.U32),
    # The run loop's watch for IF=1 (cpu_hooks.py): it shapes slices, so it is state too.
    vmstate.Field("if_waiting", vmstate.BOOL), vmstate.Field("if_calls", vmstate.U32),
    vmstate.Field("if_gave_up", vmstate.BOOL), vmstate.Field("if_watch", vmstate.BOOL),
))
_FP_REGS = tuple(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8))
_XMM_REGS = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16))


@dataclass
class SliceResult:
    """Why `Cpu.run()` returned.
    kind: 'count' (budget used up), 'halt' (HLT executed), 'stop' (a stop was requested),
          'breakpoint' (at `address`), 'fatal' (`report` says why; the guest cannot go on),
          'triple_fault' (`report` says why).
    retired: instructions executed in this slice.
    io_ns: virtual time the slice's port accesses took (see IO_PORT_NS); the slice lasted
          retired + io_ns nanoseconds."""
    kind: str
    retired: int
    address: int = 0
    report: str = ""
    io_ns: int = 0


# ------------------------------------------------------------------------------------------
# The CPU
# ------------------------------------------------------------------------------------------

class Cpu:
    """One x86 CPU attached to guest RAM, the physical memory map and the port I/O space.

    `clock` gives virtual time to RDTSC (1 instruction = 1 ns; the TSC ticks at 1 GHz)."""

    def __init__(self, mem: GuestMemory, memory_map: MemoryMap, io: IoSpace, clock: VirtualClock,
                 apic: bool = False, icount: bool = True):
        """`icount`: the exact mode (True) or the fast mode (False: raises ToolchainError when
        its native helper cannot be built, UnsupportedUnicorn when its self-test fails)."""
        ui.self_test()
        self.mem = mem
        self.memory_map = memory_map
        self.io = io
        self.clock = clock
        self.uc = uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        self._raw = ui.RawState(uc)
        self._reg = ui.RawReg(uc)
        # The live counter and budget of the running slice: the clock of the slice's mode (see
        # _set_mode). Unicorn's own while the engine counts ("counted").
        self._counted_counter = self._counter = ui.emu_counter(uc)
        self._counted_budget = self._budget = ui.emu_count(uc)   # lowered to stop after an instruction
        self._fast_clock = None if icount else fast_clock.FastClock(uc)
        self._exact_clock = self._make_exact_clock(uc)
        self._mode = "counted"                              # the clock mode of the last slice
        self._fast = False                                  # ... is it the fast mode?
        # A device callback that raises ends the run after its instruction, in every mode.
        ui.set_failure_stop(uc, self._stop_counting)
        self._exact_holds = 0                               # see hold_exact()
        # Native device code that decides alone what Python would (virtio-blk's notify front)
        # may act only until the CPU next runs Python: this token is new at every slice start
        # and every clock update inside one (_sync_clock, which every device callback makes),
        # and 0 in slices whose hooks observe single instructions. `native_window`.
        self.slice_token = ctypes.c_uint64(0)
        self._slice_serial = 0
        self._cpuid = cpuid_table(apic)
        self._slice_start_ns = 0
        self._io_ns = 0                                     # port access time in this slice
        self._stop_cause: str | None = None
        self._fatal_report = ""
        self._write_prot_addr: int | None = None
        self.running = False                                # inside emu_start (hooks are live)

        self.physmem = CpuMemory(uc, mem, self._sync_clock, self._raw)
        self.delivery = Delivery(self)
        self.hooks = CodeHooks(self)
        memory_map.attach(self.physmem)
        # rep stos/movs over RAM at host speed (x86/rep_string.py); None without gcc.
        self.rep_string = rep_string.attach(uc, self.physmem)

        uc.hook_add(UC.UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC.UC_HOOK_INSN_INVALID, self._on_invalid)
        # The hot exits (ports, CPUID, RDTSC) bypass the binding's per-call wrappers.
        ui.hook_in(uc, self._on_in)
        ui.hook_out(uc, self._on_out)
        ui.hook_cpuid(uc, self._on_cpuid)
        # RDTSC natively (x86/tsc.py), or through Python where the helper cannot be built.
        self.tsc = None
        try:
            self.tsc = tsc.NativeTsc(uc, self._counter)
        except (ToolchainError, OSError) as exc:
            trace.log("unimp", f"native RDTSC unavailable: {exc}")
            ui.hook_rdtsc(uc, self._on_rdtsc)
        uc.hook_add(UC.UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        # The unmapped and write-protect hooks only where no base RAM is: Unicorn keeps every
        # store to an address any memory hook covers on its slow "not dirty" path (a memory
        # lookup and a check for translated code per store); RAM outside the hooks takes the
        # TLB's fast path after its first store, translated code there is still protected
        # (unicorn_internals.store_fast_path_probe). Unassigned addresses, MMIO, the ROMs and
        # the shadow windows below 1 MiB all lie in these gaps.
        for begin, end in _ram_gaps(mem):
            uc.hook_add(UC.UC_HOOK_MEM_READ_UNMAPPED | UC.UC_HOOK_MEM_WRITE_UNMAPPED,
                        self.physmem.on_unmapped, None, begin, end)
            uc.hook_add(UC.UC_HOOK_MEM_WRITE_PROT, self._on_write_prot, None, begin, end)
        self.reset()

    # -------------------------------------------------------------------------------------
    # memory: physical memory and translated code are CpuMemory's (cpu_memory.py)
    # -------------------------------------------------------------------------------------
    def load_firmware(self, image: bytes) -> None:
        self.physmem.load_firmware(image)

    def rom_ranges(self) -> list[tuple[int, int]]:
        return self.physmem.rom_ranges()

    def set_legacy_window(self, base: int, size: int, mode: str, ram_offset: int) -> None:
        self.physmem.set_legacy_window(base, size, mode, ram_offset)

    def invalidate_code(self) -> None:
        self.physmem.invalidate_code()

    @property
    def paging(self) -> bool:
        return self.physmem.paging

    # ROM writes: Unicorn either stops (read-only mapping) or performs the write (with a
    # WRITE_PROT hook returning True). We let it stop, then skip the storing instruction, which
    # is exactly "the write was ignored" for ordinary stores; string stores also step their
    # index/count registers as the hardware would.
    def _on_write_prot(self, uc, access, address, size, value, _ud) -> bool:
        self._write_prot_addr = address
        return False

    def _rom_write_dropped(self) -> bool:
        """The fast and lean exact clocks: the engine dropped the store into ROM and ran on to
        the next block start (their code has no exit check after each access), so the write is
        already ignored and the guest goes on from here; the instruction was counted as with
        Unicorn's counting. A rep string store loops back to itself, one element per block:
        when the instruction here is one still aimed at read-only memory, the rest of it is
        skipped at once, as with Unicorn's counting (_skip_rom_write)."""
        trace.guest_error(f"write to ROM at {self._write_prot_addr:#x} ignored")
        dest = self._string_store_target()
        if dest is not None and self.physmem.is_read_only(dest):
            self._skip_rom_write(log=False)
        return True

    def _string_store_target(self) -> int | None:
        """The physical address the rep string store at RIP writes next, or None (not a
        rep string store, nothing left to do, or not mapped)."""
        from .x86 import decode
        lin = self.linear_pc()
        code = self.peek(lin, 16) or self.peek(lin, PAGE - (lin & (PAGE - 1)))
        if code is None:
            return None
        bits = self.code_bits()
        sop = decode.string_op(code, lin, bits)
        if sop is None or not sop[2]:
            return None
        amask = 0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF if bits == 32 else 0xFFFF
        if not self._reg.read(_REG_RCX) & amask:
            return None
        es = 0 if bits == 64 else self._raw.save().seg(ui.SEG_ES)[1]
        lin = (es + (self._reg.read(_REG_RDI) & amask)) & (amask if bits == 64 else 0xFFFFFFFF)
        return self.translate(lin)

    def _skip_rom_write(self, log: bool = True) -> bool:
        from .x86 import decode         # capstone is loaded only when a guest writes its ROM
        rip = self._reg.read(_REG_RIP)
        lin = self.linear_pc()
        bits = self.code_bits()
        code = self.peek(lin, 16) or self.peek(lin, PAGE - (lin & (PAGE - 1)))
        if code is None:
            return False
        length = decode.instruction_length(code, lin, bits)
        if length is None:
            return False
        sop = decode.string_op(code, lin, bits)
        if sop is not None:
            kind, elem, rep = sop
            asz = 8 if bits == 64 else 4 if bits == 32 else 2      # ignoring 0x67 overrides
            amask = (1 << (8 * asz)) - 1
            count = (self._reg.read(_REG_RCX) & amask) if rep else 1
            step = -elem if self._reg.read(_REG_EFLAGS) & (1 << 10) else elem
            regs = [_REG_RDI] + ([_REG_RSI] if kind == "movs" else [])
            for r in regs:
                v = self._reg.read(r)
                self._reg.write(r, (v & ~amask) | ((v + step * count) & amask))
            if rep:
                self._reg.write(_REG_RCX, self._reg.read(_REG_RCX) & ~amask)
        if log:
            trace.guest_error(f"write to ROM at {self._write_prot_addr:#x} ignored")
        # The instruction pointer wraps at the code size, as on the CPU (an instruction ending
        # at 4 GiB continues at 0 in 32-bit code, at IP 0 in 16-bit code).
        self._reg.write(_REG_RIP, (rip + length) & (0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF
                                                   if bits == 32 else 0xFFFF))
        return True

    # -------------------------------------------------------------------------------------
    # reset and state
    # -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on/reset state: real mode, CS=F000 (base F0000) IP=FFF0, caches off."""
        uc = self.uc
        # A fresh UC_MODE_64 engine is in long mode. PG 0->1->0 is the only path that clears
        # EFER.LMA and the 64-bit hflags; then EFER and CR4 can be zeroed.
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000001)
        uc.reg_write(X.UC_X86_REG_CR0, 0x60000010)
        uc.reg_write(X.UC_X86_REG_MSR, (EFER, 0))
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR2, 0)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        for r in _GPRS:
            if r.startswith("r") and r != "rip":
                uc.reg_write(_GPRS[r], 0)
        uc.reg_write(X.UC_X86_REG_RDX, 0x0600)          # family 6 after reset, as hardware does
        uc.reg_write(_REG_EFLAGS, 0x2)
        for name in ("ds", "es", "ss", "fs", "gs"):
            ui.load_seg(uc, _SEG_REGS[name], 0)
        ui.load_seg(uc, X.UC_X86_REG_CS, 0xF000)
        uc.reg_write(_REG_RIP, 0xFFF0)
        self._raw.save()
        self._raw.clear_old_exception()
        self._raw.restore()
        self.physmem.reset()
        self._stop_cause = None
        self.hooks.bp_skip = None
        uc.ctl_flush_tb()

    # -- snapshots ----------------------------------------------------------------------------
    def save_state(self) -> dict:
        """The CPU's state as CPU_VMSTATE values (between slices)."""
        uc, reg = self.uc, self._reg
        v: dict = {n: reg.read(_GPRS[n]) for n in _STATE_GPRS}
        for n, rid in _STATE_CTRL.items():
            v[n] = reg.read(rid)
        v["efer"] = uc.msr_read(EFER)
        v["msrs"] = tuple(uc.msr_read(m) for m in STATE_MSRS)
        raw = self._raw.save()
        v["segs"] = tuple(raw.seg(i) for i in range(6))
        v["ldtr"] = tuple(uc.reg_read(X.UC_X86_REG_LDTR))
        v["tr"] = tuple(uc.reg_read(X.UC_X86_REG_TR))
        v["gdtr"] = tuple(uc.reg_read(X.UC_X86_REG_GDTR)[1:3])
        v["idtr"] = tuple(uc.reg_read(X.UC_X86_REG_IDTR)[1:3])
        v["fpregs"] = tuple(tuple(uc.reg_read(r)) for r in _FP_REGS)
        v["fpcw"] = reg.read(X.UC_X86_REG_FPCW)
        v["fpsw"] = reg.read(X.UC_X86_REG_FPSW)
        v["fptag"] = reg.read(X.UC_X86_REG_FPTAG)
        v["mxcsr"] = reg.read(X.UC_X86_REG_MXCSR)
        v["xmm"] = tuple(uc.reg_read(r) for r in _XMM_REGS)
        v["hflags"] = raw.hflags
        v["hflags2"] = raw.hflags2
        v["if_waiting"], v["if_calls"], v["if_gave_up"], v["if_watch"] = self.hooks.if_watch_state()
        return v

    @staticmethod
    def check_state(v: dict) -> None:
        """Refuse CPU state no x86 CPU can be in, before anything is written (VMStateError)."""
        vmstate.check_values(CPU_VMSTATE, v)
        hf = v["hflags"]
        if hf & ~HFLAGS_KNOWN:
            raise vmstate.VMStateError(f"cpu: unknown hflags bits {hf & ~HFLAGS_KNOWN:#x}")
        lma = bool(v["efer"] & (1 << 10))
        if bool(hf & ui.HF_LMA) != lma or bool(hf & ui.HF_PE) != bool(v["cr0"] & 1) \
                or (hf & ui.HF_CS64 and not lma) or (v["cr0"] & 0x80000000 and not v["cr0"] & 1) \
                or (lma and not v["cr0"] & 0x80000000):
            raise vmstate.VMStateError("cpu: mode bits disagree (CR0, EFER.LMA, hflags)")
        if any(s[1] >> 32 for s in v["segs"][:4]) and not lma:
            raise vmstate.VMStateError("cpu: a 64-bit segment base outside long mode")

    def load_state(self, v: dict) -> None:
        """Put the CPU in state `v` (checked with check_state first)."""
        uc, reg = self.uc, self._reg
        # Leave paging (and long mode) first, then EFER/CR3/CR4, then CR0: with EFER.LME set,
        # turning PG on enters long mode, the only way EFER.LMA gets set.
        reg.write(X.UC_X86_REG_CR0, reg.read(X.UC_X86_REG_CR0) & ~0x80000000)
        uc.msr_write(EFER, v["efer"])
        reg.write(X.UC_X86_REG_CR3, v["cr3"])
        reg.write(X.UC_X86_REG_CR4, v["cr4"])
        reg.write(X.UC_X86_REG_CR0, v["cr0"])
        reg.write(X.UC_X86_REG_CR2, v["cr2"])
        for n in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7"):
            reg.write(_STATE_CTRL[n], v[n])
        for m, value in zip(STATE_MSRS, v["msrs"]):
            uc.msr_write(m, value)
        for n in _STATE_GPRS:
            reg.write(_GPRS[n], v[n])
        uc.reg_write(X.UC_X86_REG_LDTR, v["ldtr"])
        uc.reg_write(X.UC_X86_REG_TR, v["tr"])
        uc.reg_write(X.UC_X86_REG_GDTR, (0, *v["gdtr"], 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, *v["idtr"], 0))
        reg.write(X.UC_X86_REG_FPCW, v["fpcw"])
        reg.write(X.UC_X86_REG_FPSW, v["fpsw"])
        reg.write(X.UC_X86_REG_FPTAG, v["fptag"])
        for r, value in zip(_FP_REGS, v["fpregs"]):
            uc.reg_write(r, value)
        reg.write(X.UC_X86_REG_MXCSR, v["mxcsr"])
        for r, value in zip(_XMM_REGS, v["xmm"]):
            uc.reg_write(r, value)
        raw = self._raw.save()
        for i, seg in enumerate(v["segs"]):
            raw.set_seg(i, *seg)
        raw.hflags = v["hflags"]
        raw.hflags2 = v["hflags2"]
        raw.clear_old_exception()
        raw.restore()
        self._update_paging()
        uc.ctl_flush_tb()
        ui.flush_tlb(uc)
        self._stop_cause = None
        self.hooks.bp_skip = None
        self.hooks.restore_if_watch(v["if_waiting"], v["if_calls"], v["if_gave_up"], v["if_watch"])

    @property
    def mode(self) -> str:
        """'real' | 'protected' | 'long' (long includes compatibility mode)."""
        hf = self._raw.save().hflags
        if hf & ui.HF_LMA:
            return "long"
        return "protected" if hf & ui.HF_PE else "real"

    def code_bits(self) -> int:
        """Width the CPU decodes instructions at right now: 16, 32 or 64."""
        hf = self._raw.save().hflags
        if hf & ui.HF_CS64:
            return 64
        return 32 if hf & ui.HF_CS32 else 16

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of a segment register from the hidden cache."""
        return self._raw.save().seg(("es", "cs", "ss", "ds", "fs", "gs").index(name))

    def linear_pc(self) -> int:
        rip = self._reg.read(_REG_RIP)
        self._raw.save()
        base = self._raw.seg(ui.SEG_CS)[1]
        if self._raw.hflags & ui.HF_CS64:
            return rip
        return (base + rip) & 0xFFFFFFFF

    def interrupts_enabled(self) -> bool:
        return bool(self._reg.read(_REG_EFLAGS) & EFLAGS_IF)

    def interrupt_shadow(self) -> bool:
        """True right after STI / MOV SS: the next instruction runs before any interrupt."""
        return bool(self._raw.save().hflags & ui.HF_INHIBIT_IRQ)

    def _update_paging(self) -> None:
        self.physmem.paging = bool(self._reg.read(X.UC_X86_REG_CR0) & 0x80000000)

    # -------------------------------------------------------------------------------------
    # registers for the debugger / Python API
    # -------------------------------------------------------------------------------------
    def read_registers(self) -> dict[str, int]:
        """All general registers (64-bit names plus 32-bit aliases eax..eip), rip, eflags, the
        segment selectors, CR0/2/3/4, EFER, fs_base/gs_base and the descriptor-table bases."""
        regs = {name: self._reg.read(rid) for name, rid in _GPRS.items()}
        for alias, full in _ALIASES32.items():
            regs[alias] = regs[full] & 0xFFFFFFFF
        self._raw.save()
        for i, name in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
            regs[name] = self._raw.seg(i)[0] & 0xFFFF
        regs["efer"] = self.uc.reg_read(X.UC_X86_REG_MSR, EFER)
        _, gbase, glimit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        regs.update(gdtr_base=gbase, gdtr_limit=glimit, idtr_base=ibase, idtr_limit=ilimit)
        return regs

    def write_register(self, name: str, value: int) -> None:
        """Write one register by the names read_registers() uses. Segment registers are loaded
        as the CPU would (descriptor fetch in protected mode)."""
        name = name.lower()
        if name in _SEG_REGS:
            ui.load_seg(self.uc, _SEG_REGS[name], value & 0xFFFF)
            return
        if name in _ALIASES32:
            full = _ALIASES32[name]
            old = self._reg.read(_GPRS[full])
            self._reg.write(_GPRS[full], (old & ~0xFFFFFFFF) | (value & 0xFFFFFFFF))
            return
        if name == "efer":
            self.uc.reg_write(X.UC_X86_REG_MSR, (EFER, value))
            return
        if name not in _GPRS:
            raise KeyError(f"unknown register '{name}'")
        self._reg.write(_GPRS[name], value)
        if name in ("cr0", "cr3", "cr4"):
            self._update_paging()
            self.uc.ctl_flush_tb()

    # -------------------------------------------------------------------------------------
    # virtual memory for the debugger
    # -------------------------------------------------------------------------------------
    def translate(self, vaddr: int) -> int | None:
        """Guest-physical address of linear address `vaddr` through the current page tables,
        or None when it is not mapped."""
        reg = self._reg
        return pagewalk.translate(self._ram_u64, self._ram_u32, reg.read(X.UC_X86_REG_CR0),
                                  reg.read(X.UC_X86_REG_CR3), reg.read(X.UC_X86_REG_CR4),
                                  self.uc.msr_read(EFER), vaddr)

    def _ram_u64(self, gpa: int) -> int | None:
        return self.mem.read_u64(gpa) if self.mem.contains(gpa, 8) else None

    def _ram_u32(self, gpa: int) -> int | None:
        return self.mem.read_u32(gpa) if self.mem.contains(gpa, 4) else None

    def peek(self, lin: int, n: int) -> bytes | None:
        """`n` bytes of RAM or ROM at linear address `lin`, or None when any of it is unmapped
        or not memory. Never touches the guest's CPU state (see pagewalk)."""
        try:
            return self.read_virtual(lin & 0xFFFFFFFFFFFFFFFF, n)
        except MemoryAccessError:
            return None

    def phys_chunks(self, vaddr: int, n: int):
        """(physical address, length) pieces of a linear range, page by page; raises
        MemoryAccessError where it is not mapped."""
        return self._phys_chunks(vaddr, n)

    def _phys_chunks(self, vaddr: int, n: int):
        while n > 0:
            chunk = min(n, PAGE - (vaddr & (PAGE - 1)))
            pa = self.translate(vaddr)
            if pa is None:
                raise MemoryAccessError(f"virtual address {vaddr:#x} is not mapped")
            yield pa, chunk
            vaddr += chunk
            n -= chunk

    def read_virtual(self, vaddr: int, n: int) -> bytes:
        """Read guest memory at a virtual (linear) address. RAM and ROM only: MMIO and unassigned
        addresses raise MemoryAccessError (no device side effects)."""
        out = bytearray()
        for pa, chunk in self._phys_chunks(vaddr, n):
            data = self.physmem.read_physical(pa, chunk)
            if data is None:
                raise MemoryAccessError(f"{vaddr:#x} (physical {pa:#x}) is not RAM")
            out += data
        return bytes(out)

    def write_virtual(self, vaddr: int, data: bytes) -> None:
        """Write guest RAM at a virtual address (translated code there is dropped). ROM, MMIO and
        unassigned addresses raise MemoryAccessError."""
        parts = []
        pos = 0
        for pa, chunk in self._phys_chunks(vaddr, len(data)):
            if not self.mem.contains(pa, chunk):
                raise MemoryAccessError(f"{vaddr:#x} (physical {pa:#x}) is not RAM")
            parts.append((pa, data[pos:pos + chunk]))
            pos += chunk
        for pa, part in parts:
            self.mem.write(pa, part)           # notifies -> _on_host_write drops stale code

    # -------------------------------------------------------------------------------------
    # breakpoints and stepping
    # -------------------------------------------------------------------------------------
    def add_breakpoint(self, linear: int) -> None:
        self.hooks.add_breakpoint(linear)

    def remove_breakpoint(self, linear: int) -> None:
        self.hooks.remove_breakpoint(linear)

    def breakpoints(self) -> list[int]:
        return sorted(self.hooks.breakpoints)

    def add_block_hook(self, fn) -> int:
        return self.hooks.add_block_hook(fn)

    def remove_block_hook(self, handle: int) -> None:
        self.hooks.remove_block_hook(handle)

    def set_dynamic_hooks(self, on: bool) -> None:
        self.hooks.set_dynamic_hooks(on)

    @property
    def watching_interrupt_enable(self) -> bool:
        return self.hooks.if_waiting

    def watch_interrupt_enable(self, on: bool) -> bool:
        """Say (between slices) whether an interrupt waits for IF=1 (cpu_hooks.py). In the fast
        mode the fast clock's native hook watches, at no cost worth giving up for."""
        if self._fast_allowed():
            self.hooks.drop_if_watch()
            self.hooks.if_waiting = on
            return True
        return self.hooks.watch_interrupt_enable(on)

    def request_stop_after_instruction(self) -> None:
        """Callable from inside any callback (port, MMIO, CPUID, RDTSC, memory or interrupt
        hook): end the current slice cleanly once the current instruction completes (never
        emu_stop there: Unicorn would replay the access). Exact in every hook mode: lowering
        the slice's instruction budget to the count retired so far makes the counting hook,
        which runs before every instruction (the lean exact clock's or Unicorn's), stop before
        the next one; the fast clock stops at the next block start."""
        if self._stop_cause is None:
            self._stop_cause = "stop"
        if self.running:
            self._stop_counting()

    def _stop_counting(self) -> None:
        """The slice ends after the current instruction (the counting hook's budget)."""
        self._budget.value = self._counter.value

    def step(self) -> SliceResult:
        """Execute exactly one instruction (an interrupt/exception it raises is delivered, so a
        step over `int n` ends at the handler's first instruction). Always in the exact mode."""
        return self.run(1, exact=True)

    # -------------------------------------------------------------------------------------
    # clock modes
    # -------------------------------------------------------------------------------------
    @property
    def fast_now(self) -> bool:
        """Did the last slice run in the fast mode?"""
        return self._fast

    @property
    def clock_mode(self) -> str:
        """How the last slice counted: "fast" (`-icount off`), "exact" (the lean instruction
        clock), "checked" (the same clock, in code with Unicorn's exit checks, while code hooks
        observe instructions) or "counted" (Unicorn's own counting, without a C compiler)."""
        return self._mode

    @staticmethod
    def _make_exact_clock(uc):
        """The exact mode's lean clock (x86/exact_clock.py), or None where its native helper
        cannot be built: Unicorn's own counting does the same, at about half the speed."""
        try:
            ui.self_test_access_exit_checks()
            return exact_clock.ExactClock(uc)
        except (ToolchainError, OSError) as exc:
            trace.log("unimp", f"native instruction clock unavailable: {exc}")
            return None

    @property
    def slice_token_address(self) -> int:
        return ctypes.addressof(self.slice_token)

    def _new_token(self) -> None:
        if self._mode in ("fast", "exact"):
            self._slice_serial += 1
            self.slice_token.value = self._slice_serial
        elif self.slice_token.value:
            self.slice_token.value = 0

    def native_window(self) -> tuple[int, int, int]:
        """For native device code armed from a callback (Python has just brought the clock up
        to date): (the token it may act under, the address of the instruction counter, the
        counter value at which virtual time reaches the next timer). Until the next callback
        changes the token, an access at a lower count needs no clock update: Python's would only
        move clock.now, which the next callback recomputes anyway."""
        deadline = self.clock.next_deadline()
        limit = (1 << 64) - 1 if deadline is None else \
            max(0, deadline - self._slice_start_ns - self._io_ns)
        return self.slice_token.value, ctypes.addressof(self._counter), limit

    def hold_exact(self, on: bool) -> None:
        """A debugger attached (on) or gone (off): while any holds it, every slice runs in the
        exact mode (instruction-exact stops and counts)."""
        self._exact_holds += 1 if on else -1

    def _fast_allowed(self) -> bool:
        return (self._fast_clock is not None and not self._exact_holds
                and not self.hooks.observing(ignore_if_watch=True))

    def _slice_mode(self, exact: bool) -> str:
        """The clock mode for the next slice: "fast" (`-icount off`, nothing observes single
        instructions), "exact" (the lean instruction clock, nothing observes them), "checked"
        (its variant for code with Unicorn's exit checks, which code hooks that stop the
        engine need), or "counted" (Unicorn's own counting, where the native clock cannot be
        built)."""
        if not exact and self._fast_allowed():
            return "fast"
        if self._exact_clock is None:
            return "counted"
        return "checked" if self.hooks.observing(ignore_if_watch=True) else "exact"

    def _set_mode(self, mode: str) -> None:
        """Switch the engine's counting between slices. Code translated in one mode is wrong in
        the others (a clock's hook is compiled into the blocks translated while it exists, and
        count-0 blocks never call Unicorn's counting hook), so every switch drops it all."""
        if mode == self._mode:
            return
        fc, ec, rep = self._fast_clock, self._exact_clock, self.rep_string
        if self._mode == "fast":
            fc.detach(self._raw)
        elif self._mode in ("exact", "checked"):
            ec.detach(self._raw)
        if mode == "fast":
            self._counter, self._budget = fc.counter, fc.budget
            if rep is not None:
                rep.detach(self._raw)             # called by the fast clock's hook instead
            fc.attach(rep.native if rep is not None else None)
        else:
            if mode in ("exact", "checked"):
                self._counter, self._budget = ec.counter, ec.budget
                ec.attach(checked=mode == "checked")
            else:
                self._counter, self._budget = self._counted_counter, self._counted_budget
            if rep is not None:
                rep.attach()
        if rep is not None:
            rep.use_counter(self._counter, self._budget)
        if self.tsc is not None:
            self.tsc.use_counter(self._counter, tsc.FAST_CHARGE if mode == "fast" else 0)
        # The fast and the lean exact clocks stop only where they decide (a block start, an
        # instruction's start), so their code needs none of Unicorn's exit checks after each
        # load and store (a helper call that also writes the CPU's globals back: ~9 % of a fast
        # Linux boot). A store the engine refuses is then dropped and the block runs on to its
        # end (see _run_slice). The other two stop through them.
        ui.set_access_exit_checks(self.uc, mode in ("checked", "counted"))
        self._mode = mode
        self._fast = mode == "fast"
        self.uc.ctl_flush_tb()

    # -------------------------------------------------------------------------------------
    # running
    # -------------------------------------------------------------------------------------
    def run(self, count: int, exact: bool = False) -> SliceResult:
        """Execute at most `count` (> 0) instructions and say why it stopped. Virtual time
        moves on by `retired + io_ns` of the result (the caller advances the clock); devices
        called during the slice see `clock.now` at their own access.
        In the fast mode (unless `exact`), `count` and `retired` are the fast clock's estimate,
        and the slice ends at the first block start once `count` is reached: it runs at least
        one block and may go past `count` by part of one."""
        self._io_ns = 0
        self._set_mode(self._slice_mode(exact))
        self._new_token()
        result = self._run_slice(count)
        result.io_ns = self._io_ns
        return result

    def _sync_clock(self) -> None:
        """Bring clock.now to this instant of the slice (from inside a hook), and end the slice
        right after the current instruction if that reaches the next timer deadline."""
        if not self.running:
            return
        if self.slice_token.value:               # native device code armed before: disarmed
            self._slice_serial += 1
            self.slice_token.value = self._slice_serial
        now = self._slice_start_ns + self._counter.value + self._io_ns
        clock = self.clock
        deadline = clock.next_deadline()
        if deadline is not None and now >= deadline:
            # Devices see time stop at the deadline until the run loop fires the timer there
            # (its callback then runs at exactly its deadline, as VirtualClock promises).
            now = deadline
            self.request_stop_after_instruction()
        if now > clock.now:
            clock.now = now

    def _run_slice(self, count: int) -> SliceResult:
        if count <= 0:
            raise ValueError("count must be positive")
        self._slice_start_ns = self.clock.now
        self._tsc_base()
        hooks = self.hooks
        hooks.bp_hit = None
        if self.rep_string is not None:
            self.rep_string.check_ram_layout()
        if self._stop_cause == "stop":
            self._stop_cause = None
        pc = self._wrapped_pc()
        if hooks.breakpoints:
            lin = self.linear_pc()
            if lin in hooks.breakpoints:
                hooks.bp_skip = lin          # resuming at a breakpoint executes it once
        retired = 0
        mode, fc, ec = self._mode, self._fast_clock, self._exact_clock
        fast = mode == "fast"
        counted_mode = mode == "counted"              # Unicorn's own counting
        checks = mode in ("checked", "counted")       # code with Unicorn's exit checks
        while True:
            self._write_prot_addr = None
            error = None
            self.running = True
            try:
                # until=0: any other value makes Unicorn drop the block at until-1 after the
                # run through a page walk whose #PF, when unmapped, leaves CR2 and the pending
                # exception state clobbered (a later real #PF then arrives as #DF). But `until`
                # also stops the engine where a block starts at it: code at linear 0 (32-bit
                # code wrapping at 4 GiB) runs with the old, harmless-there end address.
                until = 0 if self.linear_pc() else 0xFFFFFFFFFFFFFFFF
                if fast:
                    # The rep string hook acts only with paging off: skip its call otherwise.
                    fc.start(count - retired, hooks.if_waiting, not self.physmem.paging)
                    self.uc.emu_start(pc, until, 0, 0)
                elif not counted_mode:
                    ec.start(count - retired)
                    self.uc.emu_start(pc, until, 0, 0)
                else:
                    self.uc.emu_start(pc, until, 0, count - retired)
            except UcError as exc:
                error = exc
            finally:
                self.running = False
            counted = self._counter.value
            # The budget this emu_start ended with: `count - retired`, or lower when a callback
            # asked to stop after its instruction (Unicorn's counting counts one past it when it
            # stops). The fast and lean exact clocks count only what they let run.
            budget = self._budget.value
            retired += budget if counted > budget and counted_mode else counted
            if self._stop_cause == "breakpoint" and checks and counted <= budget and retired > 0:
                # The counting hook ran before the breakpoint's, which stopped the engine
                # before the instruction: it was counted but not executed. Without this, each
                # breakpoint stop would move virtual time on by one and a re-execution without
                # the breakpoint would not end where the stop was.
                retired -= 1
            if error is not None and self._stop_cause is None and error.errno == UC.UC_ERR_WRITE_PROT \
                    and self._write_prot_addr is not None and self.physmem.is_read_only(self._write_prot_addr) \
                    and (self._skip_rom_write() if checks else self._rom_write_dropped()):
                if retired >= count:
                    return SliceResult("count", retired)
                pc = self._wrapped_pc()
                self._slice_start_ns = self._slice_start_ns + counted    # the counter restarts
                self._tsc_base()
                continue
            break
        cause = self._stop_cause
        self._update_paging()
        self._wrapped_pc()

        if cause in ("fatal", "triple_fault"):
            self._stop_cause = None
            return SliceResult(cause, retired, report=self._fatal_report)
        if error is not None:
            why = _ENGINE_ERRORS.get(error.errno, f"the CPU cannot go on: {error}")
            return SliceResult("fatal", retired, report=self.fault_report(why))
        if cause == "breakpoint":
            self._stop_cause = None
            return SliceResult("breakpoint", retired, address=hooks.bp_hit or 0)
        if cause == "stop":
            self._stop_cause = None
            return SliceResult("stop", retired)
        if fast:
            if fc.stopped == fast_clock.STOP_BUDGET:
                return SliceResult("count", retired)
            if fc.stopped == fast_clock.STOP_IF:
                return SliceResult("stop", retired)
        elif not counted_mode:
            if ec.stopped:
                return SliceResult("count", retired)
        elif counted > budget:
            return SliceResult("count", retired)
        if self._just_halted():
            return SliceResult("halt", retired)
        return SliceResult("count", retired)

    def _wrapped_pc(self) -> int:
        """RIP, wrapped to 32 bits outside 64-bit code. Unicorn does not wrap EIP: 32-bit code
        running through 0xFFFFFFFF goes on at "EIP" 0x1_0000_0000 (fetching from physical 0,
        as the CPU would), a state no x86 CPU can be in; it would show in the debugger and fault
        reports and be pushed by the next interrupt. Fixed at every slice boundary."""
        rip = self._reg.read(_REG_RIP)
        if rip >> 32 and not self._raw.save().hflags & ui.HF_CS64:
            rip &= 0xFFFFFFFF
            self._reg.write(_REG_RIP, rip)
        return rip

    def _just_halted(self) -> bool:
        lin = self.linear_pc()
        b = self.peek(lin - 1, 1)
        return b == b"\xf4"

    def _fatal(self, kind: str, message: str, back: int = 0) -> None:
        """From inside a hook: end the run with a report (delivery is impossible)."""
        self._fatal_report = self.fault_report(message, back)
        self._stop_cause = kind
        self.uc.emu_stop()

    # -------------------------------------------------------------------------------------
    # hooks: port I/O, CPUID, RDTSC, interrupts
    # -------------------------------------------------------------------------------------
    def _tsc_base(self) -> None:
        """Tell the native RDTSC hook the slice start plus port time (after either changes)."""
        if self.tsc is not None:
            self.tsc.set_base(self._slice_start_ns + self._io_ns)

    def _on_in(self, port: int, size: int) -> int:
        self._io_ns += IO_PORT_NS
        self._tsc_base()
        self._sync_clock()
        physmem = self.physmem
        physmem.callback_depth += 1
        try:
            return self.io.read(port, size)
        finally:
            physmem.callback_depth -= 1
            if physmem.flush_pending:
                physmem.flush_now()

    def _on_out(self, port: int, size: int, value: int) -> None:
        self._io_ns += IO_PORT_NS
        self._tsc_base()
        self._sync_clock()
        physmem = self.physmem
        physmem.callback_depth += 1
        try:
            self.io.write(port, size, value)
        finally:
            physmem.callback_depth -= 1
            if physmem.flush_pending:
                physmem.flush_now()

    def _on_cpuid(self, leaf: int, _subleaf: int) -> tuple[int, int, int, int]:
        return self._cpuid.get(leaf, _CPUID_ZERO)

    def _on_rdtsc(self) -> int:
        # Without the native hook (x86/tsc.py computes the same): virtual time at this
        # instruction, slice start + instructions retired and port access time so far; the
        # fast mode charges the RDTSC its latency.
        now = self._slice_start_ns + self._counter.value + self._io_ns
        if self._fast:
            self._counter.value += tsc.FAST_CHARGE
        return now

    def _on_syscall(self, uc, _ud) -> None:
        def raise_ud():
            self.delivery.deliver_exception(6, None)
            # Unicorn moves RIP past the SYSCALL when this hook returns
            rip = self._reg.read(_REG_RIP)
            self._reg.write(_REG_RIP, rip - syscall_insn.SYSCALL_LEN)
        try:
            syscall_insn.do_syscall(uc, self._reg, self._raw, raise_ud)
        except UcError as exc:
            self._fatal("fatal", f"SYSCALL cannot load the STAR code/stack segments: {exc}")

    def _on_intr(self, uc, intno, _ud) -> None:
        err, is_int = ui.take_exception_info(self._raw)
        if intno in ERROR_CODE_VECTORS and not is_int:
            self.deliver_exception(intno, err)
        else:
            self.deliver_exception(intno, None, software=is_int)

    def _on_invalid(self, uc, _ud) -> bool:
        ui.take_exception_info(self._raw)
        self.deliver_exception(6, None)
        return self._stop_cause not in ("fatal", "triple_fault")

    def deliver_exception(self, vector: int, error_code: int | None, software: bool = False,
                          hardware: bool = False) -> None:
        """Deliver a CPU exception or `int n` (from a hook), or an external interrupt
        (`hardware`): machine/x86/deliver.py."""
        self.delivery.deliver_exception(vector, error_code, software, hardware)

    def deliver(self, vector: int, error_code: int | None = None, software: bool = False) -> None:
        """Transfer control to the handler of `vector` in the current mode (DeliveryFault when
        the IVT/IDT entry, the target segment or the stack is bad)."""
        self.delivery.deliver(vector, error_code, software)

    def deliver_irq(self, vector: int) -> bool:
        """Deliver a hardware interrupt between slices (the caller checked IF and the shadow).
        Returns False when delivery is impossible (the machine must stop: see `fatal_report`)."""
        self._stop_cause = None
        if trace.category_enabled("int"):
            log.log_hardware_interrupt(vector)
        self.delivery.deliver_exception(vector, None, hardware=True)
        if self._stop_cause in ("fatal", "triple_fault"):
            self._stop_cause = None
            return False
        return True

    @property
    def fatal_report(self) -> str:
        return self._fatal_report

    # -------------------------------------------------------------------------------------
    # fatal fault report
    # -------------------------------------------------------------------------------------
    def fault_report(self, why: str, back: int = 0) -> str:
        """The report printed for a fatal guest fault (machine/x86/report.py)."""
        from .x86 import report         # capstone is loaded only when a guest faults fatally
        return report.fault_report(self, why, back)


def _ram_gaps(mem: GuestMemory) -> list[tuple[int, int]]:
    """[begin, end] (inclusive, as Unicorn's hook bounds) of the physical address space outside
    the RAM ranges as built."""
    gaps, at = [], 0
    for r in sorted(mem.ranges, key=lambda r: r.gpa):
        if r.gpa > at:
            gaps.append((at, r.gpa - 1))
        at = max(at, r.end)
    if at <= 0xFFFFFFFFFFFFFFFF:
        gaps.append((at, 0xFFFFFFFFFFFFFFFF))
    return gaps


_ENGINE_ERRORS = {
    UC.UC_ERR_FETCH_UNMAPPED: "the CPU fetched an instruction from unassigned physical memory",
    UC.UC_ERR_FETCH_PROT: "the CPU fetched an instruction from device memory (MMIO)",
    UC.UC_ERR_READ_UNMAPPED: "the CPU read beyond the physical address space",
    UC.UC_ERR_WRITE_UNMAPPED: "the CPU wrote beyond the physical address space",
    UC.UC_ERR_INSN_INVALID: "invalid instruction that could not be delivered as #UD",
    UC.UC_ERR_EXCEPTION: "an exception the CPU layer could not deliver",
}
