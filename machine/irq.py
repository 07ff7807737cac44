"""Interrupt lines: how a device signals an interrupt controller without knowing which one.

A device holds an `IrqLine` handed to it by the board and sets its level; the line calls the
sink the board connected (a PIC input, a PCI INTx router, or a test's recorder). Edge-triggered
consumers see the 0->1 transitions; level-triggered ones see the level.
"""

from __future__ import annotations

from typing import Callable

Sink = Callable[[bool], None]


class IrqLine:
    __slots__ = ("name", "level", "_sink")

    def __init__(self, name: str = "irq", sink: Sink | None = None):
        self.name = name
        self.level = False
        self._sink = sink

    def connect(self, sink: Sink | None) -> None:
        self._sink = sink
        if sink is not None and self.level:
            sink(True)

    def set(self, level: bool) -> None:
        level = bool(level)
        if level == self.level:
            return
        self.level = level
        if self._sink is not None:
            self._sink(level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        self.set(True)
        self.set(False)


class SharedLine:
    """Wired-OR of several device lines onto one sink (PCI INTx sharing a PIRQ, ISA sharing)."""

    def __init__(self, sink: Sink | None = None):
        self._sink = sink
        self._asserted: set[int] = set()
        self._inputs: list[tuple[int, IrqLine]] = []

    def connect(self, sink: Sink | None) -> None:
        self._sink = sink
        if sink is not None:
            sink(bool(self._asserted))

    def input(self, name: str = "shared") -> IrqLine:
        key = object()
        ident = id(key)

        def _set(level: bool, _k=key) -> None:   # the closure keeps `key` alive, so ids stay unique
            before = bool(self._asserted)
            if level:
                self._asserted.add(ident)
            else:
                self._asserted.discard(ident)
            after = bool(self._asserted)
            if before != after and self._sink is not None:
                self._sink(after)

        line = IrqLine(name, _set)
        self._inputs.append((ident, line))
        return line

    def resync(self) -> None:
        """Recompute the OR from the inputs' levels without calling the sink (after a snapshot
        restored the levels of the lines and, separately, what the sink's owner had seen)."""
        self._asserted = {ident for ident, line in self._inputs if line.level}

    @property
    def level(self) -> bool:
        return bool(self._asserted)
