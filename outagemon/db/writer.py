"""Writes to PostgreSQL in order, queued in memory while the database is away.

Detection never waits for the database: the correlator's events become operations in a
bounded queue, flushed in order by one task. When the database does not answer, the task
retries with backoff and the queue grows (to `limit`; past it the oldest operation is
dropped and counted); when it returns, everything queued is written in the order it
happened.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg

from outagemon import logs
from outagemon.metrics import Registry

if TYPE_CHECKING:
    from outagemon.db.store import Conn

log = logs.get("outagemon.writer")

Op = Callable[["Conn"], Awaitable[None]]

# Errors that mean "the database is not reachable now", not "this write is wrong".
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class Writer:
    def __init__(self, pool: asyncpg.Pool, limit: int, metrics: Registry) -> None:
        self.pool = pool
        self.limit = limit
        self._queue: deque[tuple[str, Op]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.available = True
        self._queued = metrics.gauge("outagemon_db_queue", "Writes waiting for the database.")
        self._dropped = metrics.counter(
            "outagemon_db_dropped_total", "Writes dropped because the queue was full."
        )
        self._failed = metrics.counter(
            "outagemon_db_failed_total", "Writes the database refused (logged with the reason)."
        )
        self._written = metrics.counter("outagemon_db_writes_total", "Writes done.")
        self._up = metrics.gauge("outagemon_db_up", "1 while the database answers.")
        self._up.set(1)

    def submit(self, name: str, op: Op) -> None:
        if len(self._queue) >= self.limit:
            dropped, _ = self._queue.popleft()
            self._dropped.inc()
            log.warning("db.queue_full", dropped=dropped, limit=self.limit)
        self._queue.append((name, op))
        self._queued.set(len(self._queue))
        self._idle.clear()
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        backoff = 0.2
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                async with self.pool.acquire(timeout=5) as conn:
                    while self._queue:
                        name, op = self._queue[0]
                        try:
                            async with conn.transaction():
                                await op(conn)
                        except UNAVAILABLE:
                            raise
                        except asyncpg.PostgresError as e:
                            self._failed.inc()
                            log.error("db.write_refused", write=name, error=str(e))
                        self._queue.popleft()
                        self._written.inc()
                        self._queued.set(len(self._queue))
                if not self.available:
                    log.info("db.available_again")
                self.available = True
                self._up.set(1)
                backoff = 0.2
            except UNAVAILABLE as e:
                if self.available:
                    log.warning("db.unavailable", error=str(e) or type(e).__name__,
                                queued=len(self._queue))  # fmt: skip
                self.available = False
                self._up.set(0)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def drain(self, within: float) -> bool:
        """Wait until everything queued is written; False if `within` seconds ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
