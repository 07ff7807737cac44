"""The trace-events tables: every event is declared once with its fields, every emit passes
exactly those fields, and `-trace help` reads the tables (saying which events are ours alone)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from machine import trace

ROOT = Path(__file__).resolve().parent.parent
DECLS = trace.declarations()


def event_sites():
    """(module path, event name, variable) of every `X = trace.Event("name")`, and
    (module path, variable, keyword names, line) of every `X.emit(...)`."""
    events, emits = [], []
    for path in sorted((ROOT / "machine").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "Event":
                events.append((path, node.value.args[0].value, node.targets[0].id))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "emit" and isinstance(node.func.value, ast.Name):
                emits.append((path, node.func.value.id, {k.arg for k in node.keywords}, node.lineno))
    return events, emits


EVENTS, EMITS = event_sites()


def test_every_event_is_declared_once_in_its_package_table():
    for path, name, _ in EVENTS:
        decl = DECLS.get(name)
        assert decl is not None, f"{path.name}: {name} is not declared"
        # declared in the table of the package that emits it
        assert path.relative_to(ROOT).as_posix().startswith(decl.table + "/"), (name, decl.table)
    assert sorted(DECLS) == sorted(name for _, name, _ in EVENTS)          # no stale line


def test_every_emit_passes_exactly_the_declared_fields():
    names = {(path, var): name for path, name, var in EVENTS}
    assert EMITS
    wrong = []
    for path, var, keywords, line in EMITS:
        name = names.get((path, var))
        assert name is not None, f"{path.name}:{line}: {var}.emit of an event not defined here"
        if keywords != set(DECLS[name].fields):
            wrong.append(f"{path.name}:{line}: {name} emitted with {sorted(keywords)}, "
                         f"declared {list(DECLS[name].fields)}")
    assert wrong == []


def test_ours_alone_are_the_events_qemu_7_2_does_not_have():
    ours = {name for name, d in DECLS.items() if d.ours}
    assert ours == {"pci_set_irq", "cpu_interrupt", "virtio_error", "virtio_notify_config",
                    "virtio_set_features", "msi_deliver", "ioapic_service", "acpi_pm_sleep"}


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed")
def test_ours_is_exactly_what_qemus_trace_help_lacks():
    qemu = set(subprocess.run(["qemu-system-x86_64", "-trace", "help"], capture_output=True,
                              text=True, timeout=60).stdout.split())
    assert {name for name, d in DECLS.items() if d.ours} == set(DECLS) - qemu


def test_help_says_which_events_are_ours():
    lines = {line.split()[0]: line for line in trace.help_text().splitlines()}
    assert lines["pci_set_irq"].endswith("[ours: not in QEMU 7.2]")
    assert "ours" not in lines["virtio_set_status"]
    assert lines["virtio_queue_notify"].split(None, 1)[1].strip() == "vdev={vdev} n={n}"


def test_help_reads_the_tables_without_loading_the_devices():
    code = ("import sys; from machine import trace; n = len(trace.help_text().splitlines()); "
            "print(n, any(m.startswith(('machine.virtio', 'machine.pci', 'machine.devices')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(DECLS)), "False"]


@pytest.mark.parametrize("line, error", [
    ("virtio_x(vdev) vdev={vdev}", "not a declaration"),
    ('virtio_x(vdev) "vdev={vdev} n={n}"', "does not fit its fields"),
    ('virtio_x(vdev) "{vdev}"\nvirtio_x(vdev) "{vdev}"', "declared twice"),
])
def test_a_bad_table_line_is_refused(line, error):
    with pytest.raises(ValueError, match=error):
        trace.parse_table(line, "machine/test")


def test_an_undeclared_event_cannot_be_defined():
    with pytest.raises(ValueError, match="not declared"):
        trace.Event("no_such_event")


def test_device_breakpoints_listen_only_to_declared_events():
    from machine.debug import breakpoints as B
    listened = {e for events in B._KIND_EVENTS.values() for e in events} | set(B._REQUEST_EVENTS_PER_TYPE)
    assert listened <= set(DECLS), listened - set(DECLS)


def test_a_request_breakpoint_reads_the_declared_completion_fields():
    from machine.debug.breakpoints import DeviceBreakpoints
    hits = []
    bps = DeviceBreakpoints(lambda bp, msg: hits.append(msg), completions=True)
    bps.add("virtio-blk request type=in sector=100-101")
    fields = dict.fromkeys(DECLS["virtio_blk_req_complete"].fields, 0)
    bps.listener("virtio_blk_req_complete", dict(fields, vdev="virtio-blk", type=0, sector=96, len=4 * 512))
    assert hits == []                                   # sectors 96..99
    bps.listener("virtio_blk_req_complete", dict(fields, vdev="virtio-blk", type=0, sector=96, len=5 * 512))
    assert hits == ["device breakpoint 1 (virtio-blk request type=in sector=100-101): request in sector 96"]
    bps.clear()
