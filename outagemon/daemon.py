"""The daemon's life: start-up order, signals, sd_notify, the main loop, shut-down.

Start: config -> logging -> database -> migrations -> HTTP bound -> background tasks ->
READY=1. Each resource is entered in one AsyncExitStack as it starts, so shut-down is the
start-up in reverse, derived rather than written twice. SIGTERM/SIGINT cancel the main
task; SIGHUP reloads the config, keeping the old one when the new one is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from aiohttp import web

from outagemon import config as config_mod
from outagemon import logs, reloading
from outagemon.config import Config
from outagemon.core import directory, messages
from outagemon.core.messages import Texts
from outagemon.db import durable, migrate, store
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.db.spool import Spool, SpoolError
from outagemon.db.writer import Writer
from outagemon.errors import ConfigError, OutagemonError
from outagemon.http.app import make_app
from outagemon.http.app import runner as http_runner
from outagemon.http.runtime import Runtime
from outagemon.monitor import Monitor
from outagemon.notify import Notifier
from outagemon.probing.icmp import IcmpSource
from outagemon.workers import Workers

log = logs.get("outagemon.daemon")

# Keys read once at start; a reload that changes them says they wait for a restart.
RESTART_KEYS = ("daemon", "database", "http")
CRITICAL = {"scheduler", "correlate", "engine", "writer", "simulate", "watchdog", "reloads"}
Task = Coroutine[Any, Any, None]


class ProbeSource(Protocol):
    """Where probe results come from: ICMP (`probing/icmp.py`), or in the demo a
    simulated network (`sim/demo.py`)."""

    follows_reload: bool  # whether a reload's new topology and targets reach it

    def start(self, monitor: Monitor, runtime: Runtime,
              targets: dict[str, str]) -> dict[str, Task]:  # fmt: skip
        """Begin with `targets` (address -> node); the background tasks it needs, by name."""
        ...

    def retarget(self, targets: dict[str, str], probe: config_mod.ProbeConfig) -> None: ...
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
        # With HTTP workers, they listen on the port and this process on their socket.
        self.workers = workers
        if workers is not None:
            workers.collect_into(self.runtime.metrics)
        self.source: ProbeSource = source or IcmpSource(config.probe)
        self.notifier = Notifier()
        self.started: Started | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.stop_signal: str | None = None
        self._main: asyncio.Task[Any] | None = None
        self._reload_wanted = asyncio.Event()
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
                    self.notifier.send("READY=1")
                    log.info("daemon.ready", listen=self.config.http.listen)
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
        pending = durable.pending(replayed.records, replayed.marks)
        holder = _Database()
        stack.push_async_callback(holder.close)
        writer = Writer(None, cfg.database.write_queue, self.runtime.metrics,
                        cfg.database.queue_bytes, spool)  # fmt: skip
        stack.push_async_callback(self._cancel, [self._spawn(writer.run(), "writer")])
        monitor = Monitor(cfg, self.runtime.directory, self.runtime.metrics, writer,
                          spool=spool)  # fmt: skip
        # The inventory goes first (incidents refer to its nodes), then what the journal
        # file held from before: acknowledged writes the database may never have had.
        monitor.journal.inventory(self.runtime.directory)
        monitor.journal.replay(replayed.records)
        continued = monitor.continue_from(pending)
        log.info("daemon.journal_read", writes=len(replayed.records), incidents=continued,
                 next_incident=monitor.correlator.next_id)  # fmt: skip
        self.runtime.monitor = monitor
        self.started = Started(monitor, writer)
        self.runtime.database = "the database is being connected"
        database = self._spawn(self._database(holder, monitor, writer, pending), "database")
        stack.push_async_callback(self._cancel, [database])
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
        log.info("http.listening", address=[str(a) for a in runner.addresses])
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
                holder.pool = await store.connect(dsn, statement_timeout=cfg.database.timeout)
                async with asyncio.timeout(cfg.database.timeout):
                    restored = await monitor.restore(holder.pool, pending)
                break
            except (OutagemonError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                reason = str(e) or type(e).__name__
                self.runtime.database = (
                    f"the database does not answer yet ({reason}); probing and /check work, "
                    "and what it remembers is taken up once it answers"
                )
                log.warning("daemon.database_unavailable", error=reason, retry_in=delay)
                if holder.pool is not None:
                    await _close_pool(holder.pool)
                    holder.pool = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.runtime.pool = holder.pool
        writer.attach(holder.pool)
        self.runtime.database = None
        log.info("daemon.restored", incidents=restored, next_incident=monitor.correlator.next_id)

    def _targets(self, monitor: Monitor) -> dict[str, str]:
        """address -> node id of everything to probe: probed nodes and the anchors."""
        targets = dict((ip, node) for node, ip in monitor.anchors.items())
        targets.update(self.runtime.directory.topology.by_ip)
        return targets

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel background tasks and wait for them (two seconds at most)."""
        tasks = [t for t in tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _loop_hold(self) -> None:
        """The longest the event loop was held (a 0.1 s timer's lateness), for /metrics:
        what a caller's /check may have waited on top of its own work."""
        gauge = self.runtime.metrics.gauge(
            "outagemon_loop_hold_max_seconds",
            "Longest the event loop was held since start (a 0.1 s timer's lateness).",
        )
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            asked = loop.time()
            await asyncio.sleep(0.1)
            late = loop.time() - asked - 0.1
            if late > worst:
                worst = late
                gauge.set(round(worst, 4))

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
            reloading.write(self.config.daemon.state_dir, started, outcome, problems)
        except OSError as e:
            log.warning("config.reload_outcome_unwritten", error=str(e))

    async def _reload(self) -> tuple[str, list[str]]:
        path = self.config.path
        try:
            new = config_mod.load(path)
            texts = messages.load(new.messages.language, new.messages.file,
                                  new.messages.timezone)  # fmt: skip
            loaded = await asyncio.to_thread(
                directory.load, new.topology.file, new.topology.subscribers
            )
        except ConfigError as e:
            self._reloads.inc(outcome="refused")
            log.error("config.reload_refused", path=str(path), problems=e.problems)
            return "refused", e.problems
        for warning in new.warnings:
            log.warning("config.warning", problem=warning)
        pending = [k for k in RESTART_KEYS if getattr(new, k) != getattr(self.config, k)]
        if pending:
            log.warning("config.restart_needed", sections=pending)
        self.runtime.config = new
        self.runtime.texts = texts
        self.runtime.directory = loaded.directory
        self._loaded(loaded, collect=False)
        started = self.started
        if started is not None:
            started.monitor.journal.inventory(loaded.directory)
            if self.source.follows_reload:
                started.monitor.config = new
                started.monitor.set_directory(loaded.directory)
                self.source.retarget(self._targets(started.monitor), new.probe)
        self._reloads.inc(outcome="applied")
        log.info("config.reloaded", path=str(path))
        return "applied", []


class _Database:
    """The database's resources, made in the background: closed with the daemon."""

    def __init__(self) -> None:
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None

    async def close(self) -> None:
        if self.pool is not None:
            await _close_pool(self.pool)
        if self.embedded is not None:
            await self.embedded.stop()


async def _last_writes(monitor: Monitor, writer: Writer) -> None:
    """Each node's loss history, and a moment for what is queued, if the database answers."""
    if writer.available and writer.pool is not None:
        monitor.save_history()
        await writer.drain(1.5)


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
    try:
        cfg = config_mod.load(config_path)
        logs.setup()
        texts = messages.load(cfg.messages.language, cfg.messages.file, cfg.messages.timezone)
        loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    except ConfigError as e:
        for problem in e.problems:
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
