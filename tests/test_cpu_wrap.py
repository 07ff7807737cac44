"""32-bit code running through the top of the 4 GiB space: EIP wraps to 0, as on the CPU."""

from __future__ import annotations

from fuzz import rig


def test_an_instruction_across_4gib_continues_at_eip_0(tmp_path):
    # The stub ROM's last byte (0xFFFFFFFF) is 00: `add %al, (%eax)` whose ModRM byte is the
    # first byte of RAM (00). RAM from 0 holds zeros: more `add %al, (%eax)`, 2 bytes each.
    rig.make_image(tmp_path / "disk.img")
    m = rig.build_asm(tmp_path, """
        movl $0x3001, %eax                 # AL = 1: every add bumps the byte at 0x3001
        movl $0xffffffff, %ebx
        jmp *%ebx
    """)
    try:
        m.cpu.add_breakpoint(rig.PAYLOAD)  # past the stub ROM's start-up code
        m.run(max_instructions=1_000_000)
        assert m.stop_reason.kind == "breakpoint"
        m.cpu.remove_breakpoint(rig.PAYLOAD)
        m.mem.write(0, bytes(0x100))
        m.mem.write(0x3000, b"\0\0")
        m.run(max_instructions=3 + 100)    # 3 set-up instructions, then 100 adds
        regs = m.cpu.read_registers()
        assert m.stop_reason.kind == "limit"
        assert m.mem.read(0x3001, 1) == bytes([100])   # the add across 4 GiB counted too
        assert regs["rip"] == 2 * 100 - 1              # wrapped: not 0x1_0000_00c7
        assert m.cpu.linear_pc() == 2 * 100 - 1
    finally:
        m.close()
