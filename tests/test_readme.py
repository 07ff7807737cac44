"""The README's code blocks, run as a reader would run them: every shell line, the sample output,
the monitor commands, the Python API example and the pytest fixture example. A README claim is a
tested claim; a new kind of block fails here until this file knows how to check it.

Everything runs in a scratch directory holding only a link to the checkout's guest/ (so
`guest/out/guest.elf` works as written) and a `python3` that is this interpreter; whatever the
examples write (disk.img, fw.log, machine.log, cpu.log) lands there, never in the tree."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 300
# The lines that install or run this suite: checked against .ci/run, not run from inside it.
SUITE_LINE = "python3 -m pip install -e '.[test]' && python3 -m pytest -q -n auto"


def blocks() -> list[tuple[str, str, int]]:
    """(language, text, line number) of every fenced block."""
    found, lang, lines, start = [], None, [], 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, lines, start = line[3:].strip(), [], number
            else:
                found.append((lang, "\n".join(lines), start))
                lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, "an unclosed code block"
    return found


def shell_lines(text: str) -> list[str]:
    """Logical lines (backslash continuations joined), without comment lines and comments."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line.split("  #")[0].strip() if "  #" in line else line.strip())
    return out


@pytest.fixture
def workspace(tmp_path, guest):
    """A scratch directory as a reader's: guest/ (built), python3 on PATH, this checkout
    importable, and the disk.img the README's set-up makes (with the README's own line)."""
    ws = tmp_path
    (ws / "guest").symlink_to(ROOT / "guest")
    bin_dir = ws / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for command in setup_commands():
        made = sh(ws, command)
        assert made.returncode == 0, made.stderr
    return ws


def env_for(ws: Path) -> dict[str, str]:
    return dict(os.environ, PATH=f"{ws / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def sh(ws: Path, command: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ws, env=env_for(ws), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT, **kw)


def is_debugging(line: str) -> bool:
    return " -s -S " in f" {line} " or line.startswith("gdb ")


def runnable_blocks() -> list[tuple[int, list[str]]]:
    """Every shell block's lines as they are run here, (README line, commands): option lines
    (starting with `-`) are added to `python3 -m machine`; an install before `&&` is what the
    reader did already."""
    found = []
    for lang, text, number in blocks():
        if lang != "sh":
            continue
        commands = []
        for line in shell_lines(text):
            if line == SUITE_LINE or is_debugging(line):
                continue
            if line.startswith("python3 -m pip install . && "):
                line = line.split(" && ", 1)[1]
            if line.startswith("-"):
                line = f"python3 -m machine {line}"
            commands.append(line)
        if commands:
            found.append((number, commands))
    return found


def setup_commands() -> list[str]:
    """The set-up block that makes disk.img (and runs the self-test on it, writing its
    pattern): the state every later example starts from."""
    (commands,) = [c for _, c in runnable_blocks() if any("machine.img create" in x for x in c)]
    return commands


def test_every_block_is_one_this_file_checks():
    for lang, text, number in blocks():
        if lang == "sh":
            for line in shell_lines(text):
                assert (line == SUITE_LINE or is_debugging(line) or line.startswith("-")
                        or line.startswith(("python3 -m machine", "python3 -m pip install . && ",
                                            "printf "))), f"README line {number}: {line}"
        elif lang == "python":
            assert "Session.from_args" in text or "def test_my_guest(boot" in text, number
        else:
            assert lang == "", f"README line {number}: a ```{lang} block"
            assert text.startswith(("1..", "(gdb) ")), f"README line {number}"


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install, run = SUITE_LINE.split(" && ")
    assert run in ci
    assert any(line.replace(" -q", "") == install for line in ci)
    assert any(SUITE_LINE in shell_lines(text) for lang, text, _ in blocks() if lang == "sh")


@pytest.mark.parametrize("block", [c for _, c in runnable_blocks()],
                         ids=[f"README line {n}" for n, _ in runnable_blocks()])
def test_every_shell_line_runs_as_written(workspace, block):
    """Each block's lines in order, as a reader who did the set-up runs them."""
    for command in block:
        check_command(workspace, command)


def check_command(workspace: Path, command: str) -> None:
    run = sh(workspace, command)
    errors = [line for line in run.stderr.splitlines()
              if line.startswith("machine: ") and ": warning: " not in line]
    assert not errors and "Traceback" not in run.stderr, f"{command}\n{run.stderr[-2000:]}"
    # Status 0: the bundled self-test passed, or no machine ran (printf, machine.img).
    # Status 1 with isa-debug-exit on a -kernel line: QEMU's status for a guest writing 0.
    # Status 1 with blkdebug error rules: the example makes a guest test fail on purpose
    # ([delay] rules only hold completions back: the self-test passes).
    rules = re.search(r"blkdebug:([^:]+):", command)
    injects = rules is not None and "[inject-error]" in (workspace / rules.group(1)).read_text()
    expected = 1 if ("-kernel" in command and "isa-debug-exit" in command) or injects else 0
    assert run.returncode == expected, f"{command}\n{run.stderr[-2000:]}"
    if injects:
        assert re.search(r"^not ok \d+ - \w+ # .*status IOERR", run.stdout, re.M), run.stdout
    elif rules is not None:
        assert "# 0 of 15 tests failed" in run.stdout, run.stdout
    if "img create disk.img 64M" in command:
        assert (workspace / "disk.img").stat().st_size == 64 << 20
    if "path=fw.log" in command:
        assert (workspace / "fw.log").stat().st_size > 0
    if "-trace" in command and "-D machine.log" in command:
        assert re.search(r"^(virtio|pci|pic)_\w+ ", (workspace / "machine.log").read_text(), re.M)
    if "-D cpu.log" in command:
        assert "<kmain>" in (workspace / "cpu.log").read_text()


def test_the_sample_output_is_what_the_default_run_prints(workspace):
    (sample,) = [text for lang, text, _ in blocks() if lang == "" and text.startswith("1..")]
    run = sh(workspace, "python3 -m machine")
    assert run.returncode == 0, run.stderr
    out = run.stdout.replace("\r\n", "\n").splitlines()
    at = 0
    for line in sample.splitlines():
        if line == "...":
            continue
        assert line in out[at:], f"{line!r} not printed (in order) by the default run"
        at = out.index(line, at) + 1


def test_the_tests_option_runs_init_then_the_named_tests(workspace):
    """The prose claim: `-append tests=flush,get_id` runs two tests after `init`."""
    text = README.read_text().replace("\n", " ")
    assert "`python3 -m machine -append tests=flush,get_id` runs two tests after `init`" in text
    run = sh(workspace, "python3 -m machine -append tests=flush,get_id")
    assert run.returncode == 0, run.stderr
    assert re.findall(r"^ok \d+ - (\w+)", run.stdout, re.M) == ["init", "flush", "get_id"]


def test_the_monitor_break_commands_are_accepted(guest):
    from machine.api import Session
    (sample,) = [text for lang, text, _ in blocks() if text.startswith("(gdb) monitor ")]
    with Session.from_args([]) as s:
        for n, line in enumerate(sample.splitlines(), 1):
            reply = s.monitor(line.removeprefix("(gdb) monitor "))
            assert reply.startswith(f"Device breakpoint {n}: "), reply


def test_the_python_api_example(workspace):
    (code,) = [text for lang, text, _ in blocks() if lang == "python" and "Session" in text]
    script = workspace / "api_example.py"
    script.write_text(code)
    sh(workspace, "python3 -m machine.img create disk.img 64M")
    run = sh(workspace, f"python3 {script.name}")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("vblk_init 0x")
    assert lines[1].startswith("device breakpoint 1 ") and lines[1].endswith("request flush")
    assert "virtio-blk" in run.stdout and lines[-1] == "1"


def test_the_boot_fixture_example(workspace):
    (code,) = [text for lang, text, _ in blocks() if lang == "python" and "boot" in text
               and "Session" not in text]
    (workspace / "test_readme_example.py").write_text(code)
    run = sh(workspace, "python3 -m pytest -q -p machine.testing -p no:cacheprovider "
                        "test_readme_example.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def debugging_lines(workspace) -> tuple[str, str]:
    """The debugging block's machine and gdb lines, with a free port in place of -s's 1234
    (tests run in parallel), on a fresh disk.img."""
    (text,) = [text for lang, text, _ in blocks() if lang == "sh" and " -s -S " in text]
    machine_line, gdb_line = shell_lines(text)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    machine_line = machine_line.rstrip("&").strip().replace(" -s ", f" -gdb tcp::{port} ")
    gdb_line = gdb_line.replace(":1234", f":{port}")
    sh(workspace, "python3 -m machine.img create disk.img 64M")
    return machine_line, gdb_line


def start_machine(workspace, machine_line: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"exec {machine_line}"], cwd=workspace,
                            env=env_for(workspace), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_the_gdb_example(workspace):
    """The debugging block."""
    machine_line, gdb_line = debugging_lines(workspace)
    machine = start_machine(workspace, machine_line)
    try:
        # -batch: gdb runs the README's commands and exits, detaching: the guest runs on.
        gdb = sh(workspace, gdb_line.replace("gdb ", "gdb -batch -nx ", 1))
        assert re.search(r"Breakpoint 1, vblk_init", gdb.stdout), gdb.stdout + gdb.stderr
        out, err = machine.communicate(timeout=60)
        assert machine.returncode == 1, err            # the guest passed (isa-debug-exit 0)
    finally:
        if machine.poll() is None:
            machine.kill()
            machine.wait()


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_the_reverse_debugging_session(workspace):
    """The `(gdb)` session block: its commands typed into gdb attached to the debugging block's
    machine; every other line of the block is output gdb must print, in that order (`...`
    stands for anything: addresses, line numbers)."""
    (text,) = [text for lang, text, _ in blocks() if lang == "" and text.startswith("(gdb) ")
               and not text.startswith("(gdb) monitor ")]
    commands = [line[len("(gdb) "):] for line in text.splitlines() if line.startswith("(gdb) ")]
    expected = [line for line in text.splitlines() if not line.startswith("(gdb) ")]
    machine_line, gdb_line = debugging_lines(workspace)
    target = gdb_line.split(" -ex ")[1]                      # 'target remote :PORT'
    args = " ".join(f"-ex {shlex.quote(c)}" for c in [shlex.split(target)[0], *commands])
    machine = start_machine(workspace, machine_line)
    try:
        out = sh(workspace, f"gdb -batch -nx guest/out/guest.elf {args} 2>&1").stdout
        pos = 0
        for line in expected:
            pattern = ".*".join(re.escape(part) for part in line.split("..."))
            found = re.compile(pattern, re.M).search(out, pos)
            assert found, f"not in gdb's output (after what came before): {line}\n{out}"
            pos = found.end()
        out, err = machine.communicate(timeout=60)
        assert machine.returncode == 1, err            # gdb detached, the guest passed
    finally:
        if machine.poll() is None:
            machine.kill()
            machine.wait()
