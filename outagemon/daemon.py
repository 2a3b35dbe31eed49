"""The daemon's life: start-up order, signals, sd_notify, the main loop, shut-down.

Start: config -> logging -> database -> migrations -> HTTP bound -> background tasks ->
READY=1. SIGTERM/SIGINT cancel the main task; everything is closed in `finally`, in the
reverse order. SIGHUP reloads the config, keeping the old one when the new one is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from outagemon import config as config_mod
from outagemon import directory, logs, migrate, store
from outagemon.app import Runtime, make_app
from outagemon.config import Config
from outagemon.directory import Directory
from outagemon.embedded import EmbeddedPostgres
from outagemon.errors import ConfigError, OutagemonError
from outagemon.notify import Notifier

log = logs.get("outagemon.daemon")

# Keys read once at start; a reload that changes them says they wait for a restart.
RESTART_KEYS = ("daemon", "database", "http")


class Daemon:
    def __init__(self, config: Config, loaded: directory.Loaded) -> None:
        self.runtime = Runtime(config=config, directory=loaded.directory)
        self.notifier = Notifier()
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.runner: web.AppRunner | None = None
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
            await self._start()
            self.notifier.send("READY=1")
            log.info("daemon.ready", listen=self.config.http.listen)
            await asyncio.Event().wait()  # the background tasks do the work
        except asyncio.CancelledError:
            if self.stop_signal is None:
                raise
        finally:
            self.notifier.send("STOPPING=1")
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("daemon.stopped", signal=self.stop_signal)
        return 0

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        # A signal handler only cancels; the cleanup lives in run()'s finally.
        if self.stop_signal is None and self._main is not None:
            self.stop_signal = sig.name
            log.info("daemon.stopping", signal=sig.name)
            self._main.cancel()

    def _on_reload_signal(self) -> None:
        self._spawn(self.reload(), "reload")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self.tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon.task_failed", task=task.get_name(), error=repr(task.exception()))

    async def _start(self) -> None:
        cfg = self.config
        dsn = cfg.database.dsn
        if not dsn:
            self.embedded = EmbeddedPostgres(cfg.daemon.state_dir)
            dsn = await self.embedded.start()
        applied = await migrate.migrate(dsn)
        log.info("daemon.migrated", applied=applied)
        self.pool = await store.connect(dsn)
        self._spawn(self._save_inventory(self.runtime.directory), "save-inventory")
        self.runner = web.AppRunner(make_app(self.runtime), handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.http.host, cfg.http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise OutagemonError(f"cannot listen on {cfg.http.listen}: {e.strerror}.") from None
        log.info("http.listening", address=[str(a) for a in self.runner.addresses])
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(self.notifier.watchdog_interval), "watchdog")
        # Probing arrives with its issue; until then the daemon is not ready.
        self.runtime.not_ready = "no probe round has run yet"

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, the pings stop and
        # systemd restarts the service.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _save_inventory(self, current: Directory) -> None:
        assert self.pool is not None
        started = time.monotonic()
        nodes = [
            (n.id, n.kind, n.ip, n.name, list(n.parents)) for n in current.topology.nodes.values()
        ]
        subs = [
            (s.account, list(s.phones), s.address.text(with_flat=False), s.flat, s.ip, s.node)
            for s in current.subscribers
        ]
        await store.save_inventory(self.pool, nodes, subs)
        log.info("inventory.saved", nodes=len(nodes), subscribers=len(subs),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    async def reload(self) -> None:
        """SIGHUP: read config and topology again; keep the running ones if either is broken."""
        path = self.config.path
        try:
            new = config_mod.load(path)
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
        self.runtime.directory = loaded.directory
        self._loaded(loaded)
        if self.pool is not None:
            self._spawn(self._save_inventory(loaded.directory), "save-inventory")
        self._reloads.inc(outcome="applied")
        log.info("config.reloaded", path=str(path))

    async def _shutdown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 2)
            except TimeoutError:
                self.pool.terminate()
        if self.embedded is not None:
            await self.embedded.stop()


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
        loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(Daemon(cfg, loaded).run())
    except OutagemonError as e:
        log.error("daemon.start_failed", error=str(e))
        print(f"outagemon: {e}", file=sys.stderr)
        return 1
