"""Callers as sensors: suspected incidents from clusters of calls the probes cannot explain.

Every `/check` that names a subscriber or an address is a caller, from a known place, at a
known time. The HTTP side appends each one to a bounded `CallLog` (nothing else happens on
the request path); the monitor's tick hands them to `CallWatch.tick()`, which is pure: time
is passed in, nothing is read or written but its own state.

A place is suspected when the distinct callers below one node within `window` seconds
reach what that node's usual call rate cannot explain: the smallest count that Poisson
arrivals at the learned rate reach by chance less often than `chance` in a window, and
never fewer than `min_callers`. The rate of each node is learned from the calls it had
(answered `ok` and not part of a suspicion), blended with a prior of `prior_rate` calls
per subscriber a day that weighs as one day of history. Only calls answered `ok` count:
one answered `outage`, `maintenance`, `cpe_down`, `restored` or `unknown` (blindness) is
already explained. The suspected root is the lowest node shared by the callers' serving
nodes.

A suspected incident is never spoken as an outage: an engineer confirms it (it becomes an
outage with the same id), dismisses it, or it expires after `expire_after` seconds
without a call; the monitor closes it into an incident of the probes that covers its root.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from outagemon.core.incidents import Event, EventKind, Incident, IncidentState, Kind
from outagemon.core.topology import Topology

DAY = 86400.0
KEPT_CALLS = 200  # calls kept per suspected incident (for the page's chart); more are counted
# Only these answers leave a call unexplained: the others are an incident, planned works,
# the caller's own router, a recent repair, or a monitor that cannot see.
UNEXPLAINED = frozenset({"ok"})


@dataclass(frozen=True, slots=True)
class Settings:
    window: float = 1800.0  # seconds over which distinct callers are counted
    min_callers: int = 3  # the floor: never fewer distinct callers than this
    chance: float = 1e-6  # how rarely the usual rate may reach the threshold by luck
    prior_rate: float = 0.01  # calls per subscriber a day, before history says otherwise
    learn_for: float = 7 * DAY  # how long history weighs (the rate's time constant)
    expire_after: float = 3600.0  # a suspected incident with no call this long ends
    keep: int = 100_000  # calls held between ticks at most (the oldest go first)
    # The largest place suspected, in subscribers: callers cannot place a fault further up
    # (a city's calls are always many there), and an aggregation is the probes' to see.
    max_subscribers: int = 2000


@dataclass(frozen=True, slots=True)
class Call:
    """One resolved /check: when, the serving node, the building, the caller's key (a
    hash, never the phone or account), the channel and the answer given."""

    at: float
    node: str
    building: str
    caller: str
    channel: str
    status: str


def caller_key(salt: bytes, kind: str, value: str) -> str:
    """A caller's key as kept: a keyed hash of how they were named (never the value)."""
    h = hashlib.blake2b(f"{kind}\x00{value}".encode("utf-8", "surrogateescape"),
                        key=salt, digest_size=8)  # fmt: skip
    return h.hexdigest()


class CallLog:
    """The calls since the last tick: appended by the request path, taken by the tick.
    Bounded: past `limit`, the oldest are dropped (and counted)."""

    __slots__ = ("calls", "dropped")

    def __init__(self, limit: int) -> None:
        self.calls: deque[Call] = deque(maxlen=limit)
        self.dropped = 0

    def append(self, call: Call) -> None:
        if len(self.calls) == self.calls.maxlen:
            self.dropped += 1
        self.calls.append(call)

    def take(self) -> list[Call]:
        taken = list(self.calls)
        self.calls.clear()
        return taken


@dataclass(slots=True)
class Suspicion:
    """A suspected incident (or, once confirmed by an engineer, an outage raised by calls)
    with the calls that raised it and came after."""

    incident: Incident
    calls: list[Call]
    first_call: float
    raised_at: float
    last_call: float
    callers: set[str] = field(default_factory=set)
    count: int = 0  # calls attached, kept or not
    recent: deque[float] = field(default_factory=deque)  # when, within expire_after

    @property
    def confirmed(self) -> bool:
        return self.incident.kind is Kind.OUTAGE

    def attach(self, call: Call) -> None:
        self.count += 1
        self.recent.append(call.at)
        self.callers.add(call.caller)
        self.last_call = max(self.last_call, call.at)
        if len(self.calls) < KEPT_CALLS:
            self.calls.append(call)

    def per_minute(self, now: float, minutes: int = 30) -> list[int]:
        """Calls kept in each of the last `minutes` minutes up to now, oldest first."""
        counts = [0] * minutes
        for c in self.calls:
            age = int((now - c.at) // 60)
            if 0 <= age < minutes:
                counts[minutes - 1 - age] += 1
        return counts


def poisson_threshold(mean: float, chance: float, floor: int) -> int:
    """The smallest k >= floor with P(X >= k) <= chance for X ~ Poisson(mean)."""
    if mean <= 0:
        return floor
    term = math.exp(-mean)  # P(X = 0)
    below = 0.0  # P(X < k)
    k = 0
    while True:
        if k >= floor and 1.0 - below <= chance:
            return k
        below += term
        k += 1
        term *= mean / k
        if term < 1e-300 and k > mean:
            return max(k, floor)


class CallWatch:
    """The detector and the book of suspected incidents (see the module's docstring).

    Invariants: `window` holds the unexplained calls of the last `settings.window`
    seconds that no suspicion took, oldest first; `open` the suspicions not ended, by
    id; `events` those since the last `take_events()`."""

    def __init__(self, topology: Topology, subscribers: dict[str, int], settings: Settings,
                 started: float) -> None:  # fmt: skip
        self.settings = settings
        self.started = started
        self.window: deque[Call] = deque()
        self.open: dict[int, Suspicion] = {}
        self.events: list[Event] = []
        self._learned: dict[str, tuple[float, float]] = {}  # node -> (decayed count, at)
        self.set_topology(topology, subscribers)
        self.delays: list[float] = []  # first call to suspicion, per suspicion raised

    def set_topology(self, topology: Topology, subscribers: dict[str, int]) -> None:
        """The network, and the subscribers each node serves directly."""
        self.topology = topology
        below: dict[str, int] = {}
        for node, count in subscribers.items():
            if node not in topology:
                continue
            for n in (node, *topology.ancestors(node)):
                below[n] = below.get(n, 0) + count
        self.below = below  # node -> subscribers at or below it

    # -- what callers hear -------------------------------------------------------------

    def covering(self, node: str) -> Suspicion | None:
        """The open suspicion whose root is this node or above it."""
        if not self.open:
            return None
        chain = self._chain(node)
        for s in self.open.values():
            if s.incident.root in chain:
                return s
        return None

    def _chain(self, node: str) -> tuple[str, ...]:
        if node not in self.topology:
            return (node,)
        return (node, *self.topology.ancestors(node))

    # -- the baseline ------------------------------------------------------------------

    def rate(self, node: str, now: float) -> float:
        """Calls a second expected below this node: history blended with the prior."""
        s = self.settings
        prior = s.prior_rate * self.below.get(node, 0) / DAY
        count, at = self._learned.get(node, (0.0, now))
        count *= math.exp(-(now - at) / s.learn_for)
        # The time the history covers (it weighs less the older it is), plus one day of
        # the prior's weight.
        seen = s.learn_for * (1.0 - math.exp(-max(0.0, now - self.started) / s.learn_for))
        return (count + prior * DAY) / (seen + DAY)

    def threshold(self, node: str, now: float) -> int:
        s = self.settings
        return poisson_threshold(self.rate(node, now) * s.window, s.chance, s.min_callers)

    def _learn(self, call: Call) -> None:
        tau = self.settings.learn_for
        for n in self._chain(call.node):
            count, at = self._learned.get(n, (0.0, call.at))
            self._learned[n] = (count * math.exp(-(call.at - at) / tau) + 1.0, call.at)

    # -- the tick ----------------------------------------------------------------------

    def tick(self, now: float, calls: Iterable[Call], explained: Callable[[str], bool],
             next_id: Callable[[], int]) -> None:  # fmt: skip
        """Take the new calls, raise or widen suspicions, expire quiet ones.

        `explained(node)`: whether the probes' incidents, planned works or blindness
        explain trouble at this node now (no suspicion is raised there); `next_id()`: the
        id of a new incident (shared with the probes' incidents)."""
        s = self.settings
        added = False
        for call in calls:
            if call.status not in UNEXPLAINED or call.node not in self.topology:
                continue
            found = self.covering(call.node)
            if found is not None:
                found.attach(call)
            else:
                self.window.append(call)
                added = True
        while self.window and self.window[0].at < now - s.window:
            self._learn(self.window.popleft())
        # Only a new call can bring a place to its threshold (the rates move slowly).
        while added and self._raise_one(now, explained, next_id):
            pass
        for sid, sus in list(self.open.items()):
            if not sus.confirmed and self._quiet(sus, now):
                self._end(sid, now, {"expired": True, "quiet_for": round(now - sus.last_call)})

    def _quiet(self, sus: Suspicion, now: float) -> bool:
        """Whether a suspected place's calls over the last `expire_after` seconds are no
        more than its usual rate explains (for a quiet place: no call at all)."""
        s = self.settings
        if now - sus.raised_at < s.expire_after:
            return False
        while sus.recent and sus.recent[0] <= now - s.expire_after:
            sus.recent.popleft()
        usual = self.rate(sus.incident.root, now) * s.expire_after
        return len(sus.recent) < poisson_threshold(usual, 0.01, 1)

    def _raise_one(self, now: float, explained: Callable[[str], bool],
                   next_id: Callable[[], int]) -> bool:  # fmt: skip
        """Raise (or widen) the lowest suspicion the window's calls support; False when
        there is none."""
        if not self.window:
            return False
        callers: dict[str, set[str]] = {}
        largest = self.settings.max_subscribers
        below = self.below
        for call in self.window:
            for n in self._chain(call.node):
                if below.get(n, 0) <= largest:  # a larger place is never suspected
                    callers.setdefault(n, set()).add(call.caller)
        depth = {n: len(self.topology.ancestors(n)) for n in callers}
        for node in sorted(callers, key=lambda n: (-depth[n], n)):
            if len(callers[node]) < self.settings.min_callers:
                continue
            if len(callers[node]) < self.threshold(node, now) or explained(node):
                continue
            place = {node, *self.topology.descendants(node)}
            taken = [c for c in self.window if c.node in place]
            root = self.lowest_shared({c.node for c in taken})
            if explained(root) or below.get(root, 0) > largest:
                continue
            self.window = deque(c for c in self.window if c.node not in place)
            self._suspect(root, taken, now, next_id)
            return True
        return False

    def lowest_shared(self, nodes: set[str]) -> str:
        """The lowest node at or above every one of these (ties: the first by id)."""
        common: set[str] | None = None
        for n in nodes:
            chain = set(self._chain(n))
            common = chain if common is None else common & chain
        if not common:
            return min(nodes)
        # The lowest: one with no other common node below it (the most ancestors).
        return min(common, key=lambda n: (-len(self.topology.ancestors(n)), n))

    def _suspect(self, root: str, taken: list[Call], now: float,
                 next_id: Callable[[], int]) -> None:  # fmt: skip
        """A suspicion at `root`: a new one, or the oldest of those below it widened
        (callers keep the id they heard), the others merged into it."""
        first = min(c.at for c in taken)
        under = sorted((sus for sus in self.open.values()
                        if not sus.confirmed and root in self._chain(sus.incident.root)),
                       key=lambda sus: sus.incident.id)  # fmt: skip
        nodes = [root, *self.topology.descendants(root)]
        if under:
            sus = under[0]
            old = sus.incident.root
            sus.incident.root = root
            sus.incident.nodes = nodes
            self.events.append(
                Event(
                    EventKind.ROOT_MOVED,
                    now,
                    sus.incident.id,
                    root,
                    detail={"from": old, "absorbed": [o.incident.id for o in under[1:]]},
                )
            )
            for other in under[1:]:
                for c in other.calls:
                    sus.attach(c)
                self._close(other, now, IncidentState.MERGED, sus.incident.id)
                self.events.append(
                    Event(
                        EventKind.MERGED,
                        now,
                        other.incident.id,
                        other.incident.root,
                        detail={"into": sus.incident.id},
                    )
                )
            self.events.append(Event(EventKind.NODES, now, sus.incident.id, root, tuple(nodes),
                                     detail={"added": len(nodes)}))  # fmt: skip
            sus.first_call = min(sus.first_call, first)
        else:
            inc = Incident(id=next_id(), root=root, kind=Kind.SUSPECTED, inferred=True,
                           opened_at=now, nodes=nodes, raised_by="calls")  # fmt: skip
            sus = Suspicion(inc, [], first, now, first)
            self.open[inc.id] = sus
            self.delays.append(now - first)
            self.events.append(Event(EventKind.OPENED, now, inc.id, root,
                                     detail=self._opened_detail(taken, now)))  # fmt: skip
        for c in taken:
            sus.attach(c)

    def _opened_detail(self, taken: list[Call], now: float) -> dict[str, object]:
        return {"kind": Kind.SUSPECTED.value, "inferred": True, "raised_by": "calls",
                "callers": len({c.caller for c in taken}),
                "buildings": sorted({c.building for c in taken if c.building})[:10],
                "first_call_ago": round(now - min(c.at for c in taken), 1)}  # fmt: skip

    # -- engineers and the probes ------------------------------------------------------

    def confirm(self, sid: int, now: float, who: str, by: str = "engineer") -> Suspicion:
        """A suspected incident confirmed: an outage with the same id from now on."""
        sus = self.open[sid]
        sus.incident.kind = Kind.OUTAGE
        self.events.append(Event(EventKind.KIND_CHANGED, now, sid, sus.incident.root,
                                 detail={"from": Kind.SUSPECTED.value, "to": Kind.OUTAGE.value,
                                         "confirmed_by": by, "by": who}))  # fmt: skip
        return sus

    def dismiss(self, sid: int, now: float, who: str) -> Suspicion:
        return self._end(sid, now, {"dismissed": True, "by": who})

    def resolve(self, sid: int, now: float, who: str) -> Suspicion:
        """A confirmed outage raised by calls, repaired (an engineer says so)."""
        return self._end(sid, now, {"repaired": True, "by": who})

    def taken_over(self, sid: int, into: Incident, now: float) -> Suspicion:
        """The probes' incident covers the suspected root: the suspicion closes into it."""
        sus = self.open[sid]
        self._close(sus, now, IncidentState.MERGED, into.id)
        self.events.append(Event(EventKind.MERGED, now, sid, sus.incident.root,
                                 detail={"into": into.id, "confirmed_by": "probes",
                                         "was": sus.incident.kind.value}))  # fmt: skip
        return sus

    def _end(self, sid: int, now: float, detail: dict[str, object]) -> Suspicion:
        sus = self.open[sid]
        self._close(sus, now, IncidentState.RESOLVED, None)
        self.events.append(Event(EventKind.RESOLVED, now, sid, sus.incident.root,
                                 tuple(sus.incident.nodes), detail=detail))  # fmt: skip
        return sus

    def _close(self, sus: Suspicion, now: float, state: IncidentState, into: int | None) -> None:
        del self.open[sus.incident.id]
        sus.incident.state = state
        sus.incident.resolved_at = now
        sus.incident.merged_into = into

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def restore(self, incidents: Iterable[Incident], now: float) -> None:
        """Open incidents raised by calls, from a previous run (their calls are not kept)."""
        for inc in incidents:
            if inc.id in self.open or inc.root not in self.topology:
                continue
            inc.nodes = [inc.root, *self.topology.descendants(inc.root)]
            # Its calls are not kept: it is given a whole expire_after from now.
            self.open[inc.id] = Suspicion(inc, [], inc.opened_at, now, now)
