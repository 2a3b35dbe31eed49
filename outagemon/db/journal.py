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
from typing import TYPE_CHECKING

from outagemon import logs
from outagemon.core.directory import Directory
from outagemon.core.incidents import Event, EventKind, Incident, Maintenance
from outagemon.db import store
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


WRITES: dict[EventKind, Write] = {
    EventKind.OPENED: _opened,
    EventKind.REOPENED: _reopened,
    EventKind.NODES: _nodes,
    EventKind.ROOT_MOVED: _root_moved,
    EventKind.MERGED: _merged,
    EventKind.RECOVERING: _timeline,
    EventKind.REFAILED: _timeline,
    EventKind.RESOLVED: _resolved,
    EventKind.KIND_CHANGED: _kind_changed,
    EventKind.SPLIT: _timeline,
}


class Journal:
    """Queues the writes of what happened on the writer; without one, writes nothing."""

    def __init__(self, writer: Writer | None) -> None:
        self.writer = writer

    def event(self, e: Event, inc: Incident | None, subscribers: int) -> None:
        """A correlator event (`inc`: its incident while still open, `subscribers` behind
        that incident's nodes)."""
        write = WRITES.get(e.kind)
        if self.writer is None or write is None:
            return
        at = store.ts(e.at)
        detail = json.dumps(e.detail, default=str)
        snapshot = None
        if inc is not None:
            snapshot = Snapshot(inc.id, inc.kind.value, inc.root, inc.inferred,
                                store.ts(inc.opened_at), list(inc.nodes),
                                subscribers)  # fmt: skip

        async def op(conn: Conn) -> None:
            if await write(conn, e, snapshot, at):
                await store.add_incident_event(conn, e.incident, at, e.kind.value, detail)

        self.writer.submit(e.kind.value, op)

    def estimate(self, incident_id: int, eta: float | None, note: str, who: str,
                 now: float) -> None:  # fmt: skip
        """An engineer's repair estimate and/or note, with a timeline line for each."""
        if self.writer is None:
            return
        at = store.ts(now)

        async def op(conn: Conn) -> None:
            if eta is not None:
                await store.set_incident_eta(conn, incident_id, store.ts(eta))
                await store.add_incident_event(
                    conn, incident_id, at, "eta",
                    json.dumps({"eta": store.ts(eta), "by": who}, default=str),
                )  # fmt: skip
            if note:
                await store.add_incident_event(conn, incident_id, at, "note",
                                               json.dumps({"note": note, "by": who}))  # fmt: skip

        self.writer.submit("eta", op)

    def maintenance(self, window: Maintenance, who: str) -> None:
        """Planned works taken through the API."""
        if self.writer is None:
            return

        async def op(conn: Conn) -> None:
            await store.add_maintenance(conn, window.id, window.node, store.ts(window.starts_at),
                                        store.ts(window.ends_at), window.reason,
                                        who)  # fmt: skip

        self.writer.submit("maintenance", op)

    def calls(self, batch: dict[int, int]) -> None:
        """Check answers that named each incident, since the last batch."""
        if self.writer is None:
            return
        rows = list(batch.items())

        async def op(conn: Conn) -> None:
            await store.add_calls(conn, rows)

        self.writer.submit("calls", op)

    def node_states(self, changes: list[tuple[str, str, float, float]]) -> None:
        """Nodes' latest state changes (node, state, when, short-term loss), in one write."""
        if self.writer is None:
            return
        rows = [(node, state, store.ts(at), loss) for node, state, at, loss in changes]

        async def op(conn: Conn) -> None:
            await store.save_node_states(conn, rows)

        self.writer.submit("node_states", op)

    def history(self, rows: list[tuple[str, float, float]]) -> None:
        """Every node's loss history (n, lost), in one write."""
        if self.writer is None:
            return

        async def op(conn: Conn) -> None:
            await store.save_histories(conn, rows)

        self.writer.submit("history", op)

    def inventory(self, current: Directory) -> None:
        """The loaded topology and subscribers replace the stored ones."""
        if self.writer is None:
            return
        self.writer.submit("inventory", inventory_op(current))


def inventory_op(current: Directory) -> Op:
    async def write(conn: Conn) -> None:
        started = time.monotonic()
        nodes = [
            (n.id, n.kind, n.ip, n.name, list(n.parents)) for n in current.topology.nodes.values()
        ]
        subs = [
            (s.account, list(s.phones), s.address.text(with_flat=False), s.flat, s.ip, s.node)
            for s in current.subscribers
        ]
        await store.save_inventory(conn, nodes, subs)
        log.info("inventory.saved", nodes=len(nodes), subscribers=len(subs),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    return write
