"""The import rules of docs/ARCHITECTURE.md, checked from the code with `ast`: the layer table is
read from the document itself, so the two cannot drift apart.

Every import counts, also one inside a function (a lazy import is still a dependency) and one
under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "machine"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def imports_of(name: str, path: Path, source: str | None = None) -> set[str]:
    """The machine modules and third-party top-level packages `name` imports. `from pkg import x`
    names the module pkg.x when x is one, else pkg itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in MODULES else source)
    return found


GRAPH = {name: {m for m in imports_of(name, path) if m in MODULES and m != name}
         for name, path in MODULES.items()}
THIRD_PARTY = {name: {m.split(".")[0] for m in imports_of(name, path) if not m.startswith("machine")}
               for name, path in MODULES.items()}


def layer_table() -> list[tuple[str, list[str], set[str]]]:
    """(layer, module prefixes, layers it may import) from the document's layer table."""
    text = DOC.read_text()
    section = text[text.index("| layer | modules | may import |"):]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        layer, mods, allowed = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((layer.strip("*"), re.findall(r"`([\w.]+)`", mods),
                     {a.strip() for a in allowed.split(",") if a.strip() and a.strip() != "-"}))
    return rows


LAYERS = layer_table()


def layer_of(module: str) -> str | None:
    best = None
    for layer, prefixes, _ in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    return best and best[0]


def in_(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_document_has_a_layer_table():
    assert [row[0] for row in LAYERS] == ["front", "debug", "board", "devices", "cpu", "base"]


def test_every_module_belongs_to_one_layer():
    # The package root is an empty namespace for all of them.
    assert [m for m in MODULES if m != "machine" and layer_of(m) is None] == []


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep == "machine":
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def downward_violations(graph: dict[str, set[str]]) -> list[str]:
    allowed = {layer: may | {layer} for layer, _, may in LAYERS}
    wrong = []
    for name, deps in graph.items():
        if name == "machine":
            continue
        may = allowed[layer_of(name)]
        for dep in deps:
            if dep != "machine" and "everything" not in may and layer_of(dep) not in may:
                wrong.append(f"{name} ({layer_of(name)}) imports {dep} ({layer_of(dep)})")
    return sorted(wrong)


def test_imports_point_down_the_layers():
    assert downward_violations(GRAPH) == []


def test_the_check_sees_a_device_importing_the_cpu():
    # Worth something only if it fails: the virtqueue with one import too many.
    name, path = "machine.virtio.queue", MODULES["machine.virtio.queue"]
    source = path.read_text() + "\nfrom ..cpu import Cpu\n"
    graph = dict(GRAPH, **{name: {m for m in imports_of(name, path, source) if m in MODULES}})
    assert downward_violations(graph) == ["machine.virtio.queue (devices) imports machine.cpu (cpu)"]


@pytest.mark.parametrize("package, owners", [
    ("unicorn", ("machine.cpu", "machine.cpu_memory", "machine.cpu_hooks", "machine.x86.deliver",
                 "machine.unicorn_internals", "machine.syscall_insn")),
    ("capstone", ("machine.x86.decode", "machine.debug")),
])
def test_only_the_allowed_modules_import(package, owners):
    assert sorted(m for m, deps in THIRD_PARTY.items() if package in deps and not in_(m, *owners)) == []


def test_the_virtio_core_knows_nothing_of_pci():
    core = [m for m in MODULES if in_(m, "machine.virtio") and m not in ("machine.virtio.pci", "machine.virtio.blk_pci")]
    assert core
    assert sorted(f"{m} -> {d}" for m in core for d in GRAPH[m] if in_(d, "machine.pci", "machine.virtio.pci")) == []


def test_the_transport_knows_no_device_model():
    assert sorted(d for d in GRAPH["machine.virtio.pci"] if in_(d, "machine.virtio.blk", "machine.block")) == []


def test_the_block_backend_knows_no_device():
    backend = [m for m in MODULES if in_(m, "machine.block")]
    assert sorted(f"{m} -> {d}" for m in backend for d in GRAPH[m]
                  if in_(d, "machine.virtio", "machine.pci", "machine.devices", "machine.shadow")) == []
