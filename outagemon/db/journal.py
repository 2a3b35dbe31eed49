"""What happened, into the database: correlator events and engineers' writes as writes.

Each stored event kind has its write in `WRITES` (a table keyed by `EventKind`); every
one of them also adds the event to the incident's timeline, except a `nodes` event whose
incident only shrank or was reordered, and `blind`/`seeing` (which belong to no incident).
The writes also keep the impact record (which nodes each incident cut off, when, and
why) and the periods the monitor was blind: see the history section of `db/store.py`.
Values are captured when the event happens and written later, in order, by the writer
(which queues them while the database is away).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from outagemon import clock, logs
from outagemon.core.directory import Directory, Roster
from outagemon.core.incidents import Event, EventKind, Incident, Kind, Maintenance
from outagemon.db import durable, store
from outagemon.db.spool import Record, Spool
from outagemon.db.writer import Op, Writer

if TYPE_CHECKING:
    from outagemon.db.store import Conn

log = logs.get("outagemon.daemon")  # the inventory line has always been the daemon's


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An incident as it was when the event happened."""

    id: int
    kind: str
    root: str
    inferred: bool
    opened_at: datetime | None
    nodes: list[str]
    subscribers: int
    raised_by: str = "probes"
    reopened_at: datetime | None = None  # when it reopened last (this fault's start)


# A write for one kind of event: True when the event joins the incident's timeline.
Write = Callable[["Conn", Event, Snapshot | None, datetime | None], Awaitable[bool]]


async def _opened(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.insert_incident(conn, inc.id, inc.kind, inc.root, inc.inferred,
                                    inc.opened_at, inc.subscribers, inc.raised_by)  # fmt: skip
        await store.set_incident_nodes(conn, inc.id, inc.nodes)
        # Cut off since the root's first lost probe, not since the incident was decided.
        if _cuts_off(inc):
            await store.impact_open(conn, inc.id, inc.nodes, inc.kind, inc.opened_at or at)
    return True


async def _reopened(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.reopen_incident(conn, e.incident)
    if inc is not None and _cuts_off(inc):
        # Cut off again since the root's first lost probe; the time between the two faults
        # was service (the impact rows closed when it recovered).
        await store.impact_open(conn, inc.id, inc.nodes, inc.kind, inc.reopened_at or at)
    return True


async def _nodes(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.set_incident_nodes(conn, inc.id, inc.nodes)
        await store.set_incident_subscribers(conn, inc.id, inc.subscribers)
        if _cuts_off(inc):
            await store.impact_set_nodes(conn, inc.id, inc.nodes, inc.kind, at)
        if not e.detail.get("added"):
            return False  # membership shrank or reordered: no timeline line
    return True


async def _recovering(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    # The root answers: service is back (callers hear "restored") until it fails again.
    await store.set_incident_recovering(conn, e.incident, at)
    await store.impact_close(conn, e.incident, at)
    return True


async def _refailed(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.set_incident_recovering(conn, e.incident, None)
    if inc is not None and _cuts_off(inc):
        # As on reopening: cut off again since this fault began (the root's failure).
        await store.impact_open(conn, inc.id, inc.nodes, inc.kind, inc.reopened_at or at)
    return True


async def _blind(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.blind_start(conn, "blind", at)
    return False


async def _seeing(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.blind_end(conn, "blind", at)
    return False


async def _root_moved(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.move_incident_root(conn, e.incident, inc.root, inc.inferred)
    return True


async def _merged(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.merge_incident(conn, e.incident, e.detail["into"], at)
    await store.impact_close(conn, e.incident, at)  # its nodes continue in the other
    return True


async def _resolved(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.resolve_incident(conn, e.incident, at)
    await store.impact_close(conn, e.incident, at)
    return True


async def _kind_changed(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.set_incident_kind(conn, e.incident, str(e.detail["to"]))
    if e.detail.get("from") == Kind.SUSPECTED.value:
        # Confirmed by an engineer (or the probes): its places were cut off since the
        # suspicion was raised, not since somebody found the time to confirm it.
        if inc is not None:
            await store.impact_open(conn, inc.id, inc.nodes, inc.kind, inc.opened_at or at)
    else:
        # Works that overran: an outage from their end, as its callers heard it (not
        # `resolve_hold` later, when it was declared one).
        ended = e.detail.get("works_ended")
        since = store.ts(ended) if isinstance(ended, int | float) else at
        await store.impact_cause(conn, e.incident, str(e.detail["to"]), since)
    return True


def _cuts_off(inc: Snapshot) -> bool:
    """Whether the incident counts in the history: a suspicion raised by calls does not
    until it is confirmed (nobody has seen the fault yet)."""
    return inc.kind != Kind.SUSPECTED.value


async def _timeline(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    return True


# Changes someone is told about (Alertmanager, webhooks): a row in the outbox, written in
# the same transaction as the change (`store.add_outbox`); the value names the event.
NOTIFIED: dict[str, str] = {
    EventKind.OPENED: "opened",
    EventKind.REOPENED: "reopened",
    EventKind.ROOT_MOVED: "root_moved",
    EventKind.KIND_CHANGED: "kind_changed",
    EventKind.MERGED: "merged",
    EventKind.RESOLVED: "resolved",
    "eta": "eta",
    "note": "note",
}

WRITES: dict[EventKind, Write] = {
    EventKind.OPENED: _opened,
    EventKind.REOPENED: _reopened,
    EventKind.NODES: _nodes,
    EventKind.ROOT_MOVED: _root_moved,
    EventKind.MERGED: _merged,
    EventKind.RECOVERING: _recovering,
    EventKind.REFAILED: _refailed,
    EventKind.RESOLVED: _resolved,
    EventKind.KIND_CHANGED: _kind_changed,
    EventKind.SPLIT: _timeline,
    EventKind.BLIND: _blind,
    EventKind.SEEING: _seeing,
}


class Journal:
    """Queues the writes of what happened on the writer; without one, writes nothing.

    Writes that matter after a crash are first kept in the journal file (`spool`, in
    state_dir) as records, and made from those records, so the same write is made after
    a restart from what the file still holds. Latest-wins writes (call counts, node
    states, loss histories) are coalesced by the writer instead."""

    def __init__(self, writer: Writer | None, spool: Spool | None = None) -> None:
        self.writer = writer
        self.spool = spool
        # On a cluster's node: every write carries the leader's epoch it was decided
        # under (kept in its record, checked when it is made); with no epoch (standing
        # by) nothing is written. None on a single host: nothing is fenced.
        self.clustered = False
        self.epoch: int | None = None
        # Inventory writes queued, by the id of the directory they read their rows from.
        self._reading: Counter[int] = Counter()
        self._read = asyncio.Event()  # set as a directory's last inventory write is over

    def _keep(self, kind: str, record: dict[str, Any]) -> None:
        assert self.writer is not None
        if self.clustered:
            if self.epoch is None:
                log.warning("cluster.write_not_leading", write=kind)
                return
            record["epoch"] = self.epoch
        precious = kind in durable.PRECIOUS
        seq = self.spool.append(kind, record, precious) if self.spool is not None else None
        size = self.spool.pending[seq].size if seq is not None and self.spool else _size(record)
        self._submit(kind, record, size, precious, seq)

    def _epoch_of(self, record: dict[str, Any]) -> int | None:
        if not self.clustered:
            return None
        # A record kept by a single host, before the cluster: no epoch holds it (0 never
        # does), so it is refused rather than written over a leader's decisions.
        return int(record.get("epoch") or 0)

    def _submit(self, kind: str, record: dict[str, Any], size: int, precious: bool,
                seq: int | None) -> None:  # fmt: skip
        assert self.writer is not None
        try:
            op = op_of(kind, record)
        except Exception as e:  # a value no write can hold: refused, as the writer would
            log.error("db.write_refused", write=kind, error=str(e) or type(e).__name__)
            if seq is not None and self.spool is not None:
                self.spool.done(seq)
            return
        self.writer.submit(kind, op, size=size, precious=precious, seq=seq,
                           epoch=self._epoch_of(record))  # fmt: skip

    def sync(self) -> None:
        """Make what was kept durable (one fsync for a tick's events, or a request's write)."""
        if self.spool is not None:
            self.spool.sync()

    def replay(self, records: list[Record]) -> None:
        """Writes the journal file held at start, queued again in their order."""
        if self.writer is None:
            return
        for r in records:
            self._submit(r.kind, r.data, r.size, r.precious, r.seq)

    def event(self, e: Event, inc: Incident | None, subscribers: int) -> None:
        """A correlator event (`inc`: its incident while still open, `subscribers` behind
        that incident's nodes)."""
        if self.writer is None or e.kind not in WRITES:
            return
        if e.kind is EventKind.OPENED and self.spool is not None and e.incident is not None:
            self.spool.mark("incident", e.incident)  # never handed out again
        self._keep(e.kind.value, durable.event_record(e, inc, subscribers, clock.CLOCK.step()))

    def estimate(self, incident_id: int, eta: float | None, note: str, who: str,
                 now: float, withdrawn: str = "") -> None:  # fmt: skip
        """An engineer's repair estimate and/or note, with a timeline line for each: two
        writes, so a note the database refuses never takes the estimate with it.
        `withdrawn` (why: "api", "reopened"): the estimate was withdrawn (`eta` None)."""
        if self.writer is None:
            return
        step = clock.CLOCK.step()
        if eta is not None:
            self._keep("eta", durable.eta_record(incident_id, eta + step, who, now + step))
        elif withdrawn:
            self._keep("eta", durable.eta_record(incident_id, None, who, now + step, withdrawn))
        if note:
            self._keep("note", durable.note_record(incident_id, note, who, now + step))
        self.sync()

    def maintenance(self, window: Maintenance, who: str) -> None:
        """Planned works taken through the API."""
        if self.writer is None:
            return
        if self.spool is not None:
            self.spool.mark("maintenance", window.id)
        self._keep("maintenance", durable.maintenance_record(window, who, clock.CLOCK.step()))
        self.sync()

    def maintenance_end(self, window_id: int, ends_at: float, withdrawn: bool, who: str,
                        now: float) -> None:  # fmt: skip
        """Planned works' end moved through the API, or the works withdrawn."""
        if self.writer is None:
            return
        step = clock.CLOCK.step()
        self._keep("maintenance_end",
                   durable.maintenance_end_record(window_id, ends_at + step, withdrawn, who,
                                                  now + step))  # fmt: skip
        self.sync()

    def seen(self, run_id: int, at: float, stopped: bool = False) -> None:
        """This run of the daemon was alive at `at` (wall time), and stopped then when
        `stopped` (the latest wins). A cluster's run is a leader's term: fenced by its epoch
        (a deposed leader does not stretch its term over its successor's)."""
        if self.writer is None:
            return
        self.writer.latest("run_seen", (run_id, at, stopped), _replace_seen, _seen_op, size=64,
                           epoch=self.epoch)  # fmt: skip

    def calls(self, batch: dict[int, int], at: float | None = None) -> None:
        """Check answers that named each incident, since the last batch (summed with any
        batch still waiting); with `at` (wall-clock seconds), also counted in its minute."""
        if self.writer is None:
            return
        if self._standing_by():
            return
        self.writer.latest("calls", dict(batch), _add_counts, _calls_op,
                           size=64 + 16 * len(batch), epoch=self.epoch)  # fmt: skip
        if at is not None:
            minute = at - at % 60
            per_minute = {(minute, iid): n for iid, n in batch.items()}
            self.writer.latest("call_minutes", per_minute, _add_counts, _call_minutes_op,
                               size=64 + 24 * len(batch), epoch=self.epoch)  # fmt: skip

    def node_states(self, changes: list[Any], rows: StateRows) -> None:
        """Nodes' latest state changes (node, state, when, short-term loss), in one write
        (the latest of each node, with any batch still waiting): `rows` makes them from
        `changes`, as the write reads them (again at a retry), a slice a step of the event
        loop (a mass outage's 100,000, made at once, held it 220 ms of CPU). The write
        holds `changes` till it is over, then empties it a slice a step (`store.let_go`)."""
        if self.writer is None:
            return
        if self._standing_by():
            return
        self.writer.latest("node_states", [(rows, clock.CLOCK.step(), changes)], _more_states,
                           _states_op, size=64 + 64 * len(changes), epoch=self.epoch,
                           release=_let_go_states)  # fmt: skip

    def blind(self, blind: bool) -> None:
        """Whether every anchor is down (replicas answer "unknown" then, as the leader)."""
        if self.writer is None:
            return
        if self._standing_by():
            return
        self.writer.latest("blind", blind, _replace_flag, _blind_op, size=64, epoch=self.epoch)

    def history(self, rows: HistoryRows, count: int) -> None:
        """Every node's loss history (n, lost), in one write (a newer one replaces it):
        `rows` makes them, about `count`, as the write reads them (again at a retry)."""
        if self.writer is None:
            return
        if self._standing_by():
            return
        self.writer.latest("history", rows, _replace, _history_op, size=64 + 48 * count,
                           epoch=self.epoch)  # fmt: skip

    def call_rates(self, rows: list[tuple[str, str, float, float]]) -> None:
        """What the calls' detector learned (kind, key, count, wall time), in one write (a
        newer one replaces it)."""
        if self.writer is None or self._standing_by():
            return
        self.writer.latest("call_rates", rows, _replace_rates, _call_rates_op,
                           size=64 + 64 * len(rows), epoch=self.epoch)  # fmt: skip

    def _standing_by(self) -> bool:
        """A cluster's standby writes nothing: the leader writes what it decides."""
        return self.clustered and self.epoch is None

    def inventory(self, current: Directory, at: float | None = None) -> None:
        """The loaded topology and subscribers replace the stored ones: two writes, so a
        subscriber row the database refuses never keeps the nodes (which incidents refer
        to) from being stored. The subscribers' periods (`subscriber_period`) begin or end
        at `at` (wall time; now when not given). Their rows are made from `current` as
        they are written (`inventory_ops`): it stays whole until both are done (`read`)."""
        if self.writer is None:
            return
        if self._standing_by():
            return
        nodes, subscribers = inventory_ops(current, time.time() if at is None else at)
        key = id(current)  # `current` is alive while counted: its id is not reused
        self._reading[key] += 2

        def done() -> None:
            self._reading[key] -= 1
            if not self._reading[key]:
                del self._reading[key]
                self._read.set()

        # Not fenced: a million subscribers take seconds to write, and a fenced write holds
        # the lease row (the leader's own renewals would wait); only the leader writes it.
        # Never dropped (every node state, history and incident refers to the nodes), and
        # not counted in the queue's bound: its rows are the loaded directory's, made as
        # they are written (a city's ~256 MB at a million routers, counted against the
        # default 64 MiB `queue_bytes`, was dropped as soon as queued, with every later
        # write referring to a new node then refused by the database).
        self.writer.submit("inventory", nodes, size=0, precious=True, done=done)
        self.writer.submit("subscribers", subscribers, size=0, precious=True, done=done)

    async def read(self, current: Directory) -> None:
        """Return once no queued inventory write reads `current` (its rows are made from it
        as they are written, and made again at a retry): a reload frees the directory it
        replaced only then."""
        while id(current) in self._reading:
            self._read.clear()
            await self._read.wait()


def op_of(kind: str, data: dict[str, Any]) -> Op:
    """The database write of a record (`durable`): the same whether it is made now or
    after a restart from the journal file."""
    if kind == "eta":
        return _eta_op(data)
    if kind == "note":
        return _note_op(data)
    if kind == "maintenance":
        return _maintenance_op(data)
    if kind == "maintenance_end":
        return _maintenance_end_op(data)
    e = durable.event_of(kind, data)
    write = WRITES[e.kind]
    at = store.ts(e.at)
    said = e.detail
    ended = said.get("works_ended")
    if isinstance(ended, int | float):  # a time, as ISO 8601 like every other
        said = {**said, "works_ended": store.ts(ended)}
    detail = json.dumps(said, default=_iso)
    snap = data.get("snap")
    snapshot = None
    if snap is not None:
        snapshot = Snapshot(int(snap["id"]), str(snap["kind"]), str(snap["root"]),
                            bool(snap["inferred"]), store.ts(float(snap["opened_at"])),
                            list(snap["nodes"]), int(snap["subscribers"]),
                            str(snap.get("raised_by", "probes")),
                            store.ts(_float(snap.get("reopened_at"))))  # fmt: skip

    notified = NOTIFIED.get(e.kind)

    # Replicas re-read the incidents an event changed (a merge changes both).
    changed = [i for i in (e.incident, e.detail.get("into")) if isinstance(i, int)]

    async def op(conn: Conn) -> None:
        if await write(conn, e, snapshot, at):
            await store.add_incident_event(conn, e.incident, at, e.kind.value, detail)
        if notified is not None:
            await store.add_outbox(conn, e.incident, notified, at)
        await store.notify_replica(conn, "incident", changed)

    return op


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _eta_op(d: dict[str, Any]) -> Op:
    incident, at = int(d["incident"]), store.ts(float(d["at"]))
    # A withdrawn estimate (eta null) is a line of its own kind of "eta": "ETA withdrawn".
    eta = store.ts(float(d["eta"])) if d["eta"] is not None else None
    said: dict[str, Any] = {"eta": eta, "by": d["by"]}
    if eta is None:
        said["withdrawn"] = d.get("withdrawn") or True
    # ISO 8601 with its "T", as every other time of the API (str() would put a space).
    detail = json.dumps(said, default=_iso)

    async def op(conn: Conn) -> None:
        await store.set_incident_eta(conn, incident, eta)
        await store.add_incident_event(conn, incident, at, "eta", detail)
        await store.add_outbox(conn, incident, NOTIFIED["eta"], at)
        await store.notify_replica(conn, "incident", [incident])

    return op


def _note_op(d: dict[str, Any]) -> Op:
    incident, at = int(d["incident"]), store.ts(float(d["at"]))
    detail = json.dumps({"note": d["note"], "by": d["by"]})

    async def op(conn: Conn) -> None:
        await store.add_incident_event(conn, incident, at, "note", detail)
        await store.add_outbox(conn, incident, NOTIFIED["note"], at)
        await store.notify_replica(conn, "incident", [incident])

    return op


def _maintenance_op(d: dict[str, Any]) -> Op:
    async def op(conn: Conn) -> None:
        await store.add_maintenance(conn, int(d["id"]), str(d["node"]),
                                    store.ts(float(d["starts_at"])), store.ts(float(d["ends_at"])),
                                    str(d["reason"]), str(d["by"]))  # fmt: skip
        await store.notify_replica(conn, "maintenance", [])

    return op


def _maintenance_end_op(d: dict[str, Any]) -> Op:
    async def op(conn: Conn) -> None:
        await store.end_maintenance(conn, int(d["id"]), store.ts(float(d["ends_at"])))
        await store.notify_replica(conn, "maintenance", [])

    return op


K = TypeVar("K")


def _add_counts(a: dict[K, int], b: dict[K, int]) -> dict[K, int]:
    merged = dict(a)
    for k, v in b.items():
        merged[k] = merged.get(k, 0) + v
    return merged


def _calls_op(counts: dict[int, int]) -> Op:
    rows = list(counts.items())

    async def op(conn: Conn) -> None:
        await store.add_calls(conn, rows)
        await store.notify_replica(conn, "calls", [i for i, _ in rows])

    return op


def _call_minutes_op(counts: dict[tuple[float, int], int]) -> Op:
    rows = [(store.ts(minute), iid, n) for (minute, iid), n in counts.items()]

    async def op(conn: Conn) -> None:
        await store.add_call_minutes(conn, rows)

    return op


StateRows = Callable[[], Iterable[tuple[str, str, float, float]]]
# Each batch: its rows, the clock's step then, and the list the rows are made from.
StateBatches = list[tuple[StateRows, float, list[Any]]]


def _more_states(a: StateBatches, b: StateBatches) -> StateBatches:
    return a + b  # read in order: a node's latest state wins


# Parts of the latest state of each node a write keeps, a node in the one its hash picks
# (as `core.failures.Parted`): one dict of a cut's million nodes grew by copying 350,000,
# then 700,000 entries into a table twice the size, each in one step (14-41 ms CPU).
STATE_PARTS = 64


def _states_op(batches: StateBatches) -> Op:
    async def op(conn: Conn) -> None:
        # Read, and made into rows, a slice a step of the event loop (`store.sliced`).
        latest: list[dict[str, tuple[str, float, float]]] = [{} for _ in range(STATE_PARTS)]
        for changes, step, _ in batches:
            async for node, state, at, loss in store.sliced(changes()):
                latest[hash(node) & (STATE_PARTS - 1)][node] = (state, at + step, loss)
        made = ((node, state, store.ts(at), loss)
                for part in latest for node, (state, at, loss) in part.items())  # fmt: skip
        rows = [row async for row in store.sliced(made)]
        for part in latest:
            await store.let_go(part)  # each row holds what it needs of it
        await store.save_node_states(conn, rows)
        await store.let_go(rows)  # freed a slice a step too (see store.let_go)
        await store.notify_replica(conn, "states", [])

    return op


async def _let_go_states(batches: StateBatches) -> None:
    """The write is over: what its batches were made from, emptied a slice a step (a
    cut of a million routers: a million transitions, freed at once, held the loop ~50 ms)."""
    for _, _, held in batches:
        await store.let_go(held)


HistoryRows = Callable[[], Iterable[tuple[str, float, float]]]


def _replace(a: HistoryRows, b: HistoryRows) -> HistoryRows:
    return b


Seen = tuple[int, float, bool]  # (run id, wall time, stopped)


def _replace_seen(a: Seen, b: Seen) -> Seen:
    return b


def _seen_op(seen: Seen) -> Op:
    run_id, at, stopped = seen

    async def op(conn: Conn) -> None:
        await store.run_seen(conn, run_id, datetime.fromtimestamp(at, UTC), stopped)

    return op


def _replace_flag(a: bool, b: bool) -> bool:
    return b


def _blind_op(blind: bool) -> Op:
    async def op(conn: Conn) -> None:
        await store.set_blind(conn, blind)
        await store.notify_replica(conn, "monitor", [])

    return op


def _history_op(rows: HistoryRows) -> Op:
    async def op(conn: Conn) -> None:
        await store.save_histories(conn, rows())

    return op


Rates = list[tuple[str, str, float, float]]


def _replace_rates(a: Rates, b: Rates) -> Rates:
    return b


def _call_rates_op(rows: Rates) -> Op:
    async def op(conn: Conn) -> None:
        await store.save_call_rates(conn, rows)

    return op


def _size(record: dict[str, Any]) -> int:
    snap = record.get("snap") or {}
    return 256 + 24 * (len(record.get("nodes") or ()) + len(snap.get("nodes") or ()))


def inventory_ops(current: Directory, at: float) -> tuple[Op, Op]:
    """The topology's nodes, and the subscribers (with their periods from `at`, wall
    time), as two writes whose rows are made from `current` as each COPY reads them, a
    slice a step of the event loop (`store.sliced`), and made afresh at a retry: nothing
    is made up front (a city's million rows took 3.9 s of the loop at start, and freeing
    them one step of 230 ms in the writer). `current` must stay whole until both are done."""
    topo = current.topology
    roster = current.subscribers
    loaded_at = datetime.fromtimestamp(at, UTC)

    def node_rows() -> Iterator[tuple[str, str, str | None, str, list[str]]]:
        for n in topo.nodes.values():
            yield n.id, n.kind, n.ip, n.name, list(n.parents)

    def subscriber_rows() -> Iterator[tuple[str, list[str], str, str, str | None, str]]:
        for account, phones, text, flat, ip, node, _ in _subscribers(roster):
            yield account, phones, text, flat, ip, node

    def period_rows() -> Iterator[tuple[str, str, str, str, list[str]]]:
        for account, phones, text, flat, _, _, serving in _subscribers(roster):
            yield account, serving, text, flat, phones

    async def write_nodes(conn: Conn) -> None:
        started = time.monotonic()
        await store.save_nodes(conn, node_rows())
        log.info("inventory.nodes_saved", nodes=len(topo.nodes),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    async def write_subscribers(conn: Conn) -> None:
        started = time.monotonic()
        await store.save_subscribers(conn, subscriber_rows())
        version, added, removed, changed = await store.save_subscriber_periods(
            conn, period_rows(), len(roster), loaded_at
        )
        log.info("inventory.saved", nodes=len(topo.nodes), subscribers=len(roster),
                 version=version, added=added, removed=removed, changed=changed,
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    return write_nodes, write_subscribers


def _subscribers(
    roster: Roster,
) -> Iterator[tuple[str, list[str], str, str, str | None, str, str]]:
    """(account, phones, building's text, flat, ip, node, serving node) of each subscriber."""
    texts: dict[int, str] = {}  # a building's text, by the identity of its Address
    for i, (account, phones, building, flat, ip, node) in enumerate(roster.records()):
        text = texts.get(id(building))
        if text is None:
            text = texts[id(building)] = building.text(with_flat=False)
        yield account, phones, text, flat, ip, node, roster.serving(i)
