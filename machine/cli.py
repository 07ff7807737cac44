"""The command line: QEMU's option syntax, for the subset this machine supports, parsed into a
`MachineConfig`; then `main()` builds the board and runs it.

QEMU's syntax, so users' habits and scripts carry over: single-dash long options (a double dash
works too), `-opt value`, comma-separated `key=value` suboptions where `,,` is a literal comma,
and an implied first key (`-device virtio-blk-pci,drive=d0` means `driver=virtio-blk-pci`).

Every mistake in host input is a `ConfigError` whose message names the offending option as typed
(`-drive file=x.img: Could not open 'x.img': No such file or directory`); `main()` prints it as one
line prefixed by the program name and exits with status 1, as QEMU does.

With no -kernel and no -bios, the machine boots the bundled virtio-blk self-test guest (see
`bundled_defaults`).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from machine import kernel_image, trace
from machine.console import EscapeFilter, Terminal, UserQuit
from machine.config import (CharDev, ConfigError, DeviceConfig, DriveConfig, MachineConfig, MiB,
                            split_commas)
from machine.block.blkdebug import RulesError, load_rules
from machine.iothread import PROPERTIES as IOTHREAD_PROPERTIES

PROG = "machine"
VERSION = "0.1.0"

BUNDLED_IMAGE_SIZE = 64 * MiB
MIN_RAM = 2 * MiB                # below this the PC RAM layout does not fit
MAX_RAM = 1024 * 1024 * MiB      # 1 TiB: a typo guard, far above anything a test needs
RAM_ALIGN = 8192                 # QEMU rounds -m up to 8 KiB
# Third-party modules the machine needs (pyproject.toml's dependencies): a checkout run without
# installing gets one line naming what to install, not a traceback.
REQUIRED_MODULES = ("unicorn", "capstone")
# -d items that cost a Python callback per block or instruction (warned about at start).
SLOW_LOG_ITEMS = {"in_asm": "translated block", "exec": "executed block",
                  "cpu": "block's registers"}


class CliExit(Exception):
    """Not an error: an informational option (-h, -version, -d help, ...) asks to print `text`
    and exit with `status`."""

    def __init__(self, text: str, status: int = 0):
        super().__init__(text)
        self.text = text
        self.status = status


# --------------------------------------------------------------------------- value parsing

_SIZE_RE = re.compile(r"^\s*(0x[0-9a-f]+|\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpe]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
               "e": 1 << 60}


def parse_size(text: str, default_unit: int = MiB) -> int:
    """QEMU's size syntax: a number with an optional suffix B, K, M, G, T, P or E (binary
    multiples, any case); a bare number counts `default_unit`s (MiB for -m, as in QEMU).
    Raises ValueError."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    number, suffix = m.group(1), m.group(2).lower()
    unit = _SIZE_UNITS[suffix] if suffix else default_unit
    if number.lower().startswith("0x"):
        value = int(number, 16) * unit
    elif "." in number:
        if unit == 1:
            raise ValueError(text)       # a fraction of a byte
        try:
            value = int(float(number) * unit)
        except OverflowError:
            raise ValueError(text) from None
    else:
        value = int(number) * unit
    if value >= 1 << 64:
        raise ValueError(text)
    return value


def split_suboptions(text: str, implied: str | None = None) -> list[tuple[str, str]]:
    """Split QEMU's `a=1,b=2` syntax into (key, value) pairs, in order.

    `,,` is a literal comma. A first item without `=` is the value of the `implied` key (when the
    option has one); any other item without `=` is a flag meaning `key=on`, as in QEMU."""
    items = split_commas(text)

    pairs: list[tuple[str, str]] = []
    for n, item in enumerate(items):
        key, eq, value = item.partition("=")
        if eq:
            pairs.append((key, value))
        elif n == 0 and implied is not None:
            pairs.append((implied, item))
        elif item:
            pairs.append((item, "on"))
        # An empty item (a trailing comma) is ignored, as QEMU does.
    return pairs


_BOOL_WORDS = {"on": True, "yes": True, "true": True, "y": True,
               "off": False, "no": False, "false": False, "n": False}


def _parse_bool(name: str, value: str) -> bool:
    try:
        return _BOOL_WORDS[value]
    except KeyError:
        raise _OptError(f"Parameter '{name}' expects 'on' or 'off'") from None


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise _OptError(f"Parameter '{name}' expects a number") from None


class _OptError(Exception):
    """A problem with the current option's value; the parser prefixes the option as typed."""


# --------------------------------------------------------------------------- host file checks

def _describe_oserror(path: str | os.PathLike, err: OSError) -> str:
    return f"Could not open '{os.fspath(path)}': {err.strerror or err}"


def _check_readable_file(path: str, block_device_ok: bool = False) -> os.stat_result:
    """The file exists, is a regular file (or, for a disk image, a block device) and can be
    opened for reading. Opened with O_NONBLOCK: opening a FIFO for reading would otherwise
    wait for a writer forever (QEMU 7.2 does hang there). A FIFO, socket or character device
    (/dev/null, a tty) is refused: none of them is a file with a size to load or a disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise _OptError(_describe_oserror(path, err)) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise _OptError(f"Could not open '{path}': Is a directory")
    if not (stat.S_ISREG(st.st_mode) or (block_device_ok and stat.S_ISBLK(st.st_mode))):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a character device" if stat.S_ISCHR(st.st_mode) else "not a regular file")
        wanted = "a regular file or a block device" if block_device_ok else "a regular file"
        raise _OptError(f"Could not open '{path}': {kind}, not {wanted}")
    return st


def _check_output_file(path: str) -> None:
    """An output file (-serial file:, -D, -chardev file) can be created or truncated later.
    Checked without creating it, so that parsing has no side effects."""
    if not path:
        raise _OptError("no filename given")
    p = Path(path)
    if p.is_dir():
        raise _OptError(f"Could not open '{path}': Is a directory")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise _OptError(f"Could not open '{path}': Permission denied")
        return
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise _OptError(f"Could not open '{path}': No such file or directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _OptError(f"Could not open '{path}': Permission denied")


def rtc_base(base: str, now: float | None = None) -> float | None:
    """-rtc base=: the RTC's date at power-on in seconds since the epoch, as the RTC shows it
    (utc: the host's time, None here so the board reads it at power-on; localtime: the host's
    local time; a date "2006-06-17T16:01:21" or "2006-06-17", taken as the RTC's own time).
    A fixed date makes a guest that reads the RTC repeat exactly: after power-on the RTC
    follows virtual time, whatever `clock=` says."""
    if base == "utc":
        return None
    if base == "localtime":
        now = time.time() if now is None else now
        return now + time.localtime(now).tm_gmtoff
    import calendar                     # only here: it pulls in locale, a start-up cost
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(base, fmt)))
        except ValueError:
            continue
    raise _OptError(f"invalid datetime format '{base}' "
                    "(valid formats: '2006-06-17T16:01:21' or '2006-06-17')")


def check_kernel(path: str) -> None:
    """The firmware boots Multiboot v1 ELF32 kernels and Linux bzImages (see kernel_image).
    Raises ValueError with the reason when the file is neither."""
    kernel_image.probe(path)


# --------------------------------------------------------------------------- the option table

@dataclass(frozen=True)
class Option:
    name: str                     # without the leading dash
    arg: str | None               # the argument's name in --help, None for a flag
    help: str
    handler: str                  # the _Parser method that applies it


OPTIONS: dict[str, Option] = {}


def _opt(names: str, arg: str | None, help_text: str, handler: str) -> None:
    for name in names.split("|"):
        OPTIONS[name] = Option(name, arg, help_text, handler)


_opt("h|help", None, "print this help and exit", "opt_help")
_opt("version", None, "print the version and exit", "opt_version")
_opt("machine|M", "[type=]pc[,accel=tcg]", "the machine type: only 'pc' (i440FX + PIIX3)", "opt_machine")
_opt("accel", "tcg", "the accelerator: only 'tcg' (the CPU is emulated by Unicorn)", "opt_accel")
_opt("icount", "[shift=]0|off",
     "virtual time: shift=0 (default) counts every instruction as 1 ns, deterministic; 'off' "
     "is the fast mode: about 10x faster, time estimated per translated block", "opt_icount")
_opt("cpu", "MODEL", "refused: the CPU model is fixed (a family 6 CPU with SSE4.2, no AVX)",
     "opt_cpu")
_opt("smp", "1", "the number of CPUs: only 1", "opt_smp")
_opt("m", "[size=]SIZE", "RAM size; a bare number is MiB, suffixes K M G T (default 128M)", "opt_m")
_opt("bios", "FILE", "firmware image (default: the bundled firmware)", "opt_bios")
_opt("kernel", "FILE", "Linux bzImage or Multiboot v1 ELF32 kernel to boot (default: the bundled "
     "self-test guest)", "opt_kernel")
_opt("append", "CMDLINE", "the kernel command line (a Multiboot kernel sees 'FILE CMDLINE')",
     "opt_append")
_opt("initrd", "FILE", "initial ram disk for a Linux kernel; for a Multiboot kernel its modules, "
     "'file args,file args' (',,' is a comma in a name)", "opt_initrd")
_opt("drive", "file=IMG[,format=raw][,if=virtio|none][,id=ID][,readonly=on|off]"
     "[,cache=writeback|writethrough|none|directsync|unsafe][,discard=unmap|ignore][,snapshot=on|off]"
     "[,werror=report|ignore|stop|enospc][,rerror=report|ignore|stop]",
     "a raw disk image (file=blkdebug:RULES:IMG injects errors); if=virtio adds a virtio-blk-pci for it", "opt_drive")
_opt("device", "DRIVER[,prop=value...]",
     "add a device: virtio-blk-pci,drive=ID[,...], isa-debug-exit[,iobase=0xf4,iosize=0x04], "
     "isa-debugcon,iobase=0x402,chardev=ID ('-device help' lists them)", "opt_device")
_opt("object", "iothread,id=ID[,poll-max-ns=N,poll-grow=N,poll-shrink=N,aio-max-batch=N]",
     "an I/O thread: a device with iothread=ID runs its requests there, overlapped with the "
     "guest (not deterministic)", "opt_object")
_opt("chardev", "file,id=ID,path=FILE | stdio,id=ID | null,id=ID",
     "a character backend for -device isa-debugcon or -serial chardev:ID", "opt_chardev")
_opt("serial", "stdio|file:PATH|chardev:ID|null|none", "where COM1 goes (default stdio)", "opt_serial")
_opt("debugcon", "stdio|file:PATH|chardev:ID|null|none",
     "where the debug console at port 0x402 goes", "opt_debugcon")
_opt("display", "none", "the display: only 'none' (there is no graphics card)", "opt_display")
_opt("nographic", None, "no display, COM1 on stdio", "opt_nographic")
_opt("monitor", "stdio|none", "the monitor", "opt_monitor")
_opt("no-reboot", None, "exit instead of rebooting when the guest resets", "opt_no_reboot")
_opt("snapshot", None, "write every drive to a throw-away overlay, never to the image", "opt_snapshot")
_opt("loadvm", "NAME", "start from snapshot NAME (savevm NAME in the monitor made it)", "opt_loadvm")
_opt("boot", "[menu=on|off][,splash-time=MS][,reboot-timeout=MS]",
     "firmware boot options, through fw_cfg (order=, splash= ... accepted, ignored)",
     "opt_boot")
_opt("d", "ITEM[,ITEM...]", "log items: " + ",".join(trace.LOG_CATEGORIES) + " ('-d help')", "opt_d")
_opt("D", "FILE", "write the -d log and trace output to FILE (default stderr)", "opt_D")
_opt("trace", "[enable=]PATTERN | events=FILE | help",
     "enable trace events matching a glob pattern ('-trace help' lists them)", "opt_trace")
_opt("gdb", "tcp:[HOST]:PORT", "wait for a gdb connection on HOST:PORT", "opt_gdb")
_opt("s", None, "shorthand for -gdb tcp::1234", "opt_s")
_opt("S", None, "do not start the CPU at start-up (continue from gdb or the monitor)", "opt_S")
_opt("rtc", "[base=utc|localtime|DATE][,clock=host|rt|vm][,driftfix=none|slew]",
     "the RTC's date at power-on (DATE: 2006-06-17T16:01:21 or 2006-06-17); it then follows "
     "virtual time", "opt_rtc")

# QEMU options a user may well type that this machine does not implement: refused by name, so
# the user learns it is a limitation rather than a typo.
UNSUPPORTED = frozenset("""
    enable-kvm no-kvm xen-domid hda hdb hdc hdd fda fdb cdrom mtdblock sd pflash blockdev
    netdev nic net usb usbdevice vga full-screen g sdl vnc spice curses k audiodev soundhw
    dtb fw_cfg option-rom numa global name uuid pidfile daemonize
    loadvm incoming qmp qmp-pretty mon parallel virtfs fsdev mem-path mem-prealloc overcommit
    watchdog-action action semihosting semihosting-config plugin L sandbox runas chroot msg
    preconfig no-shutdown no-hpet no-acpi acpitable smbios singlestep nodefaults
    no-user-config readconfig writeconfig add-fd set iscsi tpmdev chardev-help portrait rotate
    alt-grab ctrl-grab no-quit no-frame show-cursor win2k-hack boot-menu device-help
    machine-help echr bt seed trace-unassigned accel-help kernel-irqchip
""".split())

_ACCEL_REFUSED = {"kvm", "hvf", "whpx", "xen", "nvmm", "hax", "qtest"}
_QEMU_FORMATS = {"qcow2", "qcow", "vmdk", "vdi", "vhdx", "vpc", "qed", "luks", "dmg", "parallels",
                 "bochs", "cloop", "vvfat", "file", "host_device", "nbd"}
_CACHE_MODES = {"writeback", "writethrough", "none", "directsync", "unsafe"}
_DISCARD = {"unmap": "unmap", "on": "unmap", "ignore": "ignore", "off": "ignore"}
DEVICES = {
    "virtio-blk-pci": "virtio block device on PCI (drive=ID; serial, num-queues, queue-size, ...)",
    "isa-debug-exit": "write V to the port and the machine exits with status (V << 1) | 1",
    "isa-debugcon": "debug console: bytes written to port 0x402 go to a chardev",
}
_DEVICE_ALIASES = {"virtio-blk": "virtio-blk-pci"}
# `-device NAME,help`: each device's properties as (name, type, default, meaning), in QEMU's
# listing format. tests/test_cli_help.py checks this table against what the devices accept.
DEVICE_PROPERTIES: dict[str, list[tuple[str, str, str, str]]] = {
    "virtio-blk-pci": [
        ("drive", "str", "", "the id= of a -drive with if=none (required)"),
        ("serial", "str", "", "the disk's serial (GET_ID), at most 20 bytes"),
        ("num-queues", "uint16", "1", "number of request queues (VIRTIO_BLK_F_MQ above 1)"),
        ("queue-size", "uint16", "256", "entries per queue, a power of 2"),
        ("logical_block_size", "size", "512", "the sector size the guest is told"),
        ("physical_block_size", "size", "512", "physical block size (topology)"),
        ("min_io_size", "size", "0", "minimum I/O size (topology)"),
        ("opt_io_size", "size", "0", "optimal I/O size (topology)"),
        ("config-wce", "bool", "on", "offer VIRTIO_BLK_F_CONFIG_WCE (writeback switch)"),
        ("discard", "bool", "on", "offer VIRTIO_BLK_F_DISCARD"),
        ("write-zeroes", "bool", "on", "offer VIRTIO_BLK_F_WRITE_ZEROES"),
        ("max-discard-sectors", "uint32", "4194303", "the largest DISCARD accepted"),
        ("max-write-zeroes-sectors", "uint32", "4194303", "the largest WRITE_ZEROES accepted"),
        ("seg-max-adjust", "bool", "on", "seg_max follows the queue size"),
        ("cyls", "uint32", "(from the size)", "geometry: cylinders"),
        ("heads", "uint32", "16", "geometry: heads"),
        ("secs", "uint32", "63", "geometry: sectors per track"),
        ("disable-legacy", "OnOffAuto", "auto", "on: modern-only device 1af4:1042"),
        ("disable-modern", "bool", "off", "on: legacy-only device"),
        ("ioeventfd", "bool", "on", "accepted; where requests run is set by iothread"),
        ("iothread", "str", "", "run requests on this -object iothread (overlapped, not deterministic)"),
        ("bootindex", "int32", "-1", "accepted; the firmware boots the -kernel"),
        ("addr", "str", "", "accepted; the board places the device"),
    ],
    "isa-debug-exit": [
        ("iobase", "uint32", "1281", "first port (0x501); the bundled guest uses 0xf4"),
        ("iosize", "uint32", "2", "number of ports"),
    ],
    "isa-debugcon": [
        ("iobase", "uint32", "233", "the port; only 0x402, where the firmware logs, is supported"),
        ("chardev", "str", "", "the -chardev id= that receives the bytes"),
    ],
}


def device_help(driver: str) -> str:
    """QEMU's `-device NAME,help` listing: one `  name=<type> - meaning (default: x)` line."""
    lines = [f"{driver} options:"]
    for name, kind, default, meaning in sorted(DEVICE_PROPERTIES[driver]):
        head = f"  {name}=<{kind}>"
        tail = f" (default: {default})" if default else ""
        lines.append(f"{head:<24} - {meaning}{tail}")
    return "\n".join(lines)
# -machine properties naming hardware this PC does not have (accepted only as =off), and
# host-side tuning that does not change what the guest sees (accepted, ignored).
_MACHINE_ABSENT = frozenset({"usb", "vmport", "smm", "hpet", "acpi", "graphics", "sata"})
_MACHINE_HOST_ONLY = frozenset({"dump-guest-core", "mem-merge"})
# QEMU -d items about its own translator or host side, which have no meaning here.
_QEMU_LOG_ITEMS = frozenset({"out_asm", "op", "op_opt", "op_ind", "op_plugin", "pcall", "mmu",
                             "page", "nochain", "plugin", "strace", "tid", "fpu", "vpu",
                             "cpu_reset", "invalid_mem"})
_BOOT_IGNORED = {"order", "once", "splash", "strict"}


def usage() -> str:
    """The --help text: every supported option, generated from the table."""
    lines = [f"usage: {PROG} [options]",
             "",
             "A PC (i440FX, 16550A COM1, virtio-blk-pci) in Python; options use QEMU's syntax.",
             "With no -kernel and no -bios it boots the bundled virtio-blk self-test guest on a",
             "fresh 64 MiB image (or on the -drive given, which the self-test writes to) and",
             "exits 0 when every test passes, 1 or more when one fails.",
             ""]
    seen: set[str] = set()
    for opt in OPTIONS.values():
        if opt.handler in seen:
            continue
        seen.add(opt.handler)
        names = ", ".join(f"-{o.name}" for o in OPTIONS.values() if o.handler == opt.handler)
        head = f"{names} {opt.arg}" if opt.arg else names
        lines.append(f"  {head}")
        lines.append(f"        {opt.help}")
    lines += ["",
              "Not supported (refused with a message): other machine types, -smp > 1, -enable-kvm,",
              "other accelerators and CPU models, other disk formats, other devices."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the parser

@dataclass
class _DeviceRef:
    """A -device kept with the option text that created it, for errors found at the end."""
    where: str
    config: DeviceConfig


@dataclass
class _Parser:
    config: MachineConfig = field(default_factory=MachineConfig)
    chardevs: dict[str, CharDev] = field(default_factory=dict)
    devices: list[_DeviceRef] = field(default_factory=list)
    device_ids: set[str] = field(default_factory=set)
    drive_ids: dict[str, DriveConfig] = field(default_factory=dict)
    drive_count: int = 0
    claimed_drives: set[str] = field(default_factory=set)
    drive_where: list[str] = field(default_factory=list)     # the -drive text of each drive
    # -serial/-debugcon chardev:ID and isa-debugcon chardev=ID resolve once every -chardev is known.
    pending_chardevs: list[tuple[str, str, Callable[[CharDev], None]]] = field(default_factory=list)
    serial_given: bool = False
    nographic: bool = False
    monitor_where: str = ""

    # ---- driving

    def parse(self, argv: list[str]) -> MachineConfig:
        for word in argv:
            # A real command line cannot carry one (C strings); a Python caller's list can, and
            # the OS calls would refuse it with ValueError rather than OSError.
            if "\0" in word:
                raise ConfigError(f"{one_line(word)}: an argument contains a NUL character")
        i = 0
        while i < len(argv):
            typed = argv[i]
            i += 1
            if not typed.startswith("-") or typed == "-":
                # QEMU treats a bare word as the disk image (-hda); we do not.
                raise ConfigError(f"{typed}: a disk image must be given with "
                                  "-drive file=IMAGE,format=raw,if=virtio")
            name = typed[2:] if typed.startswith("--") else typed[1:]
            opt = OPTIONS.get(name)
            if opt is None:
                if name in UNSUPPORTED:
                    raise ConfigError(f"{typed}: option not supported by this machine")
                raise ConfigError(f"{typed}: invalid option")
            if opt.arg is None:
                where = typed
                args: tuple[str, ...] = ()
            else:
                if i >= len(argv):
                    raise ConfigError(f"{typed}: requires an argument")
                where = f"{typed} {argv[i]}"
                args = (argv[i],)
                i += 1
            try:
                getattr(self, opt.handler)(*args)
            except _OptError as err:
                raise ConfigError(f"{where}: {err}") from None
            except OSError as err:         # a host path the OS refuses (too long, a loop, ...)
                described = (_describe_oserror(err.filename, err) if err.filename is not None
                             else err.strerror or str(err))
                raise ConfigError(f"{where}: {described}") from None
        self.finish()
        return self.config

    def finish(self) -> None:
        for where, ident, apply in self.pending_chardevs:
            dev = self.chardevs.get(ident)
            if dev is None:
                raise ConfigError(f"{where}: chardev '{ident}' not found")
            apply(dev)
        cfg = self.config
        for where, drive in zip(self.drive_where, cfg.drives):
            # Checked here, not at the -drive, because -snapshot may come after it.
            writes = not (drive.readonly or drive.snapshot or cfg.snapshot)
            if writes and not os.access(drive.file, os.W_OK):
                raise ConfigError(f"{where}: Could not open '{drive.file}': Permission denied")
        if self.nographic and not self.serial_given:
            cfg.serial = CharDev("stdio")
        self.check_trace_names()
        for ref in self.devices:
            try:
                self.finish_device(ref.config)
            except _OptError as err:
                raise ConfigError(f"{ref.where}: {err}") from None
        if cfg.monitor == "stdio" and not self.serial_given and not self.nographic:
            # As QEMU with -display none: COM1's default backend (a display console) is then
            # nowhere, and stdio belongs to the monitor.
            cfg.serial = CharDev("null")
        if cfg.monitor == "stdio" and cfg.serial.kind == "stdio":
            raise ConfigError(f"{self.monitor_where}: cannot use stdio by multiple character "
                              "devices (COM1 is on stdio: use -serial none or a file)")
        if cfg.append and cfg.kernel is None and cfg.bios is not None:
            raise ConfigError("-append only allowed with -kernel option")
        if cfg.initrd is not None and cfg.kernel is None:
            raise ConfigError("-initrd only allowed with -kernel option")
        if cfg.initrd is not None:
            self.check_initrd(cfg.initrd, kernel_image.probe(cfg.kernel) is None)

    @staticmethod
    def check_initrd(initrd: str, multiboot: bool) -> None:
        """A Linux initrd is one file; a Multiboot kernel's -initrd lists its modules, and QEMU
        names the one it cannot open."""
        if not multiboot:
            try:
                _check_readable_file(initrd)
            except _OptError as err:
                raise ConfigError(f"-initrd {initrd}: {err}") from None
            return
        for path, _ in kernel_image.multiboot_module_specs(initrd):
            try:
                _check_readable_file(path)
            except _OptError as err:
                raise ConfigError(f"-initrd: {err}") from None

    def check_trace_names(self) -> None:
        """An exact event name (no wildcard) that no event has is almost always a typo: warn,
        as QEMU does. Patterns with wildcards may legitimately match nothing."""
        exact = [p for p in self.config.trace if not any(c in p for c in "*?[")]
        if not exact:
            return
        known = trace.declarations()        # every package's trace-events table
        for name in exact:
            if name not in known:
                self.config.warnings.append(f"-trace {name}: warning: trace event '{name}' "
                                            "does not exist (see -trace help)")

    def finish_device(self, dev: DeviceConfig) -> None:
        if dev.driver != "virtio-blk-pci":
            return
        ident = dev.props.get("drive")
        if not ident:
            raise _OptError("drive property not set")
        drive = self.drive_ids.get(ident)
        if drive is None:
            raise _OptError(f"Property 'virtio-blk-device.drive' can't find value '{ident}'")
        if drive.interface != "none" or ident in self.claimed_drives:
            raise _OptError(f"Property 'virtio-blk-device.drive' can't take value '{ident}', "
                            "it's in use")
        self.claimed_drives.add(ident)

    @staticmethod
    def keys(pairs: list[tuple[str, str]], allowed: set[str] | frozenset[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in pairs:
            if key not in allowed:
                raise _OptError(f"Invalid parameter '{key}'")
            out[key] = value          # the last one wins, as in QEMU
        return out

    # ---- informational options

    def opt_help(self) -> None:
        raise CliExit(usage())

    def opt_version(self) -> None:
        raise CliExit(f"{PROG} version {VERSION} (an x86 PC emulator with QEMU's option syntax)")

    # ---- machine, accelerator, CPU

    def opt_machine(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "type"),
                         {"type", "accel"} | _MACHINE_ABSENT | _MACHINE_HOST_ONLY)
        for key in _MACHINE_ABSENT & opts.keys():
            if _parse_bool(key, opts[key]):
                raise _OptError(f"{key}={opts[key]} is not supported by this machine "
                                f"(it has no {key})")
        for key in _MACHINE_HOST_ONLY & opts.keys():
            _parse_bool(key, opts[key])
        mtype = opts.get("type", "pc")
        if mtype == "help":
            raise CliExit("Supported machines are:\npc                   Standard PC (i440FX + PIIX, 1996)")
        if mtype != "pc" and not mtype.startswith("pc-i440fx-"):
            raise _OptError(f"machine type '{mtype}' is not supported by this machine (only 'pc')")
        if "accel" in opts:
            self.check_accel(opts["accel"])

    def opt_accel(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "accel"), {"accel", "thread"})
        self.check_accel(opts.get("accel", ""))
        if opts.get("thread", "single") not in ("single", "multi"):
            raise _OptError(f"Invalid value '{opts['thread']}' for thread")

    @staticmethod
    def check_accel(name: str) -> None:
        for accel in name.split(":"):      # QEMU's legacy "kvm:tcg" fallback list
            if accel == "tcg":
                continue
            if accel in _ACCEL_REFUSED:
                raise _OptError(f"accelerator '{accel}' is not supported by this machine "
                                "(only tcg: the CPU is emulated)")
            raise _OptError(f"invalid accelerator '{accel}'")

    def opt_icount(self, arg: str) -> None:
        # QEMU runs TCG without instruction counting unless -icount is given; here counting is
        # the default (tests and gdb rely on exact, repeatable time) and `off` opts out.
        shift = self.keys(split_suboptions(arg, "shift"), {"shift"}).get("shift", "")
        if shift == "off":
            self.config.icount = False
        elif shift.isdigit() and int(shift) == 0:
            self.config.icount = True
        else:
            raise _OptError(f"shift={shift}: only shift=0 (1 ns per instruction, the "
                            "default) or 'off' (the fast mode) is supported")

    def opt_rtc(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "base"), {"base", "clock", "driftfix"})
        if opts.get("clock", "host") not in ("host", "rt", "vm"):
            raise _OptError(f"invalid option value '{opts['clock']}'")
        if opts.get("driftfix", "none") not in ("none", "slew"):
            raise _OptError(f"invalid option value '{opts['driftfix']}'")
        if "base" in opts:
            self.config.rtc_base = rtc_base(opts["base"])

    def opt_cpu(self, arg: str) -> None:
        # Our CPUID is the board's own fixed model, which matches none of QEMU's: accepting a
        # name (even qemu64, QEMU's default) would promise the guest features it does not get.
        raise _OptError(f"CPU model '{arg}' is not supported by this machine "
                        "(its CPU model is fixed: leave -cpu out)")

    def opt_smp(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "cpus"),
                         {"cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"})
        for key, value in opts.items():
            if _parse_int(key, value) != 1:
                raise _OptError("only 1 CPU is supported by this machine")

    # ---- memory, firmware, kernel

    def opt_m(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "size"), {"size"})
        text = opts.get("size", "")
        try:
            size = parse_size(text)
        except ValueError:
            raise _OptError("Parameter 'size' expects a non-negative number below 2^64; "
                            "optional suffix K, M, G, T, P or E") from None
        size = (size + RAM_ALIGN - 1) // RAM_ALIGN * RAM_ALIGN
        if size < MIN_RAM:
            raise _OptError("RAM size must be at least 2 MiB")
        if size > MAX_RAM:
            raise _OptError("ram size too large")
        self.config.ram_size = size

    def opt_bios(self, arg: str) -> None:
        _check_readable_file(arg)
        self.config.bios = Path(arg)

    def opt_kernel(self, arg: str) -> None:
        _check_readable_file(arg)
        try:
            check_kernel(arg)
        except OSError as err:
            raise _OptError(_describe_oserror(arg, err)) from None
        except ValueError as err:
            raise _OptError(str(err)) from None
        self.config.kernel = Path(arg)      # as typed: the guest's command line starts with it

    def opt_append(self, arg: str) -> None:
        self.config.append = arg

    def opt_initrd(self, arg: str) -> None:
        # A Linux initrd or a Multiboot module list ("file args,file args"): which one depends on
        # -kernel, which may come later; finish() checks the files.
        self.config.initrd = arg

    # ---- block

    def opt_drive(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "file"),
                         {"file", "format", "if", "id", "readonly", "read-only", "cache",
                          "discard", "snapshot", "media", "werror", "rerror"})
        drive = DriveConfig()
        fmt = opts.get("format", "raw")
        if "format" not in opts:
            # QEMU probes the format and warns; raw is the only one here, so no probe is needed,
            # but the habit of naming it is kept (and the command line stays QEMU's).
            self.config.warnings.append(f"-drive {arg}: warning: no format= given: the image "
                                        "is used as raw; add format=raw to say so")
        if fmt != "raw":
            if fmt in _QEMU_FORMATS:
                raise _OptError(f"format '{fmt}' is not supported by this machine (only raw)")
            raise _OptError(f"Unknown driver '{fmt}'")
        interface = opts.get("if", "virtio")
        if interface not in ("virtio", "none"):
            if interface in ("ide", "scsi", "floppy", "pflash", "mtd", "sd", "xen"):
                raise _OptError(f"if={interface} is not supported by this machine "
                                "(use if=virtio or if=none with -device virtio-blk-pci)")
            raise _OptError(f"unsupported bus type '{interface}'")
        drive.interface = interface
        if opts.get("media", "disk") != "disk":
            raise _OptError(f"media={opts['media']} is not supported by this machine (only disk)")
        for key in ("readonly", "read-only"):
            if key in opts:
                drive.readonly = _parse_bool("read-only", opts[key])
        cache = opts.get("cache", "writeback")
        if cache not in _CACHE_MODES:
            raise _OptError("invalid cache option")
        drive.cache = cache
        discard = opts.get("discard", "ignore")
        if discard not in _DISCARD:
            raise _OptError(f"Invalid discard option '{discard}'")
        drive.discard = _DISCARD[discard]
        if "snapshot" in opts:
            drive.snapshot = _parse_bool("snapshot", opts["snapshot"])
        werror = opts.get("werror", "enospc")
        if werror not in ("report", "ignore", "stop", "enospc"):
            raise _OptError(f"'{werror}' invalid write error action")
        rerror = opts.get("rerror", "report")
        if rerror not in ("report", "ignore", "stop"):
            raise _OptError(f"'{rerror}' invalid read error action")
        drive.werror, drive.rerror = werror, rerror

        ident = opts.get("id")
        if ident is not None:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", ident):
                raise _OptError(f"Parameter 'id' expects an identifier")
            if ident in self.drive_ids:
                raise _OptError(f"Duplicate ID '{ident}' for drive")
        else:
            ident = f"{interface}{self.drive_count}"    # QEMU's generated name, e.g. virtio0
        drive.id = ident
        self.drive_count += 1

        path = opts.get("file")
        if path and path.startswith("blkdebug:"):
            path = self.blkdebug_image(drive, path)
        if not path:
            raise _OptError("file= is required (an empty drive is not supported)")
        st = _check_readable_file(path, block_device_ok=True)
        if stat.S_ISREG(st.st_mode) and st.st_size % 512:
            raise _OptError(f"image '{path}' is {st.st_size} bytes, not a multiple of "
                            "the 512-byte sector size")
        drive.file = Path(path)
        self.config.drives.append(drive)
        self.drive_where.append(f"-drive {arg}")
        self.drive_ids[ident] = drive

    @staticmethod
    def blkdebug_image(drive: DriveConfig, spec: str) -> str:
        """file=blkdebug:RULES:IMAGE (QEMU's syntax): the rules are read now, so a bad rules file
        is a start-up error; returns the image path."""
        rules, sep, image = spec[len("blkdebug:"):].partition(":")
        if not sep:
            raise _OptError("blkdebug requires both config file and image path")
        if rules:
            try:
                load_rules(rules)
            except RulesError as e:
                raise _OptError(str(e)) from None
            drive.blkdebug = Path(rules)
        return image

    def opt_snapshot(self) -> None:
        self.config.snapshot = True

    def opt_loadvm(self, arg: str) -> None:
        self.config.loadvm = arg

    # ---- devices and character backends

    def opt_object(self, arg: str) -> None:
        pairs = split_suboptions(arg, "qom-type")
        qom_type = pairs[0][1] if pairs and pairs[0][0] == "qom-type" else ""
        if qom_type != "iothread":
            raise _OptError(f"Parameter 'qom-type' does not accept value '{qom_type}'"
                            if qom_type else "Parameter 'qom-type' is missing")
        opts = self.keys(pairs[1:], {"id", *IOTHREAD_PROPERTIES})
        ident = opts.pop("id", None)
        if not ident:
            raise _OptError("Parameter 'id' is missing")
        for key, value in opts.items():
            try:
                n = int(value, 0)
            except ValueError:
                n = -1
            if not 0 <= n < 1 << 63:
                raise _OptError(f"Parameter '{key}' expects an int64 value")
        if ident in self.config.iothreads:
            raise _OptError(f"Duplicate ID '{ident}' for object")
        self.config.iothreads[ident] = opts

    def opt_device(self, arg: str) -> None:
        pairs = split_suboptions(arg, "driver")
        driver = pairs[0][1] if pairs and pairs[0][0] == "driver" else ""
        if driver == "help":
            raise CliExit("\n".join(f"name \"{n}\", {d}" for n, d in DEVICES.items()))
        driver = _DEVICE_ALIASES.get(driver, driver)
        if not driver:
            raise _OptError("Parameter 'driver' is missing")
        if driver not in DEVICES:
            raise _OptError(f"'{driver}' is not a valid device model name")
        if any(key in ("help", "?") for key, _ in pairs[1:]):
            raise CliExit(device_help(driver))
        props = dict(pairs[1:])
        ident = props.get("id")
        if ident is not None:
            if ident in self.device_ids:
                raise _OptError(f"Duplicate ID '{ident}' for device")
            self.device_ids.add(ident)
        if driver in ("isa-debugcon", "isa-debug-exit"):
            props.pop("id", None)          # the board has one of each: the id names nothing
        if driver == "isa-debugcon":
            self.debugcon_device(arg, props)
            return
        if driver == "isa-debug-exit":
            self.keys(list(props.items()), {"iobase", "iosize"})
            for key, value in props.items():
                _parse_int(key, value)
        dev = DeviceConfig(driver, props)
        self.config.devices.append(dev)
        self.devices.append(_DeviceRef(f"-device {arg}", dev))

    def debugcon_device(self, arg: str, props: dict[str, str]) -> None:
        # The board has one debug console, at port 0x402 where the firmware writes. QEMU's
        # default iobase is 0xe9, so an isa-debugcon without iobase=0x402 would behave
        # differently here than under QEMU: refuse it rather than silently move it.
        self.keys(list(props.items()), {"iobase", "chardev"})
        if _parse_int("iobase", props.get("iobase", "0xe9")) != 0x402:
            raise _OptError("only iobase=0x402 is supported by this machine "
                            "(QEMU's default is 0xe9)")
        ident = props.get("chardev")
        if not ident:
            raise _OptError("Property 'isa-debugcon.chardev' is required")
        self.pending_chardevs.append((f"-device {arg}", ident, self.set_debugcon))

    def set_debugcon(self, dev: CharDev) -> None:
        self.config.debugcon = dev

    def opt_chardev(self, arg: str) -> None:
        pairs = split_suboptions(arg, "backend")
        backend = pairs[0][1] if pairs and pairs[0][0] == "backend" else ""
        if backend == "help":
            raise CliExit("Available chardev backend types:\n  file\n  null\n  stdio")
        allowed = {"backend", "id", "path"} if backend == "file" else {"backend", "id"}
        if backend not in ("file", "null", "stdio"):
            raise _OptError(f"'{backend}' is not a valid char driver name")
        opts = self.keys(pairs, allowed)
        ident = opts.get("id")
        if not ident:
            raise _OptError("Parameter 'id' is missing")
        if ident in self.chardevs:
            raise _OptError(f"Duplicate ID '{ident}' for chardev")
        if backend == "file":
            path = opts.get("path", "")
            if not path:
                raise _OptError("chardev: file: no filename given")
            _check_output_file(path)
            self.chardevs[ident] = CharDev("file", Path(path))
        else:
            self.chardevs[ident] = CharDev(backend)

    def chardev_spec(self, where: str, spec: str, apply: Callable[[CharDev], None]) -> None:
        """QEMU's legacy chardev syntax used by -serial and -debugcon."""
        if spec in ("stdio", "null", "none"):
            apply(CharDev("stdio" if spec == "stdio" else "null"))
        elif spec.startswith("file:"):
            path = spec[5:]
            _check_output_file(path)
            apply(CharDev("file", Path(path)))
        elif spec.startswith("chardev:"):
            self.pending_chardevs.append((where, spec[8:], apply))
        elif spec.startswith("mon:"):
            raise _OptError(f"'{spec}' (the monitor multiplexed on a serial port) is not "
                            "supported by this machine: use -serial stdio and -monitor none")
        else:
            raise _OptError(f"'{spec}' is not a valid char driver "
                            "(supported: stdio, file:PATH, chardev:ID, null, none)")

    def opt_serial(self, arg: str) -> None:
        if self.serial_given:
            raise _OptError("only one serial port (COM1) is supported by this machine")
        self.serial_given = True
        self.chardev_spec(f"-serial {arg}", arg, self.set_serial)

    def set_serial(self, dev: CharDev) -> None:
        self.config.serial = dev

    def opt_debugcon(self, arg: str) -> None:
        self.chardev_spec(f"-debugcon {arg}", arg, self.set_debugcon)

    def opt_display(self, arg: str) -> None:
        if split_suboptions(arg, "type")[0][1] != "none":
            raise _OptError(f"display '{arg}' is not supported by this machine "
                            "(only none: use the serial console)")

    def opt_nographic(self) -> None:
        self.nographic = True
        self.config.nographic = True

    def opt_monitor(self, arg: str) -> None:
        if arg == "stdio":
            self.config.monitor = "stdio"
        elif arg in ("none", "null"):
            self.config.monitor = None
        else:
            raise _OptError(f"monitor '{arg}' is not supported by this machine "
                            "(only stdio or none)")
        self.monitor_where = f"-monitor {arg}"

    def opt_no_reboot(self) -> None:
        self.config.no_reboot = True

    def opt_boot(self, arg: str) -> None:
        opts = self.keys(split_suboptions(arg, "order"), {"menu", "splash-time", "reboot-timeout"} | _BOOT_IGNORED)
        if "menu" in opts:
            self.config.boot_menu = _parse_bool("boot.menu", opts["menu"])
        # Both reach the firmware as fw_cfg files, clamped to 16 bits as QEMU does.
        if "splash-time" in opts:
            wait = _parse_int("boot.splash-time", opts["splash-time"])
            if wait < 0:
                raise _OptError("boot: splash-time must be a number of milliseconds")
            self.config.boot_menu_wait = min(wait, 0xFFFF)
        if "reboot-timeout" in opts:
            wait = _parse_int("boot.reboot-timeout", opts["reboot-timeout"])
            if wait < -1:
                raise _OptError("boot: reboot-timeout must be -1 or a number of milliseconds")
            self.config.boot_fail_wait = min(wait, 0xFFFF)

    # ---- logging, tracing, debugging

    def opt_d(self, arg: str) -> None:
        items = [item for item in arg.split(",") if item]
        if "help" in items:
            raise CliExit("Log items (comma separated):\n" + "\n".join(
                f"{name:<15} {text}" for name, text in trace.LOG_CATEGORIES.items()))
        for item in items:
            if item.startswith("trace:"):          # QEMU's -d trace:PATTERN
                self.config.trace.append(item[6:])
                continue
            names = list(trace.LOG_CATEGORIES) if item == "all" else [item]
            for name in names:
                if name in _QEMU_LOG_ITEMS:
                    raise _OptError(f"log item '{name}' is not supported by this machine "
                                    "(see -d help)")
                if name not in trace.LOG_CATEGORIES:
                    raise _OptError(f"unknown log item '{name}' (see -d help)")
                if name not in self.config.log:
                    self.config.log.append(name)
        slow = [name for name in self.config.log if name in SLOW_LOG_ITEMS]
        if slow:
            self.config.warnings = [w for w in self.config.warnings if not w.startswith("-d ")]
            self.config.warnings.append(
                f"-d {arg}: warning: {','.join(slow)} log every "
                f"{' and '.join(SLOW_LOG_ITEMS[n] for n in slow)}: the guest runs orders of "
                "magnitude slower and the log grows fast")

    def opt_D(self, arg: str) -> None:
        _check_output_file(arg)
        self.config.logfile = Path(arg)

    def opt_trace(self, arg: str) -> None:
        if arg in ("help", "list"):
            raise CliExit(trace.help_text() + "\n")        # from the trace-events tables
        opts = self.keys(split_suboptions(arg, "enable"), {"enable", "events"})
        if "enable" in opts:
            if not opts["enable"]:
                raise _OptError("Parameter 'enable' expects a pattern")
            self.config.trace.append(opts["enable"])
        if "events" in opts:
            path = opts["events"]
            _check_readable_file(path)
            try:
                text = Path(path).read_text(errors="replace")
            except OSError as err:
                raise _OptError(_describe_oserror(path, err)) from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    self.config.trace.append(line)

    def opt_gdb(self, arg: str) -> None:
        if arg == "none":
            self.config.gdb = None
            return
        m = re.fullmatch(r"tcp:([^:,]*):(\d+)", arg)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise _OptError(f"'{arg}' is not a valid gdb address (use tcp:[HOST]:PORT)")
        self.config.gdb = arg

    def opt_s(self) -> None:
        self.config.gdb = "tcp::1234"

    def opt_S(self) -> None:
        self.config.start_stopped = True


def parse_args(argv: list[str]) -> MachineConfig:
    """Parse QEMU-style options (without the program name) into a MachineConfig.
    Raises ConfigError (bad input: the message is the line to show) or CliExit (-h, -version,
    '-d help', ...)."""
    return _Parser().parse(list(argv))


# --------------------------------------------------------------------------- the bundled guest

@dataclass
class BundledRun:
    """What `bundled_defaults` added, so main() can undo and interpret it."""
    temp_image: Path | None = None
    map_status: bool = False          # we added the isa-debug-exit: map the self-test status


def uses_bundled_guest(config: MachineConfig) -> bool:
    """With neither -kernel nor -bios, the machine boots the bundled self-test guest."""
    return config.kernel is None and config.bios is None


def bundled_defaults(config: MachineConfig, run: BundledRun | None = None) -> BundledRun:
    """Fill in the bundled guest's defaults for whatever the user did not give: the guest
    kernel, an isa-debug-exit at 0xf4, a fresh 64 MiB raw image, -no-reboot. (-serial stdio and
    -display none are the defaults anyway.) Builds the guest with the C toolchain if needed.
    Each step is noted in `run` as it is taken: a signal half-way leaves main() knowing what to
    undo (the temporary image) and how to report."""
    from machine.toolchain import ensure_built

    run = BundledRun() if run is None else run
    config.kernel = ensure_built("guest", "out/guest.elf")
    config.no_reboot = True
    if not any(dev.driver == "isa-debug-exit" for dev in config.devices):
        config.devices.append(DeviceConfig("isa-debug-exit", {"iobase": "0xf4", "iosize": "0x04"}))
        run.map_status = True
    if not config.drives:
        fd, name = tempfile.mkstemp(prefix="machine-", suffix=".img")
        run.temp_image = Path(name)
        try:
            os.ftruncate(fd, BUNDLED_IMAGE_SIZE)
        finally:
            os.close(fd)
        config.drives.append(DriveConfig(file=run.temp_image, format="raw", interface="virtio",
                                         id="virtio0"))
    return run


def selftest_status(status: int) -> int:
    """Map the machine's exit status for the default run so that a passing self-test gives 0.

    The guest reports through isa-debug-exit: it writes V (0 = every test passed, else a failure
    code) and the machine exits with (V << 1) | 1, as QEMU does. So an odd status gives V back;
    an even one means the guest stopped without reporting (e.g. a reset under -no-reboot,
    status 0), which is a failure: 2, or the status itself when it is already non-zero."""
    if status & 1:
        return (status >> 1) & 0xFF
    return status if status else 2


# --------------------------------------------------------------------------- main

def one_line(message: str) -> str:
    """The message with control characters (a newline typed inside an argument, say) escaped,
    so an error is always exactly one line."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def _write_tty(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def threading_is_main() -> bool:
    """Signal handlers can only be set from the main thread (main() may run in another one,
    e.g. from a test or an application embedding the command line)."""
    import threading
    return threading.current_thread() is threading.main_thread()


def _error(message: str) -> int:
    print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    return 1


class PausedForGood(Exception):
    """The machine paused (an I/O error policy) with nothing that could continue it: exit 1
    with the reason, whatever the bundled self-test's status mapping would say."""


class Terminated(BaseException):
    """SIGTERM, SIGHUP or SIGINT arrived. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it and every `finally` (the temporary image, the
    terminal mode, the log file) runs. Not KeyboardInterrupt itself for SIGINT: one that passes
    through code run by exec() (dataclasses build their methods so, at import) makes CPython
    3.11 end the process by SIGINT at exit even once caught, instead of with our status."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# The signal main() has not caught yet. Python drops an exception a signal handler raises
# while a finalizer or a ctypes callback (a Unicorn hook) runs: reported through
# sys.unraisablehook, or not at all (a weakref finalizer run by the garbage collector). So from
# the signal on, SIGALRM raises it again every RERAISE_S until main() has caught it.
_pending_signal: int | None = None
RERAISE_S = 0.05


def _raise_terminated(signum, _frame):
    global _pending_signal
    _pending_signal = signum
    signal.setitimer(signal.ITIMER_REAL, RERAISE_S, RERAISE_S)
    _raise_pending()


def _raise_pending(*_args):
    signum = _pending_signal
    if signum is None:
        return
    raise Terminated(signum)


def _unraisable(hook_args, previous=sys.unraisablehook):
    if _pending_signal is not None and isinstance(hook_args.exc_value, (Terminated, KeyboardInterrupt)):
        return                             # raised again by SIGALRM
    previous(hook_args)


def _signal_caught() -> None:
    global _pending_signal
    _pending_signal = None
    signal.setitimer(signal.ITIMER_REAL, 0)


def _no_ram(config: MachineConfig) -> str:
    """The host cannot give the guest its RAM (only the RAM is big enough to fail): say which
    option asked for it, with QEMU's words."""
    return (f"-m {config.ram_size // MiB}M: cannot set up guest memory 'pc.ram': "
            "Cannot allocate memory")


def attach_block_log(machine) -> None:
    """-d in_asm/exec/cpu: a costly per-block hook, installed only when asked, so debug/ (and
    capstone) stays off start-up otherwise."""
    if trace.any_category_enabled("in_asm", "exec", "cpu"):
        from machine.debug import cpulog
        cpulog.attach(machine)


def run_machine(config: MachineConfig, stdin_filter=None) -> int:
    """Build the board from `config` and run it (under the debugger when -gdb, -s, -S or
    -monitor stdio ask for one); returns the machine's exit status. `stdin_filter` sees
    the bytes typed on stdin before the guest does (the console's escape keys)."""
    try:
        from machine.pc import Machine
    except ModuleNotFoundError as err:
        if err.name != "machine.pc":
            raise
        raise ConfigError("the board (machine.pc) is not available in this build") from None
    logfile = None
    if config.logfile is not None:
        # -D: the -d log and trace output go to the file instead of stderr, as in QEMU.
        logfile = open(config.logfile, "w", buffering=1)
        trace.set_output(logfile)
    machine = None
    try:
        try:
            machine = Machine(config)
        except MemoryError:
            raise ConfigError(_no_ram(config)) from None
        except OSError as err:
            if err.errno != errno.ENOMEM:
                raise
            raise ConfigError(_no_ram(config)) from None
        attach_block_log(machine)
        if config.loadvm is not None:
            from machine.savevm_store import SnapshotError
            try:
                machine.loadvm(config.loadvm)
            except SnapshotError as e:
                raise ConfigError(str(e)) from None
        if stdin_filter is not None:
            machine.stdin_filter = stdin_filter
        if config.gdb or config.start_stopped or config.monitor == "stdio":
            from machine.debug.session import attach_debugger
            debugger = attach_debugger(machine, config)
            if debugger is not None:
                status = debugger.run()
                if debugger.quit_requested:
                    raise UserQuit(status)
                return status
        status = machine.run()
        if getattr(machine, "paused_reason", None) is not None:
            # QEMU would sit paused forever; with no monitor or debugger nothing could continue.
            raise PausedForGood("the guest paused on an I/O error (rerror/werror=stop) and there "
                                "is no monitor to continue it (use -monitor stdio, or gdb's "
                                "`monitor cont`)")
        return status
    finally:
        if isinstance(sys.exc_info()[1], Terminated):
            # On its way to main(), not dropped: no SIGALRM in the middle of the clean-up.
            signal.setitimer(signal.ITIMER_REAL, 0)
        if machine is not None and hasattr(machine, "close"):
            machine.close()
        if logfile is not None:
            trace.set_output(sys.stderr)
            logfile.close()


def main(argv: list[str] | None = None) -> int:
    """Parse, build the board, run it; returns the exit status. Host-input errors print one
    line on stderr and give status 1, never a traceback."""
    from machine.toolchain import ToolchainError

    argv = sys.argv[1:] if argv is None else list(argv)
    bundled = BundledRun()
    old_handlers = {}
    if threading_is_main():
        old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _raise_pending)
        old_unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            old_handlers[signum] = signal.signal(signum, _raise_terminated)
    try:
        try:
            config = parse_args(argv)
        except CliExit as done:
            print(done.text)
            return done.status
        for warning in config.warnings:
            print(f"{PROG}: {one_line(warning)}", file=sys.stderr)
        if uses_bundled_guest(config):
            bundled_defaults(config, bundled)
        # The console is the terminal's only while COM1 owns stdin (-monitor stdio reads lines).
        console = config.serial.kind == "stdio" and config.monitor != "stdio"
        with Terminal(pass_ctrl_c=config.nographic) if console else nullcontext() as term:
            escapes = EscapeFilter(_write_tty) if term is not None and term.active else None
            try:
                status = run_machine(config, escapes)
            except Exception:
                if _pending_signal is not None:
                    # Whatever failed, the signal did it (it hit a start-up self-test's probe,
                    # say): the user ended the run, and hears so.
                    raise Terminated(_pending_signal) from None
                raise
        return selftest_status(status) if bundled.map_status else status
    except ToolchainError as err:
        status = _error(str(err))
        if err.details:                    # the compiler's own words, as make printed them
            print(err.details, file=sys.stderr)
        return status
    except (ConfigError, PausedForGood) as err:
        return _error(str(err))
    except ModuleNotFoundError as err:
        if err.name not in REQUIRED_MODULES:
            raise
        return _error(f"the Python package '{err.name}' is not installed: run "
                      "'python3 -m pip install .' in the source tree (or pip install the "
                      "package) first")
    except OSError as err:
        if err.filename is not None:
            return _error(_describe_oserror(err.filename, err))
        return _error(err.strerror or str(err))
    except UserQuit as done:
        return done.status
    except (KeyboardInterrupt, Terminated) as err:
        if old_handlers:
            _signal_caught()
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        print(f"{PROG}: terminating on signal {int(signum)}", file=sys.stderr)
        # QEMU exits 0 when a signal ends it; the bundled self-test must not read as passed.
        return 128 + signum if bundled.map_status else 0
    finally:
        if old_handlers:
            _signal_caught()                # no SIGALRM may outlive our handler
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        if old_handlers:
            sys.unraisablehook = old_unraisable
        if bundled.temp_image is not None:
            try:
                bundled.temp_image.unlink()
            except OSError:
                pass
