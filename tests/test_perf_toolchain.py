"""ensure_built skips the make process when the target is newer than everything it could
depend on, and still runs make as soon as any file under the directory changes."""

import os
import shutil
import subprocess

import pytest

from machine.toolchain import ensure_built

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc") is None,
                                reason="needs make and gcc")

MAKEFILE = """out/t.txt: src.txt
\tmkdir -p out
\tcp src.txt out/t.txt
"""


@pytest.fixture
def make_calls(monkeypatch):
    calls = []
    real = subprocess.run

    def run(cmd, *a, **k):
        calls.append(cmd)
        return real(cmd, *a, **k)
    monkeypatch.setattr(subprocess, "run", run)
    return calls


def age(path, seconds=100):
    """Date `path` back, so that files written now are newer (coarse file-system clocks too)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_make_runs_only_when_something_changed(tmp_path, make_calls):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "src.txt").write_text("one")
    out = ensure_built(tmp_path, "out/t.txt")
    assert out.read_text() == "one" and len(make_calls) == 1

    assert ensure_built(tmp_path, "out/t.txt") == out
    assert len(make_calls) == 1                      # up to date: no make process

    age(out)
    (tmp_path / "src.txt").write_text("two")
    assert ensure_built(tmp_path, "out/t.txt").read_text() == "two"
    assert len(make_calls) == 2

    (tmp_path / "README.md").write_text("documentation is no input")
    age(tmp_path / "README.md", -100)                # newer than the target: still no make
    ensure_built(tmp_path, "out/t.txt")
    assert len(make_calls) == 2

    (tmp_path / "notes.txt").write_text("any other new file")   # may matter to make: ask it
    ensure_built(tmp_path, "out/t.txt")
    assert len(make_calls) == 3


def test_a_target_make_found_current_is_not_asked_about_again(tmp_path, make_calls):
    """A change to a file the target does not depend on (another helper's source) costs one
    make, not one at every start."""
    (tmp_path / "Makefile").write_text(MAKEFILE + "out/other.txt: other.txt\n\tcp other.txt out/other.txt\n")
    (tmp_path / "src.txt").write_text("x")
    out = ensure_built(tmp_path, "out/t.txt")
    age(tmp_path / "src.txt", 200)
    age(out)                                         # current, but older than what follows
    (tmp_path / "other.txt").write_text("another helper's source, edited")
    for _ in range(3):
        assert ensure_built(tmp_path, "out/t.txt").read_text() == "x"
    assert len(make_calls) == 2


def test_a_missing_target_is_built(tmp_path, make_calls):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "src.txt").write_text("x")
    ensure_built(tmp_path, "out/t.txt")
    (tmp_path / "out" / "t.txt").unlink()
    assert ensure_built(tmp_path, "out/t.txt").read_text() == "x"
    assert len(make_calls) == 2
