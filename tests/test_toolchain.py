"""Building our C/assembly: serialised between processes, a compile error shown in the
compiler's words (and failing a test, never skipping it), and the sources travelling with an
installed package that builds them in a per-user cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from building import built
from machine.toolchain import ToolchainError, ensure_built

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc") is None,
                                reason="needs make and gcc")

# A build that fails if a second one runs over it, and counts how often it ran.
SLOW_MAKEFILE = """out/t.txt: src.txt
\tmkdir -p out
\ttest ! -e out/busy || { echo "two builds at once" >&2; exit 1; }
\ttouch out/busy
\techo run >> runs.log
\tsleep 0.5
\tcp src.txt out/t.txt
\trm out/busy
"""


def test_two_processes_building_at_once_wait_for_one_build(tmp_path):
    (tmp_path / "Makefile").write_text(SLOW_MAKEFILE)
    (tmp_path / "src.txt").write_text("payload")
    code = ("import sys; from machine.toolchain import ensure_built; "
            f"print(ensure_built({str(tmp_path)!r}, 'out/t.txt').read_text())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert all(out.strip() == "payload" for out, _ in results)
    assert (tmp_path / "runs.log").read_text() == "run\n"     # one make did the work


def planted_guest(tmp_path: Path) -> Path:
    """A copy of the guest's sources with a syntax error in main.c."""
    copy = tmp_path / "guest"
    shutil.copytree(ROOT / "guest", copy, ignore=shutil.ignore_patterns("out"))
    main = copy / "main.c"
    main.write_text(main.read_text() + "\nint planted_error(void) { return 1 }\n")
    return copy


def test_a_compile_error_is_reported_in_the_compilers_words(tmp_path):
    copy = planted_guest(tmp_path)
    with pytest.raises(ToolchainError) as info:
        ensure_built(copy, "out/guest.elf")
    assert "main.c" in str(info.value) and "error" in str(info.value)
    assert "make:" not in str(info.value)
    assert "error: expected" in str(info.value)
    assert "planted_error" in info.value.details


def test_a_compile_error_of_our_own_code_fails_a_test_instead_of_skipping(tmp_path):
    copy = planted_guest(tmp_path)
    with pytest.raises(pytest.fail.Exception) as info:
        built(copy, "out/guest.elf")
    assert "error: expected" in str(info.value) and "planted_error" in str(info.value)


def test_a_missing_compiler_skips_saying_which(tmp_path, monkeypatch):
    (tmp_path / "Makefile").write_text(SLOW_MAKEFILE)
    (tmp_path / "src.txt").write_text("x")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(pytest.skip.Exception) as info:
        built(tmp_path, "out/t.txt")
    assert "'make' not found" in str(info.value)


def test_the_cli_shows_the_compiler_error_after_its_one_line(tmp_path, monkeypatch, capsys):
    import machine.toolchain
    from machine import cli
    copy = planted_guest(tmp_path)
    real = machine.toolchain.ensure_built
    monkeypatch.setattr(machine.toolchain, "ensure_built",
                        lambda d, t: real(copy, t) if d == "guest" else real(d, t))
    assert cli.main(["-append", "tests=init"]) == 1
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith("machine: building guest/out/guest.elf failed: ") and "main.c" in first
    assert any("planted_error" in line for line in rest), err


def copy_checkout(dest: Path) -> Path:
    """The files git tracks (or would), without build output: what a clone or sdist holds."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "out", "__pycache__", "*.egg-info", "build", "*.img", ".pytest_cache",
        ".hypothesis"))
    return dest


def test_an_installed_package_carries_and_builds_its_sources(tmp_path):
    """What `pip install .` or a wheel installs (setup.py's build step, here without network),
    made read-only, runs the bundled guest: firmware and guest sources are copied into the
    package and built on first use in the per-user cache."""
    src = copy_checkout(tmp_path / "src")
    lib = tmp_path / "lib"
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(lib)],
                          cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (lib / "machine" / "_bundled" / "guest" / "main.c").is_file()
    assert (lib / "machine" / "_bundled" / "firmware" / "Makefile").is_file()
    for root, dirs, files in os.walk(lib):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o555 if name in dirs else 0o444)
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(lib), MACHINE_CACHE_DIR=str(cache))
    try:
        run = subprocess.run([sys.executable, "-m", "machine", "-append", "tests=init"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    finally:
        for root, dirs, _ in os.walk(lib):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok 1 - init" in run.stdout
    # The firmware, the guest and the CPU's native helper (native/rep_string.c) were built.
    assert sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()) == \
        ["firmware", "guest", "native"]
    assert not (lib / "machine" / "_bundled" / "guest" / "out").exists()


def test_a_checkout_without_the_dependencies_says_what_to_install(tmp_path, hello):
    """`python3 -m machine` in a checkout whose dependencies are not installed: one line."""
    stub = tmp_path / "stub"
    stub.mkdir()
    # A module that fails to import as a missing package does.
    (stub / "unicorn.py").write_text("raise ModuleNotFoundError(\"No module named 'unicorn'\", "
                                     "name='unicorn')\n")
    env = dict(os.environ, PYTHONPATH=f"{stub}{os.pathsep}{ROOT}")
    run = subprocess.run([sys.executable, "-m", "machine", "-kernel", str(hello)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "'unicorn' is not installed" in lines[0] and "pip install" in \
        lines[0], run.stderr


def not_writable(monkeypatch, tree: Path) -> None:
    """`tree` as a user who cannot write it sees it (chmod does not stop root)."""
    import machine.toolchain
    real = machine.toolchain._writable
    monkeypatch.setattr(machine.toolchain, "_writable",
                        lambda p: False if Path(p) == tree else real(p))


def test_a_read_only_tree_built_already_is_used_in_place(tmp_path, monkeypatch):
    (tmp_path / "Makefile").write_text(SLOW_MAKEFILE)
    (tmp_path / "src.txt").write_text("x")
    out = ensure_built(tmp_path, "out/t.txt")
    monkeypatch.setenv("MACHINE_CACHE_DIR", str(tmp_path / "cache"))
    not_writable(monkeypatch, tmp_path)
    assert ensure_built(tmp_path, "out/t.txt") == out
    assert not (tmp_path / "cache").exists()


def test_a_read_only_tree_not_built_is_built_in_the_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Makefile").write_text(SLOW_MAKEFILE)
    (src / "src.txt").write_text("cached")
    monkeypatch.setenv("MACHINE_CACHE_DIR", str(tmp_path / "cache"))
    not_writable(monkeypatch, src)
    out = ensure_built(src, "out/t.txt")
    assert out.read_text() == "cached" and out.is_relative_to(tmp_path / "cache")
    assert not (src / "out").exists()
    assert ensure_built(src, "out/t.txt") == out          # the same copy, built once
