"""The daemon's main work: probe results into the correlator, its events into the journal.

`Monitor` owns the correlator; the probing side (the real ICMP scheduler, or the
simulated network of the demo) calls `observe()`, and `tick()` runs a few times a second.
What is decided is written through the journal (`db/journal.py`, which holds the SQL).
Everything the HTTP side reads (incidents, states, maintenance) is here in memory, so
answering a caller never waits for the database.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import asyncpg

from outagemon import clock as steady
from outagemon import logs
from outagemon.cluster.lease import Leadership, StepDown
from outagemon.config import CallersConfig, Config
from outagemon.core import calls as callers
from outagemon.core.assess import cut_off_by, overrun_works, works_cover
from outagemon.core.correlator import Correlator
from outagemon.core.directory import Directory, cpe_id
from outagemon.core.health import NodeState, Settings, State
from outagemon.core.incidents import (
    Event,
    EventKind,
    Incident,
    IncidentBook,
    IncidentState,
    Kind,
    Maintenance,
)
from outagemon.core.topology import Change
from outagemon.db import restore as restore_db
from outagemon.db import store
from outagemon.db.durable import Pending
from outagemon.db.journal import Journal
from outagemon.db.spool import Spool
from outagemon.db.writer import Writer
from outagemon.metrics import Registry

log = logs.get("outagemon.monitor")

ANCHOR_PREFIX = "anchor:"
CALLS_EVERY = 1.0  # seconds between looks at the calls (core/calls.py)
HISTORY_EVERY = 600.0  # seconds between saves of every node's loss history
SEEN_EVERY = 60.0  # seconds between "this run is alive" writes (monitor_run.seen_at)
PRUNE_EVERY = 60.0  # seconds between prunings of what ended
# Node states as node_state holds them (a recheck is not one: it ends up or down).
WRITTEN_STATES = frozenset({State.UP, State.DOWN, State.UNKNOWN})


_ANSWERED = (("result", "answered"),)  # outagemon_probe_results_total's label keys
_LOST = (("result", "lost"),)


def settings_of(cfg: Config) -> Settings:
    c = cfg.correlation
    return Settings(
        down_after=cfg.probe.down_after,
        up_after=cfg.probe.up_after,
        window=c.window,
        infer_min_children=c.infer_min_children,
        infer_ratio=c.infer_ratio,
        resolve_hold=c.resolve_hold,
        timeout=cfg.probe.timeout,
        interval=cfg.probe.interval,
    )


def call_settings(c: CallersConfig) -> callers.Settings:
    return callers.Settings(window=c.window, min_callers=c.min_callers, chance=c.chance,
                            prior_rate=c.prior_rate, learn_for=c.learn_for,
                            expire_after=c.expire_after, keep=c.keep,
                            max_subscribers=c.max_subscribers, by_hour=c.by_hour,
                            evidence=c.evidence, fault_rate=c.fault_rate,
                            burst=c.burst, burst_evidence=c.burst_evidence,
                            wake_at=c.wake_at, wake_evidence=c.wake_evidence,
                            scan_chance=c.scan_chance)  # fmt: skip


def anchors_of(cfg: Config, directory: Directory) -> dict[str, str]:
    """Anchor node id -> address: configured addresses (named after their node when the
    topology has one), else the topology's probed roots."""
    topo = directory.topology
    if cfg.vantage.anchors:
        return {topo.by_ip.get(ip, ANCHOR_PREFIX + ip): ip for ip in cfg.vantage.anchors}
    return {r: ip for r in topo.roots if (ip := topo.nodes[r].ip) is not None}


class Monitor:
    """Probe results into the correlator, its decisions into the journal; and what the HTTP
    side reads in memory: incidents, estimates, call counts, planned works, and incidents
    resolved lately (callers behind them hear `restored`)."""

    def __init__(
        self,
        config: Config,
        directory: Directory,
        metrics: Registry,
        writer: Writer | None = None,
        clock: Callable[[], float] = steady.CLOCK,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.writer = writer
        self.journal = Journal(writer, spool)
        # Decisions are made on a clock that is never stepped (outagemon.clock): a wall
        # clock stepped back by hours once ended all detection.
        self.clock = clock
        self.anchors = anchors_of(config, directory)
        self.correlator = Correlator(directory.topology, settings_of(config), self.anchors)
        self.correlator.record_transitions = writer is not None
        self.eta: dict[int, float] = {}  # incident id -> expected repair time
        self.calls: dict[int, int] = {}  # incident id -> check answers that named it
        self._calls_unsaved: dict[int, int] = {}
        self.recent: dict[str, Incident] = {}  # node -> recently resolved incident covering it
        # id -> recently resolved incident: the page's list (`recent` keeps one a node, so
        # an incident whose nodes a later one covered would be missing from it).
        self._resolved: dict[int, Incident] = {}
        # id -> when the history counts it from: a confirmed outage raised by calls, for
        # the subscribers it leaves out when it ends (see `_spared`).
        self._confirmed_from: dict[int, float] = {}
        # Such an outage taken up at a restart (router states start afresh): its routers
        # that answered from when it counts to the restart, as stored, while they answer
        # on in this run (`_carry`); and those of them not heard from yet in this run.
        self._carried: dict[int, set[str]] = {}
        self._unheard: set[str] = set()
        self.maintenance: list[Maintenance] = []
        self.next_maintenance = 1  # the id of the next planned works
        self._history_saved = clock()
        self.run_id: int | None = None  # this run's monitor_run row, once the database has it
        self._seen_saved = clock()
        self._pruned = clock()
        self.first_round_done = False
        self.last_tick = 0.0
        # A cluster's node (`cluster/lease.py`): it decides only while it leads, and only
        # once it has taken up what the database holds under that epoch (`taken_up`).
        # None: a single host, which always decides.
        self.leadership: Leadership | None = None
        self.taken_up: int | None = None
        self.metrics = metrics
        self._events = metrics.counter("outagemon_incident_events_total", "Incident events.")
        self._open = metrics.gauge("outagemon_incidents_open", "Open incidents by kind.")
        self._blind = metrics.gauge(
            "outagemon_blind", "1 while every anchor is down: the monitor cannot see."
        )
        self._results = metrics.counter("outagemon_probe_results_total", "Probe results.")
        self._down = metrics.gauge("outagemon_nodes_down", "Probed nodes that are down.")
        # Callers as sensors: the calls since the last look (appended by /check), and the
        # detector with its suspected incidents.
        self.call_log = callers.CallLog(config.callers.keep)
        self.call_salt = os.urandom(16)  # callers are kept as keyed hashes, never as given
        self.watch = callers.CallWatch(directory.topology, directory.counts,
                                       call_settings(config.callers), clock())  # fmt: skip
        self._watched = clock()
        self._sight: object = None  # what explained calls at the last look (watch_calls)
        self._set_aside = metrics.counter(
            "outagemon_calls_set_aside_total",
            "Calls that waited in the callers' window and were then explained by an"
            " incident, planned works or blindness: they raise no suspicion afterwards.",
        )
        self._suspicions = metrics.counter(
            "outagemon_suspicions_total",
            "Suspected incidents raised from calls, and how they ended (outcome).",
        )
        self._suspicion_delay = metrics.counter(
            "outagemon_suspicion_delay_seconds",
            "Seconds from a suspicion's first call to its raising: sum and count.",
        )
        # Every series at 0 from the start, labelled as the README lists them: else the
        # first scrape shows a bare unlabelled 0 that no query by outcome or part matches.
        for outcome in SUSPICION_OUTCOMES:
            self._suspicions.inc(0, outcome=outcome)
        for part in ("sum", "count"):
            self._suspicion_delay.inc(0, part=part)

    # -- feeding -----------------------------------------------------------------------

    def observe(self, node: str, ok: bool, at: float) -> None:
        # The labels as a key made once (inc() sorts a dict of them for every result).
        self._results.inc_key(_ANSWERED if ok else _LOST)
        self.correlator.observe(node, ok, at)

    def deciding(self) -> bool:
        """Whether this node decides incidents now: a single host always; a cluster's
        node while it leads under the epoch it took the database's incidents up under."""
        if self.leadership is None:
            return True
        epoch = self.leadership.deciding()
        return epoch is not None and epoch == self.taken_up

    @property
    def looking(self) -> bool:
        """The correlator looks at every node a slice a tick (`Correlator.looking`)."""
        return self.correlator.looking

    def tick(self) -> list[str]:
        """Decide, persist what was decided; return the nodes to probe now."""
        now = self.clock()
        self.last_tick = now
        if not self.deciding():
            # A standby probes (its loss histories stay warm for a take-over) and decides
            # nothing; the leader stores the node states.
            self.journal.epoch = None
            self.correlator.keep_sight(now)  # its own blindness, current at a take-over
            self.correlator.transitions = []
            self._calls_unsaved.clear()
            self._blind.set(1 if self.correlator.blind else 0)
            self._down.set(self.correlator.nodes_down)
            return self.correlator.take_requests()
        if self.leadership is not None:
            self.journal.epoch = self.taken_up
        for event in self.correlator.tick(now):
            self.handle(event)
        self._open.set(sum(1 for i in self.correlator.incidents.values()
                           if i.kind is Kind.OUTAGE), kind="outage")  # fmt: skip
        self._open.set(sum(1 for i in self.correlator.incidents.values()
                           if i.kind is Kind.MAINTENANCE), kind="maintenance")  # fmt: skip
        self._open.set(sum(1 for s in self.watch.open.values() if not s.confirmed),
                       kind="suspected")  # fmt: skip
        self._blind.set(1 if self.correlator.blind else 0)
        self._down.set(self.correlator.nodes_down)
        if now - self._watched >= CALLS_EVERY:
            self.watch_calls(now)
        self._save_calls()
        self._save_states()
        if now - self._history_saved >= HISTORY_EVERY:
            self.save_history()
        if self.run_id is not None and now - self._seen_saved >= SEEN_EVERY:
            self.save_seen(now)
        if now - self._pruned >= PRUNE_EVERY:
            self.prune(now)
        self.journal.sync()  # this tick's events are on disk before anyone hears of them
        return self.correlator.take_requests()

    # -- callers as sensors ------------------------------------------------------------

    def record_call(self, node: str, building: str, kind: str, value: str, channel: str,
                    status: str, router: str = "") -> None:  # fmt: skip
        """A /check that named a subscriber or an address: kept for the next look (never
        decided on here, on the request path). `router`: the caller's own probed router,
        if they have one (its state now is kept with the call)."""
        if self.config.callers.enabled:
            key = callers.caller_key(self.call_salt, kind, value)
            self.take_call(self.clock(), node, building, key, channel, status, router)

    def take_call(self, at: float, node: str, building: str, key: str, channel: str,
                  status: str, router: str = "") -> None:  # fmt: skip
        """A caller already keyed (`call_salt`), at `at` on this monitor's clock: another
        node's, relayed through the database (`cluster/relay.py`), or one answered here."""
        if self.config.callers.enabled:
            ns = self.correlator.states.get(router) if router else None
            up = ns is not None and ns.state is State.UP
            self.call_log.append(callers.Call(at, node, building, key, channel, status, up))

    def watch_calls(self, now: float) -> None:
        """The detector's look at the calls since the last one; what it decides, written."""
        self._watched = now
        c = self.correlator
        topo = self.directory.topology
        running = [w for w in self.maintenance if w.starts_at <= now < w.ends_at]

        def explained(node: str) -> bool:
            if c.blind or c.incident_for(node) is not None:
                return True
            return bool(running) and cut_off_by(topo, node, {w.node for w in running})

        def next_id() -> int:
            iid = c.book.next_id
            c.book.next_id += 1
            return iid

        # What explains calls changed (an incident opened, moved or grew, works began,
        # the monitor went blind): the calls it explains leave the window, so that after
        # a repair the calls made just before the probes saw the fault raise nothing.
        sight = (c.blind, tuple(w.id for w in running), tuple(sorted(
            (i.id, i.root, len(i.nodes)) for i in c.incidents.values())))  # fmt: skip
        if sight != self._sight:
            self._sight = sight
            self._set_aside.inc(self.watch.set_aside(explained))
        raised = len(self.watch.delays)
        self.watch.tick(now, self.call_log.take(), explained, next_id, self.answering)
        for delay in self.watch.delays[raised:]:
            self._suspicion_delay.inc(delay, part="sum")
            self._suspicion_delay.inc(part="count")
        del self.watch.delays[:]
        for sid, sus in list(self.watch.open.items()):
            covering = c.incident_for(sus.incident.root)
            if covering is not None:  # the probes see it now: their incident goes on
                self.watch.taken_over(sid, covering, now)
        hold = self.config.correlation.resolve_hold
        for sus in self.watch.service_back(now, self.down_since, self.answering, explained,
                                           hold, c.blind):  # fmt: skip
            if sus.confirmed:  # repaired, as the probes see it
                self._restored(sus.incident)
        self.handle_calls(self.watch.take_events())

    def answering(self, node: str) -> bool:
        """Whether this node is probed and answering now: the way through it works (a
        fault its callers notice is below it)."""
        found = self.directory.topology.nodes.get(node)
        if found is None or not found.probed:
            return False
        ns = self.correlator.states.get(node)
        return ns is not None and ns.state is State.UP

    def down_since(self, node: str) -> float | None:
        """Since when this node is down by its own probes (None: it is not, or is not
        probed)."""
        ns = self.correlator.states.get(node)
        return ns.down_at if ns is not None and ns.state is State.DOWN else None

    def cleared(self, node: str) -> bool:
        """Whether the probes clear this node of a fault its callers notice (the way
        through it works: `calls.way_through`); an engineer who checked may confirm one
        that answers with nothing probed below it."""
        return callers.way_through(self.directory.topology, node, self.answering)

    def handle_calls(self, events: list[Event]) -> None:
        """The detector's events (and engineers' decisions on them): counted, logged,
        remembered for `restored` answers when a confirmed one is repaired, written."""
        for e in events:
            outcome = _outcome(e)
            if outcome:
                self._suspicions.inc(outcome=outcome)
            self.correlator.version += 1  # what callers behind it hear changes
            self.handle(e)

    def confirm(self, iid: int, who: str) -> bool:
        """An engineer confirms a suspected incident: an outage with the same id. False
        when it is not an open suspected incident, or the probes clear its root now
        (`cleared`: callers whose way through it works would hear `outage`)."""
        sus = self.watch.open.get(iid)
        if sus is None or sus.confirmed or self.cleared(sus.incident.root):
            return False
        self.watch.confirm(iid, self.clock(), who)
        self.handle_calls(self.watch.take_events())
        self.journal.sync()
        return True

    def dismiss(self, iid: int, who: str) -> bool:
        sus = self.watch.open.get(iid)
        if sus is None or sus.confirmed:
            return False
        self.watch.dismiss(iid, self.clock(), who)
        self.handle_calls(self.watch.take_events())
        self.journal.sync()
        return True

    def repaired(self, iid: int, who: str) -> bool:
        """An engineer says an outage raised by calls (confirmed) is repaired."""
        sus = self.watch.open.get(iid)
        if sus is None or not sus.confirmed:
            return False
        self.watch.resolve(iid, self.clock(), who)
        self._restored(sus.incident)
        self.handle_calls(self.watch.take_events())
        self.journal.sync()
        return True

    def _restored(self, inc: Incident) -> None:
        """An outage raised by calls repaired: its callers hear `restored` for
        restored_for, and the page lists it as resolved lately."""
        for n in inc.nodes:
            self.recent[n] = inc
        self._resolved[inc.id] = inc

    def open_incidents(self) -> list[Incident]:
        """Every open incident: the probes', and those raised by calls."""
        return [*self.correlator.incidents.values(),
                *(s.incident for s in self.watch.open.values())]  # fmt: skip

    def recently_resolved(self) -> list[Incident]:
        """Incidents resolved within restored_for, each once (the page's list)."""
        return list(self._resolved.values())

    def open_incident(self, iid: int) -> Incident | None:
        found = self.correlator.incidents.get(iid)
        if found is None:
            sus = self.watch.open.get(iid)
            found = sus.incident if sus is not None else None
        return found

    def prune(self, now: float) -> None:
        """Forget what ended: planned works (once their incidents could no longer need
        them), and estimates, call counts and `restored` answers of incidents resolved
        more than restored_for ago. Ticks and /check never scan a growing list."""
        self._pruned = now
        hold = self.config.correlation.resolve_hold
        kept = [m for m in self.maintenance if m.ends_at + hold + PRUNE_EVERY > now]
        if len(kept) != len(self.maintenance):
            self.maintenance = kept
            self.correlator.set_maintenance(kept, now)
        cutoff = now - self.config.messages.restored_for
        self.recent = {n: i for n, i in self.recent.items() if (i.resolved_at or 0) > cutoff}
        self._resolved = {k: i for k, i in self._resolved.items() if (i.resolved_at or 0) > cutoff}
        live = set(self.correlator.incidents) | {i.id for i in self.recent.values()}
        live |= set(self.watch.open)  # raised by calls: their estimates and counts stay
        for table in (self.eta, self.calls):
            for iid in [i for i in table if i not in live]:
                del table[iid]

    def subscribers_of(self, nodes: list[str]) -> int:
        """Subscribers served by these nodes (each once: a router's owner is counted at the
        node that serves the address, not again at the router)."""
        counts = self.directory.counts
        return sum(counts.get(n, 0) for n in nodes)

    def handle(self, e: Event) -> None:
        """One event of the correlator (or of the calls' detector):
        counted, logged, remembered for `restored` answers when it resolves an incident,
        and written through the journal."""
        self._events.inc(kind=e.kind.value)
        if e.kind is EventKind.BLIND or e.kind is EventKind.SEEING:
            log.warning(f"monitor.{e.kind.value}", anchors=list(self.anchors))
            self.journal.event(e, None, 0)  # unverified time in the outage history
            self.journal.blind(e.kind is EventKind.BLIND)
            return
        inc = self.open_incident(e.incident or -1)
        if e.incident is not None and e.incident in self._confirmed_from:
            e = self._spared(e)
        elif (e.kind is EventKind.KIND_CHANGED and inc is not None and inc.raised_by == "calls"
              and e.detail.get("from") == Kind.SUSPECTED.value):  # fmt: skip
            self._confirmed_from[inc.id] = inc.opened_at
        log.info(f"incident.{e.kind.value}", incident=e.incident, root=e.root,
                 **_loggable(e.detail))  # fmt: skip
        ended_by_calls = any(e.detail.get(k) for k in CALLS_ENDINGS)
        if e.kind is EventKind.RESOLVED and not ended_by_calls:  # (a repair: see repaired())
            resolved = dataclasses.replace(
                self._resolved_copy(e),
                nodes=list(e.nodes),
                state=IncidentState.RESOLVED,
                resolved_at=e.at,
            )
            for n in resolved.nodes:
                self.recent[n] = resolved
            self._resolved[resolved.id] = resolved
        if self.writer is not None:
            subscribers = self.subscribers_of(inc.nodes) if inc is not None else 0
            self.journal.event(e, inc, subscribers)
        if (e.kind is EventKind.REOPENED or e.kind is EventKind.REFAILED) \
                and e.incident is not None and e.incident in self.eta:  # fmt: skip
            # The estimate was for the repair that happened (reopened), or that callers
            # were told of ("restored") before the root, or a new one above, failed again
            # (refailed): a promise for that repair, not for this fault's, whatever time
            # it names. Callers hear that work continues until an engineer says anew.
            self.set_eta(e.incident, None, "", "outagemon", withdraw=e.kind.value, at=e.at)

    def _spared(self, e: Event) -> Event:
        """A confirmed outage raised by calls ending (resolved, or taken over by the
        probes' incident): the accounts whose own probed router answered from before it
        was counted until now, named in the event (`spared`), are left out of its history
        (billing): the probes saw the way to them working, and they heard `ok`."""
        if e.kind is not EventKind.RESOLVED and e.kind is not EventKind.MERGED:
            return e
        start = self._confirmed_from.pop(e.incident or -1)
        carried = self._carried.pop(e.incident or -1, set())
        self._unheard -= carried
        topo = self.directory.topology
        if e.root is None or e.root not in topo:
            return e
        states, prefix = self.correlator.states, cpe_id("")
        spared = []
        for n in restore_db.routers_below(topo, e.root):
            ns = states.get(n)
            # Up since it counts, in this run or, across a restart, before it and since.
            if ns is not None and ns.state is State.UP and (ns.changed_at <= start or n in carried):
                spared.append(n.removeprefix(prefix))
        if not spared:
            return e
        return dataclasses.replace(e, detail={**e.detail, "spared": sorted(spared)})

    def _resolved_copy(self, e: Event) -> Incident:
        found = self.correlator.last_resolved(e.root or "")
        if found is not None and found.id == e.incident:
            return found
        return Incident(e.incident or 0, e.root or "", Kind.OUTAGE, False, e.at, list(e.nodes))

    # -- engineers' writes -------------------------------------------------------------

    def set_eta(self, incident_id: int, eta: float | None, note: str, who: str,
                withdraw: str = "", at: float | None = None) -> None:  # fmt: skip
        """An engineer's repair estimate (heard by the next caller) and/or note; with
        `withdraw` (why) and no `eta`, the estimate withdrawn (callers hear that work
        continues), written only when there was one. `at`: when (now if not given)."""
        withdrawn = eta is None and bool(withdraw) and self.eta.pop(incident_id, None) is not None
        if eta is not None:
            self.eta[incident_id] = eta
        if eta is not None or withdrawn:
            self.correlator.version += 1  # callers hear the new estimate at once
        if self.writer is None:
            return
        self.journal.estimate(incident_id, eta, note, who, self.clock() if at is None else at,
                              withdrawn=withdraw if withdrawn else "")  # fmt: skip

    def add_maintenance(self, window: Maintenance, who: str) -> None:
        if not window.by:  # as the database keeps them (created_by): listed with who did
            window = dataclasses.replace(window, by=who)
        self.maintenance.append(window)
        self.correlator.set_maintenance(self.maintenance, self.clock())
        self.journal.maintenance(window, who)

    def end_maintenance(self, window_id: int, ends_at: float | None, who: str) -> Maintenance:
        """Planned works cut short or extended to `ends_at`, or withdrawn (None: they end
        now; works yet to begin are gone). Callers behind them hear so at once; a
        maintenance incident they explained says so in its timeline (and becomes an
        outage at the next tick if its root is still down). Returns the works as they
        were; KeyError when none has this id."""
        now = self.clock()
        old = next((m for m in self.maintenance if m.id == window_id and m.ends_at > now), None)
        if old is None:
            raise KeyError(window_id)
        end = now if ends_at is None else ends_at
        topology = self.directory.topology
        affected = [
            i.id
            for i in self.correlator.incidents.values()
            if i.kind is Kind.MAINTENANCE
            and i.root in topology
            and (i.root == old.node or old.node in topology.ancestors(i.root))
        ]
        self.maintenance = _moved(self.maintenance, window_id, end)
        self.correlator.set_maintenance(self.maintenance, now)
        self.journal.maintenance_end(window_id, end, ends_at is None, who, now)
        when = datetime.fromtimestamp(steady.wall(end), UTC).isoformat(timespec="seconds")
        what = (
            f"planned works {window_id} on {old.node} withdrawn"
            if ends_at is None
            else f"planned works {window_id} on {old.node} now end at {when}"
        )
        for iid in affected:
            self.journal.estimate(iid, None, what, who, now)
        return old

    def count_call(self, incident_id: int, n: int = 1) -> None:
        """`n` check answers that named the incident (a worker's batch is one call)."""
        self.calls[incident_id] = self.calls.get(incident_id, 0) + n
        self._calls_unsaved[incident_id] = self._calls_unsaved.get(incident_id, 0) + n

    def counted_elsewhere(self, incident_id: int, n: int) -> None:
        """`n` check answers another node gave, already added in the database (the relay's
        transaction): counted in memory only."""
        self.calls[incident_id] = self.calls.get(incident_id, 0) + n

    def save_history(self) -> None:
        """Every node's loss history, in one write (COPY): done every HISTORY_EVERY seconds
        and when the daemon stops, so a restart keeps what it learnt about lossy links."""
        self._history_saved = self.clock()
        if self.writer is None:
            return
        # Nothing is copied now (the nodes with a state, listed, held the loop 19 ms of
        # CPU at a million; the rows, made, 120 ms at 200,000): each is read as the COPY
        # encodes it, a slice a step of the loop, from the topology of this save. If a
        # reload replaces it before or during the write, the rest is left to the next
        # save (the new nodes' inventory may be queued after this write).
        saved = weakref.ref(self.directory.topology)
        self.correlator.take_out()  # none of a node a reload removed (the count of them)
        states = self.correlator.states

        def rows() -> Iterator[tuple[str, float, float]]:
            topology = saved()
            if topology is None:
                return
            nodes = iter(topology.nodes)
            while self.directory.topology is topology:  # checked before each next node
                node = next(nodes, None)
                if node is None:
                    return
                ns = states.get(node)
                if ns is not None:
                    yield node, ns.n, ns.lost

        self.journal.history(rows, len(states))
        # And the calls' usual rates (wall time), so a restart does not learn them anew.
        self.journal.call_rates([(kind, key, count, steady.CLOCK.wall(at))
                                 for kind, key, count, at in self.watch.baseline()])  # fmt: skip

    def save_seen(self, now: float, stopped: bool = False) -> None:
        """This run was alive at `now` (and stops, when `stopped`): the time between the
        last such write and the next start is unverified in the outage history."""
        self._seen_saved = now
        if self.run_id is not None:
            self.journal.seen(self.run_id, steady.CLOCK.wall(now), stopped)

    def _save_states(self) -> None:
        """Node state changes since the last tick, as one write (a recovery of 100,000
        nodes is one statement, not 100,000)."""
        changes, self.correlator.transitions = self.correlator.transitions, []
        if changes and (self._unheard or any(self._carried.values())):
            # (a pass over every change: only while some router is carried still, not for
            # as long as its outage stays open once each carried router has changed)
            changes = self._carry(changes)
        if not changes or self.writer is None:
            return
        # Read as the write reads them, a slice a step of the loop (see save_history).
        states = self.correlator.states
        outside = {a for a in self.anchors if a not in self.directory.topology}

        def rows() -> Iterator[tuple[str, str, float, float]]:
            nodes = self.directory.topology.nodes
            for node, state, at in changes:
                if node in nodes and node not in outside:
                    ns = states.get(node)
                    loss = ns.short_lost / ns.short_n if ns is not None and ns.short_n else 0.0
                    yield node, state, at, round(loss, 4)

        self.journal.node_states(changes, rows)

    def _carry(self, changes: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
        """Routers carried over a restart (`_carried`): the first answer heard from one in
        this run is no change (not written: its stored state and since stand, so the next
        restart carries it again); any other change ends its carry. The changes to write."""
        kept = []
        up = State.UP.value
        for change in changes:
            node, state, _ = change
            if node in self._unheard:
                self._unheard.discard(node)
                if state == up:
                    continue  # answering, as before the restart
            for carried in self._carried.values():
                carried.discard(node)
            kept.append(change)
        return kept

    def _take_up_confirmed(self, taken: list[Incident], answered: dict[int, list[str]]) -> None:
        """Confirmed outages raised by calls, taken up at a restart: the history counts
        them from their start, leaving out at their end the subscribers whose routers
        answered throughout, before the restart (`answered`, as stored) and after it."""
        states = self.correlator.states
        for inc in taken:
            if inc.kind is not Kind.OUTAGE or inc.id in self._confirmed_from:
                continue
            self._confirmed_from[inc.id] = inc.opened_at
            carried = self._carried[inc.id] = set()
            for n in answered.get(inc.id, ()):
                ns = states.get(n)
                if ns is None or ns.state is State.UNKNOWN:
                    carried.add(n)
                    self._unheard.add(n)
                elif ns.state is State.UP and ns.down_at == 0.0 and ns.changes is None:
                    # Heard answering already (the database came after the probes began),
                    # never down in this run: carried, though its answer was written.
                    carried.add(n)

    def _save_calls(self) -> None:
        if not self._calls_unsaved or self.writer is None:
            return
        batch, self._calls_unsaved = self._calls_unsaved, {}
        # Saved every tick: the minute of the save is the minute of the calls (the reports'
        # calls-a-minute chart).
        self.journal.calls(batch, steady.CLOCK.wall(self.clock()))

    # -- a cluster's roles --------------------------------------------------------------

    async def take_up(self, pool: asyncpg.Pool, epoch: int) -> int:
        """This node begins to lead under `epoch`: the open incidents are read from the
        database (the previous leader's, with their ids) and continued; decisions begin
        once that is done. Returns how many incidents were taken up."""
        self._forget_incidents()
        restored = await self.restore(pool)
        async with pool.acquire() as conn:
            stored = await store.node_state_values(conn)
        assert self.leadership is not None
        if self.leadership.epoch != epoch:
            return 0  # stepped down meanwhile
        self.taken_up = epoch
        self.journal.epoch = epoch
        self.journal.inventory(self.directory)
        self._own_view(stored)
        # `incidents`: the probes'; `from_calls`: those raised by callers (the detector's,
        # suspected or confirmed), taken up too (the log said 0 when only such was open).
        log.info("cluster.taken_up", epoch=epoch, incidents=restored,
                 from_calls=len(self.watch.open),
                 next_incident=self.correlator.next_id)  # fmt: skip
        return restored

    def _own_view(self, stored: dict[str, str]) -> None:
        """A new leader's first writes: what it sees itself, where the database still holds
        what the previous leader saw (replicas answer from it). Node states that differ
        (those of the incidents taken up excepted: they are rechecked, and written as they
        change), and whether it is blind, with the outage history's blind period begun or
        ended now (the previous leader may have died blind, or seeing)."""
        c = self.correlator
        c.settle()  # each node as it is now, though it sees again a slice a tick
        nodes = self.directory.topology.nodes
        rows = []
        for node, ns in c.states.items():
            if (
                node in nodes
                and ns.state in WRITTEN_STATES  # a recheck is written when it is decided
                and stored.get(node) != ns.state.value
                and c.incident_for(node) is None
            ):
                loss = round(ns.short_lost / ns.short_n, 4) if ns.short_n else 0.0
                rows.append((node, ns.state.value, ns.changed_at, loss))
        if rows:
            self.journal.node_states(rows, lambda: rows)
        now = self.clock()
        kind = EventKind.BLIND if c.blind else EventKind.SEEING
        self.journal.event(Event(kind, now, detail={"taken_over": True}), None, 0)
        self.journal.blind(c.blind)
        self._blind.set(1 if c.blind else 0)
        log.info("cluster.own_view", blind=c.blind, states=len(rows))

    def step_down(self, epoch: int, reason: StepDown) -> None:
        """This node stopped leading: nothing more is decided or written, and what it
        held in memory of incidents is forgotten (the next leader's are in the database)."""
        self.taken_up = None
        self.journal.epoch = None
        self.run_id = None  # its term's row in monitor_run ends where it was last seen
        self._forget_incidents()

    def _forget_incidents(self) -> None:
        """Incidents, estimates, call counts and `restored` answers as this node last knew
        them: forgotten; nodes' health and loss histories stay (they are this node's own)."""
        c = self.correlator
        c.book = IncidentBook(c.next_id)
        c.version += 1
        c.transitions = []
        self.eta.clear()
        self.calls.clear()
        self._calls_unsaved.clear()
        self.recent.clear()
        self._resolved.clear()
        self._confirmed_from.clear()
        self._carried.clear()
        self._unheard.clear()

    # -- restart -----------------------------------------------------------------------

    async def restore(self, pool: asyncpg.Pool, pending: Pending | None = None) -> int:
        """Open incidents, incidents resolved within `restored_for`, planned works and loss
        histories from the database, with what the journal file held over it (`pending`);
        returns how many incidents were taken up."""
        after = steady.CLOCK.wall(self.clock()) - self.config.messages.restored_for
        found = await restore_db.load(pool, self.directory.topology, after)
        return self.resume(found, pending)

    def resume(self, found: restore_db.Restored, pending: Pending | None = None) -> int:
        """Take up what a previous run stored: open incidents continue with their ids and
        estimates, each node keeps its loss history (a clean target keeps its short
        streak), planned works stand, and the callers of incidents resolved lately hear
        "restored" as before. Returns how many incidents were taken up.

        May come late (the database was away at start, and detection went on meanwhile):
        an incident is taken up only when no incident the monitor opened since covers its
        root, what this run saw wins over what was stored, and ids only ever go up."""
        p = pending or Pending()
        step = steady.CLOCK.step()
        taken = []
        covered = {i.root: i.id for i in self.correlator.incidents.values()}
        raised = []
        for inc in found.incidents:
            if inc.id in p.closed or inc.id in self.correlator.incidents:
                continue
            if inc.raised_by == "calls":  # the detector's, not the probes'
                _shift(inc, step)
                raised.append(inc)
                continue
            if inc.root in covered:
                # Detection opened its own incident for this root while the database was
                # away: the stored one is closed into it, not left open for good.
                self.journal.event(Event(EventKind.MERGED, self.clock(), inc.id, inc.root,
                                         detail={"into": covered[inc.root]}), None, 0)  # fmt: skip
                continue
            _shift(inc, step)
            taken.append(inc)
        for iid, eta in found.eta.items():
            if iid not in p.eta:
                self.eta.setdefault(iid, eta - step)
        for iid, calls in found.calls.items():
            self.calls[iid] = self.calls.get(iid, 0) + calls
        self.correlator.restore(taken, max(found.next_id, p.max_incident + 1))
        self.watch.restore(raised, self.clock())
        self._take_up_confirmed(raised, found.answered)
        self.watch.take_baseline((kind, key, count, at - step)
                                 for kind, key, count, at in found.call_rates)  # fmt: skip
        for iid, (first_call, callers_then, buildings) in found.raised.items():
            sus = self.watch.open.get(iid)
            if sus is not None and not sus.calls and not sus.earlier_callers:
                # Who raised it, as its opening said: its calls were not kept.
                sus.first_call = first_call - step
                sus.earlier_callers = callers_then
                sus.earlier_buildings = tuple(buildings)
        for node, n, lost in found.histories:
            ns = self.correlator.states.setdefault(node, NodeState())
            if ns.n < n:
                ns.n, ns.lost = n, lost
        stored: dict[str, Incident] = {}
        for inc in found.resolved:  # oldest first: the latest incident of a node wins
            if inc.kind is Kind.SUSPECTED:
                continue  # dismissed or expired: nothing was restored
            _shift(inc, step)
            if inc.resolved_at is not None:
                inc.resolved_at -= step
            for node in inc.nodes:
                stored[node] = inc
            self._resolved.setdefault(inc.id, inc)  # one this run resolved is newer
        for node, inc in stored.items():
            self.recent.setdefault(node, inc)  # one this run resolved is newer
        known = {m.id for m in self.maintenance}
        self.maintenance += [
            dataclasses.replace(m, starts_at=m.starts_at - step, ends_at=m.ends_at - step)
            for m in found.maintenance
            if m.id not in known
        ]
        for wid, end in p.works_ends.items():
            self.maintenance = _moved(self.maintenance, wid, end - step)
        self.next_maintenance = max(self.next_maintenance, found.next_maintenance,
                                    p.max_maintenance + 1)  # fmt: skip
        self.correlator.set_maintenance(self.maintenance, self.clock())
        self._works_taken_up()
        return len(taken)

    def continue_from(self, p: Pending) -> int:
        """At start, before the database: the incidents, estimates and planned works the
        journal file holds (acknowledged, maybe never written), and the highest ids ever
        handed out, so none is handed out again. Returns how many incidents."""
        step = steady.CLOCK.step()
        topology = self.directory.topology
        incidents: list[Incident] = []
        raised: list[Incident] = []
        for inc in p.incidents.values():
            if inc.root not in topology:
                continue
            _shift(inc, step)
            inc.nodes = [n for n in inc.nodes if n in topology] or [inc.root]
            (raised if inc.raised_by == "calls" else incidents).append(inc)
        self.correlator.restore(incidents, p.max_incident + 1)
        self.watch.restore(raised, self.clock())
        for iid, eta in p.eta.items():
            if eta is None:  # withdrawn
                self.eta.pop(iid, None)
            else:
                self.eta[iid] = eta - step
        self.maintenance = [
            dataclasses.replace(m, starts_at=m.starts_at - step, ends_at=m.ends_at - step)
            for m in p.maintenance.values()
        ]
        for wid, end in p.works_ends.items():
            self.maintenance = _moved(self.maintenance, wid, end - step)
        self.next_maintenance = max(self.next_maintenance, p.max_maintenance + 1)
        self.correlator.set_maintenance(self.maintenance, self.clock())
        self._works_taken_up()
        return len(incidents)

    def _works_taken_up(self) -> None:
        """Maintenance incidents taken up after a restart lack the end of the works they
        were opened with (not stored): without it they never became an outage, and their
        callers heard the works take longer than planned until the root answered. It is
        the end of the works that cut the root off now, carried on without a break since
        it opened, else, for works that ended since the incident opened (they overran),
        theirs: an outage `resolve_hold` after it (works begun after those ended do not
        carry it on: its fault outlived its works)."""
        topo, now = self.directory.topology, self.clock()
        for inc in self.correlator.incidents.values():
            if inc.kind is not Kind.MAINTENANCE or inc.maintenance_until is not None:
                continue
            path = {inc.root, *topo.ancestors(inc.root)} if inc.root in topo else {inc.root}
            windows = [m for m in self.maintenance if m.node in path]
            works = works_cover(topo, inc.root, windows, now)
            overran = overrun_works(inc, topo, inc.root, windows, now)
            if overran is not None and (works is None or inc.since < overran[1] < works[0]):
                # What covers it now began after the end of the works its fault (since it
                # last reopened) began in.
                works = overran
            if works is not None:
                inc.maintenance_until = works[1]

    def address(self, node: str) -> str | None:
        """The address a node is probed at: an anchor's, else its own in the topology (the
        probed targets are made of the same two: `daemon.targets_of`)."""
        ip = self.anchors.get(node)
        if ip is None:
            found = self.directory.topology.nodes.get(node)
            ip = found.ip if found is not None else None
        return ip

    def set_directory(self, directory: Directory, change: Change | None = None,
                      below: dict[str, int] | None = None) -> list[object]:  # fmt: skip
        """A reload: the correlator keeps the state of nodes that still exist. `change`
        (`topology.change` from the running topology) and `below` (`subscribers_below`),
        when made already off the event loop: then only what changed is touched here.
        Returns what it replaced that is large (the caller frees it in slices)."""
        replaced: list[object] = [self.watch.below]
        self.directory = directory
        self.anchors = anchors_of(self.config, directory)
        self.correlator.anchors = list(self.anchors) or self.correlator.anchors
        # [probe] and [correlation] as reloaded (they were the start's for good: a
        # resolve_hold cut to 15 s still held incidents 60 s).
        self.correlator.settings = settings_of(self.config)
        replaced += self.correlator.set_topology(directory.topology, change)
        self.watch.set_topology(directory.topology, directory.counts, below)
        self.watch.settings = call_settings(self.config.callers)
        return replaced


def _moved(windows: list[Maintenance], window_id: int, ends_at: float) -> list[Maintenance]:
    """The works with one's end moved; works that would end before they begin are gone."""
    return [m if m.id != window_id else dataclasses.replace(m, ends_at=ends_at)
            for m in windows if m.id != window_id or ends_at > m.starts_at]  # fmt: skip


def _shift(inc: Incident, step: float) -> None:
    """A stored incident's times (wall clock) onto the monitor's clock."""
    inc.opened_at -= step
    if inc.reopened_at is not None:
        inc.reopened_at -= step
    if inc.recovering_since is not None:  # a resolved one's: when service came back
        inc.recovering_since -= step
    if inc.works_ended is not None:
        inc.works_ended -= step
    if inc.root_since is not None:
        inc.root_since -= step


# How an incident raised by calls ends (the key its `resolved` event's detail holds):
# dismissed, expired (quiet), repaired (by an engineer, or seen by the probes: confirmed),
# cleared (not confirmed, and the probes see its place working again).
CALLS_ENDINGS = ("dismissed", "expired", "repaired", "cleared")
SUSPICION_OUTCOMES = ("suspected", "confirmed", *CALLS_ENDINGS)


def _outcome(e: Event) -> str:
    """The metric's outcome for an event of the calls' detector ("" for none)."""
    if e.kind is EventKind.OPENED:
        return "suspected"
    if e.kind is EventKind.KIND_CHANGED:
        return "confirmed"
    if e.kind is EventKind.MERGED and e.detail.get("was") == Kind.SUSPECTED.value:
        return "confirmed"
    if e.kind is EventKind.RESOLVED:
        for outcome in CALLS_ENDINGS:
            if e.detail.get(outcome):
                return outcome
    return ""


def _loggable(detail: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in detail.items() if k not in ("event", "level")}
