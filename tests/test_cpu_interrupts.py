"""Interrupt and exception delivery through the IVT (real mode) and the IDT (protected and long
mode), as a guest sees it: handlers run, frames and error codes are right, iret returns."""

from asm import LONG_MODE, PM32_PROLOGUE, build_machine, result


def test_power_on_state_and_reset_vector(tmp_path):
    m = build_machine(tmp_path, "hlt")
    regs = m.cpu.read_registers()
    assert m.cpu.mode == "real"
    assert (regs["cs"], regs["rip"]) == (0xF000, 0xFFF0)
    assert m.cpu.linear_pc() == 0xFFFF0
    assert m.cpu.segment("cs")[1] == 0xF0000
    m.step()                                   # the ROM's far jump at F000:FFF0
    regs = m.cpu.read_registers()
    assert (regs["cs"], regs["rip"]) == (0xF000, 0)
    m.step()                                   # the stub's jump to the program in RAM
    regs = m.cpu.read_registers()
    assert (regs["cs"], regs["rip"]) == (0, 0x8000)
    assert m.instructions == 2


def test_real_mode_int_through_ivt(tmp_path):
    m = build_machine(tmp_path, """
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $handler, 0x30 * 4
        movw $0, 0x30 * 4 + 2
        sti
        mov $0x1111, %bx
        int $0x30
    after:
        pushf
        pop %ax
        mov %ax, RESULTS + 8           # flags after iret: IF restored
        mov %bx, RESULTS + 12
        EXIT 0
    handler:
        mov %sp, %bp
        mov (%bp), %ax
        mov %ax, RESULTS               # return IP
        mov 4(%bp), %ax
        mov %ax, RESULTS + 4           # pushed FLAGS
        pushf
        pop %ax
        mov %ax, RESULTS + 16          # FLAGS inside the handler: IF clear
        mov $0x2222, %bx
        iret
    """)
    assert m.run(1_000_000) == 1
    labels_after = result(m, 0) & 0xFFFF
    assert 0x8000 < labels_after < 0x8100
    assert result(m, 1) & 0x200                       # pushed FLAGS had IF
    assert not result(m, 4) & 0x200                   # handler runs with IF=0
    assert result(m, 2) & 0x200                       # iret restored IF
    assert result(m, 3) & 0xFFFF == 0x2222


PM_EXCEPTIONS = """
main:
    SETGATE 0x30, h_int30
    SETGATE 6, h_ud
    SETGATE 13, h_gp
    SETGATE 0, h_de
    SETGATE 14, h_pf
    int $0x30
after_int:
    movl $after_int, RESULTS + 4
ud_site:
    ud2
    mov $0x1238, %ax
gp_site:
    mov %ax, %ds                # beyond the GDT limit: #GP(0x1238)
    movl $de_site1, RESULTS + 28
    movl $de_site2, RESULTS + 60
    xor %edx, %edx
    mov $7, %eax
    xor %ecx, %ecx
de_site1:
    div %ecx                    # #DE, handler sets ecx=2 and retries: 3 (7 if skipped)
    movl %eax, RESULTS + 32
    xor %edx, %edx
    mov $9, %eax
    xor %ecx, %ecx
de_site2:
    div %ecx                    # a second #DE must not turn into #DF: 4 (9 if skipped)
    movl %eax, RESULTS + 36
    # paging: identity map 4 MiB with one 4 MiB page, leave PD[1] not present
    PD_CLEAR
    movl $0x83, 0x50000
    PSE_PAGING_ON
pf_site:
    movl $0xabcd, 0x400010      # PD[1] not present: #PF, handler maps it and retries
    mov 0x400010, %eax
    mov %eax, RESULTS + 56
    EXIT 0

h_int30:
    mov (%esp), %eax
    mov %eax, RESULTS
    iret
h_ud:
    mov (%esp), %eax
    mov %eax, RESULTS + 8
    addl $2, (%esp)
    iret
h_gp:
    pop %eax                    # error code
    mov %eax, RESULTS + 12
    mov (%esp), %eax
    mov %eax, RESULTS + 16
    addl $2, (%esp)
    iret
h_de:
    incl RESULTS + 40           # count #DE
    push %eax
    mov 4(%esp), %eax           # saved EIP: of the first #DE in slot 5, of the second in slot 6
    cmpl $1, RESULTS + 40
    jne 1f
    mov %eax, RESULTS + 20
    jmp 2f
1:  mov %eax, RESULTS + 24
2:  pop %eax
    mov $2, %ecx
    iret
h_pf:
    pop %eax
    mov %eax, RESULTS + 44      # error code
    mov %cr2, %eax
    mov %eax, RESULTS + 48
    mov (%esp), %eax
    mov %eax, RESULTS + 52
    movl $0x400083, 0x50004     # map PD[1]
    invlpg 0x400010
    iret
"""


def test_protected_mode_int_and_faults(tmp_path):
    m = build_machine(tmp_path, PM_EXCEPTIONS, prologue=PM32_PROLOGUE)
    assert m.run(2_000_000) == 1, m.stop_reason
    after_int = result(m, 1)
    assert result(m, 0) == after_int                  # int n: return address = next instruction
    ud_site = after_int + 10                          # after the 10-byte movl
    assert result(m, 2) == ud_site                    # #UD: saved EIP = the ud2
    assert result(m, 3) == 0x1238                     # #GP error code = the selector
    assert result(m, 4) == ud_site + 2 + 4            # #GP at gp_site (after mov $0x1238,%ax)
    assert result(m, 5) == result(m, 7)               # #DE is a fault: saved EIP = the div
    assert result(m, 6) == result(m, 15)
    assert result(m, 8) == 3 and result(m, 9) == 4    # both divisions re-executed after the fix
    assert result(m, 10) == 2                         # two #DE, neither became #DF
    assert result(m, 11) == 0x2                       # #PF: write to a not-present page
    assert result(m, 12) == 0x400010                  # CR2
    assert result(m, 14) == 0xABCD                    # the retried store landed
    assert m.cpu.mode == "protected" and m.cpu.paging


def test_long_mode_delivery(tmp_path):
    m = build_machine(tmp_path, LONG_MODE + """
    main64:
        SETGATE64 0x40, h40
        SETGATE64 13, h_gp
        SETGATE64 0, h_de
        movq $-1, RESULTS + 32         # the #GP handler must overwrite these
        movq $-1, RESULTS + 64
        movabs $after_int, %rax
        mov %rax, RESULTS + 40
        movabs $de_site, %rax
        mov %rax, RESULTS + 48
        mov $0x90008, %rsp             # misaligned: the CPU aligns the frame to 16 bytes
        movabs $0x1122334455667788, %rbx
        int $0x40
    after_int:
        movabs $0x8000000000000000, %rax
        mov (%rax), %rbx               # non-canonical: #GP(0)
        mov $0x1238, %ax
        mov %ax, %ds                   # beyond the GDT limit: #GP(0x1238)
        xor %edx, %edx
        mov $7, %eax
        xor %ecx, %ecx
    de_site:
        div %rcx                       # #DE; the handler sets rcx=2: 3 (7 if the div were skipped)
        mov %rax, RESULTS + 80
        EXIT 0
    h40:
        mov %rsp, RESULTS
        mov (%rsp), %rax
        mov %rax, RESULTS + 8          # return RIP
        mov 24(%rsp), %rax
        mov %rax, RESULTS + 16         # saved RSP
        mov %rbx, RESULTS + 24
        iretq
    h_gp:
        pop %rax                       # error code: the first #GP's to +32, the second's to +64
        cmpq $-1, RESULTS + 32
        jne 1f
        mov %rax, RESULTS + 32
        addq $3, (%rsp)                # skip the 3-byte mov
        iretq
    1:  mov %rax, RESULTS + 64
        addq $2, (%rsp)                # skip the 2-byte mov to %ds
        iretq
    h_de:
        mov (%rsp), %rdx
        mov %rdx, RESULTS + 56         # return RIP
        xor %edx, %edx
        mov $2, %ecx
        iretq
    """, prologue=PM32_PROLOGUE)
    assert m.run(2_000_000) == 1, m.stop_reason
    assert m.cpu.mode == "long"
    r = m.mem.read_u64
    assert r(0x3000) == 0x90000 - 40                 # 5-qword frame below the aligned RSP
    assert r(0x3000 + 8) == r(0x3000 + 40)           # int n: return RIP = the next instruction
    assert r(0x3000 + 16) == 0x90008
    assert r(0x3000 + 24) == 0x1122334455667788
    assert r(0x3000 + 32) == 0                       # non-canonical access: #GP(0)
    assert r(0x3000 + 64) == 0x1238                  # bad selector: #GP(selector)
    assert r(0x3000 + 56) == r(0x3000 + 48)          # #DE is a fault: return RIP = the div
    assert r(0x3000 + 80) == 3


def test_triple_fault_reports_and_exits_2_with_no_reboot(tmp_path, capsys):
    m = build_machine(tmp_path, """
        lidtl bad_idtr
        sti
        int $0x21
    bad_idtr:
        .word 0
        .long 0
    """, prologue="")
    status = m.run(1_000_000)
    err = capsys.readouterr().err
    assert status == 2
    assert m.stop_reason.kind == "fault"
    assert "triple fault" in err
    assert "real mode" in err and "CS:EIP = 0000:" in err
    assert "int 0x21" in err                          # the faulting instruction, disassembled


def test_triple_fault_resets_without_no_reboot(tmp_path):
    # Each boot increments a counter in RAM (RAM survives a reset); the third boot exits.
    m = build_machine(tmp_path, """
        xor %ax, %ax
        mov %ax, %ds
        incw RESULTS
        cmpw $3, RESULTS
        je done
        lidtl bad_idtr
        int $0x21
    done:
        EXIT 5
    bad_idtr:
        .word 0
        .long 0
    """, no_reboot=False)
    assert m.run(1_000_000) == 11
    assert m.resets == 2


def test_hlt_with_interrupts_disabled_is_fatal(tmp_path, capsys):
    m = build_machine(tmp_path, "cli\n hlt\n")
    assert m.run(1_000_000) == 2
    err = capsys.readouterr().err
    assert "HLT with IF=0" in err
    assert "hlt" in err


def test_protected_mode_gate_not_present_becomes_double_fault(tmp_path):
    m = build_machine(tmp_path, """
    main:
        SETGATE 8, h_df
        int $0x31                # gate 0x31 not present -> #DF
        EXIT 9
    h_df:
        pop %eax
        mov %eax, RESULTS        # #DF error code is 0
        movl $1, RESULTS + 4
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    assert m.run(1_000_000) == 1
    assert result(m, 1) == 1 and result(m, 0) == 0


def test_ring3_to_ring0_through_tss_and_gate_dpl_check(tmp_path):
    m = build_machine(tmp_path, """
    .set TSS, 0x6000
    main:
        lgdt gdtr3
        movl $0x60000, TSS + 4          # ESP0
        movl $0x10, TSS + 8             # SS0
        mov $0x28, %ax
        ltr %ax
        SETGATE 0x80, h80, 0xee00       # DPL3 interrupt gate: callable from ring 3
        SETGATE 0x81, h80, 0x8e00       # DPL0 gate: `int` from ring 3 is a #GP
        SETGATE 13, h_gp
        push $0x23                      # to ring 3 with iret
        push $0x50000
        pushf
        push $0x1b
        push $user
        iret
    user:
        mov $0x23, %ax
        mov %ax, %ds
        mov %ax, %es
        mov $0x5a5a, %ebx
        int $0x80
        mov %ebx, RESULTS + 20          # back in ring 3 with the handler's EBX
        mov %cs, %eax
        mov %eax, RESULTS + 24
        int $0x81
        jmp .
    h80:
        mov %cs, %eax
        mov %eax, RESULTS               # CS in the handler: 0x08
        mov 4(%esp), %eax
        mov %eax, RESULTS + 4           # saved CS: 0x1b
        mov 12(%esp), %eax
        mov %eax, RESULTS + 8           # saved ESP: 0x50000
        mov 16(%esp), %eax
        mov %eax, RESULTS + 12          # saved SS: 0x23
        mov %esp, RESULTS + 16          # frame on the TSS stack
        mov $0x1234, %ebx
        iret
    h_gp:
        pop %eax
        mov %eax, RESULTS + 28          # error code: IDT entry 0x81, IDT bit set
        EXIT 0
    .align 8
    gdt3:
        .quad 0
        .quad 0x00cf9a000000ffff        # 0x08 ring-0 code
        .quad 0x00cf92000000ffff        # 0x10 ring-0 data
        .quad 0x00cffa000000ffff        # 0x18 ring-3 code
        .quad 0x00cff2000000ffff        # 0x20 ring-3 data
        .word 0x67, TSS & 0xffff        # 0x28 32-bit TSS at TSS
        .byte (TSS >> 16) & 0xff, 0x89, 0, TSS >> 24
    gdt3_end:
    gdtr3:
        .word gdt3_end - gdt3 - 1
        .long gdt3
    """, prologue=PM32_PROLOGUE)
    assert m.run(100_000) == 1, m.stop_reason
    assert result(m, 0) & 0xFFFF == 0x08
    assert result(m, 1) == 0x1B
    assert result(m, 2) == 0x50000
    assert result(m, 3) == 0x23
    assert result(m, 4) == 0x60000 - 20
    assert result(m, 5) == 0x1234
    assert result(m, 6) & 0xFFFF == 0x1B
    assert result(m, 7) == 0x81 * 8 + 2


def test_hlt_with_nothing_to_wake_it_is_reported(tmp_path, capsys):
    m = build_machine(tmp_path, "sti\n hlt\n")
    assert m.run(1_000_000) == 2
    err = capsys.readouterr().err
    assert "no timer is armed and no input can arrive" in err
    assert "CS:EIP = 0000:00008001" in err and "hlt" in err


def test_long_mode_ring3_to_ring0_through_tss(tmp_path):
    m = build_machine(tmp_path, LONG_MODE + """
    .set TSS, 0x6000
    main64:
        movq $0x83, 0x42000             # first 2 MiB: supervisor only (IDT, GDT, TSS, kernel)
        movq $0x87, 0x42008             # 2-4 MiB: the same memory again, user-accessible
        mov %cr3, %rax
        mov %rax, %cr3
        lgdt gdtr64
        movq $0x60000, TSS + 4          # RSP0
        mov $0x38, %ax
        ltr %ax
        SETGATE64 0x80, h80, 0xee00
        pushq $0x33                     # SS: ring-3 data
        pushq $0x250000
        pushfq
        pushq $0x2b                     # CS: ring-3 64-bit code
        movabs $(user + 0x200000), %rax  # ring 3 runs in the user alias
        push %rax
        iretq
    user:
        mov $0x77, %rbx
        int $0x80                       # the IDT/GDT/TSS reads are supervisor accesses
        mov %rbx, RESULTS + 0x200000 + 24
        mov %cs, %eax
        mov %eax, RESULTS + 0x200000 + 32
        int $0x80                       # second call: the handler exits
        jmp .
    h80:
        cmpq $0x55, %rbx
        je finish
        mov %cs, %eax
        mov %eax, RESULTS
        mov 8(%rsp), %rax
        mov %rax, RESULTS + 8           # saved CS
        mov 32(%rsp), %rax
        mov %rax, RESULTS + 16          # saved SS
        mov %rsp, RESULTS + 40          # frame on RSP0
        mov $0x55, %rbx
        iretq
    finish:
        EXIT 0
    .align 8
    gdt64:
        .quad 0
        .quad 0x00cf9a000000ffff        # 0x08
        .quad 0x00cf92000000ffff        # 0x10
        .quad 0x00af9a000000ffff        # 0x18 ring-0 64-bit code
        .quad 0
        .quad 0x00aff2000000ffff        # 0x28 (unused)
        .quad 0                         # 0x30
        .word 0x67, TSS & 0xffff        # 0x38 64-bit TSS (16 bytes)
        .byte (TSS >> 16) & 0xff, 0x89, 0, TSS >> 24
        .long 0, 0
    gdt64_end:
    gdtr64:
        .word gdt64_end - gdt64 - 1
        .quad gdt64
    """.replace(".quad 0\n        .quad 0x00aff2000000ffff        # 0x28 (unused)",
                ".quad 0x00affa000000ffff        # 0x20 (unused)\n        .quad 0x00affa000000ffff        # 0x28 ring-3 64-bit code")
       .replace(".quad 0                         # 0x30", ".quad 0x00aff2000000ffff        # 0x30 ring-3 data"),
        prologue=PM32_PROLOGUE)
    assert m.run(1_000_000) == 1, m.stop_reason
    assert result(m, 0) & 0xFFFF == 0x18
    assert m.mem.read_u64(0x3000 + 8) == 0x2B
    assert m.mem.read_u64(0x3000 + 16) == 0x33
    assert m.mem.read_u64(0x3000 + 24) == 0x55
    assert result(m, 8) & 0xFFFF == 0x2B
    assert m.mem.read_u64(0x3000 + 40) == 0x60000 - 40


def _ivt_limit_program(limit: int) -> str:
    """Real mode, the IVT at 0 with `limit`: `int $0x30` records 0x30 in its handler, or, when
    entry 0x30 (bytes 0xC0-0xC3) does not lie wholly within the limit, #GP (vector 13, no error
    code in real mode) records 13 and the faulting instruction's address."""
    return f"""
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $h30, 0x30 * 4
        movw $0, 0x30 * 4 + 2
        movw $h13, 13 * 4
        movw $0, 13 * 4 + 2
        lidtl idtr
    the_int:
        int $0x30
        EXIT 9
    h30:
        movw $0x30, RESULTS
        EXIT 0
    h13:
        movw $13, RESULTS
        mov %sp, %bp
        mov (%bp), %ax
        mov %ax, RESULTS + 4            # the return IP: the int itself (a fault)
        movw $the_int, RESULTS + 8
        EXIT 0
    idtr:
        .word {limit:#x}
        .long 0
    """


def test_real_mode_ivt_limit_is_exact(tmp_path):
    # Entry 0x30's last byte is 0xC3: a limit of 0xC3 takes the interrupt, 0xC2 raises #GP.
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    inside = build_machine(tmp_path / "in", _ivt_limit_program(0x30 * 4 + 3))
    assert inside.run(1_000_000) == 1 and result(inside, 0) & 0xFFFF == 0x30
    beyond = build_machine(tmp_path / "out", _ivt_limit_program(0x30 * 4 + 2))
    assert beyond.run(1_000_000) == 1 and result(beyond, 0) & 0xFFFF == 13
    assert result(beyond, 1) & 0xFFFF == result(beyond, 2) & 0xFFFF      # IP of the int


def test_a_gate_fault_sets_ext_for_external_interrupts_only(tmp_path):
    """A not-present IDT gate raises #NP with the gate's error code (vector * 8 + 2) plus EXT
    (bit 0) when the event came from outside (an IRQ), not for `int n`."""
    program = """
    main:
        SETGATE 11, h_np
        SETGATE 0x40, spin, 0x0e00   # a 32-bit interrupt gate with P clear
        movl $0, RESULTS
        cmpl $1, RESULTS + 8
        je spin
        int $0x40
    spin:
        jmp spin
    h_np:
        pop %eax
        mov %eax, RESULTS + 4     # #NP's error code
        movl $1, RESULTS
        EXIT 0
    """
    (tmp_path / "sw").mkdir()
    (tmp_path / "hw").mkdir()
    sw = build_machine(tmp_path / "sw", program, prologue=PM32_PROLOGUE)
    assert sw.run(1_000_000) == 1 and result(sw, 0) == 1
    assert result(sw, 1) == 0x40 * 8 + 2                    # software: EXT clear

    hw = build_machine(tmp_path / "hw", program.replace("cmpl $1, RESULTS + 8\n        je spin",
                                                          "jmp spin"), prologue=PM32_PROLOGUE)
    hw.run(200_000)                                          # spinning, IF irrelevant here
    assert result(hw, 0) == 0
    assert hw.cpu.deliver_irq(0x40)                          # an external interrupt, vector 0x40
    assert hw.run(1_000_000) == 1 and result(hw, 0) == 1
    assert result(hw, 1) == 0x40 * 8 + 2 + 1                 # external: EXT set


def test_a_contributory_fault_while_delivering_one_is_a_double_fault(tmp_path):
    """#GP whose gate is not present: the #NP that delivery raises pairs two contributory
    exceptions, so the CPU takes #DF (error code 0), not #NP."""
    m = build_machine(tmp_path, """
    main:
        SETGATE 8, h_df
        SETGATE 11, h_np
        SETGATE 13, h_np, 0x0e00     # #GP's gate: P clear
        mov $0x1234, %ax
        mov %ax, %ds                 # beyond the GDT: #GP(0x1230)
        EXIT 9
    h_np:
        movl $11, RESULTS
        EXIT 0
    h_df:
        pop %eax
        mov %eax, RESULTS + 4
        movl $8, RESULTS
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    assert m.run(1_000_000) == 1
    assert (result(m, 0), result(m, 1)) == (8, 0)


def test_a_benign_exception_through_a_not_present_gate_raises_np(tmp_path):
    """#UD is benign: its not-present gate gives #NP, not #DF. The error code names the gate
    (6 * 8 + 2) with EXT set: the fault came while delivering an earlier exception, not `int n`."""
    m = build_machine(tmp_path, """
    main:
        SETGATE 8, h_df
        SETGATE 11, h_np
        SETGATE 6, h_df, 0x0e00      # #UD's gate: P clear
        ud2
        EXIT 9
    h_np:
        pop %eax
        mov %eax, RESULTS + 4
        movl $11, RESULTS
        EXIT 0
    h_df:
        movl $8, RESULTS
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    assert m.run(1_000_000) == 1
    assert (result(m, 0), result(m, 1)) == (11, 6 * 8 + 2 + 1)
