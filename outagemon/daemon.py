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
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from aiohttp import web

from outagemon import config as config_mod
from outagemon import logs
from outagemon.config import Config
from outagemon.core import directory, messages
from outagemon.core.messages import Texts
from outagemon.db import migrate, store
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.db.journal import Journal
from outagemon.db.writer import Writer
from outagemon.errors import ConfigError, OutagemonError
from outagemon.http.app import make_app
from outagemon.http.app import runner as http_runner
from outagemon.http.runtime import Runtime
from outagemon.monitor import Monitor
from outagemon.notify import Notifier
from outagemon.probing.icmp import IcmpSource

log = logs.get("outagemon.daemon")

# Keys read once at start; a reload that changes them says they wait for a restart.
RESTART_KEYS = ("daemon", "database", "http")
CRITICAL = {"scheduler", "correlate", "writer", "simulate", "watchdog"}
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
    ) -> None:
        self.runtime = Runtime(config=config, directory=loaded.directory, texts=texts)
        self.source: ProbeSource = source or IcmpSource(config.probe)
        self.notifier = Notifier()
        self.started: Started | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.stop_signal: str | None = None
        self._main: asyncio.Task[Any] | None = None
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

    def _loaded(self, loaded: directory.Loaded) -> None:
        # Millions of long-lived objects (nodes, subscribers, addresses): keep the cyclic
        # garbage collector from walking them, or every full collection stalls the event
        # loop for a fraction of a second, in the middle of answering calls.
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

    def _on_reload_signal(self) -> None:
        self._spawn(self.reload(), "reload")

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
        the way out is exactly what was started, in reverse."""
        cfg = self.config
        dsn = cfg.database.dsn
        if not dsn:
            embedded = EmbeddedPostgres(cfg.daemon.state_dir)
            dsn = await embedded.start()
            stack.push_async_callback(embedded.stop)
        applied = await migrate.migrate(dsn)
        log.info("daemon.migrated", applied=applied)
        pool = await store.connect(dsn)
        stack.push_async_callback(_close_pool, pool)
        self.runtime.pool = pool
        writer = Writer(pool, cfg.database.write_queue, self.runtime.metrics)
        stack.push_async_callback(self._cancel, [self._spawn(writer.run(), "writer")])
        # The inventory goes first: incidents refer to its nodes.
        Journal(writer).inventory(self.runtime.directory)
        monitor = Monitor(cfg, self.runtime.directory, self.runtime.metrics, writer)
        # Give queued writes a moment (the database may be away: then they are lost, and
        # the restart's recovery re-derives what it can from the network).
        stack.push_async_callback(_last_writes, monitor, writer)
        restored = await monitor.restore(pool)
        log.info("daemon.restored", incidents=restored)
        self.runtime.monitor = monitor
        self.started = Started(monitor, writer)
        runner = http_runner(make_app(self.runtime))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, cfg.http.host, cfg.http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise OutagemonError(f"cannot listen on {cfg.http.listen}: {e.strerror}.") from None
        log.info("http.listening", address=[str(a) for a in runner.addresses])
        if self.notifier.watchdog_interval:
            watchdog = self._spawn(self._watchdog(self.notifier.watchdog_interval), "watchdog")
            stack.push_async_callback(self._cancel, [watchdog])
        stack.callback(self.source.close)
        tasks = self.source.start(monitor, self.runtime, self._targets(monitor))
        stack.push_async_callback(
            self._cancel, [self._spawn(coro, name) for name, coro in tasks.items()]
        )

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

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, the pings stop and
        # systemd restarts the service.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def reload(self) -> None:
        """SIGHUP: read config and topology again; keep the running ones if either is broken."""
        path = self.config.path
        try:
            new = config_mod.load(path)
            texts = messages.load(new.messages.language, new.messages.file)
            loaded = await asyncio.to_thread(
                directory.load, new.topology.file, new.topology.subscribers
            )
        except ConfigError as e:
            self._reloads.inc(outcome="refused")
            log.error("config.reload_refused", path=str(path), problems=e.problems)
            return
        pending = [k for k in RESTART_KEYS if getattr(new, k) != getattr(self.config, k)]
        if pending:
            log.warning("config.restart_needed", sections=pending)
        self.runtime.config = new
        self.runtime.texts = texts
        self.runtime.directory = loaded.directory
        self._loaded(loaded)
        started = self.started
        if started is not None:
            Journal(started.writer).inventory(loaded.directory)
            if self.source.follows_reload:
                started.monitor.config = new
                started.monitor.set_directory(loaded.directory)
                self.source.retarget(self._targets(started.monitor), new.probe)
        self._reloads.inc(outcome="applied")
        log.info("config.reloaded", path=str(path))


async def _last_writes(monitor: Monitor, writer: Writer) -> None:
    """Each node's loss history, and a moment for what is queued, if the database answers."""
    if writer.available:
        monitor.save_history()
        await writer.drain(1.5)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 2)
    except TimeoutError:
        pool.terminate()


def report_skipped(problems: list[str], limit: int = 100) -> None:
    """Log subscriber rows left out of a load; a CRM export with a few bad rows must not
    stop the monitor, and one with a million must not flood the journal."""
    for problem in problems[:limit]:
        log.warning("subscribers.row_skipped", problem=problem)
    if len(problems) > limit:
        log.warning("subscribers.rows_skipped", shown=limit, total=len(problems))


def run(config_path: Path) -> int:
    """`outagemon run`: 0 after a clean stop, 2 for a bad config, 1 when start-up failed."""
    try:
        cfg = config_mod.load(config_path)
        logs.setup()
        texts = messages.load(cfg.messages.language, cfg.messages.file)
        loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(Daemon(cfg, loaded, texts).run())
    except OutagemonError as e:
        log.error("daemon.start_failed", error=str(e))
        print(f"outagemon: {e}", file=sys.stderr)
        return 1
