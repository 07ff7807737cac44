"""Fault injection with QEMU's blkdebug rules: the rules file parser, the rule engine (events arm
rules, requests are checked against them, states and `once`), the backend wrapper, the command
line, and the guest self-test failing the very same requests on our machine and on QEMU 7.2."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from machine.block import open_drive
from machine.block.blkdebug import BlkDebug, RulesError, parse_rules
from machine.config import ConfigError, DriveConfig

QEMU = shutil.which("qemu-system-x86_64")


class Recorder:
    """An inner backend that records what reached it."""
    size = 1 << 20
    read_only = False
    discard_unmap = True
    cache = "writeback"
    filename = "rec"

    def __init__(self):
        self.calls = []
        self.args = []                 # every call with all its arguments

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name in ("readv", "writev", "flush", "discard", "write_zeroes"):
            def record(*a):
                object.__getattribute__(self, "args").append((name, *a))
                return attr(*a)
            return record
        return attr

    def readv(self, offset, bufs):
        self.calls.append(("read", offset))
        return sum(len(b) for b in bufs)

    def writev(self, offset, bufs):
        self.calls.append(("write", offset))
        return sum(len(b) for b in bufs)

    def flush(self):
        self.calls.append(("flush", 0))

    def discard(self, offset, length):
        self.calls.append(("discard", offset))

    def write_zeroes(self, offset, length, may_unmap):
        self.calls.append(("write-zeroes", offset))

    def refresh_size(self):
        return self.size

    def close(self):
        self.calls.append(("close", 0))


def wrap(text):
    inner = Recorder()
    return BlkDebug(inner, parse_rules(text)), inner


BUF = [memoryview(bytearray(512))]


def fails(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


# ---------------------------------------------------------------- parsing


def test_rules_parse_with_qemus_defaults():
    (rule,) = parse_rules('[inject-error]\nevent = "read_aio"\n')
    assert (rule.errno, rule.offset, rule.once, rule.state) == (errno.EIO, -1, False, 0)
    assert "block-status" not in rule.iotypes and {"read", "write", "flush"} <= rule.iotypes
    (rule,) = parse_rules('# comment\n[inject-error]\nevent = "write_aio"\nsector = "8"\n'
                          'errno = "28"\nonce = "on"\niotype = "write"\n')
    assert (rule.errno, rule.offset, rule.once, rule.iotypes) == (28, 8 * 512, True, {"write"})


@pytest.mark.parametrize("text, message", [
    ('[inject-error]\nerrno = "5"\n', "Missing event name"),
    ('[inject-error]\nevent = "no_such_event"\n', "invalid event"),
    ('[inject-error]\nevent = "read_aio"\nerrno = "five"\n', "not a number"),
    ('[inject-error]\nevent = "read_aio"\nonce = "maybe"\n', "'on' or 'off'"),
    ('[inject-error]\nevent = "read_aio"\niotype = "sideways"\n', "invalid iotype"),
    ('[inject-error]\nevent = read_aio\n', "parse error"),
    ('[inject-error]\nevent = "read_aio"\nnew_state = "2"\n', "Invalid parameter 'new_state'"),
    ('[break-everything]\nevent = "read_aio"\n', "unknown section"),
    ('event = "read_aio"\n', "no group defined"),
    ('[delay]\nevent = "read_aio"\n', "needs latency-ns"),
    ('[delay]\nevent = "read_aio"\nlatency-ns = "0"\n', "must be positive"),
    ('[delay]\nevent = "read_aio"\nlatency-ns = "9"\nerrno = "5"\n', "Invalid parameter 'errno'"),
])
def test_bad_rules_are_refused_with_the_line(text, message):
    with pytest.raises(RulesError, match=message):
        parse_rules(text)


@pytest.mark.parametrize("section, key, value, message", [
    ("inject-error", "state", "x", "[inject-error] state: 'x' is not a number"),
    ("inject-error", "errno", "x", "[inject-error] errno: 'x' is not a number"),
    ("inject-error", "sector", "x", "[inject-error] sector: 'x' is not a number"),
    ("inject-error", "once", "x", "[inject-error] once: expects 'on' or 'off', not 'x'"),
    ("inject-error", "immediately", "x", "[inject-error] immediately: expects 'on' or 'off', not 'x'"),
    ("set-state", "new_state", "x", "[set-state] new_state: 'x' is not a number"),
    ("delay", "latency-ns", "x", "[delay] latency-ns: 'x' is not a number"),
])
def test_bad_values_name_their_section_and_key(section, key, value, message):
    extra = 'latency-ns = "1"\n' if section == "delay" and key != "latency-ns" else ""
    with pytest.raises(RulesError) as e:
        parse_rules(f'[{section}]\nevent = "read_aio"\n{extra}{key} = "{value}"\n')
    assert str(e.value) == message


def test_values_as_qemu_reads_them():
    rules = parse_rules('[inject-error]\nevent = "read_aio"\nsector = "0x10"\nonce = "yes"\n'
                        'immediately = "true"\n'
                        '[inject-error]\nevent = "read_aio"\nonce = "no"\nimmediately = "false"\n'
                        '[set-state]\nevent = "none"\n'
                        '[delay]\nevent = "none"\nlatency-ns = "1"\n')
    assert (rules[0].offset, rules[0].once, rules[0].immediately) == (16 * 512, True, True)
    assert (rules[1].once, rules[1].immediately) == (False, False)
    assert rules[2].new_state == 0 and rules[3].delay_ns == 1
    with pytest.raises(RulesError) as e:
        parse_rules('\n[inject-error]\nevent = "nope"\n')
    assert str(e.value) == "rules:2: invalid event 'nope'"


def test_an_injected_error_says_which_errno():
    bd, _ = wrap('[inject-error]\nevent = "read_aio"\nerrno = "28"\n'
                 '[inject-error]\nevent = "write_aio"\nerrno = "4095"\n')
    with pytest.raises(OSError) as e:
        bd.readv(0, BUF)
    assert (e.value.errno, e.value.strerror) == (28, "blkdebug: injected ENOSPC")
    with pytest.raises(OSError) as e:
        bd.writev(0, BUF)
    assert (e.value.errno, e.value.strerror) == (4095, "blkdebug: injected 4095")


# ---------------------------------------------------------------- the engine


def test_a_rule_is_armed_by_its_event_and_stays_armed():
    bd, inner = wrap('[inject-error]\nevent = "write_aio"\nerrno = "5"\n')
    assert fails(bd.readv, 0, BUF) is None            # not armed yet: reads pass
    assert fails(bd.writev, 0, BUF) == errno.EIO      # the write's own event armed it
    assert fails(bd.readv, 0, BUF) == errno.EIO       # armed rules fail any covered request kind
    assert fails(bd.flush) == errno.EIO
    assert inner.calls == [("read", 0)]               # nothing failed reached the image


def test_sector_and_iotype_limit_what_fails():
    bd, inner = wrap('[inject-error]\nevent = "none"\nsector = "4"\niotype = "read"\n')
    assert fails(bd.readv, 0, BUF) is None            # sector 0 only
    assert fails(bd.readv, 4 * 512, BUF) == errno.EIO
    assert fails(bd.readv, 3 * 512, [memoryview(bytearray(1024))]) == errno.EIO   # covers 3 and 4
    assert fails(bd.writev, 4 * 512, BUF) is None     # iotype=read
    assert fails(bd.flush) is None                    # a flush covers no sector


def test_a_flush_covers_no_sector_not_even_sector_0():
    bd, _ = wrap('[inject-error]\nevent = "none"\nsector = "0"\n')
    assert fails(bd.readv, 0, BUF) == errno.EIO
    assert fails(bd.flush) is None                    # offset 0, length 0: nothing covered


def test_once_fires_on_the_first_matching_request_only():
    bd, _ = wrap('[inject-error]\nevent = "none"\nerrno = "28"\nonce = "on"\n')
    assert fails(bd.readv, 0, BUF) == errno.ENOSPC
    assert fails(bd.readv, 0, BUF) is None
    assert bd.engine.rules == []


def test_state_transitions_pick_the_second_write():
    bd, inner = wrap('[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n'
                     '[inject-error]\nevent = "write_aio"\nstate = "2"\nerrno = "5"\n')
    assert fails(bd.writev, 0, BUF) is None           # state 1 -> 2; the error rule was not armed
    assert bd.engine.state == 2
    assert fails(bd.writev, 512, BUF) == errno.EIO
    assert inner.calls == [("write", 0)]


def test_a_new_event_with_error_rules_replaces_the_armed_set():
    bd, _ = wrap('[inject-error]\nevent = "read_aio"\nsector = "0"\n'
                 '[inject-error]\nevent = "flush_to_disk"\nsector = "1"\n')
    assert fails(bd.readv, 0, BUF) == errno.EIO
    assert fails(bd.flush) is None                    # arms the sector-1 rule, disarms sector 0
    assert fails(bd.writev, 0, BUF) is None           # write_aio has no rules: the set stays
    assert fails(bd.writev, 512, BUF) == errno.EIO
    assert fails(bd.readv, 512, BUF) is None          # read_aio re-arms the sector-0 rule only
    assert fails(bd.readv, 0, BUF) == errno.EIO


def test_errno_zero_matches_and_lets_the_request_through():
    bd, inner = wrap('[inject-error]\nevent = "none"\nerrno = "0"\nonce = "on"\n'
                     '[inject-error]\nevent = "none"\n')
    assert fails(bd.readv, 0, BUF) is None            # the first armed rule matches: no error
    assert len(bd.engine.rules) == 2 and inner.calls == [("read", 0)]


def test_write_zeroes_discard_and_flush_go_through_the_rules():
    bd, inner = wrap('[inject-error]\nevent = "pwritev_zero"\niotype = "write-zeroes"\n')
    assert fails(bd.write_zeroes, 0, 512, False) == errno.EIO
    assert fails(bd.writev, 0, BUF) is None
    bd, inner = wrap('[inject-error]\nevent = "none"\niotype = "discard"\n')
    assert fails(bd.discard, 0, 512) == errno.EIO
    inner.discard_unmap = False                       # discard=ignore: never reaches the image
    assert fails(bd.discard, 0, 512) is None


def test_requests_reach_the_image_unchanged_and_fire_their_events_after():
    bd, inner = wrap('[set-state]\nevent = "pwritev_done"\nstate = "1"\nnew_state = "2"\n'
                     '[inject-error]\nevent = "read_aio"\nstate = "2"\n'
                     '[inject-error]\nevent = "none"\nsector = "8"\niotype = "discard"\n')
    assert fails(bd.readv, 0, BUF) is None           # state 1
    assert fails(bd.write_zeroes, 1024, 2048, True) is None
    assert fails(bd.discard, 4096 + 512, 512) is None       # sector 9: not covered
    assert fails(bd.discard, 4096, 1024) == errno.EIO
    assert inner.args[1:] == [("write_zeroes", 1024, 2048, True), ("discard", 4608, 512)]
    assert fails(bd.readv, 0, BUF) == errno.EIO      # pwritev_done moved the engine to state 2
    bd, _ = wrap('[inject-error]\nevent = "pwritev"\nsector = "16"\niotype = "write-zeroes"\n')
    assert fails(bd.write_zeroes, 0, 16 * 512, False) is None          # ends just before it
    assert fails(bd.write_zeroes, 15 * 512, 1024, False) == errno.EIO  # covers sector 16


@pytest.mark.parametrize("event", ["flush_to_os", "flush_to_disk"])
def test_a_flush_fires_both_flush_events(event):
    bd, inner = wrap(f'[inject-error]\nevent = "{event}"\niotype = "flush"\n')
    assert fails(bd.flush) == errno.EIO and inner.calls == []
    assert fails(bd.readv, 0, BUF) is None


def test_a_write_fires_pwritev_then_pwritev_done():
    bd, _ = wrap('[set-state]\nevent = "pwritev"\nstate = "1"\nnew_state = "2"\n'
                 '[set-state]\nevent = "pwritev_done"\nstate = "2"\nnew_state = "3"\n')
    assert fails(bd.writev, 0, BUF) is None and bd.engine.state == 3


def test_every_rule_of_an_event_is_armed_in_file_order():
    bd, _ = wrap('[inject-error]\nevent = "read_aio"\nsector = "8"\nerrno = "5"\n'
                 '[inject-error]\nevent = "read_aio"\nsector = "16"\nerrno = "28"\n'
                 '[delay]\nevent = "read_aio"\nsector = "8"\nlatency-ns = "5000"\n'
                 '[delay]\nevent = "read_aio"\nlatency-ns = "7000"\n')
    assert fails(bd.readv, 8 * 512, BUF) == errno.EIO and bd.take_delay_ns() == 5000
    assert fails(bd.readv, 16 * 512, BUF) == errno.ENOSPC and bd.take_delay_ns() == 7000
    assert fails(bd.readv, 0, BUF) is None and bd.take_delay_ns() == 7000


def test_rules_files_name_themselves_in_errors(tmp_path):
    from machine.block.blkdebug import load_rules
    with pytest.raises(RulesError) as e:
        load_rules(tmp_path / "missing.conf")
    assert str(e.value) == f"Could not read blkdebug config file '{tmp_path / 'missing.conf'}': " \
                           "No such file or directory"
    bad = tmp_path / "bad.conf"
    bad.write_text('[inject-error]\nevent = "read_aio"\nbogus = "1"\n')
    with pytest.raises(RulesError) as e:
        load_rules(bad)
    assert str(e.value) == f"{bad}:3: Invalid parameter 'bogus' in [inject-error]"
    bad.write_bytes(b"\xff\xfe[")
    with pytest.raises(RulesError, match=f"Could not read blkdebug config file '{bad}': .*utf-8"):
        load_rules(bad)


def test_a_failed_write_zeroes_still_ends_with_pwritev_done():
    bd, _ = wrap('[inject-error]\nevent = "pwritev_zero"\niotype = "write-zeroes"\nonce = "on"\n'
                 '[set-state]\nevent = "pwritev_done"\nstate = "1"\nnew_state = "3"\n')
    assert fails(bd.write_zeroes, 0, 512, False) == errno.EIO
    assert bd.engine.state == 3


# ---------------------------------------------------------------- drives and the command line


def test_resize_reaches_the_image_through_the_rules(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    rules = tmp_path / "r.conf"
    rules.write_text('[inject-error]\nevent = "write_aio"\n')
    be = open_drive(DriveConfig(file=img, blkdebug=rules))
    try:
        be.resize(8192)
        assert img.stat().st_size == 8192 and be.size == 8192
        os.truncate(img, 16384)                        # the host grows it behind the machine
        assert be.refresh_size() == 16384 == be.size
    finally:
        be.close()


def test_a_backend_that_cannot_resize_says_so():
    from machine.block.raw import BlockBackend
    with pytest.raises(OSError) as e:
        BlockBackend().resize(4096)
    assert (e.value.errno, e.value.strerror) == (errno.ENOTSUP, "this image cannot be resized")


def test_a_drive_with_rules_wraps_the_image(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    rules = tmp_path / "r.conf"
    rules.write_text('[inject-error]\nevent = "write_aio"\n')
    be = open_drive(DriveConfig(file=img, blkdebug=rules))
    assert isinstance(be, BlkDebug) and be.size == 4096
    assert fails(be.writev, 0, [memoryview(b"x" * 512)]) == errno.EIO
    be.close()
    assert img.read_bytes() == bytes(4096)


@pytest.mark.parametrize("spec, message", [
    ("blkdebug:{rules}", "requires both config file and image path"),
    ("blkdebug:{missing}:{img}", "Could not read blkdebug config file"),
    ("blkdebug:{bad}:{img}", "Missing event name"),
])
def test_bad_blkdebug_drives_are_one_line_and_status_1(tmp_path, spec, message):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    rules = tmp_path / "r.conf"
    rules.write_text('[inject-error]\nevent = "read_aio"\n')
    bad = tmp_path / "bad.conf"
    bad.write_text('[inject-error]\nerrno = "5"\n')
    drive = spec.format(rules=rules, img=img, missing=tmp_path / "nope", bad=bad)
    r = subprocess.run([sys.executable, "-m", "machine", "-drive", f"file={drive},format=raw,if=virtio"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- the same failures as QEMU

RULES = {
    # every write fails once: the guest's first write sees IOERR, the rest succeed
    "write_once": '[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n',
    # from the first flush on, every request covering any sector fails
    "after_flush": '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\n',
    # the second write and everything after it
    "second_write": ('[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n'
                     '[inject-error]\nevent = "write_aio"\nstate = "2"\nerrno = "5"\n'),
}


def tap_lines(out: str) -> list[str]:
    return [l for l in out.replace("\r", "").splitlines() if l.startswith(("ok ", "not ok "))]


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("name", RULES)
def test_the_guest_sees_the_same_failures_as_on_qemu(guest, tmp_path, name):
    rules = tmp_path / "r.conf"
    rules.write_text(RULES[name])
    results = {}
    for who, program in (("qemu", [QEMU, "-nodefaults"]), ("ours", [sys.executable, "-m", "machine"])):
        img = tmp_path / f"{who}.img"
        with open(img, "wb") as f:
            f.truncate(4 << 20)
        r = subprocess.run([*program, "-display", "none", "-no-reboot", "-m", "128", "-serial", "stdio",
                            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(guest),
                            "-drive", f"file=blkdebug:{rules}:{img},format=raw,if=none,id=d0",
                            "-device", "virtio-blk-pci,drive=d0"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        results[who] = (r.returncode, tap_lines(r.stdout), img.read_bytes())
    q, o = results["qemu"], results["ours"]
    assert any(l.startswith("not ok") for l in q[1]), "the rules must make some guest test fail"
    assert o[0] == q[0] == 3
    assert o[1] == q[1]
    assert o[2] == q[2]


def test_rules_over_a_snapshot_overlay(tmp_path):
    """blkdebug sits on top of -snapshot's overlay (it once wrapped the image underneath,
    which the overlay reads through a file descriptor blkdebug does not have)."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    rules = tmp_path / "r.conf"
    rules.write_text('[inject-error]\nevent = "write_aio"\nonce = "on"\n')
    be = open_drive(DriveConfig(file=img, blkdebug=rules, snapshot=True))
    assert fails(be.writev, 0, [memoryview(b"x" * 512)]) == errno.EIO
    assert be.writev(0, [memoryview(b"y" * 512)]) == 512
    buf = bytearray(512)
    assert be.readv(0, [memoryview(buf)]) == 512 and buf == b"y" * 512
    be.close()
    assert img.read_bytes() == bytes(4096)


# ---------------------------------------------------------------- [delay] (ours): held completions


def test_delay_rules_are_armed_like_error_rules_and_leave_failures_alone():
    bd, _ = wrap('[delay]\nevent = "read_aio"\nsector = "8"\nlatency-ns = "5000"\n'
                 '[delay]\nevent = "write_aio"\nonce = "on"\nlatency-ns = "7000"\n'
                 '[inject-error]\nevent = "write_aio"\nsector = "16"\n')
    assert fails(bd.readv, 0, BUF) is None and bd.take_delay_ns() == 0      # not sector 8
    assert fails(bd.readv, 8 * 512, BUF) is None and bd.take_delay_ns() == 5000
    assert bd.take_delay_ns() == 0                                        # taken once
    assert fails(bd.writev, 16 * 512, BUF) == errno.EIO                   # failed and held
    assert bd.take_delay_ns() == 7000
    assert fails(bd.writev, 0, BUF) is None and bd.take_delay_ns() == 0   # once: gone
    assert fails(bd.readv, 8 * 512, BUF) is None and bd.take_delay_ns() == 5000   # still armed


def test_a_delay_rule_holds_the_completion_for_virtual_time(tmp_path):
    """The request is carried out at once; its used element and interrupt come latency-ns of
    virtual time later, while other requests complete as usual; a reset drops what is held."""
    from virtio_driver import S_OK, T_IN, Bench, pattern
    from machine.clock import VirtualClock

    rules = tmp_path / "r.conf"
    rules.write_text('[delay]\nevent = "read_aio"\nsector = "8"\nlatency-ns = "5000000"\n')
    b = Bench(tmp_path, blkdebug=rules)
    try:
        clock = b.vdev.clock = VirtualClock()
        b.start(features=b.drv.device_features() & ~(1 << 29))     # no EVENT_IDX: every completion interrupts
        vq = b.vqs[0]
        held = b.blk.submit(T_IN, 8, in_len=512)
        b.drv.kick(0)
        assert vq.get_used() == [] and b.blk.result(held) == (pattern(1 << 20)[4096:4608], S_OK)
        quick = b.blk.submit(T_IN, 0, in_len=512)
        b.drv.kick(0)
        assert vq.get_used() == [(quick.head, 513)]
        b.vdev.read_isr()                            # the driver acknowledges: INTx drops
        assert not b.dev.intx.level
        clock.advance(4_999_999)
        assert vq.get_used() == [] and not b.dev.intx.level
        clock.advance(1)
        assert vq.get_used() == [(held.head, 513)] and b.dev.intx.level

        b.blk.submit(T_IN, 8, in_len=512)
        b.drv.kick(0)
        assert b.vdev.delayed
        b.start()                                    # reset: the held completion is dropped
        assert not b.vdev.delayed and clock.next_deadline() is None
        assert b.vqs[0].used_idx() == 0
    finally:
        b.close()


def test_the_board_gives_virtio_blk_its_virtual_clock(tmp_path):
    from machine.config import DeviceConfig, MachineConfig
    from machine.pc import Machine
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    m = Machine(MachineConfig(drives=[DriveConfig(file=img, id="d0", interface="none")],
                              devices=[DeviceConfig("virtio-blk-pci", {"drive": "d0"})]))
    try:
        assert m.devices["virtio-blk0"].vdev.clock is m.clock
    finally:
        m.close()


def test_a_drive_with_bad_rules_is_a_config_error_naming_them(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('[inject-error]\nevent = "read_aio"\nbogus = "1"\n')
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    with pytest.raises(ConfigError) as e:
        open_drive(DriveConfig(file=img, blkdebug=bad))
    assert str(e.value) == f"{bad}:3: Invalid parameter 'bogus' in [inject-error]"


def test_a_held_completion_key_names_a_real_queue_head_and_length(tmp_path):
    """held_release() rebuilds a held completion from a saved timer key (a snapshot is host
    input): a queue the device lacks, a head past 16 bits or a length past 32 bits is refused."""
    from virtio_driver import Bench
    b = Bench(tmp_path)
    try:
        v = b.vdev
        n = len(v.queues)
        assert v.held_release(n - 1, 0xFFFF, (1 << 32) - 1) is not None
        assert v.held_release(0, 0, 0) is not None
        for bad in [(n, 0, 0), (-1, 0, 0), (0, 1 << 16, 0), (0, -1, 0), (0, 0, 1 << 32), (0, 0, -1)]:
            assert v.held_release(*bad) is None, bad
    finally:
        b.close()


def test_a_held_completion_of_a_broken_device_is_dropped(tmp_path):
    from virtio_driver import T_IN, Bench
    from machine.clock import VirtualClock
    from machine.virtio.queue import VirtqueueError

    rules = tmp_path / "r.conf"
    rules.write_text('[delay]\nevent = "read_aio"\nsector = "8"\nlatency-ns = "5000"\n')
    b = Bench(tmp_path, blkdebug=rules)
    try:
        clock = b.vdev.clock = VirtualClock()
        b.start(features=b.drv.device_features() & ~(1 << 29))
        b.blk.submit(T_IN, 8, in_len=512)
        b.drv.kick(0)
        assert b.vdev.delayed
        b.vdev.virtio_error(VirtqueueError("broken for the test"))
        clock.advance(5000)
        assert not b.vdev.delayed and b.vqs[0].used_idx() == 0     # released, but not pushed
    finally:
        b.close()
