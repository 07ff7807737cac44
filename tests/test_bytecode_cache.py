"""machine/bytecode.py: this package's modules keep their compiled code outside the source tree
while Python's own bytecode cache is off (PYTHONDONTWRITEBYTECODE)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machine import bytecode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throw-away package `bcpkg` with one module, the cache in its own directory, and Python's
    own bytecode writing off (as under PYTHONDONTWRITEBYTECODE)."""
    src = tmp_path / "src" / "bcpkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "mod.py").write_text("VALUE = 1\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("MACHINE_BYTECODE_CACHE", str(cache))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    before = list(sys.meta_path)
    yield src, cache
    sys.meta_path[:] = before
    for name in [n for n in sys.modules if n == "bcpkg" or n.startswith("bcpkg.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def fresh_import(name: str):
    for n in [n for n in sys.modules if n == "bcpkg" or n.startswith("bcpkg.")]:
        del sys.modules[n]
    return importlib.import_module(name)


def test_a_module_is_compiled_once_then_served_from_the_cache(package):
    src, cache = package
    bytecode.install("bcpkg")
    assert fresh_import("bcpkg.mod").VALUE == 1
    [entry] = list(cache.iterdir())
    assert "bcpkg" in entry.name and entry.name.endswith(".pyc")
    assert not (src / "__pycache__").exists()           # nothing written into the source tree
    # The next import uses the cached code object, not the source: swap in other code under the
    # same (valid) header and it is what runs.
    data = entry.read_bytes()
    header_len = len(importlib.util.MAGIC_NUMBER) + 16
    import marshal
    entry.write_bytes(data[:header_len] + marshal.dumps(compile("VALUE = 'cached'", "x", "exec")))
    assert fresh_import("bcpkg.mod").VALUE == "cached"


def test_an_edited_source_is_recompiled(package):
    src, cache = package
    bytecode.install("bcpkg")
    assert fresh_import("bcpkg.mod").VALUE == 1
    (src / "mod.py").write_text("VALUE = 22\n")          # new size (and mtime)
    assert fresh_import("bcpkg.mod").VALUE == 22


def test_a_corrupt_or_unwritable_cache_only_means_compiling(package, tmp_path, monkeypatch):
    src, cache = package
    bytecode.install("bcpkg")
    fresh_import("bcpkg.mod")
    [entry] = list(cache.iterdir())
    entry.write_bytes(entry.read_bytes()[:30])            # truncated
    assert fresh_import("bcpkg.mod").VALUE == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("MACHINE_BYTECODE_CACHE", str(blocked / "sub"))   # cannot be created
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, bytecode._Finder)]
    bytecode.install("bcpkg")
    assert fresh_import("bcpkg.mod").VALUE == 1


def test_off_when_python_writes_bytecode_or_when_disabled(package, monkeypatch):
    src, cache = package
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    bytecode.install("bcpkg")
    fresh_import("bcpkg.mod")
    assert not cache.exists()
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("MACHINE_BYTECODE_CACHE", "0")
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, bytecode._Finder)]
    bytecode.install("bcpkg")
    fresh_import("bcpkg.mod")
    assert not cache.exists()


def test_the_package_itself_uses_it_under_pythondontwritebytecode(tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MACHINE_BYTECODE_CACHE=str(tmp_path),
               PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", "import machine.pc"], env=env, check=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert any(n.endswith("%machine%pc.pyc") for n in names)
    assert any(n.endswith("%machine%cpu.pyc") for n in names)
