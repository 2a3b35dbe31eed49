"""The daemon's life: start-up order, signals, sd_notify, the main loop, shut-down.

Start: config -> logging -> database -> migrations -> HTTP bound -> background tasks ->
READY=1. Each resource is entered in one AsyncExitStack as it starts, so shut-down is the
start-up in reverse, derived rather than written twice. SIGTERM/SIGINT cancel the main
task; SIGHUP reloads the config, keeping the old one when the new one is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import asyncpg
from aiohttp import web

from outagemon import config as config_mod
from outagemon import logs, reloading
from outagemon.alerting.sender import Sender
from outagemon.cluster.lease import Leadership, StepDown
from outagemon.cluster.relay import CallRelay, RelayFenced
from outagemon.cluster.replica import Replica
from outagemon.config import Config
from outagemon.core import directory, messages
from outagemon.core.addresses import PhonePlan
from outagemon.core.calls import caller_key, subscribers_below
from outagemon.core.correlator import GONE_SLICE
from outagemon.core.messages import Texts
from outagemon.core.topology import Change, Sharded, Topology, change
from outagemon.db import durable, migrate, store
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.db.spool import Spool, SpoolError
from outagemon.db.writer import Writer
from outagemon.errors import ConfigError, OutagemonError
from outagemon.http.app import make_app
from outagemon.http.app import runner as http_runner
from outagemon.http.runtime import Runtime
from outagemon.metrics import LoopLag
from outagemon.monitor import Monitor, anchors_of
from outagemon.notify import Notifier
from outagemon.probing.icmp import IcmpSource
from outagemon.workers import Workers

log = logs.get("outagemon.daemon")

# s: the interpreter's switch interval while a reload's thread runs. Each time the loop's
# thread takes the lock back (after every call that lets go of it: a socket's read, the
# selector's wait) beside that busy thread, it waits this long before it asks for it
# (kept in whole microseconds: 0.00025 reads back as given, 0.0002 does not).
RELOAD_SWITCH_INTERVAL = 0.00025
# Seconds between the daemon's pings of a connected database.
DB_PING_EVERY = 3.0
# Seconds READY=1 waits at most for the database's first answer (taking up what it
# remembers): below the unit's TimeoutStartSec (90 s), so a database that is away never
# gets the service killed at start (it answers from memory and its journal file).
READY_WAIT = 60.0
CRITICAL = {"scheduler", "correlate", "engine", "writer", "simulate", "watchdog", "reloads",
            "lease"}  # fmt: skip
Task = Coroutine[Any, Any, None]


class ProbeSource(Protocol):
    """Where probe results come from: ICMP (`probing/icmp.py`), or in the demo a
    simulated network (`sim/demo.py`)."""

    follows_reload: bool  # whether a reload's new topology and targets reach it

    def start(self, monitor: Monitor, runtime: Runtime,
              targets: Mapping[str, str]) -> dict[str, Task]:  # fmt: skip
        """Begin with `targets` (address -> node); the background tasks it needs, by name."""
        ...

    def plan(self, targets: Mapping[str, str], probe: config_mod.ProbeConfig) -> object:
        """retarget()'s work that changes nothing yet, safe in a thread (a reload)."""
        ...

    def retarget(self, targets: Mapping[str, str], probe: config_mod.ProbeConfig,
                 plan: object = None) -> list[object]:  # fmt: skip
        """New targets; returns the replaced containers (to be freed in slices)."""
        ...

    def close(self) -> None: ...


@dataclass
class Started:
    """What a reload and the shut-down reach: there once start-up got that far."""

    monitor: Monitor
    writer: Writer


class Daemon:
    """One process's life: starts the resources in order, serves until a signal or a
    failed critical task, reloads on SIGHUP, and leaves the resources in reverse."""

    def __init__(
        self,
        config: Config,
        loaded: directory.Loaded,
        texts: Texts,
        source: ProbeSource | None = None,
        workers: Workers | None = None,
    ) -> None:
        self.runtime = Runtime(config=config, directory=loaded.directory, texts=texts)
        # What the parts read once at start were made of: a reload that changes them says
        # they wait for a restart (config.NEEDS_RESTART), the second reload too.
        self._boot_config = config
        self.restart_pending: list[str] = []  # what the last applied reload left for a restart
        self.skipped_rows: list[str] = []  # subscriber rows the last load left out
        # With HTTP workers, they listen on the port and this process on their socket.
        self.workers = workers
        if workers is not None:
            workers.collect_into(self.runtime.metrics)
        self.source: ProbeSource = source or IcmpSource(config.probe)
        self.notifier = Notifier()
        self.started: Started | None = None
        # Whether this process delivers notifications (a cluster lets only its leader).
        self.may_send: Callable[[], bool] = lambda: True
        # Two or more hosts on one database ([cluster]): this node's role, by the lease.
        self.leadership: Leadership | None = None
        self._lease: asyncio.Task[None] | None = None
        # A cluster's node: the leader's state as the database has it, which HTTP answers
        # from while this node does not serve (started once the database answers).
        self.replica: Replica | None = None
        self._replica_tasks: list[asyncio.Task[None]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stop_signal: str | None = None
        self._main: asyncio.Task[Any] | None = None
        self._born = time.time()  # this run's start, for the outage history's gaps
        self._reload_wanted = asyncio.Event()
        # Set once the database's first attempt is over: it answered and what it remembers
        # was taken up, or it did not answer (READY=1 waits for it).
        self._database_tried = asyncio.Event()
        metrics = self.runtime.metrics
        self._reloads = metrics.counter(
            "outagemon_config_reloads_total", "Config reloads by outcome (applied, refused)."
        )
        self._nodes = metrics.gauge("outagemon_topology_nodes", "Nodes in the loaded topology.")
        self._subscribers = metrics.gauge("outagemon_subscribers", "Subscribers loaded.")
        self._skipped = metrics.gauge(
            "outagemon_subscribers_skipped", "Subscriber rows left out of the last load."
        )
        self._loaded(loaded)

    def _loaded(self, loaded: directory.Loaded, collect: bool = True) -> None:
        # Millions of long-lived objects (nodes, subscribers, addresses): keep the cyclic
        # garbage collector from walking them, or every full collection stalls the event
        # loop for a fraction of a second, in the middle of answering calls. A full
        # collection is made at start only: at a reload it would hold the loop (and the
        # probe replies) for seconds with a million subscribers; the old directory is
        # freed by reference counting.
        if collect:
            gc.collect()
        gc.freeze()
        self._nodes.set(len(loaded.directory.topology))
        self._subscribers.set(len(loaded.directory.subscribers))
        self._skipped.set(len(loaded.problems))
        report_skipped(loaded.problems)
        self.skipped_rows = loaded.problems  # for `outagemon reload` to print

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Left last: tasks still running then (a reload) are cancelled.
                stack.push_async_callback(self._cancel, self.tasks)
                try:
                    await self._start(stack)
                    await self._known()
                    self.notifier.send("READY=1")
                    log.info("daemon.ready", listen=self.config.http.listen,
                             database=self.runtime.database or "up")  # fmt: skip
                    await asyncio.Event().wait()  # the background tasks do the work
                finally:
                    self.notifier.send("STOPPING=1")
        except asyncio.CancelledError:
            if self.stop_signal is None:
                raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("daemon.stopped", signal=self.stop_signal)
        return 1 if (self.stop_signal or "").startswith("failed:") else 0

    async def _known(self) -> None:
        """Until /check answers with what this daemon knows: the database (the embedded
        one started and initialised, or yours) answered and what it remembers was taken
        up, or it did not answer (the journal file's is all there is), at most READY_WAIT."""
        try:
            async with asyncio.timeout(READY_WAIT):
                await self._database_tried.wait()
        except TimeoutError:
            log.warning("daemon.ready_without_database", waited=READY_WAIT,
                        reason=self.runtime.database)  # fmt: skip

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        # A signal handler only cancels; the cleanup is the exit stack's, in run().
        if self.stop_signal is None and self._main is not None:
            self.stop_signal = sig.name
            log.info("daemon.stopping", signal=sig.name)
            self._main.cancel()

    def _spawn(self, coro: Task, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self.tasks.remove(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("daemon.task_failed", task=task.get_name(), error=repr(task.exception()))
        if task.get_name() in CRITICAL and self.stop_signal is None and self._main is not None:
            # Probing, deciding or writing has stopped: better a restart by systemd than a
            # daemon that serves stale answers as if it could see.
            self.stop_signal = f"failed:{task.get_name()}"
            self._main.cancel()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        """Each resource is pushed on the stack as soon as it exists: what is left on
        the way out is exactly what was started, in reverse.

        The database is not a start-up dependency: the journal file is read, probing
        and HTTP start, and the database is connected, migrated and restored from in
        the background (`/readyz` says why not while it is away); a power cut that took
        it down too must not stop the IVR's answers."""
        cfg = self.config
        spool = Spool(cfg.daemon.state_dir, cfg.database.queue_bytes)
        try:
            replayed = spool.open()
        except SpoolError as e:
            raise OutagemonError(str(e)) from None
        stack.callback(spool.close)
        try:
            reloading.mark(cfg.daemon.state_dir)  # `outagemon reload` signals this pid only
        except OSError as e:
            log.warning("daemon.pid_unwritten", error=str(e))
        stack.callback(reloading.unmark, cfg.daemon.state_dir)
        pending = durable.pending(replayed.records, replayed.marks)
        holder = _Database()
        stack.push_async_callback(holder.close)
        writer = Writer(None, cfg.database.write_queue, self.runtime.metrics,
                        cfg.database.queue_bytes, spool)  # fmt: skip
        stack.push_async_callback(self._cancel, [self._spawn(writer.run(), "writer")])
        monitor = Monitor(cfg, self.runtime.directory, self.runtime.metrics, writer,
                          spool=spool)  # fmt: skip
        if cfg.cluster.enabled:
            self._join_cluster(monitor, writer)
        # The inventory goes first (incidents refer to its nodes), then what the journal
        # file held from before: acknowledged writes the database may never have had.
        # A cluster's node starts as a standby: it writes its inventory when it leads,
        # writes what the file held only under the epoch it was decided under, and takes
        # incidents up from the database (the leader's), not from its file.
        monitor.journal.inventory(self.runtime.directory)
        monitor.journal.replay(replayed.records)
        continued = 0 if cfg.cluster.enabled else monitor.continue_from(pending)
        log.info("daemon.journal_read", writes=len(replayed.records), incidents=continued,
                 next_incident=monitor.correlator.next_id)  # fmt: skip
        self.runtime.monitor = monitor
        self.started = Started(monitor, writer)
        self.runtime.database = "the database is being connected"
        database = self._spawn(self._database(holder, monitor, writer, pending), "database")
        stack.push_async_callback(self._cancel, [database])
        # Notifications from the outbox, once the database answers (not a critical task: a
        # receiver's trouble never stops detection).
        sender = Sender(cfg.notify, lambda: self.runtime.pool,
                        lambda: self.runtime.directory.topology, self.runtime.metrics,
                        blind=lambda: monitor.correlator.blind,
                        may_send=lambda: self.may_send(), fence=self.leadership)  # fmt: skip
        stack.push_async_callback(self._cancel, [self._spawn(sender.run(), "alerts")])
        # A leader gives its lease up last (a standby takes over at its next try), after
        # its last writes; the pool is closed after that.
        stack.push_async_callback(self._leave_cluster, holder)
        # Each node's loss history and a moment for what is queued, if the database answers
        # (what it does not have stays in the journal file for the next start).
        stack.push_async_callback(_last_writes, monitor, writer)
        # Probing before HTTP: a source that warms up in one go (the demo's simulated
        # history) does it before anyone can wait on a request; and on the way out,
        # HTTP stops first.
        stack.callback(self.source.close)
        tasks = self.source.start(monitor, self.runtime, self._targets(monitor))
        stack.push_async_callback(
            self._cancel, [self._spawn(coro, name) for name, coro in tasks.items()]
        )
        runner = http_runner(make_app(self.runtime, behind_workers=self.workers is not None))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site: web.BaseSite = web.TCPSite(
            runner,
            cfg.http.host,
            cfg.http.port,
            reuse_address=True,
            ssl_context=tls_context(cfg.http),
        )
        if self.workers is not None:
            site = web.UnixSite(runner, str(self.workers.socket))
        try:
            await site.start()
        except OSError as e:
            raise OutagemonError(f"cannot listen on {cfg.http.listen}: {e.strerror}.") from None
        log.info("http.listening", address=[_address(a) for a in runner.addresses])
        if self.notifier.watchdog_interval:
            watchdog = self._spawn(self._watchdog(self.notifier.watchdog_interval), "watchdog")
            stack.push_async_callback(self._cancel, [watchdog])
        hold = self._spawn(self._loop_hold(), "loop_hold")
        stack.push_async_callback(self._cancel, [hold])
        reloads = self._spawn(self._reloads_loop(), "reloads")
        stack.push_async_callback(self._cancel, [reloads])

    async def _database(self, holder: _Database, monitor: Monitor, writer: Writer,
                        pending: durable.Pending) -> None:  # fmt: skip
        """Connect (starting the embedded server if there is no DSN), migrate, and take up
        what the database remembers; until it answers, say why and try again."""
        cfg = self.config
        delay = 1.0
        while True:
            try:
                dsn = cfg.database.dsn
                if not dsn:
                    if holder.embedded is None:
                        holder.embedded = EmbeddedPostgres(cfg.daemon.state_dir)
                    dsn = await holder.embedded.start()
                applied = await migrate.migrate(dsn)
                log.info("daemon.migrated", applied=applied)
                # A cluster's paused leader cannot hold the lease row in an open
                # transaction for longer than a third of the lease.
                idle = cfg.cluster.lease / 3 if cfg.cluster.enabled else None
                holder.pool = await store.connect(dsn, statement_timeout=cfg.database.timeout,
                                                  idle_in_transaction=idle)  # fmt: skip
                restored = 0
                async with asyncio.timeout(cfg.database.timeout):
                    if self.leadership is None:
                        restored = await monitor.restore(holder.pool, pending)
                        monitor.run_id = await _run_start(holder.pool, self._born)
                    else:
                        # A cluster's leader restores when it leads, and its run is its
                        # term (`_take_up`); one key for a caller, whichever node answers.
                        async with holder.pool.acquire() as conn:
                            monitor.call_salt = await store.call_salt(conn)
                # The reports' own connections: an export never waits on the writer's.
                holder.reports = await store.connect(
                    dsn, min_size=1, max_size=cfg.history.connections,
                    statement_timeout=cfg.history.timeout,
                )  # fmt: skip
                break
            except (OutagemonError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                reason = str(e) or type(e).__name__
                self.runtime.database = (
                    f"the database does not answer yet ({reason}); probing and /check work, "
                    "and what it remembers is taken up once it answers"
                )
                log.warning("daemon.database_unavailable", error=reason, retry_in=delay)
                self._database_tried.set()  # READY=1: what is known is what memory holds
                for pool in (holder.pool, holder.reports):
                    if pool is not None:
                        await _close_pool(pool)
                holder.pool = holder.reports = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.runtime.pool = holder.pool
        self.runtime.reports = holder.reports
        writer.attach(holder.pool)
        self.runtime.database = None
        log.info("daemon.restored", incidents=restored, next_incident=monitor.correlator.next_id)
        self._database_tried.set()
        if holder.embedded is not None:
            self._spawn(watch_embedded(holder.embedded), "embedded")
        self._spawn(self._ping_database(writer), "db_ping")
        if self.leadership is not None:
            pool = holder.pool
            self._follow_leader(monitor, dsn, pool)
            self._lease = self._spawn(
                self.leadership.run(pool, lambda epoch: self._take_up(pool, epoch)), "lease"
            )
            self._replica_tasks.append(self._spawn(self._term_alive(pool, monitor), "term"))

    async def _ping_database(self, writer: Writer, every: float = DB_PING_EVERY) -> None:
        """A trivial query every few seconds: `outagemon_db_up` and /readyz's body say
        whether the database answers even while nothing is written."""
        while True:
            await asyncio.sleep(every)
            if await writer.ping():
                if self.runtime.db_lost is not None:
                    logs.POOL_FLOOR.reset()  # asyncpg may say its one line again
                self.runtime.db_lost = None
            elif self.runtime.db_lost is None:
                self.runtime.db_lost = (time.time(), writer.last_error)

    # -- a cluster's node ------------------------------------------------------------------

    def _join_cluster(self, monitor: Monitor, writer: Writer) -> None:
        """Decide and write only while leading: the monitor asks the lease, the writer
        fences every write by its epoch, and stepping down drops what was queued."""
        cfg = self.config.cluster
        leadership = Leadership(cfg.node, cfg.lease, self.runtime.metrics)
        self.leadership = leadership
        self.runtime.leadership = leadership
        monitor.leadership = leadership
        monitor.journal.clustered = True
        writer.fence = leadership
        # Only the leader, once it has taken the incidents up, delivers notifications.
        self.may_send = monitor.deciding
        leadership.on_step_down(monitor.step_down)

        def drop(epoch: int, reason: StepDown) -> None:
            leadership.dropped(writer.drop_epoch(epoch))

        leadership.on_step_down(drop)
        log.info("cluster.joined", node=cfg.node, lease=cfg.lease)

    def _follow_leader(self, monitor: Monitor, dsn: str, pool: asyncpg.Pool) -> None:
        """A replica of the leader's state (cluster/replica.py), kept current on both roles
        (a step-down is answered from it at once), and the switch of what HTTP answers
        from: this node's own Monitor while it serves, else the replica once it has read
        everything (before that, the Monitor, as a standby answered before)."""
        leadership = self.leadership
        assert leadership is not None
        rt = self.runtime
        replica = Replica(rt.directory, rt.metrics, self.config.messages.restored_for)
        relay = CallRelay(leadership.holder, rt.metrics)

        def on_call(node: str, building: str, kind: str, value: str, channel: str,
                    status: str, router: str) -> None:  # fmt: skip
            # Callers' records reach the leader's detector (through the database), and this
            # node's own: warm when it takes over.
            monitor.record_call(node, building, kind, value, channel, status, router)
            if self.config.callers.enabled:
                key = caller_key(monitor.call_salt, kind, value)
                relay.record(node, building, key, channel, status, router)

        replica.on_call = on_call
        self.replica = replica

        async def follow() -> None:
            answering: Monitor | Replica = monitor
            while True:
                wanted: Monitor | Replica = monitor
                if not leadership.serving and replica.first_round_done:
                    wanted = replica
                if wanted is not answering:
                    # Versions of the two are unrelated: answers remembered from one are
                    # not answers of the other.
                    rt.answers.entries.clear()
                    rt.monitor = answering = wanted
                    log.info("cluster.answering_from",
                             source="replica" if wanted is replica else "monitor")  # fmt: skip
                leadership.changed.clear()
                with contextlib.suppress(TimeoutError):  # the replica's first read, too
                    await asyncio.wait_for(leadership.changed.wait(), ROLE_POLL)

        self._replica_tasks = [self._spawn(replica.run(dsn), "replica"),
                               self._spawn(follow(), "answering"),
                               self._spawn(self._relay_calls(pool, monitor, replica, relay),
                                           "relay")]  # fmt: skip

    async def _relay_calls(self, pool: asyncpg.Pool, monitor: Monitor, replica: Replica,
                           relay: CallRelay) -> None:  # fmt: skip
        """Every second: what this node's replica answered (counts, callers' records) is
        written for the leader; while this node decides, what was written is taken
        (`cluster/relay.py`)."""
        leadership = self.leadership
        assert leadership is not None
        while True:
            await asyncio.sleep(RELAY_EVERY)
            relay.count(replica.take_calls())
            epoch = monitor.taken_up if monitor.deciding() else None
            try:
                async with asyncio.timeout(self.config.database.timeout):
                    await relay.send(pool)
                    if epoch is None:
                        continue
                    taken = await relay.take(pool, epoch, leadership.holder)
            except RelayFenced:
                assert epoch is not None
                leadership.refused(epoch, "relayed calls")
                continue
            except Exception as e:  # the database is away, or one odd row: try again
                log.warning("cluster.relay_failed", error=str(e) or type(e).__name__)
                continue
            now = monitor.clock()
            for iid, n in taken.counts.items():
                monitor.counted_elsewhere(iid, n)
            window = self.config.callers.window
            for age, (place, building, caller, channel, status, router) in taken.records:
                if age <= window:  # older ones could not count any more
                    monitor.take_call(now - age, place, building, caller, channel, status,
                                      router)  # fmt: skip

    async def _term_alive(self, pool: asyncpg.Pool, monitor: Monitor) -> None:
        """While this node leads, its term's row in monitor_run says it is alive every
        lease, fenced by its epoch: its successor counts only the time since as unverified.
        Straight to the database, not through the writer's queue (which a long write may
        hold), and not counted with the writes."""
        assert self.leadership is not None
        holder, every = self.leadership.holder, self.config.cluster.lease
        while True:
            await asyncio.sleep(every)
            run_id, epoch = monitor.run_id, monitor.taken_up
            if run_id is None or epoch is None or not monitor.deciding():
                continue
            try:
                async with asyncio.timeout(every), pool.acquire() as conn, conn.transaction():
                    if await store.holds_lease(conn, epoch, holder):
                        await store.run_seen(conn, run_id, datetime.now(UTC))
            except Exception as e:  # the database is away: the next one, then
                log.warning("cluster.term_alive_failed", error=str(e) or type(e).__name__)

    async def _take_up(self, pool: asyncpg.Pool, epoch: int) -> None:
        """Begin to lead: what this node's file still held is written (or fenced off)
        first, then the open incidents are read from the database and continued."""
        started = self.started
        assert started is not None
        await started.writer.drain(self.config.cluster.lease / 3)
        async with asyncio.timeout(self.config.database.timeout):
            await started.monitor.take_up(pool, epoch)
            # This term's row in monitor_run: the time since the previous leader was last
            # seen alive is unverified (nobody decided), and fenced like any write of ours.
            run_id = await _run_start(pool, time.time(), self.config.cluster.node, epoch)
        if started.monitor.taken_up == epoch:
            started.monitor.run_id = run_id
            started.monitor.save_seen(started.monitor.clock())

    async def _leave_cluster(self, holder: _Database) -> None:
        if self._replica_tasks:
            await self._cancel(self._replica_tasks)
        if self._lease is not None:
            await self._cancel([self._lease])
        if self.leadership is not None and holder.pool is not None:
            await self.leadership.release(holder.pool)

    def _targets(self, monitor: Monitor) -> Mapping[str, str]:
        """address -> node id of everything to probe: probed nodes and the anchors."""
        return targets_of(monitor.anchors, self.runtime.directory)

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel background tasks and wait for them (two seconds at most)."""
        tasks = [t for t in tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _loop_hold(self) -> None:
        """The event loop's lag for /metrics (a histogram, and the longest hold since
        start): what a caller's /check may have waited on top of its own work."""
        await LoopLag(self.runtime.metrics).run()

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, the pings stop and
        # systemd restarts the service.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _on_reload_signal(self) -> None:
        # Reloads run one at a time; SIGHUPs during one ask for one more after it.
        self._reload_wanted.set()

    async def _reloads_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self.reload()

    async def reload(self) -> None:
        """SIGHUP: read config and topology again; keep the running ones if either is broken.

        systemd hears RELOADING=1 and then READY=1, and `outagemon reload` (the unit's
        ExecReload=) the outcome, from a file in state_dir."""
        started = time.monotonic()
        self.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={int(started * 1_000_000)}")
        log.info("config.reload_started")
        try:
            outcome, problems = await self._reload()
        finally:
            self.notifier.send("READY=1")
        log.info("config.reload_done", outcome=outcome)
        if self.workers is not None and outcome != "refused":
            self.workers.reload()  # they load it too, and are replaced one by one
        try:
            applied = outcome == "applied"
            reloading.write(self.config.daemon.state_dir, started, outcome, problems,
                            self.restart_pending if applied else [],
                            self.skipped_rows if applied else [])  # fmt: skip
        except OSError as e:
            log.warning("config.reload_outcome_unwritten", error=str(e))

    async def _reload(self) -> tuple[str, list[str]]:
        path = self.config.path
        try:
            new = config_mod.load(path)
            texts = messages.load(new.messages.language, new.messages.file,
                                  new.messages.timezone)  # fmt: skip
            texts = dataclasses.replace(texts, suspected=new.callers.sentence)
            # Everything made of the new files is made off the event loop (a million
            # subscribers take seconds): the directory, the targets, the probing plan (the
            # inventory's rows are made as they are written, a slice a step).
            planning = self.started is not None and self.source.follows_reload
            # The running topology, for what the new one changes (the correlator then
            # touches only that on the loop).
            started = self.started
            running = started.monitor.correlator.topology if started and planning else None
            # At this thread's priority, not lowered (as the workers' supervisor's is): a
            # lowered thread holding the interpreter's lock while it waits for a core would
            # hold this loop too (the prober's, the writer's, the watchdog's).
            loaded, targets, plan, derived = await asyncio.to_thread(
                _prepare, new, self.source.plan if planning else None, running
            )
            had = len(self.runtime.directory.subscribers)
            if (
                had
                and new.topology.subscribers is not None
                and not len(loaded.directory.subscribers)
            ):
                # A header and no row, every running subscriber gone: an export cut off
                # after its header far more often than a provider without subscribers
                # (who leaves the key out). Applied, every caller heard "not_found".
                raise ConfigError([f"{new.topology.subscribers}: no subscriber could be "
                                   f"loaded from it: it holds its header and no row, where {had} "
                                   "are loaded now (an export cut off after its header?); the "
                                   "running subscribers are kept. To run without subscribers, "
                                   "leave [topology] subscribers out."])  # fmt: skip
        except ConfigError as e:
            self._reloads.inc(outcome="refused")
            log.error("config.reload_refused", path=str(path), problems=e.problems)
            return "refused", e.problems
        for warning in new.warnings:
            log.warning("config.warning", problem=warning)
        self.restart_pending = pending = config_mod.restart_needed(self._boot_config, new)
        if pending:
            log.warning("config.restart_needed", sections=pending)
        old: list[object] = [self.runtime.directory]
        self.runtime.config = new
        self.runtime.texts = texts
        self.runtime.directory = loaded.directory
        self._loaded(loaded, collect=False)
        started = self.started
        if started is not None:
            started.monitor.journal.inventory(loaded.directory)
            if self.source.follows_reload:
                started.monitor.config = new
                old += started.monitor.set_directory(loaded.directory, *derived)
                old += self.source.retarget(targets, new.probe, plan)
                # The gone nodes' states the swap left, taken out a slice a step now.
                self._spawn(_taking_out(started.monitor.correlator.take_out), "take-out")
        if self.replica is not None:
            self.replica.set_directory(loaded.directory)
        self._reloads.inc(outcome="applied")
        log.info("config.reloaded", path=str(path))
        read = started.monitor.journal.read if started is not None else None
        self._spawn(_release(old, read, lambda: self.runtime.directory), "release")
        return "applied", []


ROLE_POLL = 0.2  # s: how often a cluster's node looks whether to answer from its replica
RELAY_EVERY = 1.0  # s: how often callers answered by a standby are relayed to the leader
RELEASE_GRACE = 5.0  # seconds a replaced directory stays whole for requests still reading it
RELEASE_SLICE = 2_000  # entries freed at a time (5,000 took 12-19 ms on a loaded machine)


@runtime_checkable
class Releasable(Protocol):
    """Entries a reload retired from a container still in use (the scheduler's histories
    of gone targets): `release` frees up to `count` more; `len` what is left."""

    def __len__(self) -> int: ...

    def release(self, count: int) -> None: ...


def _address(where: object) -> str:
    """A listening socket's address for people: host:port ([host]:port for IPv6), or the
    Unix socket's path (aiohttp gives a socket address tuple or a path)."""
    if isinstance(where, tuple) and len(where) >= 2:
        host, port = where[0], where[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(where)


async def _release(
    old: list[object],
    read: Callable[[directory.Directory], Awaitable[None]] | None = None,
    current: Callable[[], object] | None = None,
) -> None:
    """Free what a reload replaced a slice at a time, each its own step of the event loop:
    dropped at once, a million nodes (or targets) are freed in one go that holds the loop
    for a second. After a grace, since a request may still be reading the old directory,
    and once its inventory's writes are `read` (queued while the database is away, or
    slow, they make their rows from it as they write them, and again at a retry). Nothing
    the `current` directory holds is emptied, should a load ever share a piece."""
    await asyncio.sleep(RELEASE_GRACE)
    for item in old:
        if read is not None and isinstance(item, directory.Directory):
            await read(item)
    containers = _gathered(old, current() if current is not None else None)
    old.clear()
    containers.reverse()
    while containers:
        c = containers.pop()
        while c:
            if isinstance(c, dict):
                for _ in range(min(RELEASE_SLICE, len(c))):
                    c.popitem()
            elif isinstance(c, set):
                for _ in range(min(RELEASE_SLICE, len(c))):
                    c.pop()
            elif isinstance(c, list):
                del c[-RELEASE_SLICE:]
            elif isinstance(c, Releasable):  # entries of a running container (Retired)
                c.release(RELEASE_SLICE)
            else:
                break
            await asyncio.sleep(0)
        del c  # freed now, in this step: a column or an index of a million is one free
        await asyncio.sleep(0)


async def _taking_out(take_out: Callable[[int], bool]) -> None:
    """The states of the nodes a reload removed that its swap left in place (past its
    first GONE_SLICE), taken out GONE_SLICE a step (`Health.take_out`); a tick (or what
    else reads every state) takes out any left when it comes."""
    more = take_out(GONE_SLICE)
    while more:
        await asyncio.sleep(0)  # the rest at the next step
        more = take_out(GONE_SLICE)


def _gathered(old: list[object], current: object = None) -> list[object]:
    """What _release frees, in order: the replaced containers, their shards, and each
    piece of a replaced directory but what the `current` one holds too."""
    kept: list[object] = []
    if isinstance(current, directory.Directory):
        kept = _held(current.topology, current, current.subscribers)
    containers: list[object] = []
    for item in old:
        if isinstance(item, directory.Directory):
            topo = item.topology
            # The streets too, a slice at a time (cleared at once, they held the loop).
            containers += [*topo.nodes.parts(), *topo.by_ip.parts(), topo.inner,
                           topo.served, topo.by_house, item.streets]  # fmt: skip
            # And the rest of what it holds, one piece a step: dropped with the directory,
            # its subscriber counts (a dict of a million) and the roster's columns and
            # indexes were freed in one step of 7-11 ms CPU at a million.
            containers += _pieces(topo, item, item.subscribers, skip=containers + kept)
        elif isinstance(item, Sharded):  # the targets, sharded as the topology's
            containers += item.parts()
        else:
            containers.append(item)
    return containers


def _pieces(*owners: object, skip: list[object]) -> list[object]:
    """What the owners (a replaced directory and its parts) hold, but what `skip` has: each
    freed on its own, its entries a slice at a time (see _release)."""
    seen = {id(c) for c in skip}
    found: list[object] = []
    for value in _held(*owners):
        if id(value) in seen or value is None or isinstance(value, (str, int)):
            continue
        seen.add(id(value))
        # Emptied a slice at a time only when large (a small one might be shared: a
        # module's constant); else only let go of (in a tuple), in a step of its own.
        big = isinstance(value, (dict, set, list)) and len(value) > RELEASE_SLICE
        found.append(value if big or not isinstance(value, (dict, set, list)) else (value,))
    return found


def _held(*owners: object) -> list[object]:
    """What the owners' attributes hold (their __dict__'s and __slots__' values)."""
    values: list[object] = []
    for owner in owners:
        values += getattr(owner, "__dict__", {}).values()
        values += [getattr(owner, name) for cls in type(owner).__mro__
                   for name in getattr(cls, "__slots__", ()) if hasattr(owner, name)]  # fmt: skip
    return values


def targets_of(anchors: dict[str, str], current: directory.Directory) -> Mapping[str, str]:
    """address -> node id of everything to probe: probed nodes and the anchors."""
    # The topology's own mapping when the anchors are in it (nothing changes either),
    # else a copy of it shard by shard: a reload makes this in a thread beside the event
    # loop, and one dict of a million (a copy, or grown entry by entry) is written in
    # one call into C that holds the interpreter's lock, and the loop, for 20-50 ms.
    # The topology's entry wins where an anchor has its address.
    by_ip = current.topology.by_ip
    extra = {ip: node for node, ip in anchors.items() if ip not in by_ip}
    if not extra:
        return by_ip
    return by_ip.with_entries(extra)


def _prepare(
    new: Config,
    plan: Callable[[Mapping[str, str], config_mod.ProbeConfig], object] | None,
    running: Topology | None = None,
) -> tuple[
    directory.Loaded,
    Mapping[str, str],
    object,
    tuple[Change | None, dict[str, int] | None],
]:
    """A reload's work that changes no running state: in a thread. With the `running`
    topology, also what the new one changes in it and the subscribers below each node
    (the monitor's correlator and callers' detector take them ready-made)."""
    # The cyclic collector is kept off throughout, and what was made is frozen before it
    # is back on (as the loop does after every load): else the millions of objects just
    # made are walked by a full collection that some allocation here (or on the loop)
    # triggers, which holds the interpreter's lock, and the event loop, for over a second.
    enabled = gc.isenabled()
    gc.disable()
    # The loop's thread waits for the interpreter's lock a switch interval (5 ms) before it
    # asks for it, and needs it twice a timer: beside this thread's pure Python its steps
    # came late by 10-25 ms. A shorter interval while the reload runs lets it in sooner.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, RELOAD_SWITCH_INTERVAL))
    try:
        loaded = directory.load(new.topology.file, new.topology.subscribers,
                                PhonePlan.of(new.topology.phones))  # fmt: skip
        if loaded.problems and not len(loaded.directory.subscribers):
            # A bad header, an export cut off or every row broken: applied, every caller
            # would hear "not_found" until the next reload. Refused, as a broken topology.
            shown = loaded.problems[: reloading.SKIPPED_SHOWN]
            raise ConfigError([*shown, f"{new.topology.subscribers}: no subscriber could be "
                               "loaded from it; the running subscribers are kept."])  # fmt: skip
        loaded.directory.named_flats()  # made here, not at a caller's question on the loop
        targets = targets_of(anchors_of(new, loaded.directory), loaded.directory)
        derived: tuple[Change | None, dict[str, int] | None] = (None, None)
        if running is not None:
            topo = loaded.directory.topology
            derived = (change(running, topo), subscribers_below(topo, loaded.directory.counts))
        made = plan(targets, new.probe) if plan is not None else None
        gc.freeze()
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()
    return loaded, targets, made, derived


class _Database:
    """The database's resources, made in the background: closed with the daemon."""

    def __init__(self) -> None:
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.reports: asyncpg.Pool | None = None  # the outage history's reports'

    async def close(self) -> None:
        if self.reports is not None:
            await _close_pool(self.reports)
        if self.pool is not None:
            await _close_pool(self.pool)
        if self.embedded is not None:
            await self.embedded.stop()


async def _last_writes(monitor: Monitor, writer: Writer) -> None:
    """Each node's loss history, and a moment for what is queued, if the database answers."""
    if writer.available and writer.pool is not None:
        monitor.save_history()
        monitor.save_seen(monitor.clock(), stopped=True)
        await writer.drain(1.5)


async def watch_embedded(embedded: EmbeddedPostgres, every: float = 1.0) -> None:
    """Start the embedded server again when it dies (killed, out of memory, its
    owner gone): the pools reconnect to the same socket once it answers."""
    delay = every
    while True:
        await asyncio.sleep(delay)
        if not embedded.died():
            delay = every
            continue
        log.warning("embedded.server_died", state_dir=str(embedded.state_dir))
        try:
            await embedded.start()
        except (OutagemonError, OSError, asyncpg.PostgresError) as e:
            log.warning("embedded.restart_failed", error=str(e) or type(e).__name__)
            delay = min(delay * 2, 30.0)
            continue
        log.info("embedded.restarted", owner=embedded.owner)
        delay = every


# A gap between runs shorter than this is not marked as unverified time.
RUN_GAP = 1.0


async def _run_start(pool: asyncpg.Pool, born: float, node: str | None = None,
                     epoch: int | None = None) -> int:  # fmt: skip
    """This run's row in monitor_run; the gap since the last run, unverified time. A
    cluster's (`node`, `epoch`): a leader's term, written only while the epoch holds."""
    async with pool.acquire() as conn, conn.transaction():
        if (
            epoch is not None
            and node is not None
            and not await store.holds_lease(conn, epoch, node)
        ):
            raise OutagemonError(f"the lease moved on from epoch {epoch}")
        at = store.ts(born) or datetime.now(UTC)
        return await store.run_start(conn, at, RUN_GAP, node, epoch)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 2)
    except TimeoutError:
        pool.terminate()


def tls_context(http: config_mod.HttpConfig) -> ssl.SSLContext | None:
    """HTTPS with the operator's certificate, or None for plain HTTP; a sentence if unusable."""
    if http.tls_cert is None or http.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key)
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OutagemonError(
            f"cannot use [http] tls_cert {http.tls_cert} with tls_key {http.tls_key}: {reason}."
        ) from None
    return context


def report_skipped(problems: list[str], limit: int = 100) -> None:
    """Log subscriber rows left out of a load; a CRM export with a few bad rows must not
    stop the monitor, and one with a million must not flood the journal."""
    for problem in problems[:limit]:
        log.warning("subscribers.row_skipped", problem=problem)
    if len(problems) > limit:
        log.warning("subscribers.rows_skipped", shown=limit, total=len(problems))


def run(config_path: Path, source: ProbeSource | None = None) -> int:
    """`outagemon run`: 0 after a clean stop, 2 for a bad config, 1 when start-up failed.
    (`source`: where probe results come from, ICMP unless given: a benchmark simulates.)"""
    cfg: Config | None = None
    try:
        cfg = config_mod.load(config_path)
        logs.setup()
        texts = messages.load(cfg.messages.language, cfg.messages.file, cfg.messages.timezone)
        texts = dataclasses.replace(texts, suspected=cfg.callers.sentence)
        loaded = directory.load(cfg.topology.file, cfg.topology.subscribers,
                                PhonePlan.of(cfg.topology.phones))  # fmt: skip
        loaded.directory.named_flats()  # before serving (and before the workers' fork)
    except ConfigError as e:
        for problem in config_mod.keyed(e.problems, cfg) if cfg is not None else e.problems:
            print(problem, file=sys.stderr)
        return 2
    for warning in cfg.warnings:
        log.warning("config.warning", problem=warning)
    try:
        workers = None
        if cfg.http.workers > 1:
            workers = Workers(cfg, loaded.directory, texts, tls_context(cfg.http))
            workers.start()
        try:
            return asyncio.run(Daemon(cfg, loaded, texts, source, workers=workers).run())
        finally:
            if workers is not None:
                workers.stop()
    except OutagemonError as e:
        log.error("daemon.start_failed", error=str(e))
        print(f"outagemon: {e}", file=sys.stderr)
        return 1
