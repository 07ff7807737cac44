"""The board: a PC built from a MachineConfig, and the run loop that drives it.

    machine = Machine(config)
    status = machine.run()            # the process exit status

A PC is a CPU, memory, two address spaces (ports and physical memory) and devices. Wiring, as
QEMU's i440FX `pc` machine: RAM around the PC holes, the firmware ROM at the top of 4 GiB
(aliased below 1 MiB), PIC 0x20/0xA0/0x4D0, PIT 0x40 (+0x61), CMOS 0x70 (IRQ8), COM1 0x3F8
(IRQ4), 8042 keyboard controller 0x60/0x64 (IRQ1/12), ACPI PM block 0x600 (SCI IRQ9), debugcon 0x402, isa-debug-exit, fw_cfg
0x510, port 0x92, LAPIC 0xFEE00000, IOAPIC 0xFEC00000 (every ISA IRQ reaches both it and the
8259s; IRQ0 on pin 2), PCI config 0xCF8 with the i440FX (00:00.0), PIIX3 (00:01.0)
and a virtio-blk-pci per drive from slot 2. Shadow RAM under 0xC0000-0xFFFFF follows the
i440FX PAM registers (shadow.py).

Run loop: the CPU runs in slices of at most MAX_SLICE instructions, cut at the next timer
deadline. Virtual time is the retired-instruction count (1 instruction = 1 ns) plus the time port
accesses take (cpu.IO_PORT_NS each), plus jumps to the next deadline while the CPU halts with
interrupts enabled, so two runs of the same guest give the same output and the same instruction
count. Between slices the loop delivers a pending interrupt (LAPIC first, then the PIC through
LINT0 ExtINT), polls host input and debugger hooks, and acts on what device callbacks recorded
(exit, reset, stop): callbacks never stop the engine themselves. An interrupt raised during a
slice (a self-IPI, a device's IRQ from a port access) ends the slice after the current
instruction when the CPU would take it, so it is delivered at once rather than at the slice end.
With `-object iothread` devices run requests on I/O threads: the loop completes what they
finished between slices, keeps slices short (IO_SLICE) while requests are in flight, and a halted
CPU waits for a completion. That mode is not deterministic; without it nothing changes.

Exit status of run(): isa-debug-exit's `(value << 1) | 1`; 0 for a guest reset under -no-reboot
or an instruction budget/stop request; FATAL_STATUS (2) for a guest that cannot go on (triple
fault under -no-reboot, HLT with interrupts disabled, HLT with nothing left to wake it, an
exception that cannot be delivered, unicorn refusing an instruction); a report goes to stderr,
after whatever the guest wrote to COM1.
"""

from __future__ import annotations

import functools
import os
import select
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO, Callable

from . import acpi, kernel_image, trace
from . import savevm
from .block import SECTOR as SECTOR_BYTES, open_drive
from .block.undo import Journal
from .savevm_store import SnapshotError, SnapshotStore
from .clock import VirtualClock
from .config import CharDev, ConfigError, DeviceConfig, MachineConfig
from .cpu import Cpu, SliceResult
from .devices import acpi_pm, fw_cfg
from .devices.cmos import Cmos
from .devices.debug_exit import DebugExit
from .devices.debugcon import DebugCon
from .devices.fw_cfg import FwCfg
from .devices.i8042 import I8042
from .devices.ioapic import IoApic
from .devices.lapic import LocalApic
from .devices.msi import MsiSink
from .devices.pic import DualPic
from .devices.pit import Pit
from .devices.port92 import Port92
from .devices.serial import Uart16550
from .iothread import STEAL_NS, IoThread
from .irq import IrqLine, SharedLine
from .memory import FOUR_GIB, GuestMemory, IoSpace, MemoryMap
from .pci import I440fx, PciBus, PciConfigIo, Piix3
from .pci.host import RCR_RESET_CPU, RCR_SYSTEM_RESET
from .shadow import ShadowRam
from .toolchain import ensure_built
from .virtio.blk_pci import create_virtio_blk_pci

FATAL_STATUS = 2
MAX_SLICE = 500_000          # instructions; bounds stop/^C latency (~10 ms at worst)
MASKED_SLICE = 10_000        # instructions; slice length during a long wait for IF=1 (see run())
IO_SLICE = 4_000             # instructions; slice length while I/O-thread requests are in flight
BOTTOM_HALF_NS = 1_000       # virtual time from a bottom half's request to its run
IO_WAIT = 0.02               # seconds a halted CPU waits for a completion before polling hooks

# Stop kinds (the same words the debugger layer uses).
STOP_EXITED = "exited"            # the guest asked to exit (isa-debug-exit, reset under -no-reboot)
STOP_FAULT = "fault"              # fatal guest fault; `message` is the report
STOP_BREAKPOINT = "breakpoint"    # `address` is the linear address
STOP_STEP = "step"
STOP_INTERRUPT = "interrupt"      # request_stop(reason); `message` is the reason
STOP_LIMIT = "limit"              # run(max_instructions) used its budget

VIRTIO_BLK_DRIVERS = ("virtio-blk-pci", "virtio-blk")
KNOWN_DEVICES = ("isa-debug-exit", *VIRTIO_BLK_DRIVERS)
ACPI_MEM64_ALIGN = 1 << 30         # the 64-bit PCI window starts on a GiB boundary above RAM
ACPI_MEM64_SIZE = 32 << 30
FIRST_VIRTIO_SLOT = 2             # 00:00.0 is the i440FX, 00:01.0 the PIIX3


IO_ERROR = "io-error"       # the stop message (and QEMU's run state) of an rerror/werror=stop pause


@dataclass
class StopReason:
    """Why run() returned."""
    kind: str
    exit_status: int = 0
    address: int = 0
    message: str = ""


def _open_chardev(dev: CharDev) -> BinaryIO | None:
    if dev.kind == "stdio":
        return sys.stdout.buffer
    if dev.kind == "file":
        if dev.path is None:
            raise ConfigError("chardev 'file' needs a path")
        try:
            # Buffered: the UART flushes per line and when the guest stops writing, not per byte.
            return open(dev.path, "wb")
        except OSError as exc:
            raise ConfigError(f"could not open '{dev.path}': {exc.strerror}") from None
    return None


def _debug_exit_window(dev: DeviceConfig) -> tuple[int, int]:
    """(iobase, iosize) of an isa-debug-exit, QEMU's defaults 0x501/2."""
    try:
        base = int(dev.props.get("iobase", "0x501"), 0)
        size = int(dev.props.get("iosize", "2"), 0)
    except ValueError:
        raise ConfigError("isa-debug-exit: iobase and iosize must be numbers") from None
    if not 0 <= base < 0x10000 or not 1 <= size <= 4 or base + size > 0x10000:
        raise ConfigError(f"isa-debug-exit: bad iobase/iosize {base:#x}/{size}")
    return base, size


def _pci_addr(value: str) -> tuple[int, int]:
    """QEMU's PCI `addr` property: SLOT or SLOT.FN, hexadecimal."""
    slot_s, _, fn_s = value.strip().lower().partition(".")
    try:
        slot, fn = int(slot_s, 16), int(fn_s or "0", 16)
    except ValueError:
        raise ConfigError(f"Property 'addr' doesn't take value '{value}' (slot[.function])") from None
    if not 0 <= slot < 32 or not 0 <= fn < 8:
        raise ConfigError(f"Property 'addr' doesn't take value '{value}' (slot 0-1f, function 0-7)")
    return slot, fn


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
        unknown = [d.driver for d in config.devices if d.driver not in KNOWN_DEVICES]
        if unknown:
            raise ConfigError(f"'{unknown[0]}' is not a valid device model name")
        ids: set[str] = set()
        for d in config.devices:
            dev_id = d.props.get("id")
            if dev_id is not None and dev_id in ids:
                raise ConfigError(f"Duplicate ID '{dev_id}' for device")
            ids.add(dev_id)
        self.clock = VirtualClock()
        self.mem = GuestMemory(config.ram_size)
        self.io = IoSpace()
        self.devices: dict[str, object] = {}   # in reset order
        self.instructions = 0
        self.stop_reason: StopReason | None = None
        self.resets = 0
        self.irq_sources: list = []          # extra interrupt controllers, asked before the LAPIC
        self._poll_hooks: list[Callable[[], None]] = []
        self._exit_status: int | None = None
        self._reset_requested = False
        self._stop_request: str | None = None
        self._halted = False                 # HLT executed, waiting for an interrupt
        self._short_slice = False            # the slice running is at most IO_SLICE long
        self._outputs: list[BinaryIO] = []   # opened chardev files: close() closes them
        self._backends: list = []            # opened drives: close() releases their images
        self.drives: dict[str, tuple] = {}   # drive id -> (backend, the virtio device using it)
        self.journals: dict[str, Journal] = {}   # drive id -> its undo-log journal (writable drives)
        self._parking_devices: list = []    # devices whose failed requests may wait (rerror/werror=stop)
        self._native_devices: list = []     # devices with native code acting alone within a slice
        self.paused_reason: str | None = None   # why run() last ended paused ('io-error'), for `info status`
        self._stdin_fd: int | None = None
        self.stdin_filter: Callable[[bytes], bytes] | None = None
        # -object iothread: where devices with iothread= run their requests (see run())
        self.iothreads: dict[str, IoThread] = {}
        for ident, props in config.iothreads.items():
            poll = props.get("poll-max-ns")
            io = self.iothreads[ident] = IoThread(ident) if poll is None else IoThread(ident, int(poll, 0))
            io.on_pending = self._io_pending

        rom = self._firmware_image()
        rom_base = FOUR_GIB - len(rom)
        alias = min(len(rom), 128 * 1024)
        # 0xC0000-0xFFFFF is the chipset's (ROM alias or shadow RAM, machine/shadow.py): no BAR there.
        self.memory_map = MemoryMap(self.mem, reserved=[(rom_base, len(rom), "rom"),
                                                        (0x100000 - alias, alias, "isa-bios"),
                                                        (0xC0000, 0x40000, "bios-area")])
        self.lapic = LocalApic(self.clock, irq_out=self._interrupt_raised)
        self.msi = MsiSink(self.lapic)     # bus masters' interrupt messages (MSI, the IOAPIC)
        self.cpu = Cpu(self.mem, self.memory_map, self.io, self.clock, apic=True, icount=config.icount)
        self.cpu.load_firmware(rom)
        self.pic = DualPic()
        self.pic.on_intr = self._interrupt_raised       # an IRQ from a port or MMIO access
        self.ioapic = IoApic(self.msi.deliver)
        self.lapic.eoi_listeners.append(self.ioapic.eoi)
        # Each ISA IRQ is a wired-OR of everything that drives it (an ISA device, the SCI, the
        # PIIX3's PIRQ routing), so one source lowering its request never hides another's.
        self.isa_irqs = [SharedLine(self._isa_irq_sink(n)) for n in range(16)]
        self._build_isa_devices()
        self._build_pci()
        self.clock.restore_oneshot = self._restore_bottom_half
        # Named snapshots beside the first writable image: this run keeps them loadable.
        self._snapshot_store = SnapshotStore.attach(self)

    # -------------------------------------------------------------------------------------
    # construction
    # -------------------------------------------------------------------------------------
    def _firmware_image(self) -> bytes:
        path = self.config.bios
        if path is None:
            path = ensure_built("firmware", "out/bios.bin")
        try:
            data = open(path, "rb").read()
        except OSError as exc:
            raise ConfigError(f"could not load firmware '{path}': {exc.strerror}") from None
        if not data or len(data) % 4096 or len(data) > 16 * 1024 * 1024:
            raise ConfigError(f"firmware '{path}' must be a non-empty multiple of 4 KiB, at most 16 MiB")
        return data

    def _isa_irq_sink(self, n: int) -> Callable[[bool], None]:
        """ISA IRQ n (the OR of its sources) reaches both interrupt controllers, as on a PC: the 8259 input n and the
        IOAPIC pin n, except IRQ0 (the PIT), which is wired to pin 2 (the MADT says so with an
        interrupt source override); pin 0 stays free for the 8259's output."""
        pic_line = self.pic.irq_line(n)
        ioapic_pin = self.ioapic.pin(2 if n == 0 else n)

        def sink(level: bool) -> None:
            pic_line.set(level)
            ioapic_pin.set(level)
        return sink

    def _plug(self, name: str, dev, base: int, size: int) -> None:
        """A device answering in one port range of its own name."""
        self.devices[name] = dev
        self.io.add(name, base, size, dev)

    def _build_isa_devices(self) -> None:
        # The order is the reset order, and where port ranges overlap (an isa-debug-exit placed
        # over another device) the later one answers.
        cfg, clock, pic = self.config, self.clock, self.pic
        def irq(n: int) -> IrqLine:
            return self.isa_irqs[n].input(f"isa-irq{n}")

        self.devices["pic"] = pic
        self.io.add("pic-master", 0x20, 2, pic.master_ops)
        self.io.add("pic-slave", 0xA0, 2, pic.slave_ops)
        self.io.add("elcr", 0x4D0, 2, pic.elcr_ops)

        pit = Pit(irq(0), clock)
        self._plug("pit", pit, 0x40, 4)
        self.io.add("port61", 0x61, 1, pit.port61_ops)

        self._plug("cmos", Cmos(irq(8), clock, cfg.ram_size, start_time=cfg.rtc_base), 0x70, 2)

        # With the clock, COM1 output reaches the host per line and when the guest stops
        # writing; run() and step() flush the rest before they return.
        self.uart = Uart16550(irq(4), self._output(cfg.serial), clock=clock)
        self._plug("serial0", self.uart, 0x3F8, 8)
        if cfg.serial.kind == "stdio":
            try:
                self._stdin_fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):
                self._stdin_fd = None

        self._plug("debugcon", DebugCon(self._output(cfg.debugcon)), 0x402, 1)

        exits = [d for d in cfg.devices if d.driver == "isa-debug-exit"]
        for n, d in enumerate(exits):
            base, size = _debug_exit_window(d)
            name = "isa-debug-exit" if n == 0 else f"isa-debug-exit{n}"
            self._plug(name, DebugExit(self._on_guest_exit, iosize=size), base, size)

        fw = FwCfg(self.mem)
        self._plug("fw_cfg", fw, FwCfg.BASE, FwCfg.SIZE)
        self._fill_fw_cfg(fw)

        kbc = I8042(irq(1), irq(12), self._on_guest_reset)
        self.devices["i8042"] = kbc
        self.io.add("i8042-data", 0x60, 1, kbc.data_ops)
        self.io.add("i8042-cmd", 0x64, 1, kbc.cmd_ops)

        self._plug("port92", Port92(self._on_guest_reset), 0x92, 1)

        # ACPI power management (PM1 event/control, PM timer) where QEMU's PIIX4 PM has it; the
        # SCI is ISA IRQ 9, level-triggered; S5 powers the machine off (exit status 0).
        pm = acpi_pm.AcpiPm(clock, irq(acpi_pm.SCI_IRQ), self._on_power_off)
        self._plug("acpi-pm", pm, acpi_pm.BASE, acpi_pm.SIZE)

        self.devices["lapic"] = self.lapic
        self.memory_map.add("lapic", LocalApic.BASE, LocalApic.SIZE, self.lapic)
        self.devices["ioapic"] = self.ioapic
        self.memory_map.add("ioapic", IoApic.BASE, IoApic.SIZE, self.ioapic)

    def _build_pci(self) -> None:
        bus = self.pci_bus = PciBus(self.memory_map, self.io)
        self._plug("pci-config", PciConfigIo(bus, self._on_guest_reset), 0xCF8, 8)
        self.shadow = ShadowRam(self.mem, self.cpu)
        host = I440fx(on_pam_change=self.shadow.pam_changed)
        bus.plug(host, 0)
        self.devices["i440fx"] = host
        pirq_outputs = [self.isa_irqs[n].input(f"piix3-irq{n}") for n in range(16)]
        isa = Piix3(pirq_outputs.__getitem__)
        bus.plug(isa, 1)
        self.devices["piix3"] = isa
        slot = FIRST_VIRTIO_SLOT
        for n, (drive, props) in enumerate(self._virtio_drives()):
            # As QEMU: addr=SLOT[.FN] (hex) where asked, else the next free slot, in order.
            where = _pci_addr(props["addr"]) if "addr" in props else None
            if where is None:
                while bus.device(slot) is not None:
                    slot += 1
                if slot > 31:
                    raise ConfigError("no free PCI slot for another virtio-blk-pci")
                where = (slot, 0)
            elif bus.devices.get(where[0] << 3 | where[1]) is not None:
                raise ConfigError(f"PCI: slot {where[0]} function {where[1]} not available for virtio-blk-pci, "
                                  f"in use by {bus.devices[where[0] << 3 | where[1]].name}")
            backend = open_drive(drive, snapshot=self.config.snapshot)
            if not backend.read_only:
                # Snapshots keep undo logs of writable disks (block/undo.py): a pass-through until one does.
                backend = self.journals[drive.id] = Journal(backend)
            self._backends.append(backend)
            dev = create_virtio_blk_pci(backend, props, self.mem, msi_send=self.msi.send,
                                        iothreads=self.iothreads)
            self.drives[drive.id] = (backend, dev.vdev)
            dev.vdev.on_io_error = self._io_error
            dev.vdev.clock = self.clock        # blkdebug [delay] rules hold completions in virtual time
            dev.vdev.defer = functools.partial(self._device_bottom_half, n)
            dev.vdev.timer_key = f"virtio-blk{n}"     # its held completions' timers (snapshots)
            self._parking_devices.append(dev.vdev)
            if dev.vdev.bind_cpu(self.cpu.slice_token_address, self.cpu.native_window):
                self._native_devices.append(dev.vdev)
            bus.plug(dev, *where)
            self.devices[f"virtio-blk{n}"] = dev

    def block_resize(self, drive_id: str, size: int) -> None:
        """QEMU's block_resize: make drive `drive_id` `size` bytes and tell its device (a new
        capacity, a config generation and a config-change interrupt). ValueError saying why
        not, in QEMU's words where it has them."""
        entry = self.drives.get(drive_id)
        if entry is None:
            raise ValueError(f"Device '{drive_id}' not found")
        if size <= 0 or size % SECTOR_BYTES:
            raise ValueError(f"the new size must be a positive multiple of {SECTOR_BYTES} bytes")
        backend, vdev = entry
        if size % vdev.lbs:
            raise ValueError(f"the new size must be a multiple of the logical block size {vdev.lbs}")
        try:
            backend.resize(size)
        except OSError as e:
            raise ValueError(f"Cannot resize '{drive_id}': {e.strerror or e}") from None
        vdev.update_capacity()

    def _virtio_drives(self) -> list[tuple[object, dict]]:
        """(drive, device properties) per virtio-blk: each -device names its drive; every
        if=virtio drive no -device claimed gets one with default properties."""
        cfg = self.config
        by_id = {d.id: d for d in cfg.drives if d.id is not None}
        wanted: list[tuple[object, dict]] = []
        claimed: set[str] = set()
        for d in cfg.devices:
            if d.driver not in VIRTIO_BLK_DRIVERS:
                continue
            drive_id = d.props.get("drive")
            if drive_id is None:
                raise ConfigError(f"{d.driver}: drive property not set")
            if drive_id not in by_id:
                raise ConfigError(f"{d.driver}: Property '{d.driver}.drive' can't find value '{drive_id}'")
            claimed.add(drive_id)
            wanted.append((by_id[drive_id], dict(d.props)))
        for drive in cfg.drives:
            if drive.interface == "virtio" and drive.id not in claimed:
                wanted.append((drive, {}))
        return wanted

    def _fill_kernel(self, fw: FwCfg, low_top: int) -> None:
        """-kernel/-initrd/-append as QEMU hands them to the firmware: a Multiboot kernel whole
        in KERNEL_DATA with the command line "<path> <append>"; a Linux kernel split into
        SETUP_DATA and KERNEL_DATA, the initrd in INITRD_DATA, the command line as given."""
        cfg = self.config
        try:
            data = open(cfg.kernel, "rb").read()
            # A file that is not a bzImage goes whole to the firmware's Multiboot loader, which
            # reports what is wrong with it (the command line refuses such files earlier).
            linux = kernel_image.parse_linux(data) if kernel_image.is_linux(data[:0x206]) else None
            kernel = data if linux is None else linux.kernel
            initrd = None
            if cfg.initrd is not None and linux is not None:
                initrd = open(cfg.initrd, "rb").read()
        except OSError as exc:
            raise ConfigError(f"could not load '{exc.filename}': {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"-kernel {cfg.kernel}: {exc}") from None
        if linux is None:
            if cfg.initrd is not None:
                fw.add_file(kernel_image.MODULES_FILE, self._multiboot_modules(str(cfg.initrd), low_top))
            cmdline = f"{cfg.kernel} {cfg.append}".encode() + b"\0"
        else:
            cmdline = cfg.append.encode() + b"\0"
            if len(cmdline) - 1 > linux.cmdline_size:
                raise ConfigError(f"-append: the kernel command line is {len(cmdline) - 1} bytes, "
                                  f"the kernel accepts at most {linux.cmdline_size}")
            fw.add_u32(fw_cfg.SETUP_SIZE, len(linux.setup))
            fw.add_bytes(fw_cfg.SETUP_DATA, linux.setup)
            if initrd is not None:
                room = linux.initrd_room(low_top)
                if len(initrd) > room:
                    raise ConfigError(f"-initrd {cfg.initrd}: initrd is too large ({len(initrd)} "
                                      f"bytes; at most {room} fit below the kernel's initrd_addr_max "
                                      f"{linux.initrd_addr_max:#x} and the top of RAM)")
                fw.add_u32(fw_cfg.INITRD_SIZE, len(initrd))
                fw.add_bytes(fw_cfg.INITRD_DATA, initrd)
        fw.add_u32(fw_cfg.KERNEL_SIZE, len(kernel))
        fw.add_bytes(fw_cfg.KERNEL_DATA, kernel)
        fw.add_u32(fw_cfg.CMDLINE_SIZE, len(cmdline))
        fw.add_bytes(fw_cfg.CMDLINE_DATA, cmdline)

    @staticmethod
    def _multiboot_modules(initrd: str, low_top: int) -> bytes:
        """-initrd with a Multiboot kernel: the modules, QEMU's "file args,file args" list."""
        modules = []
        for path, cmdline in kernel_image.multiboot_module_specs(initrd):
            try:
                with open(path, "rb") as f:
                    modules.append((cmdline, f.read()))
            except OSError:
                raise ConfigError(f"Failed to open file '{path}'") from None
        try:
            blob = kernel_image.multiboot_modules_blob(modules)
        except ValueError as exc:
            raise ConfigError(f"-initrd: {exc}") from None
        total = sum(-(-len(data) // 4096) * 4096 for _, data in modules)
        if total > low_top - kernel_image.PROT_MODE_ADDR:
            raise ConfigError(f"-initrd: the Multiboot modules take {total} bytes of RAM, more "
                              f"than the {low_top - kernel_image.PROT_MODE_ADDR} above 1 MiB")
        return blob

    def _fill_fw_cfg(self, fw: FwCfg) -> None:
        cfg = self.config
        fw.add_u64(fw_cfg.RAM_SIZE, cfg.ram_size)
        fw.add_u16(fw_cfg.NB_CPUS, 1)
        fw.add_u16(fw_cfg.MAX_CPUS, 1)
        low_top = max(r.end for r in self.mem.ranges if r.gpa < FOUR_GIB)
        if cfg.kernel is not None:
            self._fill_kernel(fw, low_top)
        # As QEMU's `pc` machine: one RAM entry from 0 to the top of low RAM (the legacy hole at
        # 0xA0000-0xFFFFF is the firmware's business: it knows what it shadows there), and the
        # RAM above 4 GiB. The firmware ROM at the top of 4 GiB is reserved by the firmware.
        entries = [(0, low_top, fw_cfg.E820_RAM)]
        entries += [(r.gpa, r.size, fw_cfg.E820_RAM) for r in self.mem.ranges if r.gpa >= FOUR_GIB]
        fw.add_file("etc/e820", fw_cfg.e820_table(entries))
        for name, data in acpi.build(self._acpi_platform(low_top)).items():
            fw.add_file(name, data)
        # Boot options as QEMU's fw_cfg gives them to SeaBIOS: the menu switch (key 0x0e), the
        # prompt's wait and the wait before rebooting after a failed boot (-1: never) as files.
        fw.add_u16(fw_cfg.BOOT_MENU, 1 if cfg.boot_menu else 0)
        if cfg.boot_menu_wait is not None:
            fw.add_file("etc/boot-menu-wait", struct.pack("<H", cfg.boot_menu_wait))
        fw.add_file("etc/boot-fail-wait", struct.pack("<i", cfg.boot_fail_wait))
        # -nographic: the firmware's console goes to COM1 (SeaBIOS's serial console), as
        # QEMU says through NOGRAPHIC and etc/sercon-port.
        fw.add_u16(fw_cfg.NOGRAPHIC, 1 if cfg.nographic else 0)
        if cfg.nographic:
            fw.add_file("etc/sercon-port", struct.pack("<H", Uart16550.BASE))

    def _acpi_platform(self, low_top: int) -> acpi.Platform:
        """What the ACPI tables describe: this board's PM block, reset register and PCI windows
        (32-bit MMIO from the top of low RAM to the IOAPIC; 64-bit above RAM over 4 GiB)."""
        pm = acpi.PmBlocks(
            sci_irq=acpi_pm.SCI_IRQ,
            pm1a_evt=acpi_pm.BASE + acpi_pm.PM1_EVT_OFFSET, pm1_evt_len=acpi_pm.PM1_EVT_LEN,
            pm1a_cnt=acpi_pm.BASE + acpi_pm.PM1_CNT_OFFSET, pm1_cnt_len=acpi_pm.PM1_CNT_LEN,
            pm_tmr=acpi_pm.BASE + acpi_pm.PM_TMR_OFFSET, pm_tmr_len=acpi_pm.PM_TMR_LEN,
            reset_port=PciConfigIo.BASE + 1, reset_value=RCR_SYSTEM_RESET | RCR_RESET_CPU)
        ram_end = max(r.end for r in self.mem.ranges)
        mem64 = max(FOUR_GIB, -(-ram_end // ACPI_MEM64_ALIGN) * ACPI_MEM64_ALIGN)
        windows = acpi.PciWindows(mem32_start=low_top, mem64_start=mem64, mem64_size=ACPI_MEM64_SIZE)
        return acpi.Platform(pm=pm, windows=windows, lapic_base=LocalApic.BASE, ioapic_base=IoApic.BASE)

    def _output(self, dev: CharDev) -> BinaryIO | None:
        out = _open_chardev(dev)
        if out is not None and dev.kind == "file":
            self._outputs.append(out)
        return out

    # -------------------------------------------------------------------------------------
    # requests from devices and the debugger (recorded; acted on between slices)
    # -------------------------------------------------------------------------------------
    def _on_guest_exit(self, status: int) -> None:
        if self._exit_status is None:
            self._exit_status = status
        if self.cpu.running:
            self.cpu.request_stop_after_instruction()

    def _on_power_off(self) -> None:
        """ACPI S5: the machine turns off, as QEMU's power-off, with exit status 0."""
        self._on_guest_exit(0)

    def _on_guest_reset(self) -> None:
        self._reset_requested = True
        if self.cpu.running:
            self.cpu.request_stop_after_instruction()

    def _interrupt_raised(self) -> None:
        """The LAPIC or the 8259s have a new request for the CPU. Raised inside a slice (a
        self-IPI, an EOI or TPR write uncovering one, a device IRQ from a port or MMIO access),
        it ends the slice right after the current instruction when the CPU can take it, so the
        run loop delivers it instead of running on to the slice end; with interrupts off, it
        ends the slice too unless the CPU already watches for IF going to 1, so the loop arms
        that watch (see run()). Raised between slices (timers fire there), the loop sees it."""
        cpu = self.cpu
        if cpu.running and (cpu.interrupts_enabled() or not cpu.watching_interrupt_enable):
            cpu.request_stop_after_instruction()

    def request_stop(self, reason: str = "stop") -> None:
        """Stop run() at the next clean point (between slices, or right after the current
        instruction when called from a device callback). run() returns with
        stop_reason.kind == 'interrupt' and message == reason."""
        if self._stop_request is None:
            self._stop_request = reason
        if self.cpu.running:                 # from a device callback: end the slice early
            self.cpu.request_stop_after_instruction()

    def bottom_half(self, fn: Callable[[], None], key: str | None = None) -> None:
        """Run fn() on this thread soon, between two slices (QEMU's bottom half): a timer
        BOTTOM_HALF_NS of virtual time from now, so a device continuing long work from there
        lets the guest, timers, the monitor and gdb (poll hooks) have their turn between two
        parts. Virtual time, not host time, decides when: runs stay repeatable. `key` lets a
        snapshot save it (see _restore_bottom_half)."""
        self.clock.oneshot(fn, self.clock.now + BOTTOM_HALF_NS, key)

    def _device_bottom_half(self, n: int, fn: Callable[[], None], queue: int | None = None) -> None:
        """virtio-blk n's defer(): resuming queue `queue` is saved as "virtio-blk<n>/<queue>"."""
        self.bottom_half(fn, None if queue is None else f"virtio-blk{n}/{queue}")

    def _restore_bottom_half(self, key: str) -> Callable[[], None] | None:
        """The callback of a saved bottom half, or None when this machine has no such queue."""
        dev, _, queue = key.partition("/")
        vdev = getattr(self.devices.get(dev), "vdev", None)
        if vdev is not None and queue.startswith("delay/"):   # "<dev>/delay/<queue>/<head>/<len>"
            fields = queue.split("/")[1:]
            if len(fields) != 3 or not all(f.isdigit() for f in fields):
                return None
            return vdev.held_release(*map(int, fields))
        if vdev is None or not queue.isdigit() or int(queue) >= len(vdev.queues):
            return None
        qi = int(queue)
        return lambda: vdev.resume_queue(vdev.queues[qi])

    def add_poll_hook(self, fn: Callable[[], None]) -> None:
        """fn() runs between slices (and while the CPU idles); it may call request_stop()."""
        self._poll_hooks.append(fn)

    def remove_poll_hook(self, fn: Callable[[], None]) -> None:
        if fn in self._poll_hooks:
            self._poll_hooks.remove(fn)

    def _has_request(self) -> bool:
        return self._exit_status is not None or self._reset_requested or self._stop_request is not None

    def _take_request(self) -> StopReason | None:
        """Act on what devices and the debugger recorded: an exit or stop ends run() (the reason
        is returned); a reset is carried out here (or ends run() under -no-reboot)."""
        if self._exit_status is not None:
            status, self._exit_status = self._exit_status, None
            return StopReason(STOP_EXITED, status)
        if self._reset_requested:
            self._reset_requested = False
            if self.config.no_reboot:
                return StopReason(STOP_EXITED, 0, message="guest reset")
            self.reset()
        if self._stop_request is not None:
            reason, self._stop_request = self._stop_request, None
            return StopReason(STOP_INTERRUPT, 0, message=reason)
        return None

    # -------------------------------------------------------------------------------------
    # interrupts
    # -------------------------------------------------------------------------------------
    def _interrupt_source(self):
        """The controller with an interrupt for the CPU, or None: an extra source first, then
        the LAPIC, then the 8259s when LINT0 passes them (ExtINT mode, or the APIC disabled)."""
        for src in self.irq_sources:
            if src.pending():
                return src
        lapic = self.lapic
        if lapic.pending():
            return lapic
        if lapic.lint0_extint() and self.pic.pending():
            return self.pic
        return None

    def _interrupt_due(self) -> bool:
        """The CPU would take an interrupt now (interrupts on and one pending)."""
        return self.cpu.interrupts_enabled() and self._interrupt_source() is not None

    def _take_interrupt(self, source) -> int | None:
        """Acknowledge and deliver `source`'s interrupt; an exit status if the run ends."""
        vector = source.acknowledge()
        if vector is None:
            return None
        self._halted = False
        if self.cpu.deliver_irq(vector):
            return None
        return self._triple_fault(self.cpu.fatal_report)

    def _triple_fault(self, report: str) -> int | None:
        """A real PC resets on a triple fault (the chipset sees the shutdown cycle); the report
        goes to -d guest_errors, as QEMU logs it. Under -no-reboot the run ends, fatally."""
        if self.config.no_reboot:
            return self._fatal(report)
        trace.guest_error(report)
        self.reset()
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
    # host side: console output, stdin, debugger poll hooks
    # -------------------------------------------------------------------------------------
    def _flush_console(self) -> None:
        """Push what the guest wrote out to the host (before run() or step() returns)."""
        self.uart.flush()
        try:
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def _poll_host(self, timeout: float | None = 0) -> None:
        """Take host input on stdin (waiting up to `timeout` seconds for it; None: until some
        comes), then run the poll hooks."""
        fd = self._stdin_fd
        if fd is not None or timeout:
            try:
                ready = select.select([] if fd is None else [fd], [], [], timeout)[0]
            except (OSError, ValueError):
                self._stdin_fd = None
                ready = []
            if ready:
                self._read_stdin()
        for fn in self._poll_hooks:
            fn()

    def _read_stdin(self) -> None:
        try:
            data = os.read(self._stdin_fd, 4096)
        except OSError:
            data = b""
        if not data:
            self._stdin_fd = None          # EOF: nothing more can arrive
            return
        if self.stdin_filter is not None:
            data = self.stdin_filter(data)     # the console's escape keys (machine/console.py)
        self.uart.feed_input(data)

    def _idle_wait(self) -> bool:
        """The CPU halted with interrupts on and no timer is armed: wait for host input (stdin
        for -serial stdio, or a debugger through its poll hook) until an interrupt is due, a
        timer armed or something requested. False: nothing can ever wake it."""
        while not (self._interrupt_due() or self._has_request() or self.clock.next_deadline() is not None):
            if self._stdin_fd is None and not self._poll_hooks:
                return False
            self._poll_host(0.02 if self._poll_hooks else None)
        return True

    # -------------------------------------------------------------------------------------
    # the run loop
    # -------------------------------------------------------------------------------------
    def _io_pending(self) -> None:
        """A kick left requests on an I/O thread (IoThread.settle), inside a slice: unless the
        slice is already a short one, end it after this instruction, so the run loop switches
        to short slices and polls for completions."""
        if self.cpu.running and not self._short_slice:
            self.cpu.request_stop_after_instruction()

    def _io_in_flight(self) -> bool:
        for io in self.iothreads.values():
            if io.in_flight:
                return True
        return False

    def _poll_io(self) -> None:
        """Complete what the I/O threads finished: used rings, then interrupts (CPU thread).
        The batch's RAM writes (data, status bytes, used rings) drop translated code once,
        merged, at the end, as inside a device callback."""
        ready = [io for io in self.iothreads.values() if io.ready]
        if not ready:
            return
        physmem = self.cpu.physmem
        physmem.callback_depth += 1
        try:
            for io in ready:
                io.poll()
        finally:
            physmem.callback_depth -= 1
            if physmem.flush_pending:
                physmem.flush_now()

    def drain(self) -> None:
        """Wait for every request in flight on an I/O thread and complete it: the machine's
        state is then whole (a stop, a snapshot, close)."""
        for io in self.iothreads.values():
            io.drain()

    def _io_error(self) -> None:
        """A device's rerror/werror=stop policy parked a failed request: pause the machine, as
        QEMU stops the VM (`info status`: paused (io-error))."""
        self.request_stop(IO_ERROR)

    def _resume(self) -> None:
        """The machine runs again: requests parked by an I/O error are retried first."""
        self.paused_reason = None
        for vdev in self._parking_devices:
            if vdev.parked:
                vdev.restart_parked()

    def _finish(self, reason: StopReason) -> int:
        if self.iothreads:
            self.drain()                   # as QEMU's vm_stop: nothing in flight while stopped
        self.stop_reason = reason
        if reason.kind == STOP_INTERRUPT and reason.message == IO_ERROR:
            self.paused_reason = IO_ERROR
        self._flush_console()              # a last partial line comes before the report
        if reason.kind == STOP_FAULT and reason.message:
            sys.stderr.write(reason.message.rstrip("\n") + "\n")
            sys.stderr.flush()
        return reason.exit_status

    def _fatal(self, report: str) -> int:
        return self._finish(StopReason(STOP_FAULT, FATAL_STATUS, message=report))

    def _run_cpu(self, count: int) -> SliceResult:
        start = self.clock.now
        result = self.cpu.run(count)
        for vdev in self._native_devices:      # their state whole again for whatever comes next
            vdev.native_sync()
        self.instructions += result.retired
        self.clock.advance_to(start + result.retired + result.io_ns)
        return result

    def run(self, max_instructions: int | None = None) -> int:
        """Run the guest until it exits, faults, hits a breakpoint, is asked to stop, or has
        used `max_instructions`: instructions retired, and one for each timer event that passes
        while the CPU halts without waking it (so a budget also ends a guest that halts through
        endless timer events). Returns the process exit status; `stop_reason` says why."""
        cpu, clock = self.cpu, self.clock
        budget = max_instructions
        self.stop_reason = None
        self._resume()
        iothreads = bool(self.iothreads)
        while True:
            io_busy = False
            if iothreads:
                # Completions reach the rings and raise their interrupts here, between slices;
                # while requests are in flight slices are short so they are picked up soon.
                for io in self.iothreads.values():
                    if io.in_flight:
                        io.run_stale(STEAL_NS)           # a worker the host has not scheduled
                self._poll_io()
                io_busy = self._io_in_flight()
            if self._poll_hooks or self._stdin_fd is not None:
                self._poll_host()
            reason = self._take_request()
            if reason is None and budget is not None and budget <= 0:
                reason = StopReason(STOP_LIMIT, 0)
            if reason is not None:
                return self._finish(reason)

            count = MAX_SLICE if budget is None else min(MAX_SLICE, budget)
            source = self._interrupt_source() if cpu.interrupts_enabled() else None
            if source is not None:
                if not cpu.interrupt_shadow():
                    status = self._take_interrupt(source)
                    if status is not None:
                        return status
                    continue
                count = 1              # the instruction after STI/MOV SS runs first (e.g. the HLT)
            if self._halted:
                if io_busy:
                    # Waiting for the disk: the I/O thread's completion wakes it. Virtual time
                    # stands still meanwhile, as a request inside a notify takes none either.
                    for io in self.iothreads.values():
                        if io.in_flight:
                            io.wait(IO_WAIT if io.running else STEAL_NS / 1e9)
                            break
                    continue
                # A halted CPU stays halted until an interrupt is delivered: idle time jumps to
                # the next timer event, and timers that raise nothing do not wake it.
                deadline = clock.next_deadline()
                if deadline is None:
                    if self._idle_wait():
                        continue
                    return self._fatal(cpu.fault_report(
                        "the CPU halted with interrupts enabled, but no timer is armed and no input can arrive",
                        back=1))
                clock.advance_to(deadline)
                if budget is not None and not self._interrupt_due():
                    budget -= 1
                continue

            deadline = clock.next_deadline()
            if deadline is not None:
                count = min(count, max(1, deadline - clock.now))
            # An interrupt waiting for IF=1 is taken as soon as STI/POPF/IRET sets it: the CPU
            # watches for that while one waits. When the wait is long (a BIOS polling with
            # IF=0 while the timer's or keyboard's interrupt waits) the watch gives up, for its
            # cost, and short slices bound the delay instead: an interrupt taken up to
            # MASKED_SLICE ns late is what any guest tolerates from a real board.
            waiting = not cpu.interrupts_enabled() and self._interrupt_source() is not None
            if not cpu.watch_interrupt_enable(waiting):
                count = min(count, MASKED_SLICE)
            if io_busy:
                count = min(count, IO_SLICE)
            self._short_slice = count <= IO_SLICE
            result = self._run_cpu(count)
            if budget is not None:
                budget -= result.retired
            if self._exit_status is not None or self._reset_requested:
                # The guest exited or reset during the slice. In the fast mode the rest of that
                # block ran too (stops come at block starts): a fault or HLT there is not the
                # guest's last word, the exit is (taken at the top of the loop).
                continue
            kind = result.kind
            if kind == "halt":
                if not cpu.interrupts_enabled():
                    return self._fatal(cpu.fault_report("the CPU halted with interrupts disabled (HLT with IF=0)", back=1))
                self._halted = True
            elif kind == "breakpoint":
                return self._finish(StopReason(STOP_BREAKPOINT, 0, address=result.address))
            elif kind == "triple_fault":
                status = self._triple_fault(result.report)
                if status is not None:
                    return status
            elif kind not in ("count", "stop"):
                return self._fatal(result.report)

    def step(self) -> StopReason:
        """Execute one instruction (for the debugger); the clock advances by one."""
        self._halted = False
        result = self._run_cpu(1)
        self._flush_console()
        if result.kind in ("fatal", "triple_fault"):
            self.stop_reason = StopReason(STOP_FAULT, FATAL_STATUS, message=result.report)
        else:
            self.stop_reason = StopReason(STOP_STEP, 0, address=self.cpu.linear_pc())
        return self.stop_reason

    # -------------------------------------------------------------------------------------
    # snapshots (savevm.py)
    # -------------------------------------------------------------------------------------
    def save_state(self, *, disks: bool = True) -> "savevm.MachineState":
        """The whole machine's state now, in memory (between runs). With `disks`, every
        writable drive keeps an undo log from now on, so loading it brings the disks back
        too; `state.release()` ends that."""
        return savevm.capture(self, disks=disks)

    def load_state(self, state: "savevm.MachineState") -> None:
        """Become `state`: RAM, CPU, devices, timers, disks. A state this machine cannot take
        raises VMStateError and changes nothing."""
        savevm.check(self, state)
        backup = savevm.capture(self)
        try:
            savevm.apply(self, state)
        except (savevm.VMStateError, OSError) as e:
            savevm.apply(self, backup)
            raise savevm.VMStateError(f"loading the snapshot failed, the machine is unchanged: {e}") from None
        finally:
            backup.release()

    # Named snapshots (QEMU's savevm/loadvm/delvm/info snapshots): SnapshotError in QEMU's words.
    def _store(self) -> SnapshotStore:
        if self._snapshot_store is None:
            self._snapshot_store = SnapshotStore.locate(self)     # raises when no disk can hold one
        return self._snapshot_store

    def savevm(self, name: str):
        return self._store().save(name)

    def loadvm(self, name: str) -> None:
        self._store().load(name)

    def delvm(self, name: str) -> None:
        self._store().delete(name)

    def info_snapshots(self) -> str:
        try:
            return self._store().info_text()
        except SnapshotError as e:
            return f"{e}\n"

    def snapshots(self) -> list:
        """The named snapshots (SnapshotInfo: id, name, size, date, clock, instructions)."""
        try:
            return self._store().infos()
        except SnapshotError:
            return []

    def encode_state(self, state: "savevm.MachineState") -> bytes:
        return savevm.encode(self, state)

    def decode_state(self, data: bytes) -> "savevm.MachineState":
        return savevm.decode(self, data)

    def close(self) -> None:
        for io in self.iothreads.values():     # requests in flight end before their images close
            io.close()
        self.uart.flush()
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
