"""Writes to PostgreSQL in order, queued in memory while the database is away.

Detection never waits for the database: the correlator's events become operations in a
queue, flushed in order by one task. When the database does not answer (or is not
connected yet), the task retries with backoff and the queue grows; when it returns,
everything queued is written in the order it happened.

The queue is bounded by bytes (and by a count): past either bound the oldest write that
may be lost is dropped and counted; precious writes (an incident opened, planned works)
are never dropped. Latest-wins writes (call counts, node states, loss histories) are
coalesced: one of each waits at a time, holding the merged values. A write that fails
for any reason but an unreachable database is refused: logged, counted, dropped, and the
writer goes on; it never dies of one write. A write kept in the journal file (`spool`)
is acknowledged there once written or refused.

Fencing (two hosts on one database, `cluster/lease.py`): a write decided by a leader
carries the epoch it was decided under, and its transaction begins by checking that the
epoch still holds (`store.holds_lease`). A write that fails the check is refused for
good: counted by the `fence`, never retried; `drop_epoch` drops what a leader that
stepped down still had queued.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg

from outagemon import logs
from outagemon.db import store
from outagemon.metrics import Registry

if TYPE_CHECKING:
    from outagemon.db.spool import Spool
    from outagemon.db.store import Conn

log = logs.get("outagemon.writer")

Op = Callable[["Conn"], Awaitable[None]]
Release = Callable[[Any], Awaitable[None]]  # a coalesced write's values, let go of
T = TypeVar("T")

# Errors that mean "the database is not reachable now", not "this write is wrong".
UNAVAILABLE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
# A write that timed out this many times while the database answered a ping is refused.
TIMEOUT_ATTEMPTS = 3
PING_TIMEOUT = 2.0
DEFAULT_SIZE = 256  # bytes charged for a write that does not say


class Fence(Protocol):
    """The leader's lease, as the writer checks it (`cluster/lease.py`)."""

    holder: str

    def refused(self, epoch: int, write: str) -> None:
        """A write decided under `epoch` was fenced off."""
        ...


class Fenced(Exception):
    """The epoch a write was decided under no longer holds: refused, never retried."""


class _Item:
    __slots__ = ("done", "epoch", "held", "live", "name", "op", "precious", "seq", "size")

    def __init__(self, name: str, op: Op | None, size: int, precious: bool,
                 seq: int | None, epoch: int | None = None,
                 done: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.name = name
        self.op = op  # None: a coalesced write, made from its merged values when its turn comes
        self.size = size
        self.precious = precious
        self.seq = seq
        self.epoch = epoch  # the leader's epoch it was decided under; None: not fenced
        self.done = done  # called once, as it leaves the queue: written, refused or dropped
        self.held: Callable[[], Awaitable[None]] | None = None  # lets go of its values
        self.live = True

    def gone(self) -> None:
        """This write is over: written, refused or dropped (never made again)."""
        done, self.done = self.done, None
        if done is not None:
            done()


class Writer:
    def __init__(
        self,
        pool: asyncpg.Pool | None,
        limit: int,
        metrics: Registry,
        limit_bytes: int = 64 << 20,
        spool: Spool | None = None,
    ) -> None:
        self.pool = pool
        self.limit = limit
        self.limit_bytes = limit_bytes
        self.spool = spool
        self.fence: Fence | None = None  # set on a cluster's nodes: epochs are checked
        self._queue: deque[_Item] = deque()
        self._droppable: deque[_Item] = deque()  # the same items, precious ones left out
        # A coalesced write's item, values, how its op is made, and how they are let go of.
        self._latest: dict[str, tuple[_Item, Any, Callable[[Any], Op], Release | None]] = {}
        self._live = 0
        self._bytes = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.available = pool is not None
        self._was_up = self.available  # the first connection is not "available again"
        self.last_error = "" if pool is not None else "not connected yet"
        self._queued = metrics.gauge("outagemon_db_queue", "Writes waiting for the database.")
        self._queued_bytes = metrics.gauge(
            "outagemon_db_queue_bytes", "Bytes of the writes waiting for the database."
        )
        self._dropped = metrics.counter(
            "outagemon_db_dropped_total", "Writes dropped because the queue was full."
        )
        self._failed = metrics.counter(
            "outagemon_db_failed_total", "Writes the database refused (logged with the reason)."
        )
        self._written = metrics.counter("outagemon_db_writes_total", "Writes done.")
        self._up = metrics.gauge("outagemon_db_up", "1 while the database answers.")
        self._up.set(1 if self.available else 0)

    # -- queueing --------------------------------------------------------------------

    def submit(self, name: str, op: Op, size: int = DEFAULT_SIZE, precious: bool = False,
               seq: int | None = None, epoch: int | None = None,
               done: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Queue a write; `seq` is its line in the journal file, acknowledged once done;
        `epoch`, the leader's epoch it was decided under (checked when it is made);
        `done`, called once as it leaves the queue (written, refused, or dropped and
        passed by)."""
        self._push(_Item(name, op, size, precious, seq, epoch, done))

    def latest(self, name: str, values: T, merge: Callable[[T, T], T],
               make: Callable[[T], Op], size: int = DEFAULT_SIZE,
               epoch: int | None = None,
               release: Callable[[T], Awaitable[None]] | None = None) -> None:  # fmt: skip
        """Queue a latest-wins write: merged with the one of this name still waiting, which
        moves to the end of the queue (after the writes its values may refer to).
        `release`, awaited with the values once the write is over (written or refused, its
        transaction ended, never to be made again), lets go of what they alone hold a slice
        a step: dropped with the write's last reference, a million of a mass outage's node
        states would be freed in whichever writer step made the next write (~50 ms)."""
        waiting = self._latest.get(name)
        if waiting is not None and waiting[0].live:
            item, old, _, _ = waiting
            values = merge(old, values)
            self._forget(item)
        item = _Item(name, None, size, False, None, epoch)
        self._latest[name] = (item, values, make, release)
        self._push(item)

    def _push(self, item: _Item) -> None:
        self._queue.append(item)
        if not item.precious:
            self._droppable.append(item)
        self._live += 1
        self._bytes += item.size
        while self._live > self.limit or self._bytes > self.limit_bytes:
            if not self._drop_oldest():
                break  # only precious writes left: they stay, whatever the bound
        self._count()
        self._idle.clear()
        self._wake.set()

    def _drop_oldest(self) -> bool:
        while self._droppable:
            item = self._droppable.popleft()
            if item.live:
                self._forget(item)
                if item.op is None:
                    self._latest.pop(item.name, None)
                self._dropped.inc()
                log.warning("db.queue_full", dropped=item.name, limit=self.limit,
                            limit_bytes=self.limit_bytes)  # fmt: skip
                return True
        return False

    def _forget(self, item: _Item) -> None:
        item.live = False
        self._live -= 1
        self._bytes -= item.size

    def _count(self) -> None:
        self._queued.set(self._live)
        self._queued_bytes.set(self._bytes)

    def __len__(self) -> int:
        return self._live

    def drop_epoch(self, epoch: int) -> int:
        """A leader stepped down: what it decided under `epoch` (or before) and is still
        queued is dropped, and acknowledged in the journal file so no restart makes it.
        Its successor decides afresh from the database. Returns how many were dropped."""
        dropped = 0
        for item in self._queue:
            if item.live and item.epoch is not None and item.epoch <= epoch:
                self._forget(item)
                if item.op is None:
                    self._latest.pop(item.name, None)
                if item.seq is not None and self.spool is not None:
                    self.spool.done(item.seq)
                dropped += 1
        if dropped:
            log.warning("db.fenced_dropped", writes=dropped, epoch=epoch)
        self._count()
        return dropped

    def attach(self, pool: asyncpg.Pool) -> None:
        """The database is connected (the daemon connects in the background)."""
        self.pool = pool
        self._wake.set()

    # -- writing ---------------------------------------------------------------------

    def _next(self) -> tuple[_Item, Op] | None:
        """The first live write, made now if it is a coalesced one."""
        while self._queue:
            item = self._queue[0]
            if not item.live:  # dropped
                self._queue.popleft()
                item.gone()
                continue
            if item.op is None:
                waiting = self._latest.get(item.name)
                if waiting is None or waiting[0] is not item:
                    self._queue.popleft()
                    continue
                del self._latest[item.name]
                _, values, make, release = waiting
                try:
                    item.op = make(values)
                except Exception as e:  # a value that cannot be written: this write only
                    self._refused(item, str(e) or type(e).__name__)
                    self._finished(item)
                    continue
                if release is not None:
                    item.held = functools.partial(release, values)
            return item, item.op
        return None

    def _finished(self, item: _Item) -> None:
        if self._queue and self._queue[0] is item:
            self._queue.popleft()
        if item.live:
            self._forget(item)
        # Every write before it is over too: none is kept for a drop (kept there, each
        # write's op, and the values it was made from, stayed till the queue next filled:
        # every tick's node states, a cut's million transitions among them).
        while self._droppable and not self._droppable[0].live:
            self._droppable.popleft()
        item.gone()
        if item.seq is not None and self.spool is not None:
            self.spool.done(item.seq)
        self._count()

    async def run(self) -> None:
        backoff = 0.2
        timeouts = 0
        fenced = False
        while True:
            if self._next() is None:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.pool is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                async with self.pool.acquire(timeout=5) as conn:
                    while (found := self._next()) is not None:
                        item, op = found
                        try:
                            async with conn.transaction():
                                await self._fenced(conn, item)
                                await op(conn)
                        except Fenced:
                            fenced = True
                        except TimeoutError:  # before UNAVAILABLE: it is an OSError
                            # A hung database, or this one write is too slow: ask it.
                            if not await self._answers():
                                raise
                            timeouts += 1
                            if timeouts < TIMEOUT_ATTEMPTS:
                                raise
                            self._refused(item, "timed out while the database answered")
                        except UNAVAILABLE:
                            raise
                        except Exception as e:
                            if conn.is_closed():
                                # The session ended under the write (the server ended it
                                # idle in its transaction, a backend terminated): the
                                # connection's fault, not the write's; it is made again.
                                raise ConnectionError(str(e) or type(e).__name__) from e
                            self._refused(item, str(e) or type(e).__name__)
                        else:
                            self._written.inc()
                        timeouts = 0
                        self._finished(item)
                        if fenced:  # after it is finished: the fence drops the rest
                            fenced = False
                            assert self.fence is not None and item.epoch is not None
                            self.fence.refused(item.epoch, item.name)
                        if item.held is not None:  # over: let go of its values, a slice a step
                            held, item.held = item.held, None
                            await held()
                            del held  # with the values, till the next write let go of
                self._up_again()
                backoff = 0.2
            except UNAVAILABLE as e:  # TimeoutError included
                self._down(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _fenced(self, conn: Conn, item: _Item) -> None:
        """Raise Fenced unless the epoch the write was decided under still holds."""
        if item.epoch is None or self.fence is None:
            return
        if not await store.holds_lease(conn, item.epoch, self.fence.holder):
            raise Fenced(item.name)

    def _refused(self, item: _Item, reason: str) -> None:
        self._failed.inc()
        log.error("db.write_refused", write=item.name, error=reason)

    def _up_again(self) -> None:
        if not self.available:
            log.info("db.available_again" if self._was_up else "db.available")
        self._was_up = True
        self.available = True
        self.last_error = ""
        self._up.set(1)

    def _down(self, e: BaseException) -> None:
        error = str(e) or type(e).__name__
        if self.available:
            log.warning("db.unavailable", error=error, queued=self._live)
        self.available = False
        self.last_error = error
        self._up.set(0)

    async def _answers(self) -> bool:
        """Whether the database answers a trivial query at once, on a fresh connection."""
        assert self.pool is not None
        started = time.monotonic()
        try:
            async with self.pool.acquire(timeout=PING_TIMEOUT) as conn:
                remaining = max(0.1, PING_TIMEOUT - (time.monotonic() - started))
                await conn.fetchval("select 1", timeout=remaining)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    async def ping(self) -> bool:
        """Ask the database a trivial query and keep `outagemon_db_up` true to fact even
        while nothing is written; one log line when the answer changes."""
        if self.pool is None:
            return False
        started = time.monotonic()
        try:
            async with self.pool.acquire(timeout=PING_TIMEOUT) as conn:
                remaining = max(0.1, PING_TIMEOUT - (time.monotonic() - started))
                await conn.fetchval("select 1", timeout=remaining)
        except (*UNAVAILABLE, asyncpg.PostgresError) as e:
            self._down(e)
            return False
        self._up_again()
        return True

    async def drain(self, within: float) -> bool:
        """Wait until everything queued is written; False if `within` seconds ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
