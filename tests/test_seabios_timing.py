"""Virtual time inside a slice, as firmware calibration loops see it: every port access takes
IO_PORT_NS, devices see the clock at their own access, and RDTSC agrees with them."""

from asm import rom_machine
from machine.cpu import IO_PORT_NS

# SeaBIOS's TSC calibration, reduced: gate PIT channel 2 on, count 0x800 ticks in mode 0, poll
# port 0x61 bit 5 (OUT2) until it rises; RDTSC around one IN; results at 0x500.
CALIBRATION_ROM = """
reset:
    xor %ax, %ax
    mov %ax, %ds
    rdtsc
    mov %eax, %ebx
    in $0x61, %al
    rdtsc
    sub %ebx, %eax
    mov %eax, 0x500                 # TSC across one IN (and the instructions around it)
    in $0x61, %al
    and $0xfd, %al
    or $0x01, %al
    out %al, $0x61                  # gate 2 on, speaker off
    mov $0xb0, %al
    out %al, $0x43                  # channel 2, lo/hi, mode 0
    xor %al, %al
    out %al, $0x42
    mov $0x08, %al
    out %al, $0x42                  # count 0x800
    rdtsc
    mov %eax, %ebx
    xor %ecx, %ecx
1:  inc %ecx
    in $0x61, %al
    test $0x20, %al
    jz 1b
    rdtsc
    sub %ebx, %eax
    mov %ecx, 0x504                 # polls until OUT2 rose
    mov %eax, 0x508                 # TSC ticks (ns) the count took
    mov $0x10, %al
    out %al, $0xf4
    cli
    hlt
"""


def test_port_polling_sees_time_pass_at_the_pit_rate(tmp_path):
    m = rom_machine(tmp_path, CALIBRATION_ROM)
    assert m.run() == 33
    one_in, polls, elapsed = (int.from_bytes(m.mem.read(0x500 + 4 * i, 4), "little") for i in range(3))
    m.close()
    assert IO_PORT_NS < one_in < IO_PORT_NS + 10          # the IN's bus time, plus 3 instructions
    count_ns = 0x800 * 1_000_000_000 // 1_193_182         # 1716 us of PIT ticks
    # The TSC saw the count take its time (to within one poll), and each poll cost about one
    # port access: the loop did not spin for the rest of a 500k-instruction slice.
    assert count_ns <= elapsed <= count_ns + 2 * (IO_PORT_NS + 3)
    assert count_ns // (IO_PORT_NS + 3) - 2 <= polls <= count_ns // IO_PORT_NS + 2


# Each IN takes IO_PORT_NS: with a timer every 1.5 us, about every other IN crosses a deadline
# and ends its slice right after itself. The value it read must still reach AL.
IN_LOOP_ROM = """
reset:
    mov $0x402, %dx                 # debugcon: reads 0xe9
    mov $3000, %cx
1:  mov $0, %al
    in %dx, %al
    cmp $0xe9, %al
    jne bad
    loop 1b
    mov $0x10, %al
    out %al, $0xf4
    hlt
bad:
    mov $0x20, %al
    out %al, $0xf4
    hlt
"""


def test_an_in_that_reaches_a_timer_deadline_keeps_its_value(tmp_path):
    m = rom_machine(tmp_path, IN_LOOP_ROM)
    fired = []
    timer = m.clock.timer(lambda: (fired.append(m.clock.now), timer.arm_in(1500)))
    timer.arm_in(1500)
    assert m.run() == 33
    m.close()
    assert len(fired) > 1000
    assert all(b - a == 1500 for a, b in zip(fired, fired[1:]))     # each fired on time
