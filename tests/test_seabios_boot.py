"""Real, unmodified SeaBIOS (the distribution's bios.bin) boots boot sectors from our virtio-blk
disk with the same command line as qemu-system-x86_64, in the device's three modes; and the
same boots on QEMU when it is installed.

The boot sectors (tests/mbr, GNU as) print over COM1 directly, use int 13h (CHS and the LBA
extensions), int 10h, int 16h and int 1Ah through SeaBIOS, check the sectors they read against
the pattern written here, and exit through isa-debug-exit (status 33 = all passed)."""

import shutil
from pathlib import Path

import pytest

from machine.testing import Boot
from machine.toolchain import ensure_built

BIOS = Path("/usr/share/seabios/bios.bin")
QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(not BIOS.exists(), reason=f"SeaBIOS is not installed ({BIOS} absent)")

PASSED = 33                          # isa-debug-exit status for EXIT_OK (0x10)
IMAGE_SIZE = 8 << 20                 # QEMU gives it PCHS 16/16/63, as our virtio-blk does
EXIT_DEVICE = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
GUARD = 300                          # seconds: only against a hung run; a boot takes a few

MODES = {
    "transitional": lambda img: ["-drive", f"file={img},format=raw,if=virtio"],
    "modern": lambda img: ["-drive", f"file={img},format=raw,if=none,id=d0",
                           "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"],
    "legacy": lambda img: ["-drive", f"file={img},format=raw,if=none,id=d0",
                           "-device", "virtio-blk-pci,drive=d0,disable-modern=on"],
}
SEABIOS_SAYS = {"transitional": "using modern (1.0) virtio mode",
                "modern": "using modern (1.0) virtio mode",
                "legacy": "using legacy (0.9.5) virtio mode"}

MBR_LINES = ["MBR: hello over COM1", "MBR: CHS read ok", "MBR: LBA read ok",
             "MBR: timer ticks ok", "MBR: all passed"]


def sector(name: str) -> bytes:
    return ensure_built("tests/mbr", f"out/{name}.bin").read_bytes()


def pattern(lba: int) -> bytes:
    """What the boot sectors expect in sector `lba`: byte i is (7 * lba + i) & 0xff."""
    return bytes((7 * lba + i) & 0xFF for i in range(512))


def make_image(path: Path, boot_sector: bytes, extra: dict[int, bytes] | None = None) -> Path:
    data = bytearray(boot_sector)
    for lba in range(1, 128):
        data += pattern(lba)
    for lba, content in (extra or {}).items():
        data[lba * 512:lba * 512 + len(content)] = content
    return Boot.image(path, IMAGE_SIZE, bytes(data))


def run_ours(boot, *args, timeout=GUARD):
    return boot("-bios", BIOS, *args, timeout=timeout)


def run_qemu(tmp_path, *args, timeout=GUARD):
    qemu = Boot(program=[QEMU], cwd=tmp_path)
    try:
        return qemu("-bios", BIOS, *args, timeout=timeout)
    finally:
        qemu.close()


@pytest.fixture
def boot():
    b = Boot()
    yield b
    b.close()


@pytest.fixture
def mbr_image(tmp_path):
    return make_image(tmp_path / "boot.img", sector("mbr"))


@pytest.mark.parametrize("mode", MODES)
def test_mbr_uses_bios_services_through_our_virtio_blk(boot, tmp_path, mbr_image, mode):
    log = tmp_path / "seabios.log"
    run = run_ours(boot, *MODES[mode](mbr_image), "-nographic", *EXIT_DEVICE,
                   "-chardev", f"file,id=seabios,path={log}",
                   "-device", "isa-debugcon,iobase=0x402,chardev=seabios")
    assert run.exit_status == PASSED, run
    for line in MBR_LINES:
        assert line + "\n" in run.serial, run
    text = log.read_text(errors="replace")
    assert SEABIOS_SAYS[mode] in text
    assert "PS2 keyboard initialized" in text and "Timeout" not in text
    assert "Booting from Hard Disk..." in text and "Booting from 0000:7c00" in text
    # -nographic puts SeaBIOS's console on COM1, as QEMU does (fw_cfg etc/sercon-port)
    assert "sercon: using ioport 0x3f8" in text
    assert run.serial.startswith("\x1bc") and "SeaBIOS (version" in run.serial


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("mode", MODES)
def test_same_mbr_on_qemu(tmp_path, mbr_image, mode):
    run = run_qemu(tmp_path, *MODES[mode](mbr_image), "-nographic", *EXIT_DEVICE)
    assert run.exit_status == PASSED, run
    for line in MBR_LINES:
        assert line + "\n" in run.serial, run


def reloc_image(tmp_path) -> Path:
    return make_image(tmp_path / "reloc.img", sector("reloc"), {1: sector("stage2")})


RELOC_LINES = ["RELOC: running at 0x0600, loading stage 2 over 0x7c00",
               "STAGE2: fresh code at 0x7c00 runs"]


@pytest.mark.parametrize("mode", ["transitional", "legacy"])
def test_relocating_mbr_runs_the_stage_loaded_over_its_old_code(boot, tmp_path, mode):
    run = run_ours(boot, *MODES[mode](reloc_image(tmp_path)), "-nographic", *EXIT_DEVICE)
    assert run.exit_status == PASSED, run
    for line in RELOC_LINES:
        assert line + "\n" in run.serial, run


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_relocating_mbr_on_qemu(tmp_path):
    run = run_qemu(tmp_path, *MODES["transitional"](reloc_image(tmp_path)), "-nographic", *EXIT_DEVICE)
    assert run.exit_status == PASSED, run
    for line in RELOC_LINES:
        assert line + "\n" in run.serial, run


def test_boot_menu_on_waits_in_virtual_time(boot, tmp_path, mbr_image):
    # A one-minute prompt (QEMU's splash-time, fw_cfg etc/boot-menu-wait) passes in HLTs that
    # jump to the next timer tick: the boot finishes long before the test's timeout.
    log = tmp_path / "seabios.log"
    run = run_ours(boot, *MODES["transitional"](mbr_image), *EXIT_DEVICE,
                   "-boot", "menu=on,splash-time=60000", "-serial", "stdio", "-display", "none",
                   "-debugcon", f"file:{log}", timeout=GUARD)
    assert run.exit_status == PASSED, run
    text = log.read_text(errors="replace")
    assert "Press ESC for boot menu." in text
    assert text.index("Press ESC for boot menu.") < text.index("Booting from Hard Disk...")
    assert "MBR: all passed\n" in run.serial


def test_boot_menu_off_skips_the_prompt(boot, tmp_path, mbr_image):
    log = tmp_path / "seabios.log"
    run = run_ours(boot, *MODES["transitional"](mbr_image), *EXIT_DEVICE, "-boot", "menu=off",
                   "-debugcon", f"file:{log}")
    assert run.exit_status == PASSED, run
    text = log.read_text(errors="replace")
    assert "Press ESC" not in text and "Booting from 0000:7c00" in text
    # without -nographic SeaBIOS keeps its console off COM1: only the boot sector talks there
    assert run.serial.startswith("MBR: hello over COM1\n"), run


def test_no_bootable_disk_is_reported_like_qemu(boot, tmp_path):
    # A disk without the 0xAA55 signature: SeaBIOS says so and, with QEMU's default
    # reboot-timeout of -1 (etc/boot-fail-wait), waits forever; we stop it with a budget.
    img = Boot.image(tmp_path / "blank.img", IMAGE_SIZE)
    log = tmp_path / "seabios.log"
    handle = boot.start("-bios", BIOS, *MODES["transitional"](img), "-nographic",
                        "-debugcon", f"file:{log}")
    try:
        handle.wait_for("No bootable device.", timeout=GUARD)
    finally:
        handle.kill()
    text = log.read_text(errors="replace")
    # CMOS boot order as QEMU's default (order=cad): the disk, then the (absent) floppy
    assert text.index("Boot failed: not a bootable disk") < text.index("Booting from Floppy...")
    assert "Retrying in" not in text



def test_boot_options_reach_fw_cfg_as_qemu_gives_them(tmp_path):
    import struct

    from machine.cli import parse_args
    from machine.devices import fw_cfg as fw
    from machine.pc import Machine

    def items(*args):
        m = Machine(parse_args(["-bios", str(BIOS), "-serial", "null", *args]))
        dev = m.devices["fw_cfg"]
        out = {name: dev.item(dev.file_key(name)) if dev.file_key(name) else None
               for name in ("etc/boot-menu-wait", "etc/boot-fail-wait", "etc/sercon-port")}
        out["menu"] = dev.item(fw.BOOT_MENU)
        out["nographic"] = dev.item(fw.NOGRAPHIC)
        m.close()
        return out

    plain = items()
    assert plain == {"etc/boot-menu-wait": None, "etc/boot-fail-wait": struct.pack("<i", -1),
                     "etc/sercon-port": None, "menu": bytes(2), "nographic": bytes(2)}
    tuned = items("-boot", "menu=on,splash-time=5000,reboot-timeout=70000", "-nographic")
    assert tuned["menu"] == struct.pack("<H", 1) and tuned["nographic"] == struct.pack("<H", 1)
    assert tuned["etc/boot-menu-wait"] == struct.pack("<H", 5000)
    assert tuned["etc/boot-fail-wait"] == struct.pack("<i", 0xFFFF)      # clamped as QEMU does
    assert tuned["etc/sercon-port"] == struct.pack("<H", 0x3F8)


def test_boot_menu_answers_keys_typed_on_the_serial_console(boot, tmp_path, mbr_image):
    # -nographic: SeaBIOS reads COM1 into its keyboard buffer (int 16h), so ESC opens the menu.
    # The prompt waits 65.5 s of virtual time, which passes in well under a second here: the
    # key goes in as soon as the prompt is seen.
    handle = boot.start("-bios", BIOS, *MODES["transitional"](mbr_image), "-nographic", *EXIT_DEVICE,
                        "-boot", "menu=on,splash-time=65535")
    handle.wait_for("Press ESC for boot menu.", timeout=GUARD)
    handle.send("\x1b")
    handle.wait_for("1. Virtio disk PCI:00:02.0", timeout=GUARD)
    handle.send("1")
    run = handle.wait(timeout=GUARD)
    assert run.exit_status == PASSED, run
    assert "MBR: all passed\n" in run.serial


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("mode", MODES)
def test_serial_output_is_byte_for_byte_qemus(boot, tmp_path, mbr_image, mode):
    # Our PC has no VGA and no NIC: QEMU's -nodefaults (plus its COM1) is the same machine, and
    # then SeaBIOS's serial console and the boot sector print exactly the same bytes.
    args = [*MODES[mode](mbr_image), "-nographic", *EXIT_DEVICE]
    ours = run_ours(boot, *args)
    qemu = run_qemu(tmp_path, "-nodefaults", "-serial", "stdio", *args)
    assert ours.exit_status == qemu.exit_status == PASSED, (ours, qemu)
    assert ours.serial_bytes == qemu.serial_bytes


REBOOT_LINES = ["REBOOT: first boot, resetting through the 8042", "REBOOT: second boot"]


def test_reboot_through_the_8042_runs_post_again(boot, tmp_path):
    # The reset puts the ROM back under the BIOS area (PAM reset values): SeaBIOS finds no
    # trace of its previous run there, does its whole POST again and boots the disk again.
    img = make_image(tmp_path / "reboot.img", sector("reboot"))
    log = tmp_path / "seabios.log"
    run = run_ours(boot, *MODES["transitional"](img), *EXIT_DEVICE, "-debugcon", f"file:{log}")
    assert run.exit_status == PASSED, run
    assert run.serial == "".join(line + "\n" for line in REBOOT_LINES)
    assert log.read_text(errors="replace").count("Booting from 0000:7c00") == 2
    # -no-reboot: the reset ends the machine instead, as QEMU exits with status 0
    run = run_ours(boot, *MODES["transitional"](make_image(tmp_path / "again.img", sector("reboot"))),
                   *EXIT_DEVICE, "-no-reboot")
    assert run.exit_status == 0 and run.serial == REBOOT_LINES[0] + "\n", run


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_reboot_through_the_8042_on_qemu(tmp_path):
    img = make_image(tmp_path / "reboot.img", sector("reboot"))
    run = run_qemu(tmp_path, *MODES["transitional"](img), *EXIT_DEVICE, "-display", "none",
                   "-serial", "stdio")
    assert run.exit_status == PASSED, run
    assert run.serial == "".join(line + "\n" for line in REBOOT_LINES)


@pytest.mark.parametrize("mode", ["modern", "legacy"])
def test_int13_writes_reach_the_image(boot, tmp_path, mode):
    img = make_image(tmp_path / "write.img", sector("write"))
    run = run_ours(boot, *MODES[mode](img), *EXIT_DEVICE)
    assert run.exit_status == PASSED, run
    data = img.read_bytes()
    assert data[300 * 512:302 * 512] == b"\xa5" * 1024            # AH=43h
    copy = data[4 * 512:5 * 512]                                  # AH=03h, CHS 0/0/5: the
    assert copy[:64] == sector("write")[:64] and copy[510:] == b"\x55\xaa"   # sector in memory
    assert data[302 * 512:303 * 512] == bytes(512) and data[3 * 512:4 * 512] == pattern(3)
