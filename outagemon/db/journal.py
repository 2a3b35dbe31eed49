"""What happened, into the database: correlator events and engineers' writes as writes.

Each stored event kind has its write in `WRITES` (a table keyed by `EventKind`); every
one of them also adds the event to the incident's timeline, except a `nodes` event whose
incident only shrank or was reordered. `blind` and `seeing` are logged, not stored.
Values are captured when the event happens and written later, in order, by the writer
(which queues them while the database is away).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from outagemon import clock, logs
from outagemon.core.directory import Directory
from outagemon.core.incidents import Event, EventKind, Incident, Maintenance
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


# A write for one kind of event: True when the event joins the incident's timeline.
Write = Callable[["Conn", Event, Snapshot | None, datetime | None], Awaitable[bool]]


async def _opened(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.insert_incident(conn, inc.id, inc.kind, inc.root, inc.inferred,
                                    inc.opened_at, inc.subscribers)  # fmt: skip
        await store.set_incident_nodes(conn, inc.id, inc.nodes)
    return True


async def _reopened(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.reopen_incident(conn, e.incident)
    return True


async def _nodes(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.set_incident_nodes(conn, inc.id, inc.nodes)
        await store.set_incident_subscribers(conn, inc.id, inc.subscribers)
        if not e.detail.get("added"):
            return False  # membership shrank or reordered: no timeline line
    return True


async def _root_moved(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    if inc is not None:
        await store.move_incident_root(conn, e.incident, inc.root, inc.inferred)
    return True


async def _merged(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.merge_incident(conn, e.incident, e.detail["into"], at)
    return True


async def _resolved(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.resolve_incident(conn, e.incident, at)
    return True


async def _kind_changed(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.set_incident_kind(conn, e.incident, str(e.detail["to"]))
    return True


async def _timeline(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    return True


async def _recovering(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.set_incident_recovering(conn, e.incident, at)
    return True


async def _refailed(conn: Conn, e: Event, inc: Snapshot | None, at: datetime | None) -> bool:
    await store.set_incident_recovering(conn, e.incident, None)
    return True


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

    def _keep(self, kind: str, record: dict[str, Any]) -> None:
        assert self.writer is not None
        precious = kind in durable.PRECIOUS
        seq = self.spool.append(kind, record, precious) if self.spool is not None else None
        size = self.spool.pending[seq].size if seq is not None and self.spool else _size(record)
        self._submit(kind, record, size, precious, seq)

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
        self.writer.submit(kind, op, size=size, precious=precious, seq=seq)

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
                 now: float) -> None:  # fmt: skip
        """An engineer's repair estimate and/or note, with a timeline line for each: two
        writes, so a note the database refuses never takes the estimate with it."""
        if self.writer is None:
            return
        step = clock.CLOCK.step()
        if eta is not None:
            self._keep("eta", durable.eta_record(incident_id, eta + step, who, now + step))
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

    def calls(self, batch: dict[int, int]) -> None:
        """Check answers that named each incident, since the last batch (summed with any
        batch still waiting)."""
        if self.writer is None:
            return
        self.writer.latest("calls", dict(batch), _add_counts, _calls_op,
                           size=64 + 16 * len(batch))  # fmt: skip

    def node_states(self, changes: list[tuple[str, str, float, float]]) -> None:
        """Nodes' latest state changes (node, state, when, short-term loss), in one write
        (the latest of each node, with any batch still waiting)."""
        if self.writer is None:
            return
        step = clock.CLOCK.step()
        latest = {node: (state, at + step, loss) for node, state, at, loss in changes}
        self.writer.latest("node_states", latest, _newer, _states_op,
                           size=64 + 64 * len(latest))  # fmt: skip

    def blind(self, blind: bool) -> None:
        """Whether every anchor is down (replicas answer "unknown" then, as the leader)."""
        if self.writer is None:
            return
        self.writer.latest("blind", blind, _replace_flag, _blind_op, size=64)

    def history(self, rows: list[tuple[str, float, float]]) -> None:
        """Every node's loss history (n, lost), in one write (a newer one replaces it)."""
        if self.writer is None:
            return
        self.writer.latest("history", rows, _replace, _history_op, size=64 + 48 * len(rows))

    def inventory(self, current: Directory) -> None:
        """The loaded topology and subscribers replace the stored ones: two writes, so a
        subscriber row the database refuses never keeps the nodes (which incidents refer
        to) from being stored."""
        if self.writer is None:
            return
        nodes, subscribers = inventory_ops(current)
        self.writer.submit("inventory", nodes, size=256 * len(current.topology))
        self.writer.submit("subscribers", subscribers, size=128 * len(current.subscribers))


def op_of(kind: str, data: dict[str, Any]) -> Op:
    """The database write of a record (`durable`): the same whether it is made now or
    after a restart from the journal file."""
    if kind == "eta":
        return _eta_op(data)
    if kind == "note":
        return _note_op(data)
    if kind == "maintenance":
        return _maintenance_op(data)
    e = durable.event_of(kind, data)
    write = WRITES[e.kind]
    at = store.ts(e.at)
    detail = json.dumps(e.detail, default=str)
    snap = data.get("snap")
    snapshot = None
    if snap is not None:
        snapshot = Snapshot(int(snap["id"]), str(snap["kind"]), str(snap["root"]),
                            bool(snap["inferred"]), store.ts(float(snap["opened_at"])),
                            list(snap["nodes"]), int(snap["subscribers"]))  # fmt: skip

    # Replicas re-read the incidents an event changed (a merge changes both).
    changed = [i for i in (e.incident, e.detail.get("into")) if isinstance(i, int)]

    async def op(conn: Conn) -> None:
        if await write(conn, e, snapshot, at):
            await store.add_incident_event(conn, e.incident, at, e.kind.value, detail)
        await store.notify_replica(conn, "incident", changed)

    return op


def _eta_op(d: dict[str, Any]) -> Op:
    incident, eta, at = int(d["incident"]), store.ts(float(d["eta"])), store.ts(float(d["at"]))
    detail = json.dumps({"eta": eta, "by": d["by"]}, default=str)

    async def op(conn: Conn) -> None:
        await store.set_incident_eta(conn, incident, eta)
        await store.add_incident_event(conn, incident, at, "eta", detail)
        await store.notify_replica(conn, "incident", [incident])

    return op


def _note_op(d: dict[str, Any]) -> Op:
    incident, at = int(d["incident"]), store.ts(float(d["at"]))
    detail = json.dumps({"note": d["note"], "by": d["by"]})

    async def op(conn: Conn) -> None:
        await store.add_incident_event(conn, incident, at, "note", detail)
        await store.notify_replica(conn, "incident", [incident])

    return op


def _maintenance_op(d: dict[str, Any]) -> Op:
    async def op(conn: Conn) -> None:
        await store.add_maintenance(conn, int(d["id"]), str(d["node"]),
                                    store.ts(float(d["starts_at"])), store.ts(float(d["ends_at"])),
                                    str(d["reason"]), str(d["by"]))  # fmt: skip
        await store.notify_replica(conn, "maintenance", [])

    return op


def _add_counts(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
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


def _newer(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, **b}


def _states_op(latest: dict[str, tuple[str, float, float]]) -> Op:
    rows = [(node, state, store.ts(at), loss) for node, (state, at, loss) in latest.items()]

    async def op(conn: Conn) -> None:
        await store.save_node_states(conn, rows)
        await store.notify_replica(conn, "states", [])

    return op


def _replace(a: list[tuple[str, float, float]],
             b: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:  # fmt: skip
    return b


def _replace_flag(a: bool, b: bool) -> bool:
    return b


def _blind_op(blind: bool) -> Op:
    async def op(conn: Conn) -> None:
        await store.set_blind(conn, blind)
        await store.notify_replica(conn, "monitor", [])

    return op


def _history_op(rows: list[tuple[str, float, float]]) -> Op:
    async def op(conn: Conn) -> None:
        await store.save_histories(conn, rows)

    return op


def _size(record: dict[str, Any]) -> int:
    snap = record.get("snap") or {}
    return 256 + 24 * (len(record.get("nodes") or ()) + len(snap.get("nodes") or ()))


def inventory_ops(current: Directory) -> tuple[Op, Op]:
    """The topology's nodes, and the subscribers, as two writes."""
    nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in current.topology.nodes.values()]
    subs = [
        (s.account, list(s.phones), s.address.text(with_flat=False), s.flat, s.ip, s.node)
        for s in current.subscribers
    ]

    async def write_nodes(conn: Conn) -> None:
        started = time.monotonic()
        await store.save_nodes(conn, nodes)
        log.info("inventory.nodes_saved", nodes=len(nodes),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    async def write_subscribers(conn: Conn) -> None:
        started = time.monotonic()
        await store.save_subscribers(conn, subs)
        log.info("inventory.saved", nodes=len(nodes), subscribers=len(subs),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    return write_nodes, write_subscribers
