"""Delivers the outbox: one task per target (each Alertmanager, each webhook), each with
its own place in the outbox, kept in the database, so a dead receiver holds only itself.

A change is retried with exponential backoff and jitter until it is delivered or older
than `give_up_after` (counted); every attempt carries the same idempotency key
(`incident_id:revision`), so a receiver that got it before a crash sees it again with
that key. Alertmanagers also get every open incident again each `resend_interval`, with
its current annotations. Nothing is sent while the monitor is blind, nor where `may_send`
says no (a cluster's followers). In a cluster each cursor write is fenced by the epoch the
delivery began under (`fence`): a leader that stepped down while delivering does not move
the new leader's cursor (its write is dropped and counted, as the writer's are).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import asyncpg

from outagemon import logs
from outagemon.alerting import payload, signing
from outagemon.alerting.payload import Change
from outagemon.config import NotifyConfig
from outagemon.core.topology import Topology
from outagemon.db import store
from outagemon.metrics import Registry

log = logs.get("outagemon.alerting")
T = TypeVar("T")

POLL = 0.2  # seconds between looks at the outbox when it is empty
BATCH = 100
BACKOFF_FIRST = 0.5  # seconds before the second attempt; doubled each time
BACKOFF_MAX = 300.0
REQUEST_TIMEOUT = 10.0
DB_TIMEOUT = 5.0
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class Target:
    """Where notifications go. `name` is fit for logs and metrics (a URL's path or query
    may hold a token, so only the host is shown); `key` keeps its place in the outbox."""

    kind: str  # alertmanager | webhook
    url: str
    name: str
    key: str
    secret: str = ""
    events: frozenset[str] = frozenset()

    def wants(self, event: str) -> bool:
        return self.kind == "alertmanager" or event in self.events


def targets_of(cfg: NotifyConfig) -> list[Target]:
    found = []
    for i, url in enumerate(cfg.alertmanagers, start=1):
        found.append(Target("alertmanager", url, _name("alertmanager", i, url),
                            _key("alertmanager", url)))  # fmt: skip
    for i, hook in enumerate(cfg.webhooks, start=1):
        name, key = _name("webhook", i, hook.url), _key("webhook", hook.url)
        found.append(Target("webhook", hook.url, name, key, hook.secret, frozenset(hook.events)))
    return found


class Fence(Protocol):
    """A cluster's lease, as the sender fences its cursor writes (`cluster/lease.py`)."""

    holder: str

    def deciding(self) -> int | None:
        """The epoch this node leads under now, or None."""
        ...

    def refused(self, epoch: int, write: str) -> None:
        """A write decided under `epoch` was fenced off (counted; the node steps down)."""
        ...


class CursorFenced(Exception):
    """The epoch a target's cursor was advanced under no longer holds: not written."""


def _name(kind: str, i: int, url: str) -> str:
    return f"{kind} {i} ({urllib.parse.urlsplit(url).netloc})"


def _key(kind: str, url: str) -> str:
    return f"{kind} {hashlib.sha256(url.encode()).hexdigest()[:20]}"


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds before attempt `attempt + 1`: doubling, capped, with full jitter in its
    upper half so receivers coming back are not hit by every sender at once."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempt, 30))
    return float(ceiling * rng.uniform(0.5, 1.0))


class Sender:
    def __init__(
        self,
        cfg: NotifyConfig,
        pool: Callable[[], asyncpg.Pool | None],
        topology: Callable[[], Topology],
        metrics: Registry,
        blind: Callable[[], bool] = lambda: False,
        may_send: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        fence: Fence | None = None,
    ) -> None:
        self.cfg = cfg
        self.targets = targets_of(cfg)
        self._pool = pool
        self._topology = topology
        self._blind = blind
        self.may_send = may_send  # the cluster's hook: only the leader delivers
        # A cluster's lease: each cursor write checks, in its transaction, that the epoch
        # the delivery began under still holds (a deposed leader's write is dropped).
        self.fence = fence
        self._clock = clock
        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        # (target, incident) -> the labels last sent: an incident whose labels changed (its
        # severity grew, its root moved) ends the alert under the old ones at once.
        self._sent: dict[tuple[str, str], dict[str, str]] = {}
        self._queued = metrics.gauge(
            "outagemon_alerts_queued", "Notifications waiting for a target."
        )
        self._oldest = metrics.gauge(
            "outagemon_alerts_oldest_seconds", "Age of the oldest notification waiting."
        )
        self._delivered = metrics.counter(
            "outagemon_alerts_delivered_total", "Notifications a target accepted."
        )
        self._failed = metrics.counter(
            "outagemon_alerts_failed_total", "Attempts a target refused or did not answer."
        )
        self._given_up = metrics.counter(
            "outagemon_alerts_given_up_total",
            "Notifications dropped undelivered after [notify] give_up_after.",
        )
        self._fenced = metrics.counter(
            "outagemon_alerts_cursor_fenced_total",
            "Cursor writes dropped: this node no longer led when its delivery ended.",
        )
        for t in self.targets:
            for m in (self._queued, self._oldest, self._delivered, self._failed, self._given_up,
                      self._fenced):  # fmt: skip
                m.inc(0, target=t.name)

    async def run(self) -> None:
        if not self.targets:
            return
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            async with asyncio.TaskGroup() as group:
                for t in self.targets:
                    group.create_task(self._target(t), name=f"alerts {t.name}")

    def _ready(self) -> asyncpg.Pool | None:
        if self._blind() or not self.may_send():
            return None
        return self._pool()

    # -- one target --------------------------------------------------------------------

    async def _target(self, t: Target) -> None:
        cursor: int | None = None
        resent = 0.0
        db_down = False
        while True:
            pool = self._ready()
            if pool is None:
                await asyncio.sleep(POLL)
                continue
            # The epoch this batch is delivered under (None: a single host, not fenced).
            epoch = self.fence.deciding() if self.fence is not None else None
            if self.fence is not None and epoch is None:
                await asyncio.sleep(POLL)
                continue
            try:
                if cursor is None:
                    cursor = await _db(pool, store.alert_cursor, t.key)
                rows = await _db(pool, store.outbox_after, cursor, BATCH)
                fetched = time.monotonic()
                if rows:
                    await self._gauges(t, pool, cursor)
                else:
                    self._queued.set(0, target=t.name)
                    self._oldest.set(0, target=t.name)
                for row in rows:
                    age = float(row["age"]) + time.monotonic() - fetched
                    await self._one(t, _change(row), age)
                    cursor = int(row["id"])
                    await _db(pool, self._set_cursor, t.key, cursor, epoch)
                due = time.monotonic() - resent >= self.cfg.resend_interval
                if t.kind == "alertmanager" and due and await self._resend(t, pool):
                    resent = time.monotonic()
                if db_down:
                    log.info("alerts.database_again", target=t.name)
                    db_down = False
            except CursorFenced:
                # Another node leads now: it delivers from the cursor it reads; this one
                # reads it again if it leads again.
                assert self.fence is not None and epoch is not None
                self._fenced.inc(target=t.name)
                log.warning("alerts.cursor_fenced", target=t.name, epoch=epoch)
                self.fence.refused(epoch, f"alert cursor ({t.name})")
                cursor = None
                continue
            except DB_ERRORS as e:
                if not db_down:
                    log.warning("alerts.database_unavailable", target=t.name,
                                error=str(e) or type(e).__name__)  # fmt: skip
                    db_down = True
                await asyncio.sleep(1.0)
                continue
            except Exception as e:  # a bug or a row no payload can hold: this target waits
                log.error("alerts.target_failed", target=t.name, error=repr(e))
                await asyncio.sleep(5.0)
                continue
            if len(rows) < BATCH:
                await asyncio.sleep(POLL)

    async def _set_cursor(self, conn: Any, target: str, cursor: int, epoch: int | None) -> None:
        """How far `target` got; in a cluster, only while `epoch` holds (else CursorFenced:
        the write is dropped, and the new leader's cursor stays as it wrote it)."""
        if epoch is None or self.fence is None:
            await store.set_alert_cursor(conn, target, cursor)
            return
        async with conn.transaction():
            if not await store.holds_lease(conn, epoch, self.fence.holder):
                raise CursorFenced(target)
            await store.set_alert_cursor(conn, target, cursor)

    async def _gauges(self, t: Target, pool: asyncpg.Pool, cursor: int) -> None:
        waiting, oldest = await _db(pool, store.outbox_waiting, cursor)
        self._queued.set(waiting, target=t.name)
        self._oldest.set(round(oldest, 3), target=t.name)

    async def _one(self, t: Target, change: Change, age: float) -> None:
        """One change to one target: delivered, or given up after give_up_after."""
        if not t.wants(change.event):
            return
        attempt = 0
        started = time.monotonic()
        while True:
            if age + time.monotonic() - started > self.cfg.give_up_after:
                self._given_up.inc(target=t.name)
                log.error("alerts.given_up", target=t.name, key=change.key,
                          what=change.event, attempts=attempt)  # fmt: skip
                return
            if self._blind() or not self.may_send():
                await asyncio.sleep(POLL)
                continue
            error = await self._send_change(t, change)
            if error is None:
                self._delivered.inc(target=t.name)
                log.info("alerts.delivered", target=t.name, key=change.key, what=change.event)
                return
            self._failed.inc(target=t.name)
            self._oldest.set(round(age + time.monotonic() - started, 3), target=t.name)
            delay = backoff(attempt, self._rng)
            attempt += 1
            log.warning("alerts.failed", target=t.name, key=change.key, error=error,
                        attempt=attempt, retry_in=round(delay, 2))  # fmt: skip
            await asyncio.sleep(delay)

    async def _send_change(self, t: Target, change: Change) -> str | None:
        now = self._clock()
        topology = self._topology()
        if t.kind == "webhook":
            body = json.dumps(payload.webhook(change, topology, self.cfg, now)).encode()
            stamp = int(now)
            return await self._post(t.url, body, signing.headers(t.secret, stamp, body, change.key))
        return await self._post_alerts(t, [payload.alert(change.incident, topology, self.cfg, now)],
                                       change.key)  # fmt: skip

    async def _resend(self, t: Target, pool: asyncpg.Pool) -> bool:
        """Every open incident again, with its current annotations."""
        rows = await _db(pool, store.alert_open_incidents)
        if not rows:
            return True
        now = self._clock()
        topology = self._topology()
        alerts = [payload.alert(json.loads(r["incident"]), topology, self.cfg, now) for r in rows]
        keys = ",".join(f"{r['incident_id']}:{r['revision']}" for r in rows)
        error = await self._post_alerts(t, alerts, keys)
        if error is not None:
            self._failed.inc(target=t.name)
            log.warning("alerts.resend_failed", target=t.name, error=error)
            return False
        return True

    async def _post_alerts(self, t: Target, alerts: list[dict[str, Any]], key: str) -> str | None:
        stale = []
        for a in alerts:
            labels = a["labels"]
            before = self._sent.get((t.key, labels["incident_id"]))
            if before is not None and before != labels:
                stale.append({**a, "labels": before, "endsAt": payload.rfc3339(self._clock())})
        body = json.dumps(alerts + stale).encode()
        headers = {"Content-Type": "application/json", signing.KEY_HEADER: key}
        error = await self._post(f"{t.url}/api/v2/alerts", body, headers)
        if error is None:
            for a in alerts:
                ended = a["endsAt"] <= payload.rfc3339(self._clock())
                if ended:
                    self._sent.pop((t.key, a["labels"]["incident_id"]), None)
                else:
                    self._sent[(t.key, a["labels"]["incident_id"])] = a["labels"]
        return error

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None when the receiver took it (2xx), else why not (never the URL: it may hold
        a token)."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as r:
                if 200 <= r.status < 300:
                    return None
                text = (await r.text(errors="replace"))[:200]
                return f"answered {r.status}: {text}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _db(pool: asyncpg.Pool, query: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One query on a connection of the pool, given DB_TIMEOUT seconds in all."""
    async with asyncio.timeout(DB_TIMEOUT), pool.acquire() as conn:
        return await query(conn, *args)


def _change(row: asyncpg.Record) -> Change:
    incident = row["incident"]
    if isinstance(incident, str):
        incident = json.loads(incident)
    return Change(int(row["incident_id"]), int(row["revision"]), str(row["event"]), row["at"],
                  dict(incident))  # fmt: skip
