"""What the command line (or a Python user) asks the board to build. Plain data, no behaviour:
`cli.py` fills it from QEMU-style options, `pc.Machine` builds a PC from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


class ConfigError(Exception):
    """Bad host input (an option, a property, an image file). The message is the one line the
    user sees, QEMU style; the command line exits with status 1."""


@dataclass
class CharDev:
    """Where a character device's output goes (QEMU's -serial / -chardev backends we support).
    kind: 'stdio' | 'file' | 'null' (QEMU's 'none' and 'null' both discard)."""
    kind: str = "null"
    path: Path | None = None


@dataclass
class DriveConfig:
    """One -drive. `interface` is 'virtio' (the board adds a virtio-blk-pci for it) or 'none'
    (a -device names it by `id`)."""
    file: Path | None = None
    format: str = "raw"
    interface: str = "virtio"
    id: str | None = None
    readonly: bool = False
    cache: str = "writeback"          # writeback | writethrough | none | directsync | unsafe
    discard: str = "ignore"           # ignore | unmap
    snapshot: bool = False
    blkdebug: Path | None = None      # file=blkdebug:RULES:IMAGE: fault-injection rules
    rerror: str = "report"            # what a host read error does: report | ignore | stop
    werror: str = "enospc"            # ... a write/flush/discard error: report | ignore | stop | enospc


@dataclass
class DeviceConfig:
    """One -device DRIVER,prop=value,...; properties stay strings until the device parses them
    (so the device reports its own bad values, with QEMU's property names)."""
    driver: str
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class MachineConfig:
    ram_size: int = 128 * MiB
    bios: Path | None = None            # None: the bundled firmware (firmware/out/bios.bin)
    kernel: Path | None = None          # Linux bzImage or Multiboot v1 ELF32, loaded by the firmware
    append: str = ""                    # -append; a Multiboot guest sees "<kernel path> <append>"
    initrd: str | Path | None = None    # -initrd: a Linux initrd, or a Multiboot kernel's modules
                                       # (QEMU's "file args,file args")
    serial: CharDev = field(default_factory=lambda: CharDev("stdio"))
    debugcon: CharDev = field(default_factory=CharDev)   # port 0x402 output (firmware progress)
    drives: list[DriveConfig] = field(default_factory=list)
    devices: list[DeviceConfig] = field(default_factory=list)
    iothreads: dict[str, dict[str, str]] = field(default_factory=dict)  # -object iothread: id -> properties
    no_reboot: bool = False             # guest reset -> exit instead of rebooting
    snapshot: bool = False              # -snapshot: every drive writes to a throw-away overlay
    loadvm: str | None = None           # -loadvm NAME: start from that named snapshot
    boot_menu: bool | None = None       # -boot menu=on|off (through fw_cfg)
    boot_menu_wait: int | None = None   # -boot splash-time=MS: how long the boot menu prompt waits
    boot_fail_wait: int = -1            # -boot reboot-timeout=MS after a failed boot; -1: never reboot
    nographic: bool = False             # -nographic: firmware puts its console on COM1 (fw_cfg)
    trace: list[str] = field(default_factory=list)      # -trace patterns
    log: list[str] = field(default_factory=list)        # -d categories
    logfile: Path | None = None         # -D
    gdb: str | None = None              # -gdb tcp:HOST:PORT (-s is tcp::1234)
    start_stopped: bool = False         # -S
    monitor: str | None = None          # -monitor stdio
    warnings: list[str] = field(default_factory=list)   # one line each, printed at start
    rtc_base: float | None = None       # -rtc base=: the RTC's date at power-on (epoch
                                        # seconds); None: the host's time then
    icount: bool = True                 # exact mode (-icount shift=0); False: fast mode (-icount off)


def split_commas(text: str) -> list[str]:
    """QEMU's comma-separated option text: items split at ",", where ",," is a comma inside an
    item. "a,,b,c" gives ["a,b", "c"]; "" gives [""]."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return items
