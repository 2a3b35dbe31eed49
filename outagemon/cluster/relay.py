"""Callers answered by a standby reach the leader, through the database.

A standby answers `/check` from its replica; what those answers mean for the callers'
detector (`core/calls.py`: a caller's record) and for the incidents' call counts (and the
history's calls a minute) is the leader's to take. The standby writes them to two tables
(migration 0009) every second; the leader takes them every second, deleting them in a
transaction that begins with the fencing check of its epoch (`store.holds_lease`), adds
the counts to `incident.calls` and `call_minute` in that same transaction (each count is
added exactly once: by the transaction that deletes it), and hands the records to its
detector once that transaction has committed.

A standby's write is added once too: its transaction's id is read first, and a write
whose commit went unanswered (a timeout, a broken connection: the database may have
committed it) is kept aside with that id, not queued again; before the next write, the
database says what became of it (`store.transaction_states`): committed, it is done;
rolled back, its calls are queued again; still unknown, it waits. So is the leader's
take: one whose commit went unanswered is asked about at the next take, and if it
committed, its counts and records are handed on then (once).

Why the database, not HTTP to the leader: the leader may change at any moment, and a row
waits for whoever leads next (a leader that stepped down cannot take it: its fenced
transaction rolls back); no node needs another's address, port, token or certificate;
and the times are the database's, never another host's clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

from outagemon import logs
from outagemon.db import store
from outagemon.metrics import Registry

log = logs.get("outagemon.cluster")

# A caller's record as relayed: place (serving node), building, caller's key, channel,
# status, the caller's router.
Relayed = tuple[str, str, str, str, str, str]
UNSENT_RECORDS = 50_000  # records kept for the leader while the database is away


class RelayFenced(Exception):
    """The epoch the leader took the relayed calls under no longer holds."""


@dataclass
class Unsure:
    """A standby's write whose commit went unanswered: its transaction, and what it held."""

    xid: int
    counts: dict[int, int]
    records: list[Relayed]


@dataclass
class Taken:
    """What a leader took: counts per (incident, wall-clock minute), and the other nodes'
    callers' records with their age in seconds (on the database's clock), oldest first."""

    counts: dict[int, int] = field(default_factory=dict)
    records: list[tuple[float, Relayed]] = field(default_factory=list)


class CallRelay:
    """One node's side of the relay: what its replica answered, waiting to be written
    (`send`, on a standby); what the standbys wrote, taken (`take`, on the leader)."""

    def __init__(self, node: str, metrics: Registry) -> None:
        self.node = node
        self.counts: dict[int, int] = {}
        self.records: list[Relayed] = []
        self.unsure: list[Unsure] = []  # written, perhaps: the database is asked first
        # The leader's take whose commit went unanswered: (its transaction, the epoch, when
        # on our clock, what it took), asked about at the next take.
        self.unsure_take: tuple[int, int, float, Taken] | None = None
        self._sent = metrics.counter(
            "outagemon_cluster_calls_relayed_total",
            "Check answers (counts) and callers' records this standby wrote for the leader.",
        )
        self._taken = metrics.counter(
            "outagemon_cluster_calls_taken_total",
            "Check answers (counts) and callers' records the leader took from the standbys.",
        )
        self._dropped = metrics.counter(
            "outagemon_cluster_call_records_dropped_total",
            "Callers' records not relayed to the leader (too many waiting).",
        )
        for what in ("counts", "records"):
            self._sent.inc(0, what=what)
            self._taken.inc(0, what=what)

    # -- a standby ---------------------------------------------------------------------

    def record(self, place: str, building: str, caller: str, channel: str, status: str,
               router: str) -> None:  # fmt: skip
        """A caller's record (its key already hashed), for the leader's detector."""
        if len(self.records) >= UNSENT_RECORDS:
            self._dropped.inc()
            return
        self.records.append((place, building, caller, channel, status, router))

    def count(self, counts: dict[int, int]) -> None:
        for iid, n in counts.items():
            if n > 0:
                self.counts[iid] = self.counts.get(iid, 0) + n

    async def send(self, pool: asyncpg.Pool) -> None:
        """What waits, written in one transaction; kept for the next try if it fails
        before its commit, set aside (`unsure`) if its commit went unanswered."""
        if self.unsure:
            await self._settle(pool)
        if not self.counts and not self.records:
            return
        counts, records = self.counts, self.records
        self.counts, self.records = {}, []
        xid: int | None = None
        try:
            async with pool.acquire() as conn, conn.transaction():
                xid = await store.transaction_id(conn)
                await store.relay_calls(conn, self.node, list(counts.items()), records)
        except BaseException:
            if xid is None:  # nothing was committed: no commit was asked for
                self._requeue(counts, records)
            else:  # perhaps committed: the next send asks the database
                self.unsure.append(Unsure(xid, counts, records))
            raise
        self._written(counts, records)

    async def _settle(self, pool: asyncpg.Pool) -> None:
        """Ask what became of the writes whose commit went unanswered: those committed are
        done, those rolled back are queued again, the others wait for the next send."""
        async with pool.acquire() as conn:
            states = await store.transaction_states(conn, [u.xid for u in self.unsure])
        waiting = []
        for u in self.unsure:
            state = states.get(u.xid)
            if state == "committed":
                self._written(u.counts, u.records)
            elif state == "aborted":
                self._requeue(u.counts, u.records)
            elif state == "in progress":
                waiting.append(u)
            else:  # the server no longer knows (very old): not written twice
                log.error("cluster.relay_unknown", xid=u.xid, counts=sum(u.counts.values()),
                          records=len(u.records))  # fmt: skip
        self.unsure = waiting

    def _requeue(self, counts: dict[int, int], records: list[Relayed]) -> None:
        self.count(counts)  # back, before anything answered since
        self.records[:0] = records[: max(0, UNSENT_RECORDS - len(self.records))]

    def _written(self, counts: dict[int, int], records: list[Relayed]) -> None:
        self._sent.inc(sum(counts.values()), what="counts")
        self._sent.inc(len(records), what="records")

    # -- the leader --------------------------------------------------------------------

    async def take(self, pool: asyncpg.Pool, epoch: int, holder: str) -> Taken:
        """Everything the standbys wrote, taken under `epoch`: the counts added to the
        incidents and the calls a minute (and the replicas told), in the transaction that
        deletes them; RelayFenced (nothing taken) when the epoch no longer holds. This
        node's own records are left out of what is returned (its own detector had them
        when it answered them, as a standby); its counts are not (its Monitor never
        counted what its replica answered)."""
        earlier = Taken()
        if self.unsure_take is not None:
            earlier = await self._settle_take(pool, epoch)
            if self.unsure_take is not None:  # its rows are still held: take them later
                return earlier
        taken = Taken()
        xid: int | None = None
        records: list[asyncpg.Record] = []
        try:
            async with pool.acquire() as conn, conn.transaction():
                if not await store.holds_lease(conn, epoch, holder):
                    raise RelayFenced("relayed calls")
                xid = await store.transaction_id(conn)
                counts = await store.take_relayed_counts(conn)
                records = await store.take_relayed_records(conn)
                if counts:
                    per_incident: dict[int, int] = {}
                    for r in counts:
                        iid = int(r["incident_id"])
                        per_incident[iid] = per_incident.get(iid, 0) + int(r["calls"])
                    await store.add_calls(conn, list(per_incident.items()))
                    await store.add_call_minutes(conn, [
                        (r["minute"], int(r["incident_id"]), int(r["calls"])) for r in counts
                    ])  # fmt: skip
                    await store.notify_replica(conn, "calls", sorted(per_incident))
                    taken.counts = per_incident
        except BaseException:
            if xid is not None:  # perhaps committed: the next take asks the database
                self.unsure_take = (xid, epoch, time.monotonic(), self._records(taken, records))
            raise
        self._records(taken, records)
        for iid, n in earlier.counts.items():
            taken.counts[iid] = taken.counts.get(iid, 0) + n
        taken.records[:0] = earlier.records
        self._taken.inc(sum(taken.counts.values()), what="counts")
        self._taken.inc(len(taken.records), what="records")
        return taken

    def _records(self, taken: Taken, records: list[asyncpg.Record]) -> Taken:
        """The other nodes' records of those taken, into `taken`."""
        for r in records:
            if r["node"] == self.node:
                continue
            rec = (str(r["place"]), str(r["building"]), str(r["caller"]), str(r["channel"]),
                   str(r["status"]), str(r["router"]))  # fmt: skip
            taken.records.append((max(0.0, float(r["age"])), rec))
        return taken

    async def _settle_take(self, pool: asyncpg.Pool, epoch: int) -> Taken:
        """What the last take, whose commit went unanswered, took: if it committed (under
        the epoch still led: after a new term the counts were read back from the
        database), its counts and records, their ages grown by the time since; else
        nothing (rolled back, the rows wait to be taken again)."""
        assert self.unsure_take is not None
        xid, taken_under, at, taken = self.unsure_take
        async with pool.acquire() as conn:
            state = (await store.transaction_states(conn, [xid])).get(xid)
        if state == "in progress":
            return Taken()
        self.unsure_take = None
        if state != "committed" or taken_under != epoch:
            return Taken()
        grown = time.monotonic() - at
        return Taken(taken.counts, [(age + grown, rec) for age, rec in taken.records])
