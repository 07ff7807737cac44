"""Virtual-time helpers shared by the device tests (PIT, CMOS, LAPIC)."""

from machine.clock import VirtualClock


class RiseRecorder:
    """IRQ line sink that notes the virtual time of every rising level."""

    def __init__(self, clock: VirtualClock):
        self.clock, self.rises = clock, []

    def __call__(self, level):
        if level:
            self.rises.append(self.clock.now)


def run_until(clock: VirtualClock, t: int) -> None:
    """Advance the way the run loop does: timer deadline by timer deadline."""
    while True:
        d = clock.next_deadline()
        if d is None or d > t:
            break
        clock.advance_to(d)
    clock.advance_to(t)
