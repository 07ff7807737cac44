"""RDTSC answered natively (native/icount.c, loaded with ctypes) from virtual time, in both clock
modes: the time stamp is the slice's start, plus its port I/O time, plus the instructions
retired so far. A Python hook costs a few microseconds per RDTSC, and Linux spins on the TSC in
its delay loops (about eleven million RDTSC in one boot: more than half the fast mode's time
went there).

In the fast mode (`-icount off`) an RDTSC also charges the clock `FAST_CHARGE` units, about
what the instruction takes on current x86 cores (20-40 cycles): the guest then sees back-to-back
time stamps as far apart as on real hardware, and a delay loop that spins on the TSC (Linux's
`udelay`, its LAPIC timer calibration: 100 ms of busy waiting) runs a realistic number of
iterations instead of one per handful of nanoseconds. The exact mode keeps one instruction, one
nanosecond: its counts are what tests compare."""

from __future__ import annotations

import ctypes

from .. import unicorn_internals as ui
from .fast_clock import library

FAST_CHARGE = 25


class _State(ctypes.Structure):
    """struct tsc_state of native/icount.c."""
    _fields_ = [("base", ctypes.c_uint64), ("counter", ctypes.c_void_p),
                ("reg_write", ctypes.c_void_p), ("reg_rax", ctypes.c_int32),
                ("reg_rdx", ctypes.c_int32), ("reads", ctypes.c_uint64),
                ("charge", ctypes.c_uint64)]


class NativeTsc:
    """The RDTSC hook of one engine. `base` (slice start + port I/O time, ns) is set by the CPU
    whenever it changes; `use_counter` points it at the live retired-instruction counter and
    sets what each RDTSC adds to it."""

    def __init__(self, uc, counter: ctypes.c_uint64):
        lib = library()
        fn = ctypes.cast(lib.icount_rdtsc, ctypes.c_void_p).value
        ui.self_test_native_rdtsc(fn, _State)
        st = self._state = _State()
        st.reg_write = ui.native_api()["uc_reg_write"]
        st.reg_rax, st.reg_rdx = ui.NATIVE_REGS["rax"], ui.NATIVE_REGS["rdx"]
        self.use_counter(counter)
        ui.native_hook_rdtsc(uc, fn, ctypes.addressof(st))

    def use_counter(self, counter: ctypes.c_uint64, charge: int = 0) -> None:
        self._counter = counter                  # keeps the view (and what it points into) alive
        self._state.counter = ctypes.addressof(counter)
        self._state.charge = charge

    def set_base(self, ns: int) -> None:
        self._state.base = ns

    @property
    def reads(self) -> int:
        """RDTSC executed so far (statistics)."""
        return self._state.reads
