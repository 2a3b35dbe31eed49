"""Time that never steps, for deciding; wall time only for display and storage.

The correlator decides on `now()`: the wall clock read once at start, advanced by the
monotonic clock. An NTP step, a local-time hardware clock corrected at boot or an
operator's `date -s` moves the wall clock, never `now()`, so a streak of lost probes
is never hours long or negative. Its values look like epoch seconds (they are the wall
time as it was at start plus the time elapsed), so they are shown and stored through
`wall()`, which adds how far the wall clock has stepped since; times given by people
(an ETA, planned works) come in through `steady()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """A monotonic clock anchored to the wall clock at start."""

    __slots__ = ("_base", "_mono", "_wall")

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._wall = wall
        self._mono = monotonic
        self._base = wall() - monotonic()

    def __call__(self) -> float:
        return self._base + self._mono()

    def step(self) -> float:
        """How far the wall clock has been stepped since start (0 when it never was), in
        whole seconds: the two clocks are never read at the same instant, and a step that
        jittered by microseconds would turn an engineer's 18:00:00 into 17:59:59.99 — spoken
        as "17:59". Whole seconds keep a whole-second time whole through wall() and steady()."""
        return float(round(self._wall() - self()))

    def wall(self, t: float) -> float:
        """A time of this clock as wall time: to show or store."""
        return t + self.step()

    def steady(self, wall: float) -> float:
        """A wall time (an ETA, planned works) as a time of this clock."""
        return wall - self.step()


# The process's clock: the daemon and the HTTP side share it.
CLOCK = SteadyClock()


def now() -> float:
    return CLOCK()


def wall(t: float) -> float:
    return CLOCK.wall(t)


def steady(w: float) -> float:
    return CLOCK.steady(w)
