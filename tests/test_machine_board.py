"""The board: a tiny ROM talking to the wired devices, fw_cfg contents, resets, PCI and virtio
wiring, and host-input errors."""

import pytest

from asm import rom_image
from machine.config import CharDev, ConfigError, DeviceConfig, DriveConfig, MachineConfig
from machine.devices import fw_cfg as fw
from machine.pc import Machine

HELLO_ROM = """
reset:
    mov $0xf000, %ax
    mov %ax, %ds
    mov $msg, %si
    mov $0x3f8, %dx
next:
    lodsb
    test %al, %al
    jz done
    out %al, %dx
    jmp next
done:
    mov $0x501, %dx
    mov $0x21, %al
    out %al, %dx                    # isa-debug-exit: status (0x21 << 1) | 1
    mov $'X', %al                   # never reached: the exit is immediate
    mov $0x3f8, %dx
    out %al, %dx
    cli
    hlt
msg:
    .asciz "Hello from the ROM\\n"
"""


def make(tmp_path, source, **kw):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image(source))
    kw.setdefault("serial", CharDev("file", tmp_path / "serial.txt"))
    return Machine(MachineConfig(bios=rom, **kw))


def test_tiny_rom_prints_on_com1_and_exits_with_its_status(tmp_path):
    m = make(tmp_path, HELLO_ROM, devices=[DeviceConfig("isa-debug-exit", {})])
    assert m.run() == 0x43
    m.close()
    assert (tmp_path / "serial.txt").read_bytes() == b"Hello from the ROM\n"
    assert m.stop_reason.kind == "exited"


def test_devices_are_wired_at_their_ports(tmp_path):
    m = make(tmp_path, "reset: hlt\n", serial=CharDev("null"))
    for name in ("pic", "pit", "cmos", "serial0", "debugcon", "fw_cfg", "port92", "lapic",
                 "i440fx", "piix3"):
        assert name in m.devices, name
    m.io.write(0xCF8, 4, 0x80000000)                   # 00:00.0 vendor/device
    assert m.io.read(0xCFC, 4) == 0x12378086
    m.io.write(0xCF8, 4, 0x80000800)                   # 00:01.0: PIIX3
    assert m.io.read(0xCFC, 4) == 0x70008086
    assert m.io.read(0x510, 1) == ord("Q")             # fw_cfg signature (selector 0)
    assert m.pci_bus is not None and m.memory_map.find(0xFEE00020) is not None


def test_fw_cfg_items(tmp_path):
    kernel = tmp_path / "k.elf"
    # 64 bytes: an ELF32 ident and a Multiboot header (the board checks what -kernel is).
    mb = (0x1BADB002).to_bytes(4, "little") + (3).to_bytes(4, "little") \
        + (-(0x1BADB002 + 3) & 0xFFFFFFFF).to_bytes(4, "little")
    kernel.write_bytes(b"\x7fELF\x01" + bytes(11) + mb + bytes(36))
    m = make(tmp_path, "reset: hlt\n", ram_size=64 << 20, kernel=kernel, append="console=ttyS0 x=1",
             boot_menu=True, serial=CharDev("null"))
    dev = m.devices["fw_cfg"]
    assert dev.item(fw.RAM_SIZE) == (64 << 20).to_bytes(8, "little")
    assert dev.item(fw.NB_CPUS) == (1).to_bytes(2, "little")
    assert dev.item(fw.KERNEL_SIZE) == (64).to_bytes(4, "little")
    assert dev.item(fw.KERNEL_DATA) == kernel.read_bytes()
    cmdline = f"{kernel} console=ttyS0 x=1".encode() + b"\0"
    assert dev.item(fw.CMDLINE_DATA) == cmdline
    assert dev.item(fw.CMDLINE_SIZE) == len(cmdline).to_bytes(4, "little")
    assert dev.item(fw.BOOT_MENU) == (1).to_bytes(2, "little")
    e820 = dev.item(dev.file_key("etc/e820"))
    entries = [(int.from_bytes(e820[i:i + 8], "little"), int.from_bytes(e820[i + 8:i + 16], "little"),
                int.from_bytes(e820[i + 16:i + 20], "little")) for i in range(0, len(e820), 20)]
    # As QEMU's `pc` machine: one RAM entry from 0 (the firmware carves out the legacy hole
    # and reserves its own ROM).
    assert entries == [(0, 64 << 20, 1)]


RESET_ROM = """
reset:
    xor %ax, %ax
    mov %ax, %ds
    incw 0x500                      # RAM survives a warm reset: count the boots
    cmpw $3, 0x500
    je finished
    mov $RESET_PORT, %dx
    mov $RESET_VALUE, %al
    out %al, %dx                    # port 0x92 fast reset, or the PIIX3 reset control register
    cli
    hlt
finished:
    mov $0x501, %dx
    mov $0x2, %al
    out %al, %dx
"""


RESET_PORTS = [(0x92, 0x01), (0xCF9, 0x06), (0x64, 0xFE)]     # 0x64: the 8042 pulses its reset line


def reset_rom(port, value):
    return f".set RESET_PORT, {port:#x}\n.set RESET_VALUE, {value:#x}\n" + RESET_ROM


@pytest.mark.parametrize("port,value", RESET_PORTS)
def test_guest_reset_with_no_reboot_exits_zero(tmp_path, port, value):
    m = make(tmp_path, reset_rom(port, value), no_reboot=True, serial=CharDev("null"),
             devices=[DeviceConfig("isa-debug-exit", {})])
    assert m.run() == 0
    assert m.stop_reason.kind == "exited" and m.resets == 0


@pytest.mark.parametrize("port,value", RESET_PORTS)
def test_guest_reset_restarts_at_the_reset_vector(tmp_path, port, value):
    m = make(tmp_path, reset_rom(port, value), serial=CharDev("null"),
             devices=[DeviceConfig("isa-debug-exit", {})])
    assert m.run() == 5
    assert m.resets == 2


def test_unknown_device_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'foo' is not a valid device model name"):
        make(tmp_path, "reset: hlt\n", devices=[DeviceConfig("foo", {})])


def test_virtio_drive_is_plugged_from_slot_2(tmp_path):
    pytest.importorskip("machine.virtio.pci")
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    m = make(tmp_path, "reset: hlt\n", serial=CharDev("null"),
             drives=[DriveConfig(file=img, interface="virtio")])
    dev = m.pci_bus.device(2)
    assert dev is not None and m.devices["virtio-blk0"] is dev
    m.io.write(0xCF8, 4, 0x80001000)                   # 00:02.0
    assert m.io.read(0xCFC, 4) & 0xFFFF == 0x1AF4


def test_missing_firmware_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="could not load firmware"):
        Machine(MachineConfig(bios=tmp_path / "nope.bin", serial=CharDev("null")))


def test_virtio_blk_properties_from_the_command_line_reach_the_device(tmp_path):
    """README: -device virtio-blk-pci takes QEMU's properties; queue-size and config-wce change
    what the driver sees, not only what the parser accepts."""
    from dataclasses import replace

    from machine.cli import parse_args
    from machine.virtio.blk import VIRTIO_BLK_F_CONFIG_WCE
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    cfg = parse_args(["-drive", f"file={img},format=raw,if=none,id=d0",
                      "-device", "virtio-blk-pci,drive=d0,queue-size=64,config-wce=off,num-queues=2"])
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset: hlt\n"))
    m = Machine(replace(cfg, bios=rom, serial=CharDev("null")))
    vdev = m.pci_bus.device(2).vdev
    assert [q.max_size for q in vdev.queues] == [64, 64]
    assert not vdev.host_features >> VIRTIO_BLK_F_CONFIG_WCE & 1
