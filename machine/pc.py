"""The board: a PC built from a MachineConfig, and the run loop that drives it.

    machine = Machine(config)
    status = machine.run()            # the process exit status

Wiring (as QEMU's i440FX `pc` machine): RAM around the PC holes, the firmware ROM at the top of
4 GiB (aliased below 1 MiB), PIC 0x20/0xA0/0x4D0, PIT 0x40 (+0x61), CMOS 0x70 (IRQ8), COM1 0x3F8
(IRQ4), 8042 keyboard controller 0x60/0x64 (IRQ1/12), debugcon 0x402, isa-debug-exit, fw_cfg
0x510, port 0x92, LAPIC 0xFEE00000, PCI config 0xCF8 with the i440FX (00:00.0), PIIX3 (00:01.0)
and a virtio-blk-pci per drive from slot 2. Shadow RAM under 0xC0000-0xFFFFF follows the
i440FX PAM registers (shadow.py).

Run loop: the CPU runs in slices of at most MAX_SLICE instructions, cut at the next timer
deadline. Virtual time is the retired-instruction count (1 instruction = 1 ns) plus the time port
accesses take (cpu.IO_PORT_NS each), plus jumps to the next deadline while the CPU halts with
interrupts enabled, so two runs of the same guest give the
same output and the same instruction count. Between slices the loop delivers a pending interrupt
(LAPIC first, then the PIC through LINT0 ExtINT), polls host input and debugger hooks, and acts on
what device callbacks recorded (exit, reset, stop): callbacks never stop the engine themselves.

Exit status of run(): isa-debug-exit's `(value << 1) | 1`; 0 for a guest reset under -no-reboot
or an instruction budget/stop request; FATAL_STATUS (2) for a guest that cannot go on (triple
fault under -no-reboot, HLT with interrupts disabled, HLT with nothing left to wake it, an
exception that cannot be delivered, unicorn refusing an instruction); a report goes to stderr.
"""

from __future__ import annotations

import importlib
import os
import select
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO, Callable

from . import trace
from .clock import VirtualClock
from .config import CharDev, ConfigError, MachineConfig
from .cpu import Cpu
from .irq import IrqLine
from .memory import FOUR_GIB, GuestMemory, IoSpace, MemoryMap
from .shadow import ShadowRam

FATAL_STATUS = 2
MAX_SLICE = 500_000          # instructions; bounds stop/^C latency (~10 ms at worst)

# Stop kinds (the same words the debugger layer uses).
STOP_EXITED = "exited"            # the guest asked to exit (isa-debug-exit, reset under -no-reboot)
STOP_FAULT = "fault"              # fatal guest fault; `message` is the report
STOP_BREAKPOINT = "breakpoint"    # `address` is the linear address
STOP_STEP = "step"
STOP_INTERRUPT = "interrupt"      # request_stop(reason); `message` is the reason
STOP_LIMIT = "limit"              # run(max_instructions) used its budget

KNOWN_DEVICES = ("isa-debug-exit", "virtio-blk-pci", "virtio-blk")


@dataclass
class StopReason:
    """Why run() returned."""
    kind: str
    exit_status: int = 0
    address: int = 0
    message: str = ""


def _optional(module: str):
    """Device modules land independently; a board missing one still boots without it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        trace.log("unimp", f"{module} is not available: device not wired")
        return None


def _open_chardev(dev: CharDev) -> BinaryIO | None:
    if dev.kind == "stdio":
        return sys.stdout.buffer
    if dev.kind == "file":
        if dev.path is None:
            raise ConfigError("chardev 'file' needs a path")
        try:
            return open(dev.path, "wb", buffering=0)
        except OSError as exc:
            raise ConfigError(f"could not open '{dev.path}': {exc.strerror}") from None
    return None


class Machine:
    """A PC. Public attributes for the debugger and the Python API: `cpu`, `mem`, `memory_map`,
    `io`, `clock`, `pci_bus`, `devices` (name -> device), `instructions` (retired so far),
    `stop_reason` (after run())."""

    def __init__(self, config: MachineConfig):
        self.config = config
        for category in config.log:
            trace.enable_category(category)
        for pattern in config.trace:
            trace.enable(pattern)
        self.clock = VirtualClock()
        self.mem = GuestMemory(config.ram_size)
        self.io = IoSpace()
        self.devices: dict[str, object] = {}
        self.instructions = 0
        self.stop_reason: StopReason | None = None
        self._poll_hooks: list[Callable[[], None]] = []
        self._exit_status: int | None = None
        self._reset_requested = False
        self._stop_request: str | None = None
        self._outputs: list[BinaryIO] = []
        self._backends: list = []                # opened drives: close() releases their images
        self._stdin_fd: int | None = None
        self.irq_sources: list = []          # extra interrupt controllers polled before the LAPIC
        self.resets = 0
        self._halted = False                 # HLT executed, waiting for an interrupt

        rom = self._firmware_image()
        rom_base = FOUR_GIB - len(rom)
        alias = min(len(rom), 128 * 1024)
        # 0xC0000-0xFFFFF is the chipset's (ROM alias or shadow RAM, machine/shadow.py): no BAR there.
        self.memory_map = MemoryMap(self.mem, reserved=[(rom_base, len(rom), "rom"),
                                                        (0x100000 - alias, alias, "isa-bios"),
                                                        (0xC0000, 0x40000, "bios-area")])
        self.lapic = self._make_lapic()
        self.cpu = Cpu(self.mem, self.memory_map, self.io, self.clock, apic=self.lapic is not None)
        self.cpu.load_firmware(rom)
        self.pic = None
        self.pci_bus = None
        self._build_devices(rom_base, len(rom))
        if trace.any_category_enabled("in_asm", "exec", "cpu"):    # a costly per-block hook: only when asked
            from .debug import cpulog
            cpulog.attach(self)

    # -------------------------------------------------------------------------------------
    # construction
    # -------------------------------------------------------------------------------------
    def _firmware_image(self) -> bytes:
        path = self.config.bios
        if path is None:
            from .toolchain import ensure_built
            path = ensure_built("firmware", "out/bios.bin")
        try:
            data = open(path, "rb").read()
        except OSError as exc:
            raise ConfigError(f"could not load firmware '{path}': {exc.strerror}") from None
        if not data or len(data) % 4096 or len(data) > 16 * 1024 * 1024:
            raise ConfigError(f"firmware '{path}' must be a non-empty multiple of 4 KiB, at most 16 MiB")
        return data

    def _make_lapic(self):
        mod = _optional("machine.devices.lapic")
        if mod is None:
            return None
        lapic = mod.LocalApic(self.clock)
        return lapic

    def _add_io(self, name: str, dev, base: int, size: int, ops=None) -> None:
        self.io.add(name, base, size, ops if ops is not None else dev)

    def _build_devices(self, rom_base: int, rom_size: int) -> None:
        cfg = self.config
        unknown = [d.driver for d in cfg.devices if d.driver not in KNOWN_DEVICES]
        if unknown:
            raise ConfigError(f"'{unknown[0]}' is not a valid device model name")

        pic_mod = _optional("machine.devices.pic")
        if pic_mod is not None:
            pic = self.pic = pic_mod.DualPic()
            self.devices["pic"] = pic
            self._add_io("pic-master", pic, 0x20, 2, pic.master_ops)
            self._add_io("pic-slave", pic, 0xA0, 2, pic.slave_ops)
            self._add_io("elcr", pic, 0x4D0, 2, pic.elcr_ops)
        irq = self._irq_line

        pit_mod = _optional("machine.devices.pit")
        if pit_mod is not None:
            pit = pit_mod.Pit(irq(0), self.clock)
            self.devices["pit"] = pit
            self._add_io("pit", pit, 0x40, 4)
            self._add_io("port61", pit, 0x61, 1, pit.port61_ops)

        cmos_mod = _optional("machine.devices.cmos")
        if cmos_mod is not None:
            cmos = cmos_mod.Cmos(irq(8), self.clock, cfg.ram_size)
            self.devices["cmos"] = cmos
            self._add_io("cmos", cmos, 0x70, 2)

        serial_mod = _optional("machine.devices.serial")
        if serial_mod is not None:
            out = self._output(cfg.serial)
            uart = serial_mod.Uart16550(irq(4), out)
            self.devices["serial0"] = uart
            self._add_io("serial0", uart, 0x3F8, 8)
            if cfg.serial.kind == "stdio":
                try:
                    self._stdin_fd = sys.stdin.fileno()
                except (AttributeError, OSError, ValueError):
                    self._stdin_fd = None

        dcon_mod = _optional("machine.devices.debugcon")
        if dcon_mod is not None:
            dcon = dcon_mod.DebugCon(self._output(cfg.debugcon))
            self.devices["debugcon"] = dcon
            self._add_io("debugcon", dcon, 0x402, 1)

        exit_mod = _optional("machine.devices.debug_exit")
        n_exit = 0
        for d in cfg.devices:
            if d.driver != "isa-debug-exit":
                continue
            try:
                base = int(d.props.get("iobase", "0x501"), 0)
                size = int(d.props.get("iosize", "2"), 0)
            except ValueError:
                raise ConfigError("isa-debug-exit: iobase and iosize must be numbers") from None
            if not 0 <= base < 0x10000 or not 1 <= size <= 4 or base + size > 0x10000:
                raise ConfigError(f"isa-debug-exit: bad iobase/iosize {base:#x}/{size}")
            if exit_mod is None:
                raise ConfigError("'isa-debug-exit' is not a valid device model name")
            dev = exit_mod.DebugExit(self._on_guest_exit, iosize=size)
            name = "isa-debug-exit" if n_exit == 0 else f"isa-debug-exit{n_exit}"
            self.devices[name] = dev
            self._add_io(name, dev, base, size)
            n_exit += 1

        fw_mod = _optional("machine.devices.fw_cfg")
        if fw_mod is not None:
            fw = fw_mod.FwCfg(self.mem)
            self.devices["fw_cfg"] = fw
            self._add_io("fw_cfg", fw, fw_mod.FwCfg.BASE, fw_mod.FwCfg.SIZE)
            self._fill_fw_cfg(fw_mod, fw, rom_base, rom_size)

        kbc_mod = _optional("machine.devices.i8042")
        if kbc_mod is not None:
            kbc = kbc_mod.I8042(irq(1), irq(12), self._on_guest_reset)
            self.devices["i8042"] = kbc
            self._add_io("i8042-data", kbc, 0x60, 1, kbc.data_ops)
            self._add_io("i8042-cmd", kbc, 0x64, 1, kbc.cmd_ops)

        p92_mod = _optional("machine.devices.port92")
        if p92_mod is not None:
            p92 = p92_mod.Port92(self._on_guest_reset)
            self.devices["port92"] = p92
            self._add_io("port92", p92, 0x92, 1)

        if self.lapic is not None:
            self.devices["lapic"] = self.lapic
            self.memory_map.add("lapic", 0xFEE00000, 0x1000, self.lapic)

        self._build_pci()

    def _build_pci(self) -> None:
        bus_mod = _optional("machine.pci.bus")
        host_mod = _optional("machine.pci.host")
        if bus_mod is None or host_mod is None:
            return
        bus = self.pci_bus = bus_mod.PciBus(self.memory_map, self.io)
        cfgio = host_mod.PciConfigIo(bus, self._on_guest_reset)
        self.devices["pci-config"] = cfgio
        self._add_io("pci-config", cfgio, 0xCF8, 8)
        self.shadow = ShadowRam(self.mem, self.cpu)
        host = host_mod.I440fx(on_pam_change=self.shadow.pam_changed)
        bus.plug(host, 0)
        self.devices["i440fx"] = host
        isa = host_mod.Piix3(self._irq_line)
        bus.plug(isa, 1)
        self.devices["piix3"] = isa
        self._build_virtio(bus)

    def _build_virtio(self, bus) -> None:
        cfg = self.config
        wanted: list[tuple[object, dict]] = []
        by_id = {d.id: d for d in cfg.drives if d.id is not None}
        claimed: set[str] = set()
        for d in cfg.devices:
            if d.driver not in ("virtio-blk-pci", "virtio-blk"):
                continue
            drive_id = d.props.get("drive")
            if drive_id is None:
                raise ConfigError(f"{d.driver}: drive property not set")
            if drive_id not in by_id:
                raise ConfigError(f"{d.driver}: Property '{d.driver}.drive' can't find value '{drive_id}'")
            claimed.add(drive_id)
            wanted.append((by_id[drive_id], dict(d.props)))
        for drive in cfg.drives:
            if drive.interface == "virtio" and (drive.id is None or drive.id not in claimed):
                wanted.append((drive, {}))
        if not wanted:
            return
        block = _optional("machine.block")
        vpci = _optional("machine.virtio.pci")
        if block is None or vpci is None or not hasattr(vpci, "create_virtio_blk_pci"):
            trace.log("unimp", "virtio-blk-pci is not available in this build: drives not attached")
            return
        slot = 2
        for n, (drive, props) in enumerate(wanted):
            while bus.device(slot) is not None:
                slot += 1
            if slot > 31:
                raise ConfigError("no free PCI slot for another virtio-blk-pci")
            backend = block.open_drive(drive, snapshot=cfg.snapshot)
            self._backends.append(backend)
            dev = vpci.create_virtio_blk_pci(backend, props, self.mem)
            bus.plug(dev, slot)
            self.devices[f"virtio-blk{n}"] = dev
            slot += 1

    def _fill_fw_cfg(self, mod, fw, rom_base: int, rom_size: int) -> None:
        cfg = self.config
        fw.add_u64(mod.RAM_SIZE, cfg.ram_size)
        fw.add_u16(mod.NB_CPUS, 1)
        fw.add_u16(mod.MAX_CPUS, 1)
        if cfg.kernel is not None:
            try:
                kernel = open(cfg.kernel, "rb").read()
            except OSError as exc:
                raise ConfigError(f"could not load kernel '{cfg.kernel}': {exc.strerror}") from None
            fw.add_u32(mod.KERNEL_SIZE, len(kernel))
            fw.add_bytes(mod.KERNEL_DATA, kernel)
            # As QEMU builds the Multiboot command line: the kernel path as given, a space, -append.
            cmdline = f"{cfg.kernel} {cfg.append}".encode() + b"\0"
            fw.add_u32(mod.CMDLINE_SIZE, len(cmdline))
            fw.add_bytes(mod.CMDLINE_DATA, cmdline)
        # As QEMU's `pc` machine: one RAM entry from 0 to the top of low RAM (the legacy hole at
        # 0xA0000-0xFFFFF is the firmware's business: it knows what it shadows there), and the
        # RAM above 4 GiB. The firmware ROM at the top of 4 GiB is reserved by the firmware.
        low_top = max(r.end for r in self.mem.ranges if r.gpa < FOUR_GIB)
        entries = [(0, low_top, mod.E820_RAM)]
        entries += [(r.gpa, r.size, mod.E820_RAM) for r in self.mem.ranges if r.gpa >= FOUR_GIB]
        fw.add_file("etc/e820", mod.e820_table(entries))
        # Boot options as QEMU's fw_cfg gives them to SeaBIOS: the menu switch (key 0x0e), the
        # prompt's wait and the wait before rebooting after a failed boot (-1: never) as files.
        fw.add_u16(mod.BOOT_MENU, 1 if cfg.boot_menu else 0)
        if cfg.boot_menu_wait is not None:
            fw.add_file("etc/boot-menu-wait", struct.pack("<H", cfg.boot_menu_wait))
        fw.add_file("etc/boot-fail-wait", struct.pack("<i", cfg.boot_fail_wait))
        # -nographic: the firmware's console goes to COM1 (SeaBIOS's serial console), as
        # QEMU says through NOGRAPHIC and etc/sercon-port.
        fw.add_u16(mod.NOGRAPHIC, 1 if cfg.nographic else 0)
        if cfg.nographic and "serial0" in self.devices:
            fw.add_file("etc/sercon-port", struct.pack("<H", 0x3F8))

    def _output(self, dev: CharDev) -> BinaryIO | None:
        out = _open_chardev(dev)
        if out is not None and dev.kind == "file":
            self._outputs.append(out)
        return out

    def _irq_line(self, n: int) -> IrqLine:
        if self.pic is not None:
            return self.pic.irq_line(n)
        return IrqLine(f"irq{n} (no PIC)")

    # -------------------------------------------------------------------------------------
    # requests from devices and the debugger (recorded; acted on between slices)
    # -------------------------------------------------------------------------------------
    def _on_guest_exit(self, status: int) -> None:
        if self._exit_status is None:
            self._exit_status = status
        if self.cpu.running:
            self.cpu.request_stop_after_instruction()

    def _on_guest_reset(self) -> None:
        self._reset_requested = True
        if self.cpu.running:
            self.cpu.request_stop_after_instruction()

    def request_stop(self, reason: str = "stop") -> None:
        """Stop run() at the next clean point (between slices, or right after the current
        instruction when called from a device callback). run() returns with
        stop_reason.kind == 'interrupt' and message == reason."""
        if self._stop_request is None:
            self._stop_request = reason
        if self.cpu.running:                 # from a device callback: end the slice early
            self.cpu.request_stop_after_instruction()

    def add_poll_hook(self, fn: Callable[[], None]) -> None:
        """fn() runs between slices (and while the CPU idles); it may call request_stop()."""
        self._poll_hooks.append(fn)

    def remove_poll_hook(self, fn: Callable[[], None]) -> None:
        if fn in self._poll_hooks:
            self._poll_hooks.remove(fn)

    # -------------------------------------------------------------------------------------
    # interrupts
    # -------------------------------------------------------------------------------------
    def _irq_pending(self) -> bool:
        for src in self.irq_sources:
            if src.pending():
                return True
        lapic = self.lapic
        if lapic is not None:
            if lapic.pending():
                return True
            if not lapic.lint0_extint():
                return False
        return self.pic is not None and bool(self.pic.pending())

    def _acknowledge(self) -> int | None:
        for src in self.irq_sources:
            if src.pending():
                return src.acknowledge()
        lapic = self.lapic
        if lapic is not None:
            if lapic.pending():
                return lapic.acknowledge()
            if not lapic.lint0_extint():
                return None
        if self.pic is not None and self.pic.pending():
            return self.pic.acknowledge()
        return None

    # -------------------------------------------------------------------------------------
    # reset
    # -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """System reset: CPU to the reset vector, every device to its power-on state (RAM keeps
        its contents, as on a real warm reset)."""
        self.cpu.reset()
        self._halted = False
        seen = set()
        for dev in self.devices.values():
            if id(dev) in seen:
                continue
            seen.add(id(dev))
            reset = getattr(dev, "reset", None)
            if reset is not None:
                reset()
        self.resets += 1

    # -------------------------------------------------------------------------------------
    # the run loop
    # -------------------------------------------------------------------------------------
    def _finish(self, reason: StopReason) -> int:
        self.stop_reason = reason
        if reason.kind == STOP_FAULT and reason.message:
            sys.stderr.write(reason.message.rstrip("\n") + "\n")
            sys.stderr.flush()
        for out in (sys.stdout,):
            try:
                out.flush()
            except Exception:
                pass
        return reason.exit_status

    def _fatal(self, report: str) -> int:
        return self._finish(StopReason(STOP_FAULT, FATAL_STATUS, message=report))

    def _poll_host(self) -> None:
        for fn in self._poll_hooks:
            fn()
        fd = self._stdin_fd
        if fd is not None:
            try:
                ready = select.select([fd], [], [], 0)[0]
            except (OSError, ValueError):
                self._stdin_fd = None
                return
            if ready:
                self._read_stdin()

    def _read_stdin(self) -> None:
        try:
            data = os.read(self._stdin_fd, 4096)
        except OSError:
            data = b""
        if not data:
            self._stdin_fd = None          # EOF: nothing more can arrive
            return
        uart = self.devices.get("serial0")
        if uart is not None:
            uart.feed_input(data)

    def _idle_wait(self) -> bool:
        """The CPU halted with interrupts on and no timer is armed: wait for host input (stdin
        for -serial stdio, or a debugger via its poll hook). False: nothing can ever wake it."""
        if self._stdin_fd is None and not self._poll_hooks:
            return False
        while not self._irq_pending() and self._stop_request is None:
            fds = [self._stdin_fd] if self._stdin_fd is not None else []
            if not fds and not self._poll_hooks:
                return False
            try:
                ready = select.select(fds, [], [], 0.02 if self._poll_hooks else None)[0]
            except (OSError, ValueError):
                self._stdin_fd = None
                continue
            if ready:
                self._read_stdin()
            for fn in self._poll_hooks:
                fn()
            if self.clock.next_deadline() is not None:
                break
        return True

    def run(self, max_instructions: int | None = None) -> int:
        """Run the guest until it exits, faults, hits a breakpoint, is asked to stop, or has
        retired `max_instructions` more instructions. Returns the process exit status;
        `stop_reason` says why."""
        cpu = self.cpu
        clock = self.clock
        budget = max_instructions
        self.stop_reason = None
        while True:
            if self._poll_hooks or self._stdin_fd is not None:
                self._poll_host()
            if self._exit_status is not None:
                status, self._exit_status = self._exit_status, None
                return self._finish(StopReason(STOP_EXITED, status))
            if self._reset_requested:
                self._reset_requested = False
                if self.config.no_reboot:
                    return self._finish(StopReason(STOP_EXITED, 0, message="guest reset"))
                self.reset()
            if self._stop_request is not None:
                reason, self._stop_request = self._stop_request, None
                return self._finish(StopReason(STOP_INTERRUPT, 0, message=reason))
            if budget is not None and budget <= 0:
                return self._finish(StopReason(STOP_LIMIT, 0))

            count = MAX_SLICE
            if self._irq_pending() and cpu.interrupts_enabled():
                if cpu.interrupt_shadow():
                    count = 1          # the instruction after STI/MOV SS runs first (e.g. the HLT)
                else:
                    vector = self._acknowledge()
                    if vector is not None:
                        self._halted = False
                        if not cpu.deliver_irq(vector):
                            if self.config.no_reboot:
                                return self._fatal(cpu.fatal_report)
                            self._reboot_after_triple_fault(cpu.fatal_report)
                    continue
            if self._halted:
                # A halted CPU stays halted until an interrupt is delivered: timers that fire
                # without raising one do not wake it.
                deadline = clock.next_deadline()
                if deadline is not None:
                    clock.advance_to(deadline)       # idle: jump to the next timer event
                    continue
                if self._idle_wait():
                    continue
                return self._fatal(cpu.fault_report(
                    "the CPU halted with interrupts enabled, but no timer is armed and no input can arrive",
                    back=1))
            deadline = clock.next_deadline()
            if deadline is not None:
                count = min(count, max(1, deadline - clock.now))
            if budget is not None:
                count = min(count, budget)

            start = clock.now
            result = cpu.run(count)
            self.instructions += result.retired
            if budget is not None:
                budget -= result.retired
            clock.advance_to(start + result.retired + result.io_ns)

            kind = result.kind
            if kind == "count" or kind == "stop":
                continue
            if kind == "halt":
                if not cpu.interrupts_enabled():
                    return self._fatal(cpu.fault_report("the CPU halted with interrupts disabled (HLT with IF=0)", back=1))
                self._halted = True
                continue
            if kind == "breakpoint":
                return self._finish(StopReason(STOP_BREAKPOINT, 0, address=result.address))
            if kind == "triple_fault":
                if self.config.no_reboot:
                    return self._fatal(result.report)
                self._reboot_after_triple_fault(result.report)
                continue
            return self._fatal(result.report)

    def _reboot_after_triple_fault(self, report: str) -> None:
        # A real PC resets on a triple fault (the chipset sees the shutdown cycle); say why
        # under -d guest_errors, as QEMU's log does.
        trace.guest_error(report)
        self.reset()

    def step(self) -> StopReason:
        """Execute one instruction (for the debugger); the clock advances by one."""
        self._halted = False
        start = self.clock.now
        result = self.cpu.step()
        self.instructions += result.retired
        self.clock.advance_to(start + result.retired + result.io_ns)
        if result.kind in ("fatal", "triple_fault"):
            self.stop_reason = StopReason(STOP_FAULT, FATAL_STATUS, message=result.report)
        else:
            self.stop_reason = StopReason(STOP_STEP, 0, address=self.cpu.linear_pc())
        return self.stop_reason

    def close(self) -> None:
        for out in self._outputs:
            try:
                out.close()
            except OSError:
                pass
        self._outputs.clear()
        for backend in self._backends:     # flushes, and drops the image lock for the next user
            try:
                backend.close()
            except OSError:
                pass
        self._backends.clear()
