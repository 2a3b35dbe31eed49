"""Availability and response figures from stored incidents (pure: times are given).

A node is cut off by an incident over stretches (the impact record; for incidents it
does not hold, from their opening to their resolution). A place (a node, a building, a
group of nodes) is out while any of its nodes is cut off by an outage; planned works are
counted apart and not held against availability, as Zabbix excludes downtimes from its
SLA figures. That definition is here; PostgreSQL adds places up the same way for the
reports (db/store.py, PLACES), and the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Interval = tuple[float, float]


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """The intervals joined where they overlap or touch, in order."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def length(intervals: Iterable[Interval]) -> float:
    return sum(hi - lo for lo, hi in merged(intervals))


def without(intervals: list[Interval], holes: list[Interval]) -> list[Interval]:
    """Merged `intervals` minus merged `holes`."""
    out: list[Interval] = []
    holes = merged(holes)
    for lo, hi in merged(intervals):
        start = lo
        for hlo, hhi in holes:
            if hhi <= start or hlo >= hi:
                continue
            if hlo > start:
                out.append((start, hlo))
            start = max(start, hhi)
        if start < hi:
            out.append((start, hi))
    return out


def within(intervals: list[Interval], windows: list[Interval]) -> list[Interval]:
    """The parts of merged `intervals` inside merged `windows`."""
    out: list[Interval] = []
    windows = merged(windows)
    for lo, hi in merged(intervals):
        for wlo, whi in windows:
            a, b = max(lo, wlo), min(hi, whi)
            if a < b:
                out.append((a, b))
    return out


@dataclass(frozen=True, slots=True)
class Stored:
    """An incident as the database keeps it (epoch seconds)."""

    id: int
    state: str  # open, resolved, merged
    kind: str  # outage, maintenance
    root: str
    opened_at: float  # when the root's failure began (its probes found it down)
    resolved_at: float | None
    merged_into: int | None
    subscribers: int
    calls: int
    nodes: tuple[str, ...] = ()  # the nodes it cut off last (cuts_of)
    detected_at: float | None = None  # when the incident was opened (its "opened" event)
    first_eta_at: float | None = None  # when the first repair estimate was given
    first_eta: float | None = None  # what it said
    # Service between its faults: from a resolution to the start of the fault that
    # reopened it (the incident keeps its first fault's opened_at).
    gaps: tuple[Interval, ...] = ()

    @property
    def planned(self) -> bool:
        return self.kind == "maintenance"

    def end(self, now: float) -> float:
        return self.resolved_at if self.resolved_at is not None else max(now, self.opened_at)

    def faults(self, now: float) -> list[Interval]:
        """When it was down: its opening to its end, less the service between faults (an
        incident opened and resolved at once is one empty fault)."""
        whole = (self.opened_at, self.end(now))
        if not self.gaps:
            return [whole]
        return without([whole], list(self.gaps)) or [(whole[0], whole[0])]

    def down_until(self, t: float | None) -> float | None:
        """Seconds from its opening to `t`, less the service between its faults before `t`
        (None for no `t`)."""
        if t is None:
            return None
        served = length(within(list(self.gaps), [(self.opened_at, t)])) if self.gaps else 0.0
        return t - self.opened_at - served

    def repaired_after(self, t: float) -> float | None:
        """The end of the fault under way at `t`: its resolution, or the incident's."""
        return next((lo for lo, _ in merged(self.gaps) if lo >= t), self.resolved_at)


@dataclass(slots=True)
class Place:
    """A node, building or group over a period: what it lost."""

    key: str
    outage: list[Interval] = field(default_factory=list)
    planned: list[Interval] = field(default_factory=list)
    incidents: set[int] = field(default_factory=set)

    def figures(self, period: float, blind: list[Interval]) -> dict[str, object]:
        out = merged(self.outage)
        outage = length(out)
        planned = length(without(self.planned, out))
        unverified = length(within(out + self.planned, blind)) if blind else 0.0
        return {
            "key": self.key,
            "outage_minutes": round(outage / 60, 2),
            "planned_minutes": round(planned / 60, 2),
            "unverified_minutes": round(unverified / 60, 2),
            "availability_pct": round(100 * (1 - outage / period), 4) if period > 0 else None,
            "incidents": len(self.incidents),
        }


@dataclass(frozen=True, slots=True)
class Cut:
    """A node cut off by an incident from `start` to `end` (None: still is)."""

    incident: int
    node: str
    start: float
    end: float | None
    planned: bool


def cuts_of(incidents: Iterable[Stored]) -> list[Cut]:
    """Each incident's nodes cut off from its opening to its end, for its last kind (what
    the incident table alone can tell)."""
    return [Cut(inc.id, node, inc.opened_at, inc.resolved_at, inc.planned)
            for inc in incidents for node in inc.nodes]  # fmt: skip


def availability(cuts: Iterable[Cut], start: float, end: float, now: float,
                 keys_of: Callable[[str], Iterable[str]],
                 blind: list[Interval] | None = None) -> list[dict[str, object]]:  # fmt: skip
    """Each place's figures over [start, end), worst first. `keys_of(node)`: the places a
    node belongs to (its buildings, itself, its group). Places that lost nothing are not
    listed: the caller knows every place there is. Time out inside `blind` (the monitor
    could not see) is also counted as unverified."""
    places: dict[str, Place] = {}
    keys: dict[str, tuple[str, ...]] = {}
    for cut in cuts:
        cut_end = cut.end if cut.end is not None else max(now, cut.start)
        lo, hi = max(cut.start, start), min(cut_end, end)
        if hi <= lo:
            continue
        node_keys = keys.get(cut.node)
        if node_keys is None:
            node_keys = keys[cut.node] = tuple(dict.fromkeys(keys_of(cut.node)))
        for key in node_keys:
            place = places.get(key)
            if place is None:
                place = places[key] = Place(key)
            (place.planned if cut.planned else place.outage).append((lo, hi))
            place.incidents.add(cut.incident)
    period = end - start
    rows = [(p.figures(period, blind or []), p) for p in places.values()]
    rows.sort(key=lambda r: (-length(r[1].outage), -length(r[1].planned),
                             -len(r[1].incidents), r[1].key))  # fmt: skip
    return [figures for figures, _ in rows]


def _seconds(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def response(inc: Stored, now: float) -> dict[str, float | None]:
    """How the incident was handled: seconds from its failure to its opening (detect), to
    the first repair estimate, and to its repair; how late the repair came against the
    first estimate (negative: earlier than said); subscriber-hours lost. A reopened
    incident's service between its faults is no time down: it is left out of the seconds
    and hours, and its first estimate is held against the repair it was for."""
    down = inc.down_until(inc.end(now))
    assert down is not None
    repaired = inc.resolved_at
    if inc.first_eta_at is not None:
        repaired = inc.repaired_after(inc.first_eta_at)
    return {
        "detect_seconds": _seconds(inc.opened_at, inc.detected_at),
        "first_eta_seconds": _rounded(inc.down_until(inc.first_eta_at)),
        "repair_seconds": _rounded(inc.down_until(inc.resolved_at)),
        "eta_error_seconds": _seconds(inc.first_eta, repaired),
        "subscriber_hours": round(inc.subscribers * down / 3600, 3),
    }


def calls_per_minute(incidents: Iterable[Stored], start: float, end: float, step: float,
                     now: float,
                     minutes: list[tuple[float, int]] | None = None,
                     ) -> list[tuple[float, float, int]]:  # fmt: skip
    """(bucket start, calls a minute, incidents open) for each `step` from `start`.

    `minutes`: calls that named an incident, per minute (start, count), as stored. Without
    them (history from before they were kept) each incident's total is spread evenly over
    its life. The open count is of incidents open at any time in the bucket."""
    n = max(1, int((end - start + step - 1e-9) // step))
    calls = [0.0] * n
    open_ = [0] * n
    spread = minutes is None
    for inc in incidents:
        faults = inc.faults(now)
        # Calls a second over the time it was down (the service between faults had none).
        rate = inc.calls / max(length(faults), 60.0)
        counted: set[int] = set()  # buckets it is open in (two faults may share one)
        for lo, hi in faults:
            if hi <= start or lo >= end:
                continue
            first = max(0, int((lo - start) // step))
            last = min(n - 1, int((hi - start) // step))
            for b in range(first, last + 1):
                b_lo, b_hi = start + b * step, start + (b + 1) * step
                overlap = min(hi, b_hi) - max(lo, b_lo)
                if overlap > 0 or (hi == lo and b_lo <= lo < b_hi):
                    counted.add(b)
                    if spread:
                        calls[b] += rate * max(overlap, 0.0)
        for b in counted:
            open_[b] += 1
    for t, count in minutes or ():
        if start <= t < end:
            calls[min(n - 1, int((t - start) // step))] += count
    per_minute = step / 60
    return [(start + b * step, round(calls[b] / per_minute, 3), open_[b]) for b in range(n)]
