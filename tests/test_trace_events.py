"""Trace events under QEMU's names, one family per test, each enabled the way a user does
(`-trace PATTERN`, `-trace enable=PATTERN`, `-trace events=FILE`) on the bundled virtio-blk guest,
and checked line by line in what -D (or trace.set_output) receives."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

from machine import trace
from machine.api import Session
from machine.cli import main as cli_main

EXIT_DEV = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH = 0, 1, 4


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    return img


def run_guest(guest, image, tests: str, *trace_args: str) -> list[str]:
    """Run the guest's self-tests `tests` with the given -trace options; the trace lines."""
    out = io.StringIO()
    trace.set_output(out)
    try:
        with Session.from_args(["-kernel", str(guest), "-append", f"tests={tests}", "-no-reboot",
                                "-drive", f"file={image},format=raw,if=virtio", *EXIT_DEV,
                                *trace_args]) as s:
            stop = s.run()
            assert stop.exit_status == 1, s.serial            # every self-test passed
    finally:
        trace.set_output(sys.stderr)
    return out.getvalue().splitlines()


def names(lines: list[str]) -> set[str]:
    return {line.split(" ", 1)[0] for line in lines}


def test_pci_config_accesses_and_bar_mappings(guest, image):
    lines = run_guest(guest, image, "init", "-trace", "pci_*")
    assert names(lines) <= {"pci_cfg_read", "pci_cfg_write", "pci_update_mappings_add",
                            "pci_update_mappings_del", "pci_set_irq"}
    # the driver's probe: vendor, then device ID of the transitional virtio-blk
    assert "pci_cfg_read virtio-blk-pci offset=0x00 size=2 -> 0x1af4" in lines
    assert "pci_cfg_read virtio-blk-pci offset=0x02 size=2 -> 0x1001" in lines
    # BAR sizing: all-ones written, the size mask read back
    i = lines.index("pci_cfg_write virtio-blk-pci offset=0x10 size=4 <- 0xffffffff")
    assert lines[i + 1] == "pci_cfg_read virtio-blk-pci offset=0x10 size=4 -> 0xffffff81"
    # the firmware's BAR assignment mapped the I/O BAR and the 64-bit memory BAR
    adds = [l for l in lines if l.startswith("pci_update_mappings_add virtio-blk-pci")]
    assert any(re.fullmatch(r"pci_update_mappings_add virtio-blk-pci bar=0 address=0x[0-9a-f]+ size=0x80", l)
               for l in adds), adds
    assert any(re.fullmatch(r"pci_update_mappings_add virtio-blk-pci bar=4 address=0x[0-9a-f]+ size=0x4000", l)
               for l in adds), adds


def test_virtio_status_changes_and_feature_negotiation(guest, image):
    lines = run_guest(guest, image, "init", "-trace", "enable=virtio_set_*")
    assert names(lines) == {"virtio_set_status", "virtio_set_features"}
    status = [int(l.rsplit("val=", 1)[1]) for l in lines if l.startswith("virtio_set_status")]
    # 3.1.1: reset, ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
    assert status[:5] == [0, 1, 3, 11, 15], lines
    features = [int(l.rsplit("features=", 1)[1], 16) for l in lines if l.startswith("virtio_set_features")]
    assert features and features[-1] >> 32 & 1                          # VERSION_1 accepted
    i_feat = next(i for i, l in enumerate(lines) if l.startswith("virtio_set_features"))
    i_ok = lines.index("virtio_set_status vdev=virtio-blk val=11")
    assert i_feat < i_ok                                                # features before FEATURES_OK


def test_queue_notifies(guest, image):
    lines = run_guest(guest, image, "init,flush,get_id", "-trace", "virtio_queue_notify",
                      "-trace", "virtio_pci_notify_write*")
    assert "virtio_queue_notify vdev=virtio-blk n=0" in lines
    assert any(re.fullmatch(r"virtio_pci_notify_write addr=0x[0-9a-f]+ val=0x0 size=2", l) for l in lines), lines
    # every doorbell write reaches the queue it names
    writes = sum(l.startswith("virtio_pci_notify_write") for l in lines)
    assert writes == lines.count("virtio_queue_notify vdev=virtio-blk n=0") >= 2


def test_each_request_with_type_sector_length_status_and_latency(guest, image, tmp_path):
    events = tmp_path / "events"
    events.write_text("# requests only\nvirtio_blk_req_complete\n\n")
    t0 = time.perf_counter()
    lines = run_guest(guest, image, "init,flush,rw_sizes", "-trace", f"events={events}")
    wall_us = (time.perf_counter() - t0) * 1e6
    pat = re.compile(r"virtio_blk_req_complete vdev=virtio-blk req=(\d+) type=(\d+) sector=(\d+) "
                     r"len=(\d+) status=(\d+) latency_us=(\d+\.\d)")
    reqs = [pat.fullmatch(l) for l in lines]
    assert reqs and all(reqs), lines[:5]
    kinds = {int(m[2]) for m in reqs}
    assert {VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH} <= kinds
    assert all(int(m[5]) == 0 for m in reqs)                           # VIRTIO_BLK_S_OK
    # host time spent on each request: measured (a Python request takes microseconds, never
    # 0.0 at this precision), and all of them together within the run's wall-clock time
    latencies = [float(m[6]) for m in reqs]
    assert all(lat > 0 for lat in latencies) and sum(latencies) < wall_us
    sizes = {int(m[4]) for m in reqs if int(m[2]) in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT)}
    assert 512 in sizes and all(s % 512 == 0 for s in sizes)
    assert all(int(m[4]) == 0 for m in reqs if int(m[2]) == VIRTIO_BLK_T_FLUSH)


def test_interrupts_from_the_device_to_the_cpu(guest, image):
    lines = run_guest(guest, image, "init,interrupt", "-trace", "virtio_notify", "-trace", "pci_set_irq",
                      "-trace", "pic_*", "-trace", "cpu_interrupt")
    chain = ["virtio_notify vdev=virtio-blk vq=0",                     # the device interrupts
             "pci_set_irq virtio-blk-pci pin=1 level=1",               # INTA# asserted
             "pic_set_irq master 0 irq 10 level 1",                    # PIRQ routed to IRQ 10
             "pic_set_irq master 1 irq 2 level 1",                     # the slave cascades
             "pic_interrupt irq 10 intno 42",                          # INTA cycle: vector 0x2a
             "cpu_interrupt vector=0x2a kind=exc/irq mode=protected err=-",
             "pci_set_irq virtio-blk-pci pin=1 level=0"]               # the ISR read drops INTx
    pos = 0
    for want in chain:
        assert want in lines[pos:], (want, lines)
        pos = lines.index(want, pos) + 1


def test_trace_on_the_command_line_goes_to_the_D_file(guest, image, tmp_path, capsys):
    log = tmp_path / "trace.log"
    status = cli_main(["-kernel", str(guest), "-append", "tests=init", "-no-reboot", "-serial", "none",
                       "-drive", f"file={image},format=raw,if=virtio", *EXIT_DEV,
                       "-trace", "virtio_set_status", "-D", str(log)])
    assert status == 1
    lines = log.read_text().splitlines()
    assert lines[:5] == [f"virtio_set_status vdev=virtio-blk val={v}" for v in (0, 1, 3, 11, 15)]
    assert "virtio_set_status" not in capsys.readouterr().err


def test_events_not_enabled_print_nothing(guest, image, tmp_path):
    assert run_guest(guest, image, "init") == []
    other = tmp_path / "e.img"          # (the first machine's image lock lasts until it is freed)
    other.write_bytes(bytes(4 << 20))
    assert run_guest(guest, other, "init", "-trace", "no_such_event*") == []


def test_local_apic_register_writes_and_self_ipi(tmp_path):
    from asm import PM32_PROLOGUE, build_machine
    out = io.StringIO()
    trace.set_output(out)
    try:
        trace.enable("apic_*")
        trace.enable("cpu_interrupt")
        m = build_machine(tmp_path, """
        main:
            SETGATE 0x51, handler
            movl $0x1ff, 0xfee000f0        # SVR: APIC software-enabled, spurious vector 0xff
            sti
            movl $0x00044051, 0xfee00300   # ICR: fixed, self shorthand, vector 0x51
            mov $10000000, %ecx            # (taken between instruction slices: wait for it)
        wait:
            cmpl $1, RESULTS
            je done
            loop wait
        done:
            EXIT 0
        handler:
            movl $1, RESULTS
            movl $0, 0xfee000b0            # EOI
            iret
        """, prologue=PM32_PROLOGUE)
        try:
            assert m.run(50_000_000) == 1, m.stop_reason
            assert m.mem.read_u32(0x3000) == 1                  # the handler ran
        finally:
            m.close()
    finally:
        trace.set_output(sys.stderr)
    lines = out.getvalue().splitlines()
    assert "apic_mem_writel 0xf0 = 0x000001ff" in lines, lines
    assert "apic_mem_writel 0x300 = 0x00044051" in lines, lines
    assert "apic_deliver_irq dest 0 dest_mode 0 delivery_mode 0 vector 81 trigger_mode 0" in lines, lines
    i = lines.index("apic_deliver_irq dest 0 dest_mode 0 delivery_mode 0 vector 81 trigger_mode 0")
    assert "cpu_interrupt vector=0x51 kind=exc/irq mode=protected err=-" in lines[i:], lines
    assert "apic_mem_writel 0xb0 = 0x00000000" in lines[i:], lines


def test_help_lists_every_event_family_with_its_format():
    text = trace.help_text()
    listed = {line.split()[0] for line in text.splitlines()}
    for name in ("pci_cfg_read", "pci_cfg_write", "pci_update_mappings_add", "pci_set_irq",
                 "virtio_set_status", "virtio_set_features", "virtio_queue_notify",
                 "virtio_blk_req_complete", "virtio_notify", "pic_set_irq", "pic_interrupt",
                 "apic_deliver_irq", "apic_mem_writel", "cpu_interrupt"):
        assert name in listed, name
    assert "virtio_blk_req_complete" in text and "latency_us=" in text
    assert sorted(listed) == [line.split()[0] for line in text.splitlines()]
