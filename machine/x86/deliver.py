"""Interrupt and exception delivery, as the CPU does it (Intel SDM vol. 3, chapter 6): through
the IVT in real mode, through 32-bit gates in protected mode and 64-bit gates in long mode, with
privilege changes through the TSS, error codes, and the double-fault and triple-fault rules.

Unicorn raises exceptions and `int n` but leaves their delivery to us (its own would run in
TCG helpers that a stopped engine cannot resume); the Cpu calls `Delivery` from its interrupt
hooks and between slices. A delivery that cannot complete ends the run through `cpu._fatal`.
"""

from __future__ import annotations

import struct

from unicorn import UcError
from unicorn import x86_const as X

from .. import trace
from .. import unicorn_internals as ui
from . import log
from ..memory import GuestMemoryError

# Exceptions that push an error code (when raised by the CPU, never for `int n`).
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
VEC_DF = 8

VEC_NP, VEC_GP, VEC_PF = 11, 13, 14
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))

EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
EFLAGS_AC = 1 << 18

_REG_RIP, _REG_RSP, _REG_EFLAGS = X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_EFLAGS

EV_INT = trace.Event("cpu_interrupt")


class DeliveryFault(Exception):
    """Delivering an interrupt faulted. `vector`/`error` is the exception the CPU raises for it
    (#GP, #NP with the IDT/selector error code), or vector None for faults we do not model in
    detail (a page fault while pushing the frame): those go straight to #DF."""

    def __init__(self, message: str, vector: int | None = None, error: int = 0):
        super().__init__(message)
        self.vector = vector
        self.error = error


class Delivery:
    """Delivers interrupts and exceptions for one Cpu (its engine and raw state)."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.uc = cpu.uc
        self._raw = cpu._raw
        self._reg = cpu._reg

    def deliver_exception(self, vector: int, error_code: int | None, software: bool = False,
                          hardware: bool = False) -> None:
        """Deliver a CPU exception or `int n` (from a hook), or an external interrupt
        (`hardware`). A delivery that faults raises that fault in turn (#GP/#NP naming the IDT
        entry), or #DF for a contributory pair; a failed #DF is a triple fault."""
        if not (software or hardware) and trace.category_enabled("int"):
            log.log_check_exception(None, vector)
        back = self._trap_length() if software else 0
        try:
            self.deliver(vector, error_code, software=software)
            return
        except DeliveryFault as first:
            if vector == VEC_DF:
                self.cpu._fatal("triple_fault", f"triple fault: cannot deliver #DF ({first})", back)
                return
            reason = f"cannot deliver vector {vector:#x} ({first})"
            second, second_error = first.vector, first.error
        if back:
            # The fault belongs to the `int n` itself: its return address is that instruction,
            # not the one after it (where a software interrupt's frame would have pointed).
            rip = self._reg.read(_REG_RIP)
            self._reg.write(_REG_RIP, rip - back if rip >= back else (rip - back) & 0xFFFF)
            back = 0
        # The fault raised while delivering is delivered in turn, unless the pair makes a
        # double fault (contributory after contributory, or #PF then #PF/contributory).
        benign_pair = second is not None and not (
            (vector in CONTRIBUTORY and second in CONTRIBUTORY)
            or (vector == VEC_PF and (second in CONTRIBUTORY or second == VEC_PF)))
        if benign_pair:
            try:
                self.deliver(second, second_error)
                return
            except DeliveryFault as again:
                reason += f", then vector {second:#x} ({again})"
        try:
            self.deliver(VEC_DF, 0)
        except DeliveryFault as df:
            self.cpu._fatal("triple_fault", f"triple fault: {reason}, then #DF ({df})", back)

    def _trap_length(self) -> int:
        """Length of the `int n` / int3 / into / int1 that RIP has just passed."""
        lin = self.cpu.linear_pc()
        two = self.cpu.peek(lin - 2, 2) or b""
        return 2 if two[:1] == b"\xcd" else 1

    # The delivery itself ------------------------------------------------------------------
    def _vread(self, lin: int, n: int) -> bytes:
        data = self.cpu.peek(lin, n)
        if data is None:
            raise DeliveryFault(f"cannot read {n} bytes at {lin:#x}")
        return data

    def _vwrite(self, lin: int, data: bytes) -> None:
        # Straight into RAM, without dropping translated code there (as a CPU store would):
        # an interrupt frame lands on a stack, and with paging on a drop means a full flush.
        mem = self.cpu.mem
        pos = 0
        try:
            for pa, chunk in self.cpu.phys_chunks(lin & 0xFFFFFFFFFFFFFFFF, len(data)):
                mem.view(pa, chunk)[:] = data[pos:pos + chunk]
                pos += chunk
        except (ValueError, GuestMemoryError):        # MemoryAccessError is a ValueError
            raise DeliveryFault(f"cannot write the interrupt frame at {lin:#x}") from None

    def deliver(self, vector: int, error_code: int | None = None, software: bool = False) -> None:
        """Transfer control to the handler of `vector` as the CPU would, in the current mode.
        Raises DeliveryFault when the IVT/IDT entry, the target segment or the stack is bad."""
        self._raw.save()
        hf = self._raw.hflags
        if EV_INT.enabled:
            EV_INT.emit(vector=vector, kind="int" if software else "exc/irq",
                        mode="long" if hf & ui.HF_LMA else "protected" if hf & ui.HF_PE else "real",
                        err="-" if error_code is None else hex(error_code))
        if trace.category_enabled("int"):
            log.log_interrupt(self.cpu, vector, error_code, software)
        if hf & ui.HF_LMA:
            self._deliver_long(vector, error_code, software, hf)
        elif hf & ui.HF_PE:
            self._deliver_protected(vector, error_code, software, hf)
        else:
            self._deliver_real(vector)
        self._raw.save()
        self._raw.clear_old_exception()
        self._raw.restore()

    def _deliver_real(self, vector: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 4 + 3 > ilimit:
            raise DeliveryFault(f"vector {vector:#x} is beyond the IVT limit {ilimit:#x}",
                                 VEC_GP, vector * 8 + 2)
        off, seg = struct.unpack("<HH", self._vread(ibase + vector * 4, 4))
        ss_sel, ss_base, _, _ = self._raw.seg(ui.SEG_SS)
        cs_sel = self._raw.seg(ui.SEG_CS)[0]
        ss32 = self._raw.hflags & ui.HF_SS32
        mask = 0xFFFFFFFF if ss32 else 0xFFFF
        rsp = reg.read(_REG_RSP)
        sp = (rsp - 6) & mask
        flags = reg.read(_REG_EFLAGS)
        ip = reg.read(_REG_RIP) & 0xFFFF
        frame = struct.pack("<HHH", ip, cs_sel, flags & 0xFFFF)
        if sp + 6 <= mask + 1:
            self._vwrite(ss_base + sp, frame)
        else:                                   # the frame wraps around the 64 KiB segment
            for i in range(3):
                self._vwrite(ss_base + ((rsp - 2 * (i + 1)) & mask), frame[4 - 2 * i:6 - 2 * i])
        reg.write(_REG_RSP, (rsp & ~mask) | sp)
        reg.write(_REG_EFLAGS, flags & ~(EFLAGS_IF | EFLAGS_TF | EFLAGS_AC))
        ui.load_seg(self.uc, X.UC_X86_REG_CS, seg)
        reg.write(_REG_RIP, off)

    def _descriptor(self, selector: int, ext: int) -> int:
        """The 8-byte GDT descriptor for `selector` (LDT selectors are not supported)."""
        err = (selector & 0xFFFC) + ext
        if selector & 4:
            raise DeliveryFault(f"LDT selector {selector:#x} in a gate", VEC_GP, err)
        _, gbase, glimit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index == 0 or index + 7 > glimit:
            raise DeliveryFault(f"selector {selector:#x} is null or beyond the GDT limit", VEC_GP, err)
        desc = struct.unpack("<Q", self._vread(gbase + index, 8))[0]
        if not desc >> 47 & 1:
            raise DeliveryFault(f"segment {selector:#x} is not present", VEC_NP, err)
        return desc

    def _tss_base(self) -> int:
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_TR)
        return base

    def _enter_ring(self, cpl: int, ss: int, sp: int) -> int:
        """Switch to the inner stack SS:SP at privilege `cpl`; returns the new SS base."""
        ui.set_cpl(self._raw, cpl)
        try:
            ui.load_seg(self.uc, X.UC_X86_REG_SS, ss)
        except UcError as exc:
            raise DeliveryFault(f"cannot load the inner stack segment {ss:#x}: {exc}")
        self._reg.write(_REG_RSP, sp)
        return self._raw.save().seg(ui.SEG_SS)[1]

    def _deliver_protected(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        self._as_supervisor(self._deliver_protected_inner, vector, error_code, software, hf)

    def _deliver_long(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        self._as_supervisor(self._deliver_long_inner, vector, error_code, software, hf)

    def _as_supervisor(self, deliver, vector, error_code, software, hf) -> None:
        """IDT, GDT and TSS reads are implicit supervisor accesses even from ring 3 (a user
        program's pages may be the only user-accessible ones): run the delivery at CPL 0 for
        its table reads; the frame goes to the handler's stack at the handler's privilege."""
        cpl = hf & ui.HF_CPL_MASK
        if cpl:
            ui.set_cpl(self._raw, 0)
        try:
            deliver(vector, error_code, software, hf)
        except DeliveryFault:
            if cpl:
                ui.set_cpl(self._raw, cpl)
            raise

    def _deliver_protected_inner(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        ext = 0 if software else 1
        idt_err = vector * 8 + 2 + ext
        if vector * 8 + 7 > ilimit:
            raise DeliveryFault(f"vector {vector:#x} is beyond the IDT limit {ilimit:#x}", VEC_GP, idt_err)
        gate = struct.unpack("<Q", self._vread(ibase + vector * 8, 8))[0]
        gtype = (gate >> 40) & 0x1F
        gdpl = (gate >> 45) & 3
        if gtype not in (0x06, 0x07, 0x0E, 0x0F):
            raise DeliveryFault(f"IDT gate {vector:#x} has unsupported type {gtype:#x}", VEC_GP, idt_err)
        cpl = hf & ui.HF_CPL_MASK
        if software and gdpl < cpl:
            raise DeliveryFault(f"int {vector:#x} from CPL{cpl} through a DPL{gdpl} gate", VEC_GP, idt_err)
        if not gate >> 47 & 1:
            raise DeliveryFault(f"IDT gate {vector:#x} is not present", VEC_NP, idt_err)
        sel = (gate >> 16) & 0xFFFF
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        desc = self._descriptor(sel, ext)
        if not (desc >> 43 & 1):
            raise DeliveryFault(f"gate {vector:#x} points at a non-code segment {sel:#x}",
                                 VEC_GP, (sel & 0xFFFC) + ext)
        dpl = (desc >> 45) & 3
        conforming = bool(desc >> 42 & 1)
        wide = gtype & 0x8                      # 32-bit gate: 4-byte pushes
        size = 4 if wide else 2
        fmt = "<I" if wide else "<H"
        flags = reg.read(_REG_EFLAGS)
        eip = reg.read(_REG_RIP) & 0xFFFFFFFF
        old_cs = self._raw.seg(ui.SEG_CS)[0]
        old_ss = self._raw.seg(ui.SEG_SS)[0]
        old_esp = reg.read(_REG_RSP) & 0xFFFFFFFF
        if flags & EFLAGS_VM:
            raise DeliveryFault("interrupt from virtual-8086 mode is not supported")
        values = []
        if not conforming and dpl < cpl:
            tss = self._tss_base()
            new_esp, new_ss = struct.unpack("<IH", self._vread(tss + 4 + 8 * dpl, 6))
            values += [old_ss, old_esp]
            ss_base = self._enter_ring(dpl, new_ss, new_esp)
            esp = new_esp
            ss32 = self._raw.hflags & ui.HF_SS32
        else:
            if cpl:
                ui.set_cpl(self._raw, cpl)      # same privilege: push at the current CPL
            ss_base = self._raw.seg(ui.SEG_SS)[1]
            esp = old_esp
            ss32 = hf & ui.HF_SS32
        values += [flags, old_cs, eip]
        if error_code is not None:
            values.append(error_code)
        smask = 0xFFFFFFFF if ss32 else 0xFFFF
        for v in values:
            esp = (esp - size) & smask
            self._vwrite(ss_base + esp, struct.pack(fmt, v & ((1 << (8 * size)) - 1)))
        old_rsp = reg.read(_REG_RSP)
        reg.write(_REG_RSP, (old_rsp & ~smask) | esp)
        self._enter_handler(flags, gtype, sel, offset)

    def _enter_handler(self, flags: int, gtype: int, sel: int, target: int) -> None:
        """The common end of a protected/long-mode gate delivery: flags as the gate type says,
        the handler's CS loaded as a full descriptor, RIP at the handler."""
        new_flags = flags & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
        if not gtype & 1:                       # interrupt gate (not trap gate): IF off
            new_flags &= ~EFLAGS_IF
        self._reg.write(_REG_EFLAGS, new_flags)
        try:
            ui.load_seg(self.uc, X.UC_X86_REG_CS, sel)
        except UcError as exc:
            raise DeliveryFault(f"cannot load handler CS {sel:#x}: {exc}")
        self._reg.write(_REG_RIP, target)

    def _deliver_long_inner(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        ext = 0 if software else 1
        idt_err = vector * 8 + 2 + ext      # the error code names the IDT entry (index << 3)
        if vector * 16 + 15 > ilimit:
            raise DeliveryFault(f"vector {vector:#x} is beyond the IDT limit {ilimit:#x}", VEC_GP, idt_err)
        lo, hi = struct.unpack("<QQ", self._vread(ibase + vector * 16, 16))
        gtype = (lo >> 40) & 0x1F
        gdpl = (lo >> 45) & 3
        if gtype not in (0x0E, 0x0F):
            raise DeliveryFault(f"IDT gate {vector:#x} has type {gtype:#x} (not a 64-bit gate)",
                                 VEC_GP, idt_err)
        cpl = hf & ui.HF_CPL_MASK
        if software and gdpl < cpl:
            raise DeliveryFault(f"int {vector:#x} from CPL{cpl} through a DPL{gdpl} gate", VEC_GP, idt_err)
        if not lo >> 47 & 1:
            raise DeliveryFault(f"IDT gate {vector:#x} is not present", VEC_NP, idt_err)
        sel = (lo >> 16) & 0xFFFF
        ist = (lo >> 32) & 7
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
        desc = self._descriptor(sel, ext)
        dpl = (desc >> 45) & 3
        if not (desc >> 43 & 1) or not (desc >> 53 & 1):
            raise DeliveryFault(f"gate {vector:#x} does not point at a 64-bit code segment",
                                 VEC_GP, (sel & 0xFFFC) + ext)
        flags = reg.read(_REG_EFLAGS)
        rip = reg.read(_REG_RIP)
        old_cs = self._raw.seg(ui.SEG_CS)[0]
        old_ss = self._raw.seg(ui.SEG_SS)[0]
        old_rsp = reg.read(_REG_RSP)
        rsp = old_rsp
        if ist or dpl < cpl:
            tss = self._tss_base()
            off = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * dpl
            rsp = struct.unpack("<Q", self._vread(tss + off, 8))[0]
        if dpl < cpl:
            ui.set_cpl(self._raw, dpl)
            try:
                ui.load_seg(self.uc, X.UC_X86_REG_SS, dpl)      # null SS with RPL = new CPL
            except UcError as exc:
                raise DeliveryFault(f"cannot load a null SS: {exc}")
            # Unicorn takes CPL from the loaded SS's DPL, which is 0 for a null selector: a
            # handler in ring 1 or 2 would run at CPL 0. The CPU's null SS carries the new CPL.
            raw = self._raw.save()
            ss_sel, ss_base, ss_limit, ss_flags = raw.seg(ui.SEG_SS)
            raw.set_seg(ui.SEG_SS, ss_sel, ss_base, ss_limit, (ss_flags & ~(3 << 13)) | dpl << 13)
            raw.hflags = (raw.hflags & ~ui.HF_CPL_MASK) | dpl
            raw.restore()
        elif cpl:
            ui.set_cpl(self._raw, cpl)          # same privilege: push at the current CPL
        rsp &= ~0xF
        values = [old_ss, old_rsp, flags, old_cs, rip]
        if error_code is not None:
            values.append(error_code)
        frame = b"".join(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF) for v in reversed(values))
        rsp -= len(frame)
        self._vwrite(rsp, frame)
        reg.write(_REG_RSP, rsp)
        self._enter_handler(flags, gtype, sel, target)
