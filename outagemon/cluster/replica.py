"""A read replica of the leader's incident state, for processes that do not decide.

An HTTP worker (and a standby node) answers `/check`, the read API and the page from
what the leader wrote to PostgreSQL: open incidents with their nodes, estimates and call
counts, incidents resolved lately (their callers hear "restored"), planned works, node
states and whether the leader is blind. The leader's writes announce themselves with
`pg_notify` inside their own transaction (`db/journal.py`), carrying what changed — ids
only — and the database's time; the replica re-reads those rows. On every (re)connect it
re-reads everything, so a notification lost while it was away loses nothing.

`Replica` reads like the `Monitor` the handlers otherwise read (`correlator`, `eta`,
`calls`, `maintenance`, `recent`, `first_round_done`, `subscribers_of`): the HTTP side
does not care which one it was given (`Runtime.monitor`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg

from outagemon import clock, logs
from outagemon.core.directory import Directory
from outagemon.core.health import State
from outagemon.core.incidents import Incident, IncidentState, Kind, Maintenance
from outagemon.db import store
from outagemon.metrics import Registry

log = logs.get("outagemon.replica")

_BY_CODE = tuple(State)  # a state by its code (its place in State)
_CODES = {s.value: i for i, s in enumerate(_BY_CODE)}
_UP, _DOWN, _UNKNOWN = (_CODES[s.value] for s in (State.UP, State.DOWN, State.UNKNOWN))
STATES_AT_ONCE = 1000  # node states read (and taken, on the event loop) in one piece
NODES_AT_ONCE = 10_000  # an incident's nodes indexed in one step of the event loop
NODES_READ_AT_ONCE = 5000  # an incident's nodes read (and decoded) in one piece


class Seen(NamedTuple):
    """A node's state as the leader last wrote it: what `assess` and the page read of a
    NodeState (its short-term loss as a ratio of one)."""

    state: State
    down_at: float
    changed_at: float
    degraded: bool
    short_lost: float
    short_n: float


# A Seen as kept: the state by its code, and atoms only (see SeenStates).
_Kept = tuple[int, float, float, bool, float, float]


class SeenStates(Mapping[str, Seen]):
    """The node states, read as Seen (made when asked) and kept as plain tuples of atoms:
    the collector stops tracking such a tuple at its first pass, and never a NamedTuple
    or one holding a State. A core failure writes a city's 100,000 states anew; kept as
    Seen, every later pass over the old generations walked them all (27 ms a pass in a
    worker on this VM, measured)."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: dict[str, _Kept] = {}

    def __getitem__(self, node: str) -> Seen:
        code, down_at, changed_at, degraded, short_lost, short_n = self.kept[node]
        return Seen(_BY_CODE[code], down_at, changed_at, degraded, short_lost, short_n)

    def get(self, node: str, default: Any = None) -> Any:
        kept = self.kept.get(node)
        if kept is None:
            return default
        code, down_at, changed_at, degraded, short_lost, short_n = kept
        return Seen(_BY_CODE[code], down_at, changed_at, degraded, short_lost, short_n)

    def __contains__(self, node: object) -> bool:
        return node in self.kept

    def __iter__(self) -> Iterator[str]:
        return iter(self.kept)

    def __len__(self) -> int:
        return len(self.kept)

    def troubled(self) -> list[tuple[str, Seen]]:
        """The nodes down or degraded, with their states: what the page walks for once a
        second (made as Seen for these alone: a walk of `items()` makes 100,000)."""
        down = _DOWN
        return [(node, self[node]) for node, kept in self.kept.items()
                if kept[0] == down or kept[3]]  # fmt: skip


class _Nodes(NamedTuple):
    """An incident's node set as last read: its digest (the database's), the nodes in the
    database's order, and as an incident lists them (its root first) for `root`. Both
    lists are read only (an incident's `nodes` is one of them)."""

    digest: str | None
    read: list[str]
    root: str
    listed: list[str]


class ReplicaView:
    """The parts of the correlator that the HTTP side reads, as the leader last wrote
    them. `version` changes with every change applied (answers remembered per version)."""

    __slots__ = ("blind", "incidents", "network_loss", "node_incident", "states", "version")

    def __init__(self) -> None:
        self.incidents: dict[int, Incident] = {}  # open ones (recovering included)
        self.node_incident: dict[str, int] = {}
        self.states = SeenStates()
        self.blind = False
        self.network_loss = 0.0
        self.version = 0

    def incident_for(self, node: str) -> Incident | None:
        iid = self.node_incident.get(node)
        return self.incidents.get(iid) if iid is not None else None


@dataclass
class RaisedCopy:
    """An incident raised by calls (suspected, or confirmed: an outage), as the leader
    wrote it: the incident, and what its opening said of the calls (distinct callers,
    buildings, the first call). The leader's later calls are not in the database: a
    replica's page shows the callers that raised it, not those who called after."""

    incident: Incident
    first_call: float
    callers: int = 0
    buildings: list[str] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.incident.kind is Kind.OUTAGE


class ReplicaWatch:
    """The leader's open incidents raised by calls, read like the detector's book
    (`core.calls.CallWatch`): `open` by id, `covering(node)` for /check."""

    __slots__ = ("_roots", "directory", "open")

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.open: dict[int, RaisedCopy] = {}
        self._roots: dict[str, RaisedCopy] = {}

    def rebuild(self) -> None:
        by_age = sorted(self.open.values(), key=lambda r: -r.incident.id)
        self._roots = {r.incident.root: r for r in by_age}  # the oldest wins a root

    def covering(self, node: str) -> RaisedCopy | None:
        """The open incident raised by calls whose root is this node or above it."""
        if not self._roots:
            return None
        topo = self.directory.topology
        for n in (node, *topo.ancestors(node)) if node in topo else (node,):
            found = self._roots.get(n)
            if found is not None:
                return found
        return None


# A /check that named a known place (Monitor.record_call's arguments): node, building,
# who the caller is (their home, or their building: `http.api.caller_of`), the value,
# channel, status.
CallRecord = tuple[str, str, str, str, str, str, str]  # ..., status, the caller's router
UNSENT_RECORDS = 50_000  # the most call records kept for the daemon between two sends


class NotLeader(RuntimeError):
    """A write asked of a process that only reads."""


class Replica:
    """The leader's state, kept current from PostgreSQL (see the module's docstring)."""

    def recently_resolved(self) -> list[Incident]:
        """Incidents resolved lately, each once (the page's list, as Monitor's)."""
        return list(self._resolved.values())

    def __init__(self, directory: Directory, metrics: Registry, restored_for: float) -> None:
        self.directory = directory
        self.restored_for = restored_for
        self.correlator = ReplicaView()
        self.eta: dict[int, float] = {}
        self.calls: dict[int, int] = {}
        self.maintenance: list[Maintenance] = []
        self.recent: dict[str, Incident] = {}
        self.watch = ReplicaWatch(directory)
        self.first_round_done = False  # true once everything was read
        self.next_maintenance = 0
        self.writer = None  # nothing is written from here
        self.unsent_calls: dict[int, int] = {}  # incident id -> check answers naming it
        # Callers' /check records for the deciding process's detector (core/calls.py): a
        # worker sends them to its daemon with the counts; a standby hands them to its own
        # Monitor (`on_call`), whose detector is warm when it takes over.
        self.unsent_records: list[CallRecord] = []
        self.on_call: Callable[[str, str, str, str, str, str, str], None] | None = None
        self.last_tick = 0.0  # the leader's ticks are not seen
        self._resolved: dict[int, Incident] = {}  # resolved lately, by id
        self._nodes: dict[int, _Nodes] = {}  # the node sets of those held, by incident id
        # What the indexes were made of (see _rebuild): (incident id or incident, nodes).
        self._owned: list[tuple[int, list[str]]] = []
        self._recalled: list[tuple[Incident, list[str]]] = []
        self._seq = 0  # the last node state's sequence number read
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self._lag = metrics.gauge(
            "outagemon_replica_lag_seconds",
            "From the leader's commit to this replica having it (the last change applied).",
        )
        self._lag_max = metrics.gauge(
            "outagemon_replica_lag_max_seconds", "The longest replica lag since start."
        )
        self._reads = metrics.counter(
            "outagemon_replica_full_reads_total", "Times the replica re-read everything."
        )
        self._node_reads = metrics.counter(
            "outagemon_replica_node_sets_read_total",
            "Incident node sets read (new or changed; an unchanged one is kept).",
        )
        self._applied = metrics.counter(
            "outagemon_replica_changes_total", "Notifications applied, by kind."
        )
        self._up = metrics.gauge("outagemon_replica_connected", "1 while the replica listens.")
        self._records_dropped = metrics.counter(
            "outagemon_replica_call_records_dropped_total",
            "Callers' /check records not handed to the deciding process (too many unsent).",
        )

    # -- what the HTTP side reads, as of the Monitor ------------------------------------

    def subscribers_of(self, nodes: list[str]) -> int:
        counts = self.directory.counts
        return sum(counts.get(n, 0) for n in nodes)

    def set_directory(self, directory: Directory) -> None:
        self.directory = directory
        self.watch.directory = directory
        self.watch.rebuild()
        self.correlator.version += 1

    def count_call(self, incident_id: int, n: int = 1) -> None:
        """Check answers that named the incident: kept for `take_calls`, which hands
        them to the process that decides (the replica itself writes nothing)."""
        self.unsent_calls[incident_id] = self.unsent_calls.get(incident_id, 0) + n

    def take_calls(self) -> dict[int, int]:
        taken, self.unsent_calls = self.unsent_calls, {}
        return taken

    def record_call(self, node: str, building: str, kind: str, value: str, channel: str,
                    status: str, router: str = "") -> None:  # fmt: skip
        """A /check that named a known place: for the detector of the process that
        decides (never decided on here). `router`: the caller's own probed router, whose
        state the deciding process reads when it takes the record."""
        if self.on_call is not None:
            self.on_call(node, building, kind, value, channel, status, router)
        elif len(self.unsent_records) < UNSENT_RECORDS:
            self.unsent_records.append((node, building, kind, value, channel, status, router))
        else:
            self._records_dropped.inc()

    def take_records(self) -> list[CallRecord]:
        taken, self.unsent_records = self.unsent_records, []
        return taken

    def clock(self) -> float:
        """The monitor's clock, as the Monitor's `clock()`."""
        return clock.now()

    def open_incidents(self) -> list[Incident]:
        """Every open incident: the probes', and those raised by calls."""
        return [*self.correlator.incidents.values(),
                *(r.incident for r in self.watch.open.values())]  # fmt: skip

    def open_incident(self, iid: int) -> Incident | None:
        found = self.correlator.incidents.get(iid)
        if found is None:
            raised = self.watch.open.get(iid)
            found = raised.incident if raised is not None else None
        return found

    def not_leading(self) -> str | None:
        """Why a write cannot be taken here (as the Monitor of a standby says it)."""
        return "this process only reads the incident state; writes are taken by the leader."

    def set_eta(self, incident_id: int, eta: float | None, note: str, who: str,
                withdraw: str = "") -> None:  # fmt: skip
        raise NotLeader("this process only reads; estimates are written by the leader")

    def add_maintenance(self, window: Maintenance, who: str) -> None:
        raise NotLeader("this process only reads; planned works are written by the leader")

    def end_maintenance(self, window_id: int, ends_at: float | None, who: str) -> Maintenance:
        raise NotLeader("this process only reads; planned works are written by the leader")

    # -- keeping current ---------------------------------------------------------------

    async def run(self, dsn: str) -> None:
        """Listen, read everything, apply what is announced; after a lost connection,
        connect again (with backoff) and read everything again. Runs until cancelled."""
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await store.connection(dsn, store.REPLICA_NAME)
                self._lost.clear()
                self._queue = asyncio.Queue()
                await store.listen_replica(conn, self._notified, self._terminated)
                await self.read_all(conn)
                self.connected.set()
                self._up.set(1)
                delay = 0.2
                await self._follow(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: keep what we have, try again
                log.warning("replica.disconnected", error=str(e) or type(e).__name__,
                            retry_in=delay)  # fmt: skip
            finally:
                self.connected.clear()
                self._up.set(0)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _notified(self, payload: str) -> None:
        try:
            self._queue.put_nowait(json.loads(payload))
        except ValueError:
            log.warning("replica.bad_notification", payload=payload[:200])

    def _terminated(self) -> None:
        self._lost.set()

    async def _follow(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                got = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({got, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    raise ConnectionError("the replica's connection was closed")
                batch = [got.result()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._apply(conn, batch)
        finally:
            lost.cancel()

    async def read_all(self, conn: asyncpg.Connection) -> None:
        """Everything, read again (at start and after every reconnect)."""
        started = time.monotonic()
        after = store.ts(time.time() - self.restored_for)
        rows = await self._incidents(conn, None, after)
        states = SeenStates()
        self._seq = 0
        count = await self._read_states(conn, states)
        windows = await store.recent_maintenance(conn)
        blind = await store.replica_blind(conn)
        self.correlator.incidents.clear()
        self.watch.open.clear()
        self._resolved.clear()
        self.eta.clear()
        self.calls.clear()
        for r, nodes in rows:
            self._take(r, nodes)
        self.correlator.states = states
        self._take_windows(windows)
        self.correlator.blind = blind
        await self._rebuild()
        self.first_round_done = True
        self._reads.inc()
        log.info("replica.read_all", incidents=len(self.correlator.incidents),
                 resolved=len(self._resolved), states=count,
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    async def _apply(self, conn: asyncpg.Connection, batch: list[dict[str, Any]]) -> None:
        kinds = {str(n.get("k")) for n in batch}
        ids = sorted({int(i) for n in batch if n.get("k") == "incident" for i in n.get("i") or ()})
        if ids:
            for r, nodes in await self._incidents(conn, ids, None):
                self._take(r, nodes)
        called = sorted({int(i) for n in batch if n.get("k") == "calls" for i in n.get("i") or ()})
        if called:  # counts only: an incident of 100,000 nodes is not read again for them
            for r in await store.replica_calls(conn, called):
                self.calls[int(r["id"])] = int(r["calls"])
        if "states" in kinds:
            await self._read_states(conn, self.correlator.states)
        if "maintenance" in kinds:
            self._take_windows(await store.recent_maintenance(conn))
        if "monitor" in kinds:
            self.correlator.blind = await store.replica_blind(conn)
        if ids or "monitor" in kinds:
            await self._rebuild()
        elif kinds != {"calls"}:
            self.correlator.version += 1  # states or works: remembered answers are stale
        now = time.time()
        for n in batch:
            self._applied.inc(kind=str(n.get("k")))
        committed = max(float(n.get("t") or now) for n in batch)
        lag = max(0.0, now - committed)
        self._lag.set(lag)
        if lag > self._lag_max.get():
            self._lag_max.set(lag)

    async def _incidents(self, conn: asyncpg.Connection, ids: list[int] | None,
                         after: Any) -> list[tuple[Any, list[str]]]:  # fmt: skip
        """The incidents' rows (`store.replica_incidents`) with their nodes, root first. A
        node set is read only when its digest is not the one held (most of a big incident's
        events rewrite its set unchanged), then in pieces of NODES_READ_AT_ONCE, each
        decoded in a step of its own; all in one snapshot, so the pieces are the set the
        digest and the row say."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await store.replica_incidents(conn, ids, after)
            return [(r, await self._nodes_of(conn, r)) for r in rows]

    async def _nodes_of(self, conn: asyncpg.Connection, r: Any) -> list[str]:
        iid, root, digest = int(r["id"]), str(r["root_node"]), r["node_digest"]
        held = self._nodes.get(iid)
        if held is None or held.digest != digest:
            read: list[str] = []
            count = int(r["node_count"])
            while len(read) < count:
                page = await store.replica_incident_nodes(conn, iid, read[-1] if read else None,
                                                          NODES_READ_AT_ONCE)  # fmt: skip
                if not page:
                    break
                read += page
            self._node_reads.inc()
            held = _Nodes(digest, read, root, _root_first(read, root))
        elif held.root != root:  # moved, same set
            held = _Nodes(digest, held.read, root, _root_first(held.read, root))
        self._nodes[iid] = held
        return held.listed

    def _take(self, r: Any, nodes: list[str]) -> None:
        iid = int(r["id"])
        inc = Incident(
            id=iid, root=r["root_node"], kind=Kind(r["kind"]), inferred=r["inferred"],
            opened_at=_steady(r["opened_at"]), nodes=nodes,
            state=IncidentState(r["state"]), resolved_at=_steady_or_none(r["resolved_at"]),
            recovering_since=_steady_or_none(r["recovering_since"]), raised_by=r["raised_by"],
            reopened_at=_steady_or_none(r["reopened_since"]),
            works_ended=_steady_or_none(r["works_ended"]),
        )  # fmt: skip
        self.calls[iid] = int(r["calls"])
        if r["eta"] is not None:
            self.eta[iid] = _steady(r["eta"])
        else:
            self.eta.pop(iid, None)
        by_calls = r["raised_by"] == "calls"
        if inc.state is IncidentState.OPEN:
            if by_calls:  # as the Monitor keeps them: in the detector's book
                opened = r["opened_detail"] or {}
                if isinstance(opened, str):
                    opened = json.loads(opened)
                ago = float(opened.get("first_call_ago") or 0.0)
                self.watch.open[iid] = RaisedCopy(inc, inc.opened_at - ago,
                                                  int(opened.get("callers") or 0),
                                                  list(opened.get("buildings") or ()))  # fmt: skip
            else:
                self.correlator.incidents[iid] = inc
            self._resolved.pop(iid, None)
            return
        self.correlator.incidents.pop(iid, None)
        self.watch.open.pop(iid, None)
        if inc.state is IncidentState.RESOLVED:
            self._resolved[iid] = inc

    async def _read_states(self, conn: asyncpg.Connection, states: SeenStates) -> int:
        """The node states written since the last read, in pieces (a city's nodes all
        change when its core dies): other requests are answered between the pieces."""
        count = 0
        while True:
            rows = await store.replica_states(conn, self._seq, STATES_AT_ONCE)
            self._take_states(rows, states)
            # The tuples just kept are tracked until a pass of the collector sees them, and
            # the pass is due after 700 more allocations than releases: a state written
            # over releases its predecessor, so a core failure's 100,000 new ones stayed
            # young until something else set a pass off, one pass over all of them
            # (12-19 ms of CPU, measured). A pass over this piece's alone is cheap.
            gc.collect(0)
            count += len(rows)
            if len(rows) < STATES_AT_ONCE:
                return count
            await asyncio.sleep(0)

    def _take_states(self, rows: list[Any], states: SeenStates) -> None:
        offset = clock.steady(0.0)  # changed_at (the epoch's seconds) as the monitor's clock
        kept = states.kept
        for r in rows:
            written = r["state"]
            code = _CODES.get(written, _UP if written == "degraded" else _UNKNOWN)
            at = r["changed_at"] + offset
            loss = float(r["loss"])
            kept[r["node_id"]] = (
                code,
                at if code == _DOWN else 0.0,
                at,
                written == "degraded",
                loss,
                1.0 if loss else 0.0,
            )
        if rows:  # in the order written
            self._seq = max(self._seq, int(rows[-1]["seq"]))

    def _take_windows(self, rows: list[Any]) -> None:
        self.maintenance = [
            Maintenance(w["id"], w["node_id"], _steady(w["starts_at"]), _steady(w["ends_at"]),
                        w["reason"], w["created_by"])
            for w in rows
        ]  # fmt: skip

    async def _rebuild(self) -> None:
        """Which incident covers each node (active ones first, the oldest winning, then
        recovering ones), and which resolved one each node recalls: as the correlator
        keeps them. Made aside, NODES_AT_ONCE nodes a step (a core failure's incident has
        a city's), and swapped in whole: answers meanwhile read the previous index."""
        c = self.correlator
        by_age = sorted(c.incidents.values(), key=lambda i: (i.opened_at, i.id))
        # Who wins a node is whoever is indexed last: recovering ones first, the newest
        # first, then active ones, the oldest last.
        order = [i for i in reversed(by_age) if i.recovering_since is not None]
        order += [i for i in reversed(by_age) if i.recovering_since is None]
        # Most changes to a big incident leave its node list the one held (see _nodes_of):
        # an index made of the same lists, in the same order, is the one we have.
        owned = [(i.id, i.nodes) for i in order]
        owner = c.node_incident
        if not _same(owned, self._owned):
            owner = {}
            for inc in order:
                await _index(owner, inc.nodes, inc.id)
            self._owned = owned
        cutoff = clock.now() - self.restored_for
        for iid, inc in list(self._resolved.items()):
            if (inc.resolved_at or -math.inf) <= cutoff:
                del self._resolved[iid]
        kept = sorted(self._resolved.values(), key=lambda i: i.resolved_at or 0)
        recalled = [(i, i.nodes) for i in kept]
        recent = self.recent
        if not _same(recalled, self._recalled):
            recent = {}
            for inc in kept:
                await _index(recent, inc.nodes, inc)
            self._recalled = recalled
        c.node_incident = owner
        held = c.incidents.keys() | self.watch.open.keys() | self._resolved.keys()
        for iid in [i for i in self._nodes if i not in held]:
            del self._nodes[iid]
        self.watch.rebuild()
        self.recent = recent
        c.version += 1


def _same(a: list[tuple[Any, list[str]]], b: list[tuple[Any, list[str]]]) -> bool:
    """The same keys (equal ids, or the very same incidents) with the very same node
    lists, in the same order."""
    return len(a) == len(b) and all(
        (ka is kb or (isinstance(ka, int) and ka == kb)) and na is nb
        for (ka, na), (kb, nb) in zip(a, b, strict=True)
    )


async def _index(into: dict[str, Any], nodes: list[str], value: Any) -> None:
    """`into[n] = value` for each node, NODES_AT_ONCE a step of the event loop."""
    if len(nodes) <= NODES_AT_ONCE:
        into.update(dict.fromkeys(nodes, value))
        return
    for start in range(0, len(nodes), NODES_AT_ONCE):
        into.update(dict.fromkeys(nodes[start : start + NODES_AT_ONCE], value))
        await asyncio.sleep(0)


def _root_first(nodes: list[str], root: str) -> list[str]:
    """The nodes as an incident lists them: its root first (when it is one of them), then
    the others in the database's order; the root alone when there are none."""
    if not nodes:
        return [root]
    if nodes[0] == root:
        return nodes
    try:
        at = nodes.index(root)
    except ValueError:
        return nodes
    return [root, *nodes[:at], *nodes[at + 1 :]]


def _steady(value: Any) -> float:
    return clock.steady(value.timestamp())


def _steady_or_none(value: Any) -> float | None:
    return None if value is None else _steady(value)
