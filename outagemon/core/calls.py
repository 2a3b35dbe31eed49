"""Callers as sensors: suspected incidents from clusters of calls the probes cannot explain.

Every `/check` that names a subscriber or an address is a caller, from a known place, at a
known time. The HTTP side appends each one to a bounded `CallLog` (nothing else happens on
the request path); the monitor's tick hands them to `CallWatch.tick()`, which is pure: time
is passed in, nothing is read or written but its own state.

A place is suspected when the distinct callers below one node within `window` seconds
reach what that node's usual call rate cannot explain: the smallest count that Poisson
arrivals at the learned rate reach by chance less often than `chance` in a window, and
never fewer than `min_callers`; or sooner, when a sequential test finds the newest of
them (two or more) `evidence` times likelier, in natural logarithm, under a fault
(`fault_rate` calls a subscriber an hour) than under the usual calls. The rate of each
node is learned from the calls it had (answered `ok` and not part of a suspicion),
blended with a prior of `prior_rate` calls per subscriber a day that weighs as one day of
history, and follows the hour of the day (`by_hour`: one shape of the day learned from
every place's calls, each hour's calls against the time the history has lived in that
hour, scaled to each place's rate). Callers who all first called in the waking hour (from
`wake_at`, when a night's faults are noticed) pass the constant-rate test at
`wake_evidence`; the newest `min_callers` or more within a span the usual calls fill
more rarely than `scan_chance` (times the spans of that length a window holds) pass
too. Only calls answered `ok` count: one answered `outage`, `maintenance`,
`cpe_down`, `restored` or `unknown` (blindness) is already explained, and so is one from
a caller whose own probed router was answering (the probes see the way to them working:
their trouble is not their entrance's). The suspected root is the lowest node shared by
the callers' serving nodes, but never above a node the probes see answering (`proven`) on
a caller's path: the callers are then grouped by the nearest answering node of their path
(the way to it works; its own ports may not), each group raised at the node its callers
share only if it passes that place's test on its own; when one child of the place holds
`min_callers` of its callers or more and the rest are fewer (a busy entrance tipped its
building over with a neighbour's usual call), the cluster is that child's, and only its
calls are taken. A suspicion raised at a place while its callers were too few to tell
moves down the same way, keeping its id, when later calls make one child's callers pass
that child's threshold and the rest stay fewer than `min_callers` and are no cluster of
their own (a confirmed one is never moved). New callers of a sibling of a suspected place
(another entrance of its building) widen it to their parent, keeping its id, when they
are as many as its callers in the window (or `min_callers`, if fewer) and all of them
pass the parent's test: a building's fault is one suspicion, not one per entrance.

A suspected incident is never spoken as an outage: an engineer confirms it (it becomes an
outage with the same id), dismisses it, or it expires after `expire_after` seconds
without a call; the monitor closes it into an incident of the probes that covers its root.
When the probed nodes of its place that failed around its calls (for `resolve_hold`, at
least half of them) all answer again for `resolve_hold`, service is back (`service_back`): a
confirmed one is repaired, one never confirmed ends quietly (`cleared`).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from outagemon.core.addresses import Address
from outagemon.core.incidents import Event, EventKind, Incident, IncidentState, Kind
from outagemon.core.topology import Topology

DAY = 86400.0
HOURS = 24  # the day's shape is learned by the hour
PAIR = 2  # the sequential test's fewest callers
KEPT_CALLS = 200  # calls kept per suspected incident (for the page's chart); more are counted
# Only these answers leave a call unexplained: the others are an incident, planned works,
# the caller's own router, a recent repair, or a monitor that cannot see.
UNEXPLAINED = frozenset({"ok"})
# Only the subscribers' own calls are callers: a helpdesk operator looking a subscriber
# up (`channel=helpdesk`, `outagemon lookup`) is not the subscriber calling.
CALLERS_CHANNELS = frozenset({"ivr"})
# The first character of the key of a caller who named no home (an address without a
# flat): the detector tells them from the homes by it (see `CallWatch._household`).
UNNAMED = "~"


@dataclass(frozen=True, slots=True)
class Settings:
    # Seconds over which distinct callers are counted: an hour, so that a fault's callers
    # spread over the morning (a night's fault, noticed as people wake) add up.
    window: float = 3600.0
    min_callers: int = 3  # the window count's floor (the sequential test may raise on two)
    chance: float = 1e-7  # how rarely the usual rate may reach the threshold by luck
    prior_rate: float = 0.01  # calls per subscriber a day, before history says otherwise
    learn_for: float = 7 * DAY  # how long history weighs (the rate's time constant)
    expire_after: float = 3600.0  # a suspected incident with no call this long ends
    keep: int = 100_000  # calls held between ticks at most (the oldest go first)
    # The largest place suspected, in subscribers: callers cannot place a fault further up
    # (a city's calls are always many there), and an aggregation is the probes' to see.
    max_subscribers: int = 2000
    # Whether the usual rate follows the hour of the day (one shape learned from every
    # place's calls, scaled to each place's own rate): calls at 8 am are not those at 8 pm.
    by_hour: bool = True
    # The sequential test: how strong the evidence of a place's newest callers must be
    # (the log of how many times likelier a fault makes them than the usual calls; 0: no
    # test, the window's count alone), against a fault that makes `fault_rate` calls a
    # subscriber an hour. It may raise on two callers (never on fewer).
    evidence: float = 16.1
    fault_rate: float = 0.25
    # How a fault's calls come in time: a burst after it begins whose rate falls with this
    # time constant (seconds: how long people take to call once they notice), so that
    # `fault_rate` an hour is the burst's total; 0: at the constant `fault_rate`. Callers
    # close together are then stronger evidence than the same callers spread out.
    burst: float = 600.0
    # Both alternatives at once (with `burst` set): the constant one at `evidence` and the
    # burst at this evidence, a place raised when either test reaches its own (0: the
    # burst alone, at `evidence`). The burst's tight pairs and the constant test's slow
    # mornings are different faults: either finds its own.
    burst_evidence: float = 0.0
    # The waking hour: a night's faults are noticed as people wake, from `wake_at`
    # (seconds after midnight, on the detector's clock) over the `window` after it, so
    # their callers come spread over that hour, not in a burst, and the faults of every
    # night hour come then at once. Callers who all first called in it pass with the
    # constant-rate test at `wake_evidence` (0: no such test): the night's hours make
    # a fault there likelier before any call than in another hour.
    wake_at: float = 25200.0
    wake_evidence: float = 10.5
    # The scan: the newest j >= `min_callers` distinct callers of a place, over the span
    # from the oldest of them to the newest, against the calls its usual rate brings in
    # that span (the rate's uncertainty kept: a negative binomial), the chance of so many
    # multiplied by the spans of that length a `window` holds (so many are looked at); a
    # place is raised when it is at most this (0: no scan). Three callers of a quiet
    # entrance within twenty minutes are a fault by day, whatever their spacing.
    scan_chance: float = 3e-7


@dataclass(slots=True)
class Call:
    """One resolved /check: when, the serving node, the building (as written for people),
    the caller's key (a hash, never the phone or account), the channel, the answer given,
    and whether the caller's own probed router was answering then (`router_up`: the
    network up to them works, so the call says nothing about their entrance or building).
    Not frozen: the detector gives a caller who named no home the key of a home of their
    building that called too (`CallWatch._household`)."""

    at: float
    node: str
    building: str
    caller: str
    channel: str
    status: str
    router_up: bool = False


def caller_key(salt: bytes, kind: str, value: str) -> str:
    """A caller's key as kept: a keyed hash of how they were named (never the value);
    marked `UNNAMED` for a caller who named only their building (kind "building")."""
    h = hashlib.blake2b(f"{kind}\x00{value}".encode("utf-8", "surrogateescape"),
                        key=salt, digest_size=8)  # fmt: skip
    return UNNAMED + h.hexdigest() if kind == "building" else h.hexdigest()


def building_text(building: str) -> str:
    """A building as written for people. Calls keep it so; a building's key
    (`Address.key`, "city|type|street|house|building|letter|structure"), as an earlier
    version kept it, is written out from its parts."""
    parts = building.split("|")
    if len(parts) != 7 or not parts[2]:
        return building
    city, street_type, street, house, corpus, letter, structure = parts
    return Address(street, street_type, house, corpus, letter, structure, city=city).text(
        with_flat=False
    )


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


class _Building:
    """A building's callers in the detector's window (`CallWatch._household`): the homes
    that named themselves (caller -> their last call), the one that called last, and the
    callers who named no home while none had (caller -> their last call, its node)."""

    __slots__ = ("last", "named", "unnamed")

    def __init__(self) -> None:
        self.named: dict[str, float] = {}
        self.last = ""
        self.unnamed: dict[str, tuple[float, str]] = {}

    def latest(self) -> str | None:
        """The home of the building that called last in the window (None: none did)."""
        if self.last in self.named:
            return self.last
        if not self.named:
            return None
        self.last = max(self.named, key=self.named.__getitem__)
        return self.last

    def forget(self, caller: str, at: float) -> bool:
        """A call at `at` leaves the window: its caller too, unless they called since.
        Whether the building has no caller left."""
        if self.named.get(caller) == at:
            del self.named[caller]
        elif caller in self.unnamed and self.unnamed[caller][0] == at:
            del self.unnamed[caller]
        return not self.named and not self.unnamed


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
    # Taken up after a restart: what its opening said of the calls that raised it (the
    # calls themselves are not kept; callers are keyed afresh each run, so never the same).
    earlier_callers: int = 0
    earlier_buildings: tuple[str, ...] = ()
    # What the probes saw of its place (`CallWatch.service_back`): the probed nodes at or
    # below its root that failed around its calls (node -> since when), and since when
    # every one of them answers again (None: not all do).
    failed: dict[str, float] = field(default_factory=dict)
    back_since: float | None = None
    # The probed nodes at or below its root, and the (topology, root) they are of.
    probed: tuple[str, ...] = ()
    probed_of: tuple[object, str] = (None, "")

    @property
    def distinct_callers(self) -> int:
        return len(self.callers) + self.earlier_callers

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


def poisson_tail(mean: float, k: int) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    term = math.exp(-mean) * mean**k / math.factorial(k) if k < 170 else 0.0
    if mean < k:  # the upper terms fall fast: sum them
        total, i = 0.0, k
        while term > 1e-300 and i < k + 200:
            total += term
            i += 1
            term *= mean / i
        return min(1.0, total)
    below, term, i = 0.0, math.exp(-mean), 0
    while i < k:
        below += term
        i += 1
        term *= mean / i
    return max(0.0, 1.0 - below)


def negbin_tail(r: float, p: float, k: int) -> float:
    """P(X >= k) for X negative binomial: a Poisson count whose mean is Gamma(r) with
    `p` = seen / (seen + exposure) (the chance of a count n is
    Gamma(r + n) / (Gamma(r) n!) p^r (1 - p)^n)."""
    if k <= 0:
        return 1.0
    q = 1.0 - p
    if q <= 0:
        return 0.0
    mean = r * q / p
    if mean >= k:
        return 1.0  # (at least about a half: never a fault's evidence)
    # The terms from k on fall (their ratio (r + n) q / (n + 1) < 1 past the mean).
    log_term = (
        math.lgamma(r + k) - math.lgamma(r) - math.lgamma(k + 1) + r * math.log(p) + k * math.log(q)
    )
    term, total, n = math.exp(log_term), 0.0, k
    while term > total * 1e-12 and n < k + 1000:
        total += term
        term *= (r + n) * q / (n + 1)
        n += 1
    return min(1.0, total)


def subscribers_below(topology: Topology, subscribers: dict[str, int]) -> dict[str, int]:
    """node -> the subscribers at or below it, from those each node serves directly (a
    million routers: a reload makes it off the event loop)."""
    below: dict[str, int] = {}
    for node, count in subscribers.items():
        if node not in topology:
            continue
        for n in (node, *topology.ancestors(node)):
            below[n] = below.get(n, 0) + count
    return below


def way_through(topology: Topology, node: str, answering: Callable[[str], bool]) -> bool:
    """Whether the probes see the way through this node working: it answers, and so does
    every switch or segment below it (no router: a managed router answering says nothing
    of its unmanaged neighbours), so no fault its callers notice is at it. A node whose
    children cannot be probed (unprobed entrances, buildings it serves itself) is not
    cleared: its management may answer while its ports carry nothing."""
    children = topology.inner_children.get(node, ())
    return bool(children) and answering(node) and all(map(answering, children))


class CallWatch:
    """The detector and the book of suspected incidents (see the module's docstring).

    Invariants: `window` holds the unexplained calls of the last `settings.window`
    seconds, oldest first, those a suspicion took among them (their ids in `_taken`)
    until they leave it; `_by_node` the others by serving node, and `_counts` their
    distinct callers at or below each node no larger than `max_subscribers` (kept as
    calls come and go, so a look costs what the new calls touch, not the whole window);
    `open` the suspicions not ended, by id, and `_roots` them by root unless
    `_roots_stale`; `events` those since the last `take_events()`."""

    def __init__(self, topology: Topology, subscribers: dict[str, int], settings: Settings,
                 started: float) -> None:  # fmt: skip
        self.settings = settings
        self.started = started
        self.window: deque[Call] = deque()
        self._by_node: dict[str, deque[Call]] = {}
        self._counts: dict[str, dict[str, int]] = {}  # node -> caller -> calls in the window
        self._taken: set[int] = set()
        # building -> caller -> (their last call, its node), over the last `window`
        # seconds (`_household`), and the order they leave it in: (at, building, caller).
        self._homes: dict[str, _Building] = {}
        self._homes_order: deque[tuple[float, str, str]] = deque()
        self.open: dict[int, Suspicion] = {}
        self._roots: dict[str, Suspicion] = {}
        self._roots_stale = False
        # node -> the open suspicions not confirmed rooted at a child of it (None: to be
        # rebuilt), for the places no larger than max_subscribers.
        self._beside: dict[str, list[Suspicion]] | None = None
        self.events: list[Event] = []
        self._learned: dict[str, tuple[float, float]] = {}  # node -> (decayed count, at)
        # The day's shape: learned calls by hour of the day (UTC), decayed as the rates.
        self._hours = [0.0] * HOURS
        self._hours_at = started
        self._hours_version = 0  # counted up when `_hours` changes
        # The seconds lived in each hour (decayed to `_lived_at`'s first, since its second).
        self._lived = [0.0] * HOURS
        self._lived_at = (started, started)
        self._rates: list[float] = [1.0] * HOURS  # `_hour_rates()`, made for `_rates_of`
        self._rates_of: tuple[float, float, int] | None = None
        self.set_topology(topology, subscribers)
        self.delays: list[float] = []  # first call to suspicion, per suspicion raised
        # Whether a node is probed and answering now (given each tick; None: none is).
        self._proven: Callable[[str], bool] | None = None

    def set_topology(self, topology: Topology, subscribers: dict[str, int],
                     below: dict[str, int] | None = None) -> None:  # fmt: skip
        """The network, and the subscribers each node serves directly; `below`: made by
        `subscribers_below` already (a reload makes it off the event loop)."""
        self.topology = topology
        self._beside = None
        # node -> subscribers at or below it
        self.below = subscribers_below(topology, subscribers) if below is None else below
        # The shape's prior: one day of the prior's calls, spread evenly over the hours.
        self._hour_prior = self.settings.prior_rate * sum(subscribers.values()) / HOURS
        self._rates_of = None

    # -- what callers hear -------------------------------------------------------------

    def covering(self, node: str) -> Suspicion | None:
        """The open suspicion whose root is this node or above it."""
        if not self.open:
            return None
        roots = self._index()
        for n in self._chain(node):
            found = roots.get(n)
            if found is not None:
                return found
        return None

    def _index(self) -> dict[str, Suspicion]:
        """The open suspicions by root, brought up to date."""
        if self._roots_stale:
            self._roots = {sus.incident.root: sus for sus in self.open.values()}
            self._roots_stale = False
        return self._roots

    def _chain(self, node: str) -> tuple[str, ...]:
        if node not in self.topology:
            return (node,)
        return (node, *self.topology.ancestors(node))

    # -- the baseline ------------------------------------------------------------------

    def rate(self, node: str, now: float) -> float:
        """Calls a second expected below this node on average over the day: history
        blended with the prior."""
        calls, seen = self.history(node, now)
        return calls / seen

    def shape(self, at: float) -> float:
        """How busy this time of day is against the day's average (1: average, or
        `by_hour` off): each hour's learned calls over the time the history has spent in
        that hour against the day's average (an hour not lived yet is no quiet hour),
        blended with an even prior worth a day of calls, between the hours' middles
        linearly."""
        if not self.settings.by_hour:
            return 1.0
        rates = self._hour_rates()
        x = (at % DAY) / 3600.0 - 0.5
        lo = math.floor(x)
        part = x - lo
        a, b = rates[lo % HOURS], rates[(lo + 1) % HOURS]
        return a + (b - a) * part

    def _hour_rates(self) -> list[float]:
        """Each hour's usual calls against the day's average (kept until what was
        learned, or since when, changes)."""
        key = (self._hours_at, self.started, self._hours_version)
        if self._rates_of == key:
            return self._rates
        lived, hours, prior = self._exposure(), self._hours, self._hour_prior
        # Each hour against the day's average: its calls over those the average rate
        # brings in the time it was lived, both with an even prior of a day's calls (an
        # hour not lived yet is as busy as the average).
        calls, seen = sum(hours), sum(lived)
        average = calls / seen if seen > 0 else 0.0
        rates = [(c + prior) / d if (d := average * e + prior) > 0 else 1.0
                 for c, e in zip(hours, lived, strict=True)]  # fmt: skip
        mean = sum(rates) / HOURS
        self._rates = [r / mean for r in rates] if mean > 0 else [1.0] * HOURS
        self._rates_of = key
        return self._rates

    def _exposure(self) -> list[float]:
        """The seconds the history has spent in each hour of the day, from `started` to
        the newest learned call (`_hours_at`), decayed as the calls are: advanced from
        where it was, or made afresh when `started` moved or time went back."""
        end, start = self._hours_at, self.started
        at, since = self._lived_at
        if since != start or end < at:
            self._lived = [0.0] * HOURS
            at = max(start, end - 20 * self.settings.learn_for)  # older: e^-20, nothing
        elif end == at:
            return self._lived
        tau = self.settings.learn_for
        lived = self._lived
        if at < end:
            fade = math.exp(-(end - at) / tau)
            lived = [e * fade for e in lived]
            t = at
            while t < end:
                nxt = min(end, (math.floor(t / 3600.0) + 1) * 3600.0)
                lived[int(t % DAY // 3600) % HOURS] += tau * (
                    math.exp(-(end - nxt) / tau) - math.exp(-(end - t) / tau)
                )
                t = nxt
        self._lived = lived
        self._lived_at = (max(end, start), start)
        return lived

    def shaped(self, start: float, end: float) -> float:
        """Seconds between two times, each weighed by how busy its time of day is (the
        day's shape sampled every quarter of an hour at most, trapezoids between)."""
        span = end - start
        if span <= 0:
            return 0.0
        steps = max(1, math.ceil(span / 900.0))
        values = [self.shape(start + span * i / steps) for i in range(steps + 1)]
        return span * (sum(values) - (values[0] + values[-1]) / 2) / steps

    def expected(self, node: str, start: float, end: float) -> float:
        """Calls expected below this node between two times at its usual rate."""
        return self.rate(node, end) * self.shaped(start, end)

    def history(self, node: str, now: float) -> tuple[float, float]:
        """What the rate is learned from: (calls, seconds), history (decayed: the time
        it covers weighs less the older it is) plus one day of the prior."""
        s = self.settings
        prior = s.prior_rate * self.below.get(node, 0) / DAY
        count, at = self._learned.get(node, (0.0, now))
        count *= math.exp(-(now - at) / s.learn_for)
        seen = s.learn_for * (1.0 - math.exp(-max(0.0, now - self.started) / s.learn_for))
        return count + prior * DAY, seen + DAY

    def threshold(self, node: str, now: float) -> int:
        s = self.settings
        usual = self.expected(node, now - s.window, now)
        return poisson_threshold(usual, s.chance, s.min_callers)

    def _learn(self, call: Call) -> None:
        tau = self.settings.learn_for
        for n in self._chain(call.node):
            count, at = self._learned.get(n, (0.0, call.at))
            self._learned[n] = (count * math.exp(-(call.at - at) / tau) + 1.0, call.at)
        if call.at > self._hours_at:
            fade = math.exp(-(call.at - self._hours_at) / tau)
            self._hours = [h * fade for h in self._hours]
            self._hours_at = call.at
        self._hours[int(call.at % DAY // 3600) % HOURS] += 1.0
        self._hours_version += 1

    def baseline(self) -> list[tuple[str, str, float, float]]:
        """What was learned, to keep over a restart: (kind, key, count, at) for each node
        ("node"), each hour of the day's shape ("hour") and when the history began
        ("since", count 0). At most a row per node of the topology, 24 and one."""
        rows = [("since", "", 0.0, self.started)]
        rows += [("node", n, c, at) for n, (c, at) in self._learned.items() if n in self.topology]
        rows += [("hour", str(h), c, self._hours_at) for h, c in enumerate(self._hours) if c > 0]
        return rows

    def take_baseline(self, rows: Iterable[tuple[str, str, float, float]]) -> None:
        """What a previous run learned (`baseline()`), added to what this one learned
        since it started (a late restore keeps both); nodes the topology lost are left."""
        tau = self.settings.learn_for

        def merged(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
            at = max(a[1], b[1])
            return (a[0] * math.exp(-(at - a[1]) / tau) + b[0] * math.exp(-(at - b[1]) / tau), at)

        for kind, key, count, at in rows:
            if kind == "since":
                self.started = min(self.started, at)
            elif kind == "node" and key in self.topology and count > 0:
                self._learned[key] = merged(self._learned.get(key, (0.0, at)), (count, at))
            elif kind == "hour" and key.isdigit() and int(key) < HOURS and count > 0:
                h = int(key)
                if not any(self._hours):  # nothing learned here yet: the rows' moment
                    self._hours_at = at
                mine = (self._hours[h], self._hours_at)
                self._hours[h], at_h = merged(mine, (count, at))
                self._hours_version += 1
                if at_h > self._hours_at:  # the other hours fade to the same moment
                    fade = math.exp(-(at_h - self._hours_at) / tau)
                    self._hours = [c if i == h else c * fade for i, c in enumerate(self._hours)]
                    self._hours_at = at_h

    # -- the tick ----------------------------------------------------------------------

    def tick(self, now: float, calls: Iterable[Call], explained: Callable[[str], bool],
             next_id: Callable[[], int],
             proven: Callable[[str], bool] | None = None) -> None:  # fmt: skip
        """Take the new calls, raise, widen or narrow suspicions, expire quiet ones.

        `explained(node)`: whether the probes' incidents, planned works or blindness
        explain trouble at this node now (no suspicion is raised there); `next_id()`: the
        id of a new incident (shared with the probes' incidents); `proven(node)`: whether
        the node is probed and answering now (the way through it works: no suspicion is
        raised there, but below it; None: no node is)."""
        s = self.settings
        self._proven = proven
        touched: set[str] = set()
        grown: set[int] = set()  # the suspicions that took a call
        self._forget_homes(now)
        for call in calls:
            if (call.status not in UNEXPLAINED or call.router_up
                    or call.channel not in CALLERS_CHANNELS
                    or call.node not in self.topology or explained(call.node)):  # fmt: skip
                continue  # (told `ok` just before the probes saw a fault: explained now)
            self._household(call)
            found = self.covering(call.node)
            if found is not None:
                found.attach(call)
                grown.add(found.incident.id)
            else:
                self._add(call)
                touched.update(self._chain(call.node))
        window = self.window
        while window and (window[0].at < now - s.window or len(window) > s.keep):
            call = window.popleft()
            if id(call) in self._taken:
                self._taken.discard(id(call))
                continue
            self._remove(call)
            self._learn(call)
        # Only a new call can bring a place to its threshold (the rates move slowly).
        if touched:
            self._raise(now, touched, explained, next_id)
        for sid in sorted(grown):
            found = self.open.get(sid)
            if found is not None and not found.confirmed:
                self._narrow(found, now)
        for sid, sus in list(self.open.items()):
            if not sus.confirmed and self._quiet(sus, now):
                self._end(sid, now, {"expired": True, "quiet_for": round(now - sus.last_call)})

    def set_aside(self, explained: Callable[[str], bool]) -> int:
        """The calls in the window that the probes' incidents, planned works or blindness
        explain now leave it, and how many: a caller who phoned a minute before the
        probes saw the fault called about that fault, and once it is repaired the call is
        no sign of another (it is not learned as the place's usual calls either, as an
        explained call never is). Asked by the monitor when what explains changes."""
        gone = [n for n in self._by_node if explained(n)]
        if not gone:
            return 0
        leaving = {id(c) for n in gone for c in self._by_node[n]}
        for n in gone:
            for call in list(self._by_node.get(n, ())):
                self._remove(call)
        self.window = deque(c for c in self.window if id(c) not in leaving)
        return len(leaving)

    def _quiet(self, sus: Suspicion, now: float) -> bool:
        """Whether a suspected place's calls over the last `expire_after` seconds are no
        more than its usual rate explains (for a quiet place: no call at all)."""
        s = self.settings
        if now - sus.raised_at < s.expire_after:
            return False
        while sus.recent and sus.recent[0] <= now - s.expire_after:
            sus.recent.popleft()
        usual = self.expected(sus.incident.root, now - s.expire_after, now)
        return len(sus.recent) < poisson_threshold(usual, 0.01, 1)

    def _forget_homes(self, now: float) -> None:
        """The buildings' callers whose last call left the window (`_household`)."""
        order, since = self._homes_order, now - self.settings.window
        while order and order[0][0] < since:
            at, building, who = order.popleft()
            kept = self._homes.get(building)
            if kept is not None and kept.forget(who, at):
                del self._homes[building]

    def _household(self, call: Call) -> None:
        """One home, one caller, whether they named their flat or not: a caller who named
        only the building (`UNNAMED`) while a home of it called in the window is taken
        as that home (the latest), and the first home to call after such a caller takes
        their calls over, so "address" and then "address and flat 12" is one caller. Two
        people, one naming no flat, are counted as one: the detector cannot tell them
        apart, and must never count one person twice."""
        building = call.building
        if not building:
            return
        kept = self._homes.get(building)
        if kept is None:
            kept = self._homes[building] = _Building()
        named = kept.named
        if call.caller.startswith(UNNAMED):
            home = kept.latest()
            if home is not None:
                # The home called now: kept as long as this call (else, forgotten with its
                # own older call, the same person's next call would be a second caller).
                call.caller = home
                named[home] = max(named[home], call.at)
            else:
                kept.unnamed[call.caller] = (call.at, call.node)
        else:
            for who, (_, node) in kept.unnamed.items():
                self._rename(who, call.caller, node)
            kept.unnamed.clear()
            # (a cluster's relayed calls come in late: the latest call stays the latest)
            latest = named.get(kept.last)
            named[call.caller] = max(named.get(call.caller, call.at), call.at)
            if latest is None or call.at >= latest:
                kept.last = call.caller
        self._homes_order.append((call.at, building, call.caller))

    def _rename(self, old: str, new: str, node: str) -> None:
        """The calls of caller `old` (at `node`, or taken by a suspicion) become `new`'s."""
        for call in self._by_node.get(node, ()):
            if call.caller == old:
                self._count_out(call)
                call.caller = new
                self._count_in(call)
        for sus in self.open.values():
            if old in sus.callers:
                sus.callers.discard(old)
                sus.callers.add(new)
                for call in sus.calls:
                    if call.caller == old:
                        call.caller = new

    def _add(self, call: Call) -> None:
        self.window.append(call)
        self._by_node.setdefault(call.node, deque()).append(call)
        self._count_in(call)

    def _count_in(self, call: Call) -> None:
        largest, below = self.settings.max_subscribers, self.below
        for n in self._chain(call.node):
            if below.get(n, 0) <= largest:  # a larger place is never suspected
                per = self._counts.setdefault(n, {})
                per[call.caller] = per.get(call.caller, 0) + 1

    def _remove(self, call: Call) -> None:
        """A call leaves the counts (it expired, or a suspicion took it)."""
        mine = self._by_node.get(call.node)
        if mine:
            if mine[0] is call:
                mine.popleft()
            else:
                mine.remove(call)
            if not mine:
                del self._by_node[call.node]
        self._count_out(call)

    def _count_out(self, call: Call) -> None:
        for n in self._chain(call.node):
            per = self._counts.get(n)
            if per is None or call.caller not in per:
                continue
            per[call.caller] -= 1
            if not per[call.caller]:
                del per[call.caller]
                if not per:
                    del self._counts[n]

    def _raise(self, now: float, touched: set[str], explained: Callable[[str], bool],
               next_id: Callable[[], int]) -> None:  # fmt: skip
        """Raise (or widen) suspicions where the new calls bring a place to its
        threshold, lowest places first."""
        s, counts, below = self.settings, self._counts, self.below
        least = self._least()
        candidates = [n for n in touched if len(counts.get(n, ())) >= least]
        if not candidates:
            return
        candidates.sort(key=lambda n: (-len(self.topology.ancestors(n)), n))
        for node in candidates:
            callers = len(counts.get(node, ()))  # fewer, if a place below was just taken
            if callers < least:
                continue
            wide = self._beside_place(node, now) if self.open else None
            if wide is not None and not explained(wide) and not self._through(wide):
                # One place with a suspicion beside it: that suspicion widened to it.
                place = [wide, *self.topology.descendants(wide)]
                taken = sorted((c for n in place for c in self._by_node.get(n, ())),
                               key=lambda c: c.at)  # fmt: skip
                for c in taken:
                    self._taken.add(id(c))
                    self._remove(c)
                self._suspect(wide, taken, now, next_id)
                continue
            if ((callers < s.min_callers or callers < self.threshold(node, now))
                    and not self.strong(node, self._first_calls(node), now)):  # fmt: skip
                continue
            if explained(node):
                continue
            node = self._narrowed(node)
            place = [node, *self.topology.descendants(node)]
            taken = [c for n in place for c in self._by_node.get(n, ())]
            root = self.lowest_shared({c.node for c in taken})
            if explained(root) or below.get(root, 0) > s.max_subscribers:
                continue
            for where, group in self._places(root, taken, now):
                if explained(where):
                    continue
                group.sort(key=lambda c: c.at)
                for c in group:
                    self._taken.add(id(c))
                    self._remove(c)
                self._suspect(where, group, now, next_id)

    def _is_proven(self, node: str) -> bool:
        proven = self._proven
        return proven is not None and proven(node)

    def _through(self, node: str) -> bool:
        return way_through(self.topology, node, self._is_proven)

    def _place(self, node: str, root: str) -> str:
        """Where a fault a caller served at `node` notices may be, within `root`: at or
        below the nearest node of their path the probes see answering — the way to it
        works, so nothing above it is the fault; it may be (its management answering
        while its ports carry nothing: a switch's data plane), or what hangs below it —
        so that node; `root` when no node of the path up to it answers."""
        for n in self._chain(node):
            if self._is_proven(n) or n == root:
                return n
        return root

    def _places(self, root: str, taken: list[Call], now: float) -> list[tuple[str, list[Call]]]:
        """The cluster found at `root`, as the suspicions to raise: (root, its calls) when
        no node of its callers' paths up to it answers the probes (no `proven`, or none
        does: as before); else its callers grouped by where their fault may be
        (`_place`: the nearest answering node of each one's path), each group at
        the lowest node its callers share and only if it passes that node's own test
        (its threshold, or the sequential test). Three callers of three buildings whose
        switches answer raise nothing at their aggregation."""
        if self._proven is None:
            return [(root, taken)]
        where: dict[str, str] = {}
        groups: dict[str, list[Call]] = {}
        for c in taken:
            if c.node not in where:
                where[c.node] = self._place(c.node, root)
            groups.setdefault(where[c.node], []).append(c)
        if list(groups) == [root]:
            return [(root, taken)]  # nothing answers on the way: as found
        s, out = self.settings, []
        for group in groups.values():
            firsts: dict[str, float] = {}
            for c in group:
                if c.at < firsts.get(c.caller, math.inf):
                    firsts[c.caller] = c.at
            if len(firsts) < self._least():
                continue
            place = self.lowest_shared({c.node for c in group})
            if len(firsts) >= max(s.min_callers, self.threshold(place, now)) or self.strong(
                place, sorted(firsts.values()), now
            ):
                out.append((place, group))
        return out

    def _beside_index(self) -> dict[str, list[Suspicion]]:
        """node -> the open suspicions not confirmed rooted at a child of it (only the
        nodes no larger than `max_subscribers`), brought up to date."""
        if self._beside is None:
            self._beside = {}
            for sus in self.open.values():
                self._note_beside(sus)
        return self._beside

    def _note_beside(self, sus: Suspicion) -> None:
        """A suspicion at its root, in the index (kept up to date while it is built)."""
        root, beside = sus.incident.root, self._beside
        if beside is None or sus.confirmed or root not in self.topology:
            return
        largest, below = self.settings.max_subscribers, self.below
        for n in self.topology.nodes[root].parents:
            if below.get(n, 0) <= largest:
                beside.setdefault(n, []).append(sus)

    def _drop_beside(self, sus: Suspicion) -> None:
        """A suspicion out of the index (before its root moves, or as it ends)."""
        root, beside = sus.incident.root, self._beside
        if beside is None or root not in self.topology:
            return
        for n in self.topology.nodes[root].parents:
            near = beside.get(n)
            if near is not None:
                near[:] = [o for o in near if o is not sus]
                if not near:
                    del beside[n]

    def _beside_place(self, node: str, now: float) -> str | None:
        """Where new callers at `node` and an open suspicion beside them are one cluster:
        the lowest node at or above `node` (no larger than `max_subscribers`) with a
        suspicion not confirmed at a child of it (its siblings' callers: two entrances of
        one building; two clusters further apart, in two buildings, stay two, as the
        callers of a failed aggregation would be many and are counted there), when the
        callers there that no suspicion holds
        are at least as many as that suspicion's callers in the window, or
        `min_callers`, whichever is fewer (two of a faulty building's entrances beside the
        two that raised it at a third: not a neighbour's usual call), and all of them
        together pass that node's own test. None: no such place (the new callers are
        looked at alone, as before)."""
        s = self.settings
        beside = self._beside_index()
        if not beside:
            return None
        least = self._least()
        for p in self._chain(node):
            near = beside.get(p)
            if not near:
                continue
            held: dict[str, float] = {}
            for sus in near:
                for c in sus.calls:
                    if c.at > now - s.window and c.at < held.get(c.caller, math.inf):
                        held[c.caller] = c.at
            free = self._counts.get(p, {})
            if not held or len(free) < max(least, min(len(held), s.min_callers)):
                continue
            firsts = sorted([*(at for who, at in held.items() if who not in free),
                             *self._first_calls(p)])  # fmt: skip
            if len(firsts) >= max(s.min_callers, self.threshold(p, now)) or self.strong(
                p, firsts, now
            ):
                return p
        return None

    def _least(self) -> int:
        """The fewest distinct callers a suspicion is raised on."""
        s = self.settings
        return min(s.min_callers, PAIR) if s.evidence > 0 else s.min_callers

    def _first_calls(self, node: str) -> list[float]:
        """When each distinct caller at or below this node in the window first called."""
        firsts: dict[str, float] = {}
        nodes, counts, by_node = self.topology.nodes, self._counts, self._by_node
        # Down only where callers are (every place below max_subscribers with a caller
        # in the window is counted): a building's hundred routers are not walked.
        stack, seen = [node], {node}
        while stack:
            n = stack.pop()
            for c in by_node.get(n, ()):
                if c.at < firsts.get(c.caller, math.inf):
                    firsts[c.caller] = c.at
            for child in nodes[n].children:
                if child in counts and child not in seen:
                    seen.add(child)
                    stack.append(child)
        return sorted(firsts.values())

    def strong(self, node: str, firsts: list[float], now: float) -> bool:
        """Whether the newest of these callers (first calls, oldest first) are evidence
        enough of a fault at this node: for some j >= 2, the log-likelihood ratio of the
        newest j under a fault (a burst of `fault_rate` calls a subscriber in its hour,
        falling with time constant `burst`) against the usual calls (the place's rate as
        learned, with its uncertainty: a Gamma whose weight is the calls it was learned
        from, and the day's shape) reaches `evidence`. A quiet place's two callers a
        minute apart are evidence; a busy place, or a place learned from few calls, needs
        more. Or the scan (`scan`) finds the newest `min_callers` or more of them in a
        span the usual calls fill so rarely."""
        s = self.settings
        if s.scan_chance > 0 and self.scan(node, firsts, now) <= s.scan_chance:
            return True
        if s.evidence <= 0:
            return False
        if s.wake_evidence > 0 and firsts:
            waking = self.waking(firsts, now)
            if len(waking) >= self._least() and (
                self.score(node, waking, now, s.wake_evidence, burst=0.0) >= s.wake_evidence
            ):
                return True
        if s.burst > 0 and s.burst_evidence > 0:
            # Both tests, each against its own evidence: raised when either holds.
            return (self.score(node, firsts, now, s.evidence, burst=0.0) >= s.evidence
                    or self.score(node, firsts, now, s.burst_evidence)
                    >= s.burst_evidence)  # fmt: skip
        return self.score(node, firsts, now, s.evidence) >= s.evidence

    def scan(self, node: str, firsts: list[float], now: float) -> float:
        """The scan's least chance over the newest j >= `min_callers` of these first calls
        (oldest first): that the place's usual calls bring j distinct callers or more in
        the span from the oldest of them to the newest (its rate a Gamma learned from its
        calls, the day's shape over the span), times the spans of that length a `window`
        holds (at least one minute each); 1 when there are too few."""
        s = self.settings
        # Only callers of the waking day (from `wake_at` to midnight, the monitor's
        # clock): a night's faults are noticed from `wake_at`, so a night's callers are
        # its usual ones.
        day = now % DAY
        if day < s.wake_at:
            return 1.0
        firsts = firsts[bisect.bisect_left(firsts, now - day + s.wake_at) :]
        if len(firsts) < s.min_callers:
            return 1.0
        calls, seen = self.history(node, now)
        if calls <= 0:
            return 1.0
        newest, best = firsts[-1], 1.0
        for j in range(s.min_callers, len(firsts) + 1):
            at = firsts[-j]
            span = newest - at
            exposure = self.shaped(at, newest)
            looks = max(1.0, s.window / max(span, 60.0))
            best = min(best, looks * negbin_tail(calls, seen / (seen + exposure), j))
        return best

    def waking(self, firsts: list[float], now: float) -> list[float]:
        """Those of these first calls (oldest first) made in the waking hour that `now`
        is in: from `wake_at` to `window` after it (none, when `now` is not in it)."""
        s = self.settings
        into = (now - s.wake_at) % DAY
        if into >= s.window:
            return []
        woke = now - into
        return [at for at in firsts if at >= woke]

    def score(self, node: str, firsts: list[float], now: float,
              enough: float = math.inf, burst: float | None = None) -> float:  # fmt: skip
        """The sequential test's best log-likelihood ratio over the newest j >= 2 of these
        callers (see `strong`), -inf when there is none; it stops at the first j whose
        ratio reaches `enough`. `burst`: the alternative's time constant (None: the
        settings', 0: the constant rate)."""
        s = self.settings
        fault = s.fault_rate * self.below.get(node, 0) / 3600.0
        least = self._least()
        if fault <= 0 or len(firsts) < least:
            return -math.inf
        calls, seen = self.history(node, now)
        if calls <= 0:
            return -math.inf
        newest, total = firsts[-1], fault * 3600.0
        tau = s.burst if burst is None else burst
        # The burst's rate is (total / tau) e^-(t - onset)/tau, its onset at the oldest
        # caller weighed (the likeliest: the rate only falls after it, and no caller came
        # before it); a constant `fault` without a burst.
        peak = total / tau if tau > 0 else fault
        gain = 0.0  # the log of the fault's rate at its peak against the day's shape
        behind = 0.0  # the newer callers' seconds after the newest: sum of newest - t
        best = -math.inf
        for j, at in enumerate(reversed(firsts), 1):
            gain += math.log(peak / max(self.shape(at), 1e-9))
            span = newest - at
            behind += span
            if j < least:
                continue
            if tau > 0:
                # Each caller's rate fell by e^-(t - at)/tau from the onset, and the burst
                # was to bring total * (1 - e^-span/tau) callers by the newest.
                fault_llr = gain - (j * span - behind) / tau + total * math.expm1(-span / tau)
            else:
                fault_llr = gain - fault * span
            # The usual calls' likelihood with the rate integrated out: a Gamma(calls,
            # seen) prior on it gives Gamma(calls + j) / Gamma(calls) * seen^calls /
            # (seen + exposure)^(calls + j), the exposure in shaped seconds.
            exposure = self.shaped(at, newest)
            llr = (fault_llr - math.lgamma(calls + j) + math.lgamma(calls)
                   - calls * math.log(seen) + (calls + j) * math.log(seen + exposure))  # fmt: skip
            best = max(best, llr)
            if best >= enough:
                break
        return best

    def _narrowed(self, node: str) -> str:
        """Where a cluster found at `node` is: the child holding `min_callers` of its
        distinct callers or more (two with the sequential test) while the rest are fewer
        than that and than `min_callers` (too few to be a cluster of their own: the usual
        calls of the siblings), repeatedly; else
        the node itself. A busy entrance's callers reach their building's threshold
        with one neighbour's usual call: the entrance is still the place."""
        s, counts = self.settings, self._counts
        least = self._least()
        while True:
            total = len(counts.get(node, ()))
            for child in self.topology.nodes[node].children:
                held = len(counts.get(child, ()))
                if held >= least and total - held < min(held, s.min_callers):
                    node = child
                    break
            else:
                return node

    def _narrow(self, sus: Suspicion, now: float) -> None:
        """A suspicion moved down, keeping its id, when the calls of one child of its root
        over the last window pass that child's threshold by themselves while the rest are
        fewer than `min_callers` (the usual calls of the siblings: raised at a building by
        two callers of a faulty entrance and a neighbour's usual call, it moves to the
        entrance when more of that entrance's callers come). Repeatedly; the callers of
        the rest leave it (those still in the window count again as the usual calls of
        their places). A confirmed suspicion is never moved (its callers hear `outage`)."""
        s, topo = self.settings, self.topology
        recent = [c for c in sus.calls if c.at > now - s.window]
        old = root = sus.incident.root
        if root not in topo:
            return
        while True:
            place = {root, *topo.descendants(root)}
            callers = {c.caller for c in recent if c.node in place}
            for child in topo.nodes[root].children:
                inside = {child, *topo.descendants(child)}
                held = {c.caller for c in recent if c.node in inside}
                if (len(held) >= max(s.min_callers, self.threshold(child, now))
                        and len(callers - held) < s.min_callers
                        and self._free(child, sus)
                        and not self._cluster_beside(root, child, recent, now)):  # fmt: skip
                    root = child
                    break
            else:
                break
        if root == old:
            return
        nodes = [root, *topo.descendants(root)]
        place = set(nodes)
        kept = [c for c in sus.calls if c.node in place]
        for c in sus.calls:
            if c.node not in place and id(c) in self._taken:
                # Taken from the window when it was raised: back to its place's counts.
                self._taken.discard(id(c))
                self._restore(c)
        left = len(sus.calls) - len(kept)
        sus.calls = kept
        sus.count = max(len(kept), sus.count - left)
        sus.callers = {c.caller for c in kept}
        sus.recent = deque(sorted(c.at for c in kept if c.at > now - s.expire_after))
        if kept:
            sus.first_call = min(c.at for c in kept)
            sus.last_call = max(c.at for c in kept)
        self._drop_beside(sus)
        self._unroot(sus)
        sus.incident.root = root
        sus.incident.nodes = nodes
        self._root(sus)
        self._note_beside(sus)
        self.events.append(Event(EventKind.ROOT_MOVED, now, sus.incident.id, root,
                                 detail={"from": old, "narrowed": True,
                                         "callers": len(sus.callers)}))  # fmt: skip
        self.events.append(Event(EventKind.NODES, now, sus.incident.id, root, tuple(nodes),
                                 detail={"narrowed_from": old, "count": len(nodes)}))  # fmt: skip

    def _cluster_beside(self, root: str, child: str, recent: list[Call], now: float) -> bool:
        """Whether the callers of another child of `root` among these calls are a cluster
        of their own (as many as a suspicion is raised on, passing that child's threshold
        or the sequential test): not the usual calls of a neighbour, so the place stays
        `root` (a building whose entrances call: not moved down to the busiest one)."""
        s, topo = self.settings, self.topology
        least = self._least()
        for other in topo.nodes[root].children:
            if other == child:
                continue
            inside = {other, *topo.descendants(other)}
            firsts: dict[str, float] = {}
            for c in recent:
                if c.node in inside and c.at < firsts.get(c.caller, math.inf):
                    firsts[c.caller] = c.at
            if len(firsts) < least:
                continue
            if len(firsts) >= max(s.min_callers, self.threshold(other, now)) or self.strong(
                other, sorted(firsts.values()), now
            ):
                return True
        return False

    def _free(self, node: str, sus: Suspicion) -> bool:
        """Whether no other open suspicion is rooted at this node."""
        found = self._index().get(node)
        return found is None or found is sus

    def _unroot(self, sus: Suspicion) -> None:
        """A suspicion out of the index by root (before its root moves, or as it ends):
        kept up to date rather than rebuilt, which is O(open) (a city calling at once)."""
        if not self._roots_stale:
            if self._roots.get(sus.incident.root) is sus:
                del self._roots[sus.incident.root]
            else:
                self._roots_stale = True  # another at its root: rebuilt when next asked

    def _root(self, sus: Suspicion) -> None:
        """A suspicion into the index by root, at its (new) root."""
        if not self._roots_stale and self._roots.setdefault(sus.incident.root, sus) is not sus:
            self._roots_stale = True

    def _restore(self, call: Call) -> None:
        """A call a suspicion gave back: counted again at its places (it is still in
        the window, which it leaves in its time)."""
        self._by_node.setdefault(call.node, deque()).append(call)
        self._count_in(call)

    def lowest_shared(self, nodes: set[str]) -> str:
        """The lowest node at or above every one of these (ties: the first by id); with
        none shared, the first of them by id."""
        return self.topology.lowest_shared(nodes) or min(nodes)

    def _suspect(self, root: str, taken: list[Call], now: float,
                 next_id: Callable[[], int]) -> None:  # fmt: skip
        """A suspicion at `root`: a new one, or the oldest of those below it widened
        (callers keep the id they heard), the others merged into it."""
        first = min(c.at for c in taken)
        nodes = [root, *self.topology.descendants(root)]
        roots = self._index()  # (when every suspicion had ended, it held them still)
        under = sorted((found for n in nodes if (found := roots.get(n)) is not None
                        and not found.confirmed), key=lambda sus: sus.incident.id)  # fmt: skip
        if under:
            sus = under[0]
            old = sus.incident.root
            had = set(sus.incident.nodes)
            self._drop_beside(sus)
            self._unroot(sus)
            sus.incident.root = root
            sus.incident.nodes = nodes
            self._root(sus)
            self._note_beside(sus)
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
                                     detail={"added": sum(n not in had for n in nodes),
                                             "nodes": len(nodes)}))  # fmt: skip
            sus.first_call = min(sus.first_call, first)
        else:
            inc = Incident(id=next_id(), root=root, kind=Kind.SUSPECTED, inferred=True,
                           opened_at=now, nodes=nodes, raised_by="calls")  # fmt: skip
            sus = Suspicion(inc, [], first, now, first)
            self.open[inc.id] = sus
            roots[root] = sus  # the index stays up to date (rebuilding it is O(open))
            self._note_beside(sus)
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
        self._drop_beside(sus)
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

    def service_back(self, now: float, down_since: Callable[[str], float | None],
                     answering: Callable[[str], bool], explained: Callable[[str], bool],
                     hold: float, blind: bool = False) -> list[Suspicion]:  # fmt: skip
        """The suspicions whose place the probes see working again, ended and returned:
        a confirmed one repaired (callers hear `restored`), one never confirmed `cleared`,
        each stamped with the moment service came back (the history ends there).

        Its evidence: the probed nodes at or below its root (`down_since(node)`: since
        when down, None while not) that went down from `window` before its first call on
        and stayed down `hold` seconds (not a moment's silence of the monitor's own
        uplink), unexplained by the probes' incidents or planned works (`explained`), at
        least half of its place's probed nodes (fewer are routers' own troubles: a
        reboot). Service is back once all of them answer (`answering`) for `hold`. A
        router down since before the calls (its owner away) is no part of it; a place
        whose probed nodes never failed ends as before (an engineer, or quiet calls)."""
        ended: list[Suspicion] = []
        if blind:  # nothing answers: no evidence either way, and what was back is not
            for sus in self.open.values():
                sus.back_since = None
            return ended
        for sid, sus in list(self.open.items()):
            since = sus.first_call - self.settings.window
            probed = self._probed_nodes(sus)
            for n in probed:
                at = down_since(n)
                if (at is not None and at >= since and now - at >= hold
                        and n not in sus.failed and not explained(n)):  # fmt: skip
                    sus.failed[n] = at
            if not sus.failed or 2 * len(sus.failed) < len(probed):
                continue  # fewer than half: a router's own trouble, not the place's
            if not all(map(answering, sus.failed)):
                sus.back_since = None
                continue
            if sus.back_since is None:
                sus.back_since = now
            if now - sus.back_since < hold:
                continue
            back = sorted(sus.failed)
            detail: dict[str, object] = {"answering": back[:10], "count": len(back)}
            if sus.confirmed:
                detail.update(repaired=True, by="probes")
            else:
                detail["cleared"] = True
            self._close(sus, sus.back_since, IncidentState.RESOLVED, None)
            self.events.append(Event(EventKind.RESOLVED, sus.back_since, sid, sus.incident.root,
                                     tuple(sus.incident.nodes), detail=detail))  # fmt: skip
            ended.append(sus)
        return ended

    def _probed_nodes(self, sus: Suspicion) -> tuple[str, ...]:
        """The probed nodes at or below a suspicion's root (kept while neither the
        topology nor its root changes)."""
        topo, root = self.topology, sus.incident.root
        if sus.probed_of[0] is not topo or sus.probed_of[1] != root:
            nodes = topo.nodes
            place = (root, *topo.descendants(root)) if root in topo else ()
            sus.probed = tuple(n for n in place if nodes[n].probed)
            sus.probed_of = (topo, root)
            # Moved down, or the topology changed: what failed outside it is not its.
            inside = set(sus.probed)
            sus.failed = {n: at for n, at in sus.failed.items() if n in inside}
        return sus.probed

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
        self._unroot(sus)
        self._drop_beside(sus)
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
            self._roots_stale = True
            self._beside = None
