"""The QEMU-style command line: every supported option lands in the right MachineConfig field, and
every bad input is one line on stderr with exit status 1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from machine import cli
from machine.cli import CliExit, check_kernel, main, parse_args, parse_size, split_suboptions
from machine.config import CharDev, ConfigError, MiB

ROOT = Path(__file__).resolve().parent.parent


def multiboot_elf(path: Path, *, elf: bool = True, offset: int = 64, checksum_ok: bool = True,
                  elf_class: int = 1) -> Path:
    """A file that passes (or deliberately fails) the Multiboot/ELF32 check; it is never run."""
    data = bytearray(offset + 64)
    if elf:
        data[0:7] = b"\x7fELF" + bytes([elf_class, 1, 1])
    flags = 0x3
    checksum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    if not checksum_ok:
        checksum ^= 1
    data[offset:offset + 12] = (0x1BADB002).to_bytes(4, "little") + flags.to_bytes(4, "little") \
        + checksum.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory holding a kernel and two images, so paths can be typed relative."""
    monkeypatch.chdir(tmp_path)
    multiboot_elf(tmp_path / "k.elf")
    (tmp_path / "d.img").write_bytes(bytes(1024 * 1024))
    (tmp_path / "e.img").write_bytes(bytes(4096))
    return tmp_path


# ------------------------------------------------------------------ syntax helpers

def test_suboptions_comma_escape_implied_key_and_flags():
    assert split_suboptions("virtio-blk-pci,drive=d0", "driver") == [
        ("driver", "virtio-blk-pci"), ("drive", "d0")]
    assert split_suboptions("file=a,,b.img,format=raw", "file") == [
        ("file", "a,b.img"), ("format", "raw")]
    assert split_suboptions("a,,b,readonly", "file") == [("file", "a,b"), ("readonly", "on")]
    assert split_suboptions("menu=on,", "order") == [("menu", "on")]


@pytest.mark.parametrize("text,size", [
    ("128", 128 * MiB), ("128M", 128 * MiB), ("128m", 128 * MiB), ("1G", 1024 * MiB),
    ("1.5G", 1536 * MiB), ("4096k", 4 * MiB), ("2097152B", 2 * MiB), ("0x10", 16 * MiB)])
def test_parse_size_qemu_suffixes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12x", "-1", "1.5b", "M", "1 G G"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


# ------------------------------------------------------------------ every option parsed

def test_defaults():
    cfg = parse_args([])
    assert cfg.ram_size == 128 * MiB and cfg.kernel is None and cfg.bios is None
    assert cfg.serial == CharDev("stdio") and cfg.debugcon == CharDev("null")
    assert not cfg.drives and not cfg.devices and not cfg.no_reboot and cfg.gdb is None


@pytest.mark.parametrize("args", [
    ["-machine", "pc"], ["-M", "pc"], ["-machine", "type=pc,accel=tcg"], ["--machine", "pc"],
    ["-machine", "pc-i440fx-7.2"], ["-accel", "tcg"], ["-smp", "1"], ["-smp", "cpus=1,cores=1"],
["-display", "none"], ["-boot", "order=c,strict=off"],
    ["-monitor", "none"]])
def test_accepted_options_change_nothing(args):
    assert parse_args(args) == parse_args([])


@pytest.mark.parametrize("arg,size", [("128", 128 * MiB), ("256M", 256 * MiB),
                                      ("size=1G", 1024 * MiB), ("3001k", 3008 * 1024)])
def test_memory(arg, size):
    assert parse_args(["-m", arg]).ram_size == size


def test_kernel_append_bios(files):
    (files / "bios.bin").write_bytes(bytes(65536))
    cfg = parse_args(["-kernel", "k.elf", "-append", "exit=3 tests=flush", "-bios", "bios.bin"])
    assert cfg.kernel == Path("k.elf") and str(cfg.kernel) == "k.elf"   # as typed
    assert cfg.append == "exit=3 tests=flush" and cfg.bios == Path("bios.bin")


def test_serial_variants(files):
    assert parse_args(["-serial", "stdio"]).serial == CharDev("stdio")
    assert parse_args(["-serial", "none"]).serial == CharDev("null")
    assert parse_args(["-serial", "null"]).serial == CharDev("null")
    assert parse_args(["-serial", "file:out,1.txt"]).serial == CharDev("file", Path("out,1.txt"))
    cfg = parse_args(["-serial", "chardev:c", "-chardev", "file,id=c,path=s.log"])
    assert cfg.serial == CharDev("file", Path("s.log"))


def test_nographic_puts_serial_on_stdio_unless_given(files):
    assert parse_args(["-nographic"]).serial == CharDev("stdio")
    assert parse_args(["-serial", "file:x", "-nographic"]).serial == CharDev("file", Path("x"))


def test_flags():
    cfg = parse_args(["-no-reboot", "-snapshot", "-S", "-s", "-boot", "menu=on"])
    assert cfg.no_reboot and cfg.snapshot and cfg.start_stopped and cfg.gdb == "tcp::1234"
    assert cfg.boot_menu is True
    assert parse_args(["-boot", "menu=off"]).boot_menu is False
    assert parse_args(["-gdb", "tcp:127.0.0.1:4321"]).gdb == "tcp:127.0.0.1:4321"
    assert parse_args(["-monitor", "stdio", "-serial", "none"]).monitor == "stdio"
    cfg = parse_args(["-monitor", "stdio"])      # stdio goes to the monitor, COM1 nowhere
    assert cfg.monitor == "stdio" and cfg.serial == CharDev("null")


def test_debugcon_shorthand_and_device(files):
    assert parse_args(["-debugcon", "file:dbg.log"]).debugcon == CharDev("file", Path("dbg.log"))
    assert parse_args(["-debugcon", "stdio"]).debugcon == CharDev("stdio")
    assert parse_args(["-debugcon", "none"]).debugcon == CharDev("null")
    cfg = parse_args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg",
                      "-chardev", "file,id=dbg,path=dbg.log"])
    assert cfg.debugcon == CharDev("file", Path("dbg.log"))
    assert not cfg.devices
    for backend in ("stdio", "null"):
        cfg = parse_args(["-chardev", f"{backend},id=x", "-device",
                          "isa-debugcon,iobase=0x402,chardev=x"])
        assert cfg.debugcon == CharDev(backend)


def test_log_and_trace(files):
    (files / "events").write_text("# comment\nvirtio_blk_*\n\npci_cfg_write\n")
    cfg = parse_args(["-d", "int,guest_errors", "-d", "in_asm,exec,cpu,unimp,trace:fw_cfg*",
                      "-D", "log.txt", "-trace", "virtio_*", "-trace", "enable=pci_*",
                      "-trace", "events=events"])
    assert cfg.log == ["int", "guest_errors", "in_asm", "exec", "cpu", "unimp"]
    assert sorted(parse_args(["-d", "all"]).log) == sorted(cli.trace.LOG_CATEGORIES)
    assert cfg.logfile == Path("log.txt")
    assert cfg.trace == ["fw_cfg*", "virtio_*", "pci_*", "virtio_blk_*", "pci_cfg_write"]


def test_drive_all_keys(files):
    cfg = parse_args(["-drive", "file=d.img,format=raw,if=virtio,readonly=on,cache=unsafe,"
                                "discard=unmap,id=disk0,snapshot=on"])
    (d,) = cfg.drives
    assert (d.file, d.format, d.interface, d.id) == (Path("d.img"), "raw", "virtio", "disk0")
    assert d.readonly and d.snapshot and d.cache == "unsafe" and d.discard == "unmap"
    (d,) = parse_args(["-drive", "file=d.img,format=raw"]).drives
    assert d.interface == "virtio" and d.cache == "writeback" and d.discard == "ignore"
    assert not d.readonly and not d.snapshot
    for cache in ("writeback", "writethrough", "none", "unsafe"):
        assert parse_args(["-drive", f"file=d.img,cache={cache}"]).drives[0].cache == cache
    for word, mode in (("on", "unmap"), ("off", "ignore"), ("ignore", "ignore")):
        assert parse_args(["-drive", f"file=d.img,discard={word}"]).drives[0].discard == mode


def test_drive_with_comma_in_name(files):
    (files / "a,b.img").write_bytes(bytes(512))
    assert parse_args(["-drive", "file=a,,b.img,format=raw"]).drives[0].file == Path("a,b.img")


def test_virtio_blk_device_on_if_none_drive(files):
    cfg = parse_args(["-drive", "file=d.img,format=raw,if=none,id=d0",
                      "-device", "virtio-blk-pci,drive=d0,serial=SN1,num-queues=2,queue-size=128,"
                      "disable-legacy=on,disable-modern=off,logical_block_size=4096,"
                      "physical_block_size=4096,config-wce=off,discard=on,write-zeroes=on"])
    assert cfg.drives[0].interface == "none" and cfg.drives[0].id == "d0"
    (dev,) = cfg.devices
    assert dev.driver == "virtio-blk-pci"
    assert dev.props == {"drive": "d0", "serial": "SN1", "num-queues": "2", "queue-size": "128",
                         "disable-legacy": "on", "disable-modern": "off",
                         "logical_block_size": "4096", "physical_block_size": "4096",
                         "config-wce": "off", "discard": "on", "write-zeroes": "on"}


def test_device_before_its_drive_and_alias(files):
    cfg = parse_args(["-device", "virtio-blk,drive=d0", "-drive", "if=none,id=d0,file=d.img"])
    assert cfg.devices[0].driver == "virtio-blk-pci" and cfg.devices[0].props == {"drive": "d0"}


def test_isa_debug_exit(files):
    cfg = parse_args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    assert cfg.devices[0].driver == "isa-debug-exit"
    assert cfg.devices[0].props == {"iobase": "0xf4", "iosize": "0x04"}


# ------------------------------------------------------------------ informational options

def test_help_lists_every_option(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.OPTIONS:
        assert f"-{name}" in out
    assert main(["-h"]) == 0


def test_version_and_help_lists(capsys):
    assert main(["-version"]) == 0
    assert cli.VERSION in capsys.readouterr().out
    assert main(["-d", "help"]) == 0
    out = capsys.readouterr().out
    assert all(cat in out for cat in ("int", "guest_errors", "in_asm", "exec", "cpu", "unimp"))
    assert main(["-device", "help"]) == 0
    assert "virtio-blk-pci" in capsys.readouterr().out
    assert main(["-machine", "help"]) == 0
    assert "pc" in capsys.readouterr().out


# ------------------------------------------------------------------ errors: one line, status 1

ERRORS = [
    (["-foo"], "-foo: invalid option"),
    (["--bar", "1"], "--bar: invalid option"),
    (["-hda", "x.img"], "-hda: option not supported by this machine"),
    (["-netdev", "user,id=n"], "-netdev: option not supported by this machine"),
    (["-m"], "-m: requires an argument"),
    (["-m", "12x"], "-m 12x: Parameter 'size' expects"),
    (["-m", "size=1G,slots=2"], "-m size=1G,slots=2: Invalid parameter 'slots'"),
    (["-m", "1"], "-m 1: RAM size must be at least 2 MiB"),
    (["-machine", "q35"], "-machine q35: machine type 'q35' is not supported"),
    (["-M", "microvm"], "-M microvm: machine type 'microvm' is not supported"),
    (["-machine", "pc,accel=kvm"], "accelerator 'kvm' is not supported"),
    (["-machine", "pc,foo=1"], "-machine pc,foo=1: Invalid parameter 'foo'"),
    (["-smp", "2"], "-smp 2: only 1 CPU is supported by this machine"),
    (["-smp", "1,cores=4"], "-smp 1,cores=4: only 1 CPU"),
    (["-enable-kvm"], "-enable-kvm: option not supported by this machine"),
    (["-accel", "kvm"], "-accel kvm: accelerator 'kvm' is not supported"),
    (["-accel", "hvf"], "-accel hvf: accelerator 'hvf' is not supported"),
    (["-accel", "whpx"], "-accel whpx: accelerator 'whpx' is not supported"),
    (["-accel", "xyz"], "-accel xyz: invalid accelerator 'xyz'"),
    (["-cpu", "host"], "-cpu host: CPU model 'host' is not supported"),
    (["-cpu", "qemu64"], "-cpu qemu64: CPU model 'qemu64' is not supported"),
    (["-cpu", "Haswell"], "-cpu Haswell: CPU model 'Haswell' is not supported"),
    (["-kernel", "missing.elf"], "-kernel missing.elf: Could not open 'missing.elf': No such file"),
    (["-kernel", "plain.bin"], "-kernel plain.bin: not a Multiboot kernel"),
    (["-kernel", "badsum.elf"], "-kernel badsum.elf: not a Multiboot kernel"),
    (["-kernel", "mb.bin"], "-kernel mb.bin: the Multiboot kernel is not an ELF32 file"),
    (["-kernel", "mb64.elf"], "-kernel mb64.elf: the Multiboot kernel is not an ELF32 file"),
    (["-kernel", "."], "-kernel .: Could not open '.': Is a directory"),
    (["-bios", "nobios.bin"], "-bios nobios.bin: Could not open 'nobios.bin': No such file"),
    (["-drive", "file=x.img,format=raw"],
     "-drive file=x.img,format=raw: Could not open 'x.img': No such file or directory"),
    (["-drive", "file=d.img,format=qcow2"], "format 'qcow2' is not supported by this machine"),
    (["-drive", "file=d.img,format=qcow9"], "-drive file=d.img,format=qcow9: Unknown driver 'qcow9'"),
    (["-drive", "file=d.img,if=ide"], "if=ide is not supported by this machine"),
    (["-drive", "file=d.img,if=bogus"], "unsupported bus type 'bogus'"),
    (["-drive", "file=d.img,cache=writearound"], "invalid cache option"),
    (["-drive", "file=d.img,discard=maybe"], "Invalid discard option 'maybe'"),
    (["-drive", "file=d.img,readonly=maybe"], "Parameter 'read-only' expects 'on' or 'off'"),
    (["-drive", "file=d.img,bogus=1"], "-drive file=d.img,bogus=1: Invalid parameter 'bogus'"),
    (["-drive", "file=d.img,media=cdrom"], "media=cdrom is not supported"),
    (["-drive", "format=raw"], "-drive format=raw: file= is required"),
    (["-drive", "file=odd.img"], "-drive file=odd.img: image 'odd.img' is 1000 bytes, not a multiple"),
    (["-drive", "file=d.img,id=a", "-drive", "file=e.img,id=a"], "Duplicate ID 'a' for drive"),
    (["-device", "virtio-blk-pci,drive=zz"],
     "-device virtio-blk-pci,drive=zz: Property 'virtio-blk-device.drive' can't find value 'zz'"),
    (["-device", "virtio-blk-pci"], "-device virtio-blk-pci: drive property not set"),
    (["-drive", "file=d.img,id=d0", "-device", "virtio-blk-pci,drive=d0"], "it's in use"),
    (["-drive", "file=d.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
      "-device", "virtio-blk-pci,drive=d0"], "it's in use"),
    (["-device", "nosuch"], "-device nosuch: 'nosuch' is not a valid device model name"),
    (["-device", "e1000,netdev=n"], "'e1000' is not a valid device model name"),
    (["-device", "isa-debug-exit,iobase=zz"], "Parameter 'iobase' expects a number"),
    (["-device", "isa-debug-exit,color=red"], "Invalid parameter 'color'"),
    (["-device", "isa-debugcon,chardev=c", "-chardev", "null,id=c"],
     "only iobase=0x402 is supported by this machine"),
    (["-device", "isa-debugcon,iobase=0x402,chardev=nope"], "chardev 'nope' not found"),
    (["-chardev", "file,id=a"], "-chardev file,id=a: chardev: file: no filename given"),
    (["-chardev", "null"], "-chardev null: Parameter 'id' is missing"),
    (["-chardev", "socket,id=a,port=1"], "'socket' is not a valid char driver name"),
    (["-chardev", "null,id=a", "-chardev", "stdio,id=a"], "Duplicate ID 'a' for chardev"),
    (["-serial", "bogus:1"], "-serial bogus:1: 'bogus:1' is not a valid char driver"),
    (["-serial", "file:nodir/x.log"], "Could not open 'nodir/x.log': No such file or directory"),
    (["-serial", "stdio", "-serial", "null"], "only one serial port (COM1) is supported"),
    (["-serial", "chardev:zz"], "-serial chardev:zz: chardev 'zz' not found"),
    (["-debugcon", "tcp:1"], "-debugcon tcp:1: 'tcp:1' is not a valid char driver"),
    (["-display", "gtk"], "-display gtk: display 'gtk' is not supported"),
    (["-monitor", "vc"], "-monitor vc: monitor 'vc' is not supported"),
    (["-monitor", "stdio", "-serial", "stdio"],
     "-monitor stdio: cannot use stdio by multiple character devices"),
    (["-nographic", "-monitor", "stdio"], "cannot use stdio by multiple character devices"),
    (["-boot", "menu=maybe"], "-boot menu=maybe: Parameter 'boot.menu' expects 'on' or 'off'"),
    (["-boot", "menu=on,foo=1"], "Invalid parameter 'foo'"),
    (["-d", "foo"], "-d foo: unknown log item 'foo'"),
    (["-d", "int,out_asm"], "-d int,out_asm: log item 'out_asm' is not supported by this machine"),
    (["-D", "nodir/log"], "-D nodir/log: Could not open 'nodir/log': No such file"),
    (["-trace", "events=nofile"], "-trace events=nofile: Could not open 'nofile'"),
    (["-trace", "enable=x,file=y"], "Invalid parameter 'file'"),
    (["-gdb", "foo"], "-gdb foo: 'foo' is not a valid gdb address"),
    (["-gdb", "tcp::99999"], "is not a valid gdb address"),
    (["-bios", "k.elf", "-append", "x"], "-append only allowed with -kernel option"),
    (["disk.img"], "disk.img: a disk image must be given with -drive"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_error_is_one_line_and_status_1(files, capsys, args, message):
    (files / "plain.bin").write_bytes(b"\x7fELF" + bytes(8192))
    multiboot_elf(files / "badsum.elf", checksum_ok=False)
    multiboot_elf(files / "mb.bin", elf=False, offset=8188 - 12)
    multiboot_elf(files / "mb64.elf", elf_class=2)
    (files / "odd.img").write_bytes(bytes(1000))
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("machine: ")
    assert message in lines[0]


def test_multiboot_header_past_8k_is_not_found(tmp_path):
    k = multiboot_elf(tmp_path / "late.elf", offset=8192)
    with pytest.raises(ValueError, match="not a Multiboot kernel"):
        check_kernel(str(k))
    check_kernel(str(multiboot_elf(tmp_path / "edge.elf", offset=8192 - 12)))


def test_parse_args_raises_config_error():
    with pytest.raises(ConfigError):
        parse_args(["-smp", "4"])
    with pytest.raises(CliExit):
        parse_args(["-version"])


def test_real_process_exit_path():
    """The process itself (python -m machine) prints one line and exits 1, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "machine", "-foo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "machine: -foo: invalid option\n"
    assert proc.stdout == ""


# ------------------------------------------------------------------ the bundled-guest defaults

def test_selftest_status_mapping():
    assert cli.selftest_status(1) == 0            # guest wrote 0: every test passed
    assert cli.selftest_status(3) == 1            # guest wrote 1
    assert cli.selftest_status((5 << 1) | 1) == 5
    assert cli.selftest_status(0) == 2            # stopped without reporting: a failure
    assert cli.selftest_status(4) == 4


def test_bundled_defaults_fill_only_what_is_missing(files, monkeypatch):
    import machine.toolchain
    monkeypatch.setattr(machine.toolchain, "ensure_built", lambda d, t: files / "k.elf")
    cfg = parse_args(["-append", "tests=flush"])
    assert cli.uses_bundled_guest(cfg)
    run = cli.bundled_defaults(cfg)
    try:
        assert cfg.kernel == files / "k.elf" and cfg.append == "tests=flush" and cfg.no_reboot
        assert [d.driver for d in cfg.devices] == ["isa-debug-exit"] and run.map_status
        (drive,) = cfg.drives
        assert drive.file == run.temp_image and drive.interface == "virtio"
        assert run.temp_image.stat().st_size == 64 * MiB
    finally:
        run.temp_image.unlink()
    cfg = parse_args(["-drive", "file=d.img", "-device", "isa-debug-exit,iobase=0xf4"])
    run = cli.bundled_defaults(cfg)
    assert run.temp_image is None and not run.map_status
    assert [d.file for d in cfg.drives] == [Path("d.img")] and len(cfg.devices) == 1
    assert not cli.uses_bundled_guest(parse_args(["-kernel", "k.elf"]))


# ------------------------------------------------------------------ main() with a stand-in board

class FakeMachine:
    """Records the config main() hands over and returns a chosen status."""
    status = 1
    seen = []
    error: Exception | None = None

    def __init__(self, config):
        if FakeMachine.error is not None:
            raise FakeMachine.error
        self.config = config
        FakeMachine.seen.append(config)

    def run(self):
        assert self.config.drives[0].file.exists()
        return FakeMachine.status


@pytest.fixture
def fake_board(files, monkeypatch):
    import types
    import machine.toolchain
    module = types.ModuleType("machine.pc")
    module.Machine = FakeMachine
    monkeypatch.setitem(sys.modules, "machine.pc", module)
    monkeypatch.setattr(machine.toolchain, "ensure_built", lambda d, t: files / "k.elf")
    FakeMachine.seen, FakeMachine.error = [], None
    return FakeMachine


@pytest.mark.parametrize("status,expected", [(1, 0), (3, 1), (0, 2)])
def test_main_default_run_maps_selftest_status(fake_board, capsys, status, expected):
    fake_board.status = status
    assert main([]) == expected
    (cfg,) = fake_board.seen
    assert not cfg.drives[0].file.exists()        # the temporary image is gone afterwards
    assert cfg.no_reboot and cfg.devices[0].props == {"iobase": "0xf4", "iosize": "0x04"}


def test_main_explicit_debug_exit_returns_qemu_status(fake_board):
    fake_board.status = 1
    assert main(["-kernel", "k.elf", "-drive", "file=d.img",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]) == 1
    fake_board.status = 7
    assert main(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]) == 7   # bundled guest too


def test_main_board_errors_are_one_line(fake_board, capsys):
    fake_board.error = ConfigError("-device virtio-blk-pci: Property 'queue-size' must be a power of 2")
    assert main(["-kernel", "k.elf", "-drive", "file=d.img,format=raw"]) == 1
    assert capsys.readouterr().err == \
        "machine: -device virtio-blk-pci: Property 'queue-size' must be a power of 2\n"
    fake_board.error = FileNotFoundError(2, "No such file or directory", "gone.img")
    assert main(["-kernel", "k.elf", "-drive", "file=d.img,format=raw"]) == 1
    assert capsys.readouterr().err == \
        "machine: Could not open 'gone.img': No such file or directory\n"


def test_machine_properties_for_absent_hardware(files, capsys):
    assert parse_args(["-machine", "pc,usb=off,vmport=off,hpet=off,dump-guest-core=on"]) \
        == parse_args([])
    assert main(["-machine", "pc,usb=on"]) == 1
    assert "usb=on is not supported by this machine" in capsys.readouterr().err
    assert main(["-serial", "mon:stdio"]) == 1
    assert "the monitor multiplexed on a serial port" in capsys.readouterr().err


def test_write_permission_checked_after_snapshot(files, monkeypatch):
    writable = {"d.img": False}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: writable.get(str(p), real_access(p, mode))
                        if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(ConfigError, match=r"^-drive file=d.img: Could not open 'd.img': "
                                          r"Permission denied$"):
        parse_args(["-drive", "file=d.img"])
    assert parse_args(["-drive", "file=d.img", "-snapshot"]).snapshot
    assert parse_args(["-drive", "file=d.img,readonly=on"]).drives[0].readonly


# ------------------------------------------------------------------ arbitrary input never crashes

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_options = st.sampled_from(sorted(f"-{name}" for name in cli.OPTIONS) + ["-foo", "--drive"])
_values = st.one_of(
    st.sampled_from(["pc", "q35", "1", "2", "128M", "1.5G", "9" * 30 + "E", "9" * 400 + ".5E",
                     "file=d.img", "file=a\0b", "a\0b", "id=", ",,", ",", "=", "stdio", "file:",
                     "file:a\nb", "chardev:", "tcp::0", "help", "virtio-blk-pci,drive=",
                     "isa-debugcon,iobase=0x402,chardev=c", "events=", "file,id=c,path=x\0",
                     "file=d.img,if=none,id=c", "virtio-blk-pci,drive=c", "k.elf", "."]),
    st.text(max_size=12))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_options, _values), max_size=4), tail=st.booleans())
def test_any_argv_gives_a_config_or_a_one_line_error(files, pairs, tail):
    argv = [word for pair in pairs for word in pair]
    if tail and argv:
        argv.pop()            # an option missing its value
    try:
        cfg = parse_args(argv)
    except ConfigError as err:
        assert str(err) and cli.one_line(str(err)).isprintable()
    except CliExit:
        pass
    else:
        assert cfg.ram_size >= 2 * MiB


@pytest.mark.parametrize("args", [["-drive", "file=a\0b"], ["-kernel", "a\0b"], ["-bios", "a\0"],
                                  ["-trace", "events=a\0"], ["-serial", "file:a\0"],
                                  ["-m", "9" * 400 + ".5E"]])
def test_nul_and_overflow_are_config_errors(args):
    with pytest.raises(ConfigError):
        parse_args(args)


def test_host_path_the_os_refuses_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^-D 9+: Could not open '9+': File name too long$"):
        parse_args(["-D", "9" * 5000])


def test_trace_help_lists_every_device_event(capsys):
    assert cli.main(["-trace", "help"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    for name in ("virtio_set_status", "virtio_blk_req_complete", "pci_cfg_write", "pic_set_irq"):
        assert name in names
