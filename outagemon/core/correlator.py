"""From probe results to incidents: a pure state machine (no I/O, no clock).

Time is passed in; every decision can be replayed exactly in a test. The daemon feeds it
`observe()` for each probe result and `tick()` a few times a second, sends the probes it
asks for (`take_requests()`), and persists the events it returns.

Cut by concern, as one class in three layers and a book: each node's health
(hysteresis, loss history, flapping) is `core/health.py`; the failed set and inference
from children failing together, `core/failures.py`; the incidents and their events, the
book (`core/incidents.py`); this module is the decision core. Roots: failed nodes with a
surviving uplink; everything cut off behind a root is in the root's incident. Inferred
roots: a node whose children fail together. Incidents settle before they open (a
child's failure waits for fresh evidence about its ancestors), absorb incidents below a
new higher root, split when part stays down after the root recovers, resolve after the
root has been up `resolve_hold` seconds, and are not opened while the monitor is blind.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from time import thread_time

from outagemon.core.failures import Cut, Failures
from outagemon.core.health import (
    FLAP_HIGH,
    RTT_BOUND,
    NodeState,
    Settings,
    State,
    flap_percent,
)
from outagemon.core.incidents import Event, EventKind, Incident, IncidentBook, Maintenance
from outagemon.core.topology import Change, Topology

# Nodes looked at in one tick as the monitor sees again (each one down, with state
# changes or a streak to void counts as SIGHT_MORE more): a city's million are ticks of
# about 10 ms each, not one of 100 ms (1 s, the city down). A node down costs about 12
# of the others (taken out of the failed set, asked for): with 6, a city all down (its
# core answering before our uplink leaves every node down to the look) was 18-26 ms.
SIGHT_SLICE = 60_000
SIGHT_MORE = 12
# Nodes between two looks at what is left of the slice (its count and its time): 4,096
# nodes all down were 10-12 ms under load, a slice past its time by as much (19-21 ms).
SIGHT_CHUNK = 1024
# And a slice ends once it has taken this much of the thread's CPU (seconds): on a
# loaded machine a node costs more, and 60,000 of them took 24-42 ms of a tick.
SIGHT_TIME = 0.008
# States of nodes a reload removed taken out in one step (the rest: `take_out` in
# later ones): a look-up each in a table of a million, 1-2 us quiet on this VM.
GONE_SLICE = 1_000


class Correlator(Failures):
    """The decisions: which failed nodes are roots, and what the incidents are.

    Invariants its caches keep between ticks (besides those of `Failures`):
    `_roots_cache` holds the roots of `_cut_cache` (failed, not cut off by other failures,
    never a router), valid while `_dirty` is unset; `_pending_since` the roots waiting to
    settle, with the time their failure began, and `_blocked` the ancestor that held each
    back, with the time of that ancestor's last result; `_scope` every node the planned works
    active at the last tick cover, with when they leave it a path."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        anchors: Iterable[str] = (),
        next_id: int = 1,
    ) -> None:
        super().__init__(topology, settings, anchors)
        self.book = IncidentBook(next_id)
        self.maintenance: list[Maintenance] = []
        self._scope: dict[str, float] = {}  # node under works -> when they leave it a path
        self._pending_since: dict[str, float] = {}  # root candidates waiting to settle
        self._blocked: dict[str, tuple[str, float]] = {}  # pending root -> (ancestor, its last_at)
        self._roots_cache: list[str] = []
        # `_roots_cache` (the very list), its roots in name order and as a set: made once
        # a change of the roots, not every tick (a mass outage has hundreds waiting to
        # settle); and the roots `_pending_since` was last cleared of others for.
        self._roots_sorted: tuple[list[str], list[str], set[str]] = (self._roots_cache, [], set())
        self._pending_of: list[str] | None = None
        self._blind_at = -math.inf  # when the monitor last went blind
        # The anchors that fell silent with our uplink as the monitor went blind: what only
        # they cut off leaves the incidents at the next assignment (`_lead_up`).
        self._silenced: set[str] = set()
        # What _scope is of: the topology, the works running and those still to end.
        self._scope_key: tuple[int, tuple[Maintenance, ...], tuple[Maintenance, ...]] = (0, (), ())
        self._anchors_seen: set[str] = set(self.anchors)  # anchors states may be kept for
        # Looks at every node not done at once, a node done when met (`_settle`) or by a
        # walk: as the monitor went blind (epoch, `begun`, when, the anchors), and as it
        # sees again (epoch, when, changes kept before, nodes done, of which topology).
        self._lead: tuple[int, float, float, set[str]] | None = None
        self._sight: tuple[int, float, float, Iterator[tuple[str, NodeState]] | None,
                           tuple[int, Topology] | None] | None = None  # fmt: skip

    # -- the incident book, as the API, the page and the monitor read it ---------------

    @property
    def incidents(self) -> dict[int, Incident]:
        """Open incidents (recovering included), by id."""
        return self.book.incidents

    @property
    def node_incident(self) -> Mapping[str, int]:
        """Node -> the open incident that covers it."""
        return self.book.node_incident

    @property
    def next_id(self) -> int:
        return self.book.next_id

    def incident_for(self, node: str) -> Incident | None:
        return self.book.incident_for(node)

    def last_resolved(self, root: str) -> Incident | None:
        """The last incident of this root that resolved (reopened if it fails again soon)."""
        return self.book.resolved.get(root)

    # -- input besides probe results -------------------------------------------------

    def set_maintenance(self, windows: Iterable[Maintenance], now: float) -> None:
        """Planned works, all of them: nodes they cover open maintenance, not outages."""
        self.version += 1
        self.maintenance = sorted(windows, key=lambda m: m.starts_at)
        self._refresh_scope(now)
        # The incidents' ends moved now, not at the next round: works extended a moment
        # before their end, that round past it, were taken for works begun after the
        # incident's own had ended (`end_works`), and it became an outage inside them.
        self.version += self.book.end_works(now, self._scope, self.settings.resolve_hold)
        self._dirty = True

    def _refresh_scope(self, now: float) -> None:
        """The planned works active now, for every node they cover: the works' nodes, and
        every node all of whose uplinks lead into them (a dual-homed building keeps its
        other uplink); each with the first moment the works running then leave it a path
        (works booked to overlap or follow on carry it to the end of their chain)."""
        nodes = self.topology.nodes
        windows = [m for m in self.maintenance if m.ends_at > now and m.node in nodes]
        running = tuple(m for m in windows if m.starts_at <= now)
        key = (id(self.topology), running, tuple(windows) if running else ())
        if key == self._scope_key:
            return  # called every tick: the same works running cover the same nodes
        self._scope_key = key
        scope: dict[str, float] = {}
        if running:
            topology = self.topology
            below = {m.node for m in running}
            for n in list(below):
                below.update(topology.descendants(n))
            # Every node a covered node depends on is below running works or above them.
            above = set().union(*(topology.ancestors(m.node) for m in running))
            still = set(filter(self._cut_off(running), below))
            # Only works ending free a node, and only the nodes at or below them.
            for t in sorted({m.ends_at for m in windows}):
                near: set[str] = set()
                for e in {m.node for m in windows if m.ends_at == t}:
                    if e in below or e in above:
                        near.update(n for n in (e, *topology.descendants(e)) if n in still)
                if not near:
                    continue
                cut = self._cut_off(m for m in windows if m.starts_at <= t < m.ends_at)
                freed = [n for n in near if not cut(n)]
                for n in freed:
                    scope[n] = t
                still.difference_update(freed)
                if not still:
                    break
        self._scope = scope

    def _works_for(self, root: str, began: float, now: float) -> float | None:
        """When the planned works a root failed inside leave it a path (their chain's
        end), or None: works not running now, or not covering it without a break from its
        failure to now: not yet when it failed (it failed before them, and settled only
        once they ran: an outage, seed 41338), or ended since, others beginning after (a
        fault that outlived its works is an outage, whatever works it settled under)."""
        until = self._scope.get(root)
        if until is None:
            return None
        nodes = self.topology.nodes
        windows = [m for m in self.maintenance if m.node in nodes]
        # Only an end of works can leave it a path: covered at its failure and at each
        # end since, it was covered throughout.
        for t in (began, *(m.ends_at for m in windows if began < m.ends_at <= now)):
            then = [m for m in windows if m.starts_at <= t < m.ends_at]
            if not then or not self._cut_off(then)(root):
                return None
        return until

    def _cut_off(self, running: Iterable[Maintenance]) -> Callable[[str], bool]:
        """Whether works on these nodes cut a node off (all its uplinks lead into them)."""
        nodes = self.topology.nodes
        memo = {m.node: True for m in running}

        def cut(n: str) -> bool:
            found = memo.get(n)
            if found is None:
                parents = nodes[n].parents
                found = bool(parents) and all(cut(p) for p in parents)
                memo[n] = found
            return found

        return cut

    def set_topology(self, topology: Topology, change: Change | None = None) -> list[object]:
        """A reloaded topology: nodes that still exist keep their state. `change`: what
        changed since the current topology (`topology.change`, made off the event loop):
        then only those nodes are touched (a million nodes otherwise hold the loop for
        half a second here, and the next tick as long again). Returns the gone nodes'
        states, taken out here (with a change, the first GONE_SLICE of them here and the
        rest by `take_out`, a slice a step), for the caller to free a slice at a time."""
        self.take_out()  # what the last reload left to take out, first
        self.version += 1  # paths from callers to the core may have changed
        old = self.topology
        self.topology = topology
        self._scope_key = (0, (), ())
        anchors = set(self.anchors)
        states = self.states
        freed: list[NodeState] = []
        if change is None or change.old is not old or change.new is not topology:
            for gone in [n for n in states if n not in topology and n not in anchors]:
                freed.append(states.pop(gone))
            self._changed.update(states)
        else:
            # The states are of nodes of the old topology and of anchors (old or new).
            # `change.gone` is made off the loop, of nodes not in the new topology: each
            # is taken out in one look-up, and freed later (4,300 gone states looked up
            # twice, checked against the topology and freed here held the loop 18 ms at a
            # million nodes); past the first GONE_SLICE, by `take_out` in later steps.
            self._leaving, self._leave, self._kept = change.gone, iter(change.gone), anchors
            self._taken = freed
            self.take_out(GONE_SLICE)
            pop = states.pop
            for gone in [n for n in self._anchors_seen if n not in topology and n not in anchors]:
                if (ns := pop(gone, None)) is not None:
                    freed.append(ns)
            # Each changed node and its parents (new and old) weigh their inference
            # again: gathered with the change, off the loop, and read as they are by the
            # next inference.
            if change.changed or change.reconsider:
                self._reloaded.append((change.reconsider, change.changed))
        self._anchors_seen = anchors
        self.inferred = {n: t for n, t in self.inferred.items() if n in topology}
        self._down = self._down.within(topology)
        self._removed = True
        self._left = None  # the cut was of the old topology: afresh
        self._dirty = True
        return [freed]

    def restore(self, incidents: Iterable[Incident], next_id: int) -> None:
        """Open incidents from the database after a restart: they continue with their ids.

        Their nodes are taken as down until a fresh probe says otherwise; but for one that
        was recovering (its root answered, `recovering_since`), its root is looked at afresh
        (RECHECK) unless down by this node's own probes: it recovers still, and resolves
        once its root answers, or fails again.
        """
        self.take_out()
        self.version += 1
        book = self.book
        for inc in incidents:
            recovering = inc.recovering_since is not None
            book.incidents[inc.id] = inc
            book.node_incident.claim(inc.nodes, inc.id)
            for n in inc.nodes:
                if n in self.topology and self.topology.nodes[n].probed:
                    # Its root down since its own failure (one it moved up to failed later).
                    failed = inc.root_down if n == inc.root else inc.since
                    ns = self.states.get(n)
                    if ns is None:
                        ns = self.states[n] = NodeState(changed_at=failed, epoch=self._epoch)
                    elif self._lazy:
                        self._settle(n, ns)
                    # A recovering one's root: down only by this node's own probes (a
                    # standby taking over), else looked at afresh.
                    down = n == inc.root and (not recovering or ns.state is State.DOWN)
                    if not (down and recovering):  # (that root: down since it saw it fail)
                        ns.down_at = failed
                    ns.state = State.DOWN if down else State.RECHECK
                    if ns.state is State.DOWN:
                        self._fail(n)
                    else:
                        # A standby taking over was probing: down by its own probes, it
                        # leaves the failed set as it waits for a fresh one (left in it,
                        # not DOWN, `_recheck_below` passed it by when the root came
                        # back, and it was a failed root of its own until it answered).
                        self._unfail(n)
                    self._requests[n] = None
            root = self.topology.nodes.get(inc.root)
            if root is not None and not root.probed and not recovering:
                self._infer_down(inc.root, inc.root_down)
        book.next_id = max(book.next_id, next_id)
        self._dirty = True

    # -- the decision ----------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Decide what the results so far mean; return the events since the last tick."""
        self.take_out()  # the states of nodes the last reload removed, any left
        self._refresh_scope(now)
        if self._vantage(now):
            # Still looking at every node as the monitor sees again: blind till then, and
            # nothing is decided on nodes not looked at yet.
            return self.book.take_events()
        if self._changed or self._reconsider or self._reloaded:
            self._infer(now)
        self._decide(now)
        events = self.book.take_events()
        if events:
            self.version += 1
        return events

    def keep_sight(self, now: float) -> None:
        """A standby's tick, which decides nothing: whether this node is blind is kept
        current from its own anchors (with what going blind or seeing again does to its
        nodes' evidence), so it is its own when it takes over; the events are not kept."""
        self.take_out()
        self._vantage(now)
        self.book.events = [e for e in self.book.events
                            if e.kind not in (EventKind.BLIND, EventKind.SEEING)]  # fmt: skip

    def _vantage(self, now: float) -> bool:
        """Blind while every anchor is down: nothing opens, and what failed meanwhile is
        no evidence; when an anchor answers again, every failed node is probed afresh.
        Returns whether the look at every node as the monitor sees again goes on (it is
        still blind meanwhile: see `_see`)."""
        if self._sight is not None:
            return self._see(now)
        states = [self.states.get(a) for a in self.anchors]
        blind = bool(states) and all(ns is not None and ns.state is State.DOWN for ns in states)
        if blind and not self.blind:
            self.version += 1
            self.blind = True
            self._blind_at = now
            self._lead_up(now)
            self.book.events.append(
                Event(EventKind.BLIND, now, detail={"anchors": list(self.anchors)})
            )
        elif not blind and self.blind:
            # What failed while we could not see is not evidence: every node is looked at
            # again (`_see_one`), a slice a tick, as of now; until all are, it stays blind.
            self._epoch += 1
            self._lazy = True
            self._sight = (self._epoch, now, self._blind_at - self.settings.window, None, None)
            # The anchors leave the failed set: the decision after starts afresh, and
            # what leaves it meanwhile (every node down, a million) is not listed.
            self._left = None
            return self._see(now)
        return False

    def _see(self, now: float) -> bool:
        """The next slice of the look at every node as the monitor sees again, in the
        order of their states; the last one ends the blindness. A node met before its
        turn (a result, a walk below a node that came back) is looked at then
        (`_settle`): each is looked at once, as of the same moment."""
        assert self._sight is not None
        epoch, at, since, walk, size = self._sight
        first = walk is None
        states = self.states
        if walk is None or size != (len(states), self.topology):
            # States were added or taken out (a node's first result, a reload): the walk
            # starts again; those looked at already are passed by.
            walk = iter(states.items())
        budget = SIGHT_SLICE
        lead = self._lead[0] if self._lead is not None else -1
        down = State.DOWN
        finished = False
        until = thread_time() + SIGHT_TIME
        while budget > 0 and not finished:
            if budget < SIGHT_SLICE and thread_time() >= until:
                break  # this slice's time is spent: the rest at the next step
            chunk = list(islice(walk, min(SIGHT_CHUNK, budget)))
            finished = len(chunk) < min(SIGHT_CHUNK, budget)
            budget -= len(chunk)
            for node, ns in chunk:
                # `_see_one`, written out for the nodes neither down nor losing probes
                # as it went blind (nearly all): a call each was most of the walk.
                if ns.epoch == epoch:
                    continue
                if ns.state is down or ns.changes or (ns.losses and ns.epoch < lead):
                    self._see_one(node, ns)
                    budget -= SIGHT_MORE
                    continue
                ns.epoch = epoch
                ns.stale_before = at
                ns.losses = 0
                ns.asked = False
        if not finished or (not first and budget < SIGHT_SLICE):
            # Looked at in one slice, it sees again at once (as it always did); in
            # several, the tick that ends the blindness decides anew and walks no more.
            self._sight = (epoch, at, since, walk, (len(states), self.topology))
            return True
        self._sight = None
        self._lead = None
        self._lazy = False
        self.version += 1
        self.blind = False
        self._sight_at = at
        for node in list(self.inferred):
            self._infer_up(node)
        self._pending_since.clear()
        self._dirty = True
        self.book.events.append(Event(EventKind.SEEING, now))
        return False

    def _see_one(self, node: str, ns: NodeState) -> None:
        """One node as the monitor sees again: losses of probes sent before are no
        evidence, nor is a node down, and the changes since our uplink began to fail are
        no flapping."""
        assert self._sight is not None
        epoch, at, since, _, _ = self._sight
        if self._lead is not None and ns.epoch < self._lead[0]:
            self._lead_one(node, ns)
        ns.epoch = epoch
        ns.stale_before = at
        ns.losses = 0
        ns.asked = False  # a streak after it asks for its ancestors again
        changes = ns.changes
        if changes:
            # In time order: those since `since` are a tail; none left in the look-back
            # is no flapping without summing them.
            if changes[-1] >= since:
                changes = ns.changes = changes[: bisect_left(changes, since)]
            period = self.settings.flap_period
            ns.flapping = (bool(changes) and changes[-1] >= at - period
                           and flap_percent(changes, at, period) > FLAP_HIGH)  # fmt: skip
        if ns.state is State.DOWN:
            ns.state = State.RECHECK
            self._unfail(node)
            self._requests[node] = None

    def _settle(self, node: str, ns: NodeState) -> None:
        """A node met while a look at every node is under way, before its turn: it is
        looked at now, as it would have been (nothing about it changed meanwhile)."""
        if ns.epoch == self._epoch:
            return
        if self._sight is not None:
            self._see_one(node, ns)
            return
        if self._lead is not None and ns.epoch < self._lead[0]:
            self._lead_one(node, ns)
        ns.epoch = self._epoch

    def _recheck_below(self, node: str, now: float) -> None:
        """Blind (before the look as it sees again), a node that comes back leaves what
        lies below it to that look, which does the same to every node, later: a core
        that answers before our uplink does would otherwise walk the whole city in one
        step (1.7 s at a million nodes)."""
        if self.blind and self._sight is None:
            return
        super()._recheck_below(node, now)

    @property
    def looking(self) -> bool:
        """Whether the look at every node as the monitor sees again goes on (it is blind
        till that is done): the daemon then decides again at its next step, not a tick
        later."""
        return self._sight is not None

    def settle(self) -> None:
        """Every node looked at now (a take-over reads them all): the rest of the look
        as the monitor sees again, in one step."""
        self.take_out()
        while self._sight is not None:
            self._see(self._sight[1])

    def _lead_up(self, now: float) -> None:
        """The monitor has just gone blind: the streaks that began with the anchors' own
        (other nodes' streaks often complete first) were our uplink's silence, no
        evidence. Those nodes are looked at afresh, and nothing they cut off joins an
        incident (as for a silence too short to be called blind, `_doubt`). Those down
        now at once (they leave the failed set); the others, losing probes, when next
        met (`_settle`), or as the monitor sees again: till then nothing reads their
        streaks (blind, nothing is inferred or opened), and only a result changes them."""
        streaks = [ns.streak_at for a in self.anchors
                   if (ns := self.states.get(a)) is not None]  # fmt: skip
        if not streaks:
            return
        anchors = set(self.anchors)
        begun = min(streaks) - 3 * self.settings.timeout  # sent, with a little early
        # Those that fell silent together (within a probe interval of the last one), not
        # one down long before (a fault of its own): while they are down, everything
        # behind them alone is cut off, and the incidents keep what joined them as the
        # uplink failed (a dual-homed node whose other uplink was losing its probes too).
        latest = max(streaks) - self.settings.interval - 3 * self.settings.timeout
        self._silenced = {
            a for a in anchors if (ns := self.states.get(a)) is not None and ns.streak_at >= latest
        }
        self._dirty = True
        self._epoch += 1
        self._lead = (self._epoch, begun, now, anchors)
        self._lazy = True
        for node in [n for n in self._down if n not in anchors]:
            ns = self.states[node]
            self._lead_one(node, ns)
            ns.epoch = self._epoch

    def _lead_one(self, node: str, ns: NodeState) -> None:
        """One node as the monitor goes blind (`_lead_up`), as it was then."""
        assert self._lead is not None
        _, begun, at, anchors = self._lead
        if node not in anchors and self._void_streak(node, ns, begun, at):
            self._rechecked(node)

    def _vantage_clean(self) -> bool:
        """At least one anchor answers with no loss streak: our own view can be trusted."""
        for a in self.anchors:
            ns = self.states.get(a)
            if ns is not None and ns.state is State.UP and ns.losses == 0:
                return True
        return False

    def _settled(self, root: str, since: float, now: float) -> bool:
        """Fresh evidence that nothing above this root failed too, or `window` has passed.

        Fresh means answered since the root's trouble began (its first lost probe, when
        its ancestors were asked to be probed too); about an ancestor without an address,
        its children are the evidence (it must not be about to be inferred down)."""
        if now - since >= self.settings.window:
            return True
        own = self.states.get(root)
        if own is not None and own.state is State.DOWN and own.streak_at:
            since = min(since, own.streak_at)
        blocked = self._blocked.get(root)
        if blocked is not None:
            # Nothing new about the ancestor that held it back last time: still held.
            ns = self.states.get(blocked[0])
            if ns is not None and ns.last_at == blocked[1]:
                return False
        for a in self.topology.ancestors(root):
            node = self.topology.nodes[a]
            if not node.probed:
                if self._may_be_inferred(a, since):
                    self._blocked.pop(root, None)
                    return False
                continue
            ns = self.states.get(a)
            if ns is None or ns.state is not State.UP or ns.losses > 0 or ns.last_at < since:
                self._blocked[root] = (a, ns.last_at if ns is not None else -math.inf)
                return False
            if self._may_be_inferred(a, since, answering=True):
                # It answers, but its children are failing together: it is about to be
                # inferred down (a switch whose ports are dead), the fault above this one
                # (seed 62099: an aggregation's incident opened, taken over a second later).
                self._blocked.pop(root, None)
                return False
            began = self._began(root)
            if ns.silent_from - RTT_BOUND <= began < ns.silent_to and self._only_through(root, a):
                # Its trouble began while this ancestor, which it hangs from alone, was
                # silent (down, or losing probes too briefly to be called down): it was
                # only cut off. It is looked at afresh, as below a node that came back.
                self._afresh(root, now)
                return False
        self._blocked.pop(root, None)
        return True

    def _began(self, root: str) -> float:
        """When a root's trouble began as last found: the sending of its first lost probe,
        or (inferred) of the first lost probe of the children it is inferred from."""
        nodes = self.topology.nodes
        if root in self.inferred:
            found = [self._began(c) for c in nodes[root].children
                     if c in self.inferred or self.state_of(c) is State.DOWN]  # fmt: skip
            return min(found, default=self.inferred[root])
        ns = self.states.get(root)
        if ns is None or ns.state is not State.DOWN:
            return math.inf
        return ns.streak_at - self.settings.timeout

    def _only_through(self, node: str, via: str) -> bool:
        """Whether every path from this node up to a top runs through `via`."""
        nodes = self.topology.nodes
        seen = {via}
        stack = [node]
        while stack:
            for p in nodes[stack.pop()].parents:
                if p in seen:
                    continue
                if not nodes[p].parents:
                    return False
                seen.add(p)
                stack.append(p)
        return True

    def _afresh(self, root: str, now: float) -> None:
        """A root that was only cut off: it, and what lies below it, is probed again and
        counts as down only by probes sent from now on."""
        self._infer_up(root)
        ns = self.states.get(root)
        if ns is not None and ns.state is State.DOWN:
            ns.state = State.RECHECK
            ns.stale_before = now
            ns.losses = 0
            ns.asked = False
            self._unfail(root)
            self._requests[root] = None
        self._recheck_below(root, now)
        self._pending_since.pop(root, None)
        self._blocked.pop(root, None)
        self._dirty = True

    def _may_be_inferred(self, node: str, since: float, answering: bool = False) -> bool:
        """Whether this node without an address may yet be inferred down (its other
        children are the evidence about it): enough of them have said nothing fresh since
        `since`, or are (or may yet be) inferred down themselves. Of a node that answers
        (`answering`), as `_infer` weighs it, only children failing together count: one
        down since before `window` ahead of `since` is no word either way (a switch whose
        entrances were mostly lost an hour ago held each new root below it for `window`)."""
        if node in self.inferred:
            return False
        s = self.settings
        nodes = self.topology.nodes
        kids = nodes[node].children
        if len(kids) < s.infer_min_children:
            return False
        gone = since - s.window if answering else -math.inf
        doubtful = counted = 0
        unprobed = self.topology.unprobed
        inferred = self.inferred
        for child in kids:
            if child in unprobed:
                if child in inferred:
                    if inferred[child] < gone:
                        continue
                    doubtful += 1
                elif self._may_be_inferred(child, since):
                    doubtful += 1
                counted += 1
                continue
            cs = self.states.get(child)
            if answering and cs is not None and cs.state is State.DOWN:
                first = cs.down_at if cs.down_first is None else cs.down_first
                if first < gone:
                    continue
            counted += 1
            if cs is None or cs.state is not State.UP or cs.losses > 0 or cs.last_at < since:
                doubtful += 1
        return counted >= s.infer_min_children and doubtful / counted >= s.infer_ratio

    def _decide(self, now: float) -> None:
        """Roots and incidents from the failed set: the cut and its roots are brought up to
        date (from scratch after a removal, else by what was added), each settled root gets
        its incident from the book, the book assigns cut-off nodes when anything changed,
        and incidents whose root no longer fails recover and resolve."""
        changed = self._dirty
        if self._dirty:
            # Work in proportion to what failed, never to the size of the network; and when
            # failures were only added, only to what they add.
            self._dirty = False
            # Roots are never routers (kind cpe) and routers without children (most of
            # what fails in a mass outage) are not in the small dict of inner nodes: the
            # candidates are looked up there.
            inner_of = self.topology.inner
            # Blind, the anchors that fail cut off what hangs from them alone: the whole
            # city behind an anchor at the top, found when asked (`Cut`), never listed.
            shadow = frozenset(a for a in self.anchors if a in self._down) if self.blind else None
            old_cut = self._cut_cache
            kept = shadow == old_cut.shadow if isinstance(old_cut, Cut) else (
                not shadow or not self._removed)  # fmt: skip
            cut: set[str] | Cut
            if (self._removed and not self._still_cut()) or not kept:
                failed = self._failed()
                if shadow:
                    cut = Cut(self._cut(failed - shadow), shadow, self.topology)
                else:
                    cut = self._cut(failed)
                candidates: Iterable[str] = failed
                keep: list[str] = []
            else:
                # Nothing left the failed set since the last decision (else `_removed`),
                # or only nodes still cut off (the cut and its roots are the same): all
                # that joined it is in it still. Subscribers' routers are most of
                # what fails in a mass outage: leaves of kind cpe cut off nothing and are
                # never roots, so they only join the cut.
                # The inner nodes among them: an intersection, which walks the smaller
                # set (a tick of a mass outage adds 2,000 routers, not looked at one by one).
                added = self._added
                inner = added & self.topology.inner_nodes
                if isinstance(old_cut, Cut) or shadow:
                    # What the shadow cuts off is not walked: it is in the cut as asked.
                    cut = old_cut if isinstance(old_cut, Cut) else Cut(
                        old_cut, shadow or frozenset(), self.topology)  # fmt: skip
                    cut.base.update(added)
                    if inner - cut.shadow:
                        self._cut(inner - cut.shadow, cut.base)
                    cut.grown()
                else:
                    cut = old_cut
                    cut.update(added)
                    cut = self._cut(inner, cut) if inner else cut
                # Old roots stay roots unless a new failure could be above them (a node with
                # children); routers and other leaves explain nothing.
                old = self._roots_cache if any(inner_of[n].children for n in inner) else []
                if not old:
                    candidates = inner
                    keep = self._roots_cache
                else:
                    candidates = [*old, *inner]
                    keep = []
            self._added = set()
            self._removed = False
            self._left = set()
            self._cut_cache = cut
            self._roots_cache = keep + [
                n for n in dict.fromkeys(candidates)
                if (node := inner_of.get(n)) is not None and node.kind != "cpe"
                and not (node.parents and cut.issuperset(node.parents))
            ]  # fmt: skip
        cut, roots = self._cut_cache, self._roots_cache
        book = self.book
        opened = False
        by_root = {inc.root: inc for inc in book.incidents.values()}
        can_open = not self.blind and self._vantage_clean()
        active: list[Incident] = []
        pending, blocked, states = self._pending_since, self._blocked, self.states
        window = self.settings.window
        # Roots with an incident first, then the rest, each in name order.
        if self._roots_sorted[0] is not roots:
            self._roots_sorted = (roots, sorted(roots), set(roots))
        _, ordered, root_set = self._roots_sorted
        if by_root:
            ordered = [*(r for r in ordered if r in by_root),
                       *(r for r in ordered if r not in by_root)]  # fmt: skip
        for root in ordered:
            inc = by_root.get(root)
            if inc is None:
                since = pending.get(root)
                if since is None:
                    since = pending[root] = self._failed_since(root)
                if not can_open:
                    continue
                # `_settled`'s first answers, here: before its window has passed, a root
                # held back by an ancestor that has said nothing since is still held (in
                # a mass outage, hundreds of roots wait so for the core, every tick).
                held = blocked.get(root)
                if held is not None and now - since < window:
                    ns = states.get(held[0])
                    if ns is not None and ns.last_at == held[1]:
                        continue
                if not self._settled(root, since, now):
                    continue
                began = self._failed_since(root)
                inc = book.open(root, cut, by_root, now, self.topology, root in self.inferred,
                                began, self._works_for(root, began, now))  # fmt: skip
                by_root[root] = inc
                opened = True
            self._pending_since.pop(root, None)
            active.append(inc)
            if inc.recovering_since is not None:
                book.refailed(inc, now, self._failed_since(root) or now)
                if can_open and book.take_in(inc, cut, by_root, now, self.topology):
                    opened = True
        # Only roots are added to `_pending_since`: with the same roots as when it was
        # last cleared of others, it holds no other.
        if self._pending_of is not roots:
            for gone in [r for r in self._pending_since if r not in root_set]:
                del self._pending_since[gone]
                self._blocked.pop(gone, None)
            self._pending_of = roots
        if self._silenced:
            # Gone blind: what joined as our uplink failed leaves (the anchors that fell
            # silent with it, and the nodes `_lead_up` looks at afresh, cut nothing off;
            # their cut may hide the roots of the open incidents: each is trimmed).
            still = [inc for inc in book.incidents.values() if inc.recovering_since is None]
            if self.blind and still:
                without = self._cut(self._failed() - self._silenced)
                book.assign(still, without, now, self.topology, grow=False)
            self._silenced = set()
        elif opened or (changed and active):
            # Blind, what fails is no evidence: no incident takes in more nodes.
            book.assign(active, cut, now, self.topology, grow=not self.blind)
        book.recover(root_set, cut, now, self.states, self.settings.resolve_hold,
                     self.settings.flap_period)  # fmt: skip
        self.version += book.end_works(now, self._scope, self.settings.resolve_hold)

    def _failed_since(self, root: str) -> float:
        """When a root's failure began: inferred, or down by its own probes."""
        if root in self.inferred:
            return self.inferred[root]
        ns = self.states.get(root)
        return ns.down_at if ns is not None else 0.0
