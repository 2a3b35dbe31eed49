"""The daemon's life: start-up order, signals, sd_notify, the main loop, shut-down.

Start: config -> logging -> database -> migrations -> HTTP bound -> background tasks ->
READY=1. SIGTERM/SIGINT cancel the main task; everything is closed in `finally`, in the
reverse order. SIGHUP reloads the config, keeping the old one when the new one is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from outagemon import config as config_mod
from outagemon import logs
from outagemon.config import Config
from outagemon.core import directory, messages
from outagemon.db import migrate, store
from outagemon.http.app import Runtime, make_app

if TYPE_CHECKING:
    from outagemon.sim.demo import Scenario
from outagemon.core.directory import Directory
from outagemon.core.messages import Texts
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.db.writer import Op, Writer
from outagemon.errors import ConfigError, OutagemonError
from outagemon.monitor import Monitor
from outagemon.notify import Notifier
from outagemon.probing.engine import Engine, PermissionProblem
from outagemon.probing.scheduler import Outcome, Scheduler
from outagemon.sim.simnet import SimNet

if TYPE_CHECKING:
    from outagemon.db.store import Conn

log = logs.get("outagemon.daemon")

# Keys read once at start; a reload that changes them says they wait for a restart.
RESTART_KEYS = ("daemon", "database", "http")
TICK = 0.1  # seconds between correlator decisions
CRITICAL = {"scheduler", "correlate", "writer", "simulate", "watchdog"}


class Daemon:
    def __init__(
        self,
        config: Config,
        loaded: directory.Loaded,
        texts: Texts,
        scenario: Scenario | None = None,
    ) -> None:
        self.runtime = Runtime(config=config, directory=loaded.directory, texts=texts)
        # With a scenario (the demo), a simulated network stands in for the ICMP engine.
        self.scenario = scenario
        self.notifier = Notifier()
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.runner: web.AppRunner | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.writer: Writer | None = None
        self.monitor: Monitor | None = None
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.node_of: dict[str, str] = {}
        self.ip_of: dict[str, str] = {}
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
        return 1 if (self.stop_signal or "").startswith("failed:") else 0

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
        if task.cancelled() or task.exception() is None:
            return
        log.error("daemon.task_failed", task=task.get_name(), error=repr(task.exception()))
        if task.get_name() in CRITICAL and self.stop_signal is None and self._main is not None:
            # Probing, deciding or writing has stopped: better a restart by systemd than a
            # daemon that serves stale answers as if it could see.
            self.stop_signal = f"failed:{task.get_name()}"
            self._main.cancel()

    async def _start(self) -> None:
        cfg = self.config
        dsn = cfg.database.dsn
        if not dsn:
            self.embedded = EmbeddedPostgres(cfg.daemon.state_dir)
            dsn = await self.embedded.start()
        applied = await migrate.migrate(dsn)
        log.info("daemon.migrated", applied=applied)
        self.pool = await store.connect(dsn)
        self.runtime.pool = self.pool
        self.writer = Writer(self.pool, cfg.database.write_queue, self.runtime.metrics)
        self._spawn(self.writer.run(), "writer")
        # The inventory goes first: incidents refer to its nodes.
        self.writer.submit("inventory", self._inventory_op(self.runtime.directory))
        self.monitor = Monitor(cfg, self.runtime.directory, self.runtime.metrics, self.writer)
        restored = await self.monitor.restore(self.pool)
        log.info("daemon.restored", incidents=restored)
        self.runtime.monitor = self.monitor
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
        await self._start_probing()

    def _targets(self) -> dict[str, str]:
        """address -> node id of everything to probe: probed nodes and the anchors."""
        assert self.monitor is not None
        targets = dict((ip, node) for node, ip in self.monitor.anchors.items())
        targets.update(self.runtime.directory.topology.by_ip)
        return targets

    async def _start_probing(self) -> None:
        if self.scenario is not None:
            self._start_simulation()
            return
        assert self.monitor is not None
        cfg = self.config
        self.node_of = self._targets()
        self.ip_of = {node: ip for ip, node in self.node_of.items()}
        self.engine = Engine(lambda *a: None, timeout=cfg.probe.timeout)
        families = {socket.AF_INET6 if ":" in ip else socket.AF_INET for ip in self.node_of}
        try:
            self.engine.open(tuple(sorted(families)) or (socket.AF_INET,))
        except PermissionProblem as e:
            raise OutagemonError(str(e)) from None
        self.scheduler = Scheduler(self.engine, self._outcome, cfg.probe.interval,
                                   cfg.probe.max_rate)  # fmt: skip
        self.scheduler.set_targets(list(self.node_of))
        self.runtime.metrics.on_collect(self._probe_metrics)
        self.runtime.not_ready = "the first probe round has not finished yet"
        self._spawn(self.scheduler.run(), "scheduler")
        self._spawn(self._correlate(), "correlate")

    def _start_simulation(self) -> None:
        assert self.monitor is not None
        cfg = self.config
        now = time.time()
        net = SimNet(self.runtime.directory.topology, self.monitor.correlator,
                     interval=cfg.probe.interval, timeout=cfg.probe.timeout,
                     start=now - 1800)  # fmt: skip
        net.on_event = self.monitor._handle
        net.run_until(now)  # half an hour of clean history, in a moment
        self.monitor.first_round_done = True
        self.runtime.not_ready = None
        self._spawn(self._simulate(net), "simulate")

    async def _simulate(self, net: SimNet) -> None:
        assert self.monitor is not None and self.scenario is not None
        while True:
            now = time.time()
            for note in self.scenario.apply(net, self.monitor, now):
                log.info("demo.step", what=note)
            net.run_until(now)
            for node in self.monitor.tick():
                net.probe(node)
            await asyncio.sleep(TICK)

    def _probe_metrics(self) -> None:
        """The engine's counters, read when /metrics is asked (malformed and foreign
        packets, late replies, kernel drops are counted, never silent)."""
        if self.engine is None:
            return
        stats = self.engine.stats
        self.engine.kernel_drops()
        counter = self.runtime.metrics.counter(
            "outagemon_probe_packets_total", "ICMP engine counts by kind."
        )
        for kind, value in dataclasses.asdict(stats).items():
            counter.set(float(value), kind=kind)
        self.runtime.metrics.gauge(
            "outagemon_probes_in_flight", "Probes sent and not yet answered or expired."
        ).set(self.engine.in_flight)

    def _outcome(self, o: Outcome) -> None:
        node = self.node_of.get(o.target)
        if node is not None and self.monitor is not None:
            self.monitor.observe(node, o.ok, o.at)

    async def _correlate(self) -> None:
        assert self.monitor is not None and self.engine is not None
        assert self.scheduler is not None
        sent_before, measured = self.engine.stats.sent, time.monotonic()
        while True:
            started = time.monotonic()
            for node in self.monitor.tick():
                ip = self.ip_of.get(node)
                if ip is not None:
                    self.scheduler.probe_now(ip)
            if self.runtime.not_ready is not None and self.scheduler.rounds >= 1:
                self.runtime.not_ready = None
                self.monitor.first_round_done = True
                log.info("daemon.first_round_done", targets=len(self.node_of))
            if started - measured >= 5:
                stats = self.engine.stats
                self.runtime.probe_rate = (stats.sent - sent_before) / (started - measured)
                sent_before, measured = stats.sent, started
            # Subtract the time the work took, so a busy tick does not slow the rhythm.
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - started)))

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: if the loop is stuck, the pings stop and
        # systemd restarts the service.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _inventory_op(self, current: Directory) -> Op:
        async def write(conn: Conn) -> None:
            started = time.monotonic()
            nodes = [
                (n.id, n.kind, n.ip, n.name, list(n.parents))
                for n in current.topology.nodes.values()
            ]
            subs = [
                (s.account, list(s.phones), s.address.text(with_flat=False), s.flat, s.ip, s.node)
                for s in current.subscribers
            ]
            await store.save_inventory(conn, nodes, subs)
            log.info("inventory.saved", nodes=len(nodes), subscribers=len(subs),
                     seconds=round(time.monotonic() - started, 3))  # fmt: skip

        return write

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
        if self.writer is not None:
            self.writer.submit("inventory", self._inventory_op(loaded.directory))
        if self.monitor is not None and self.scheduler is not None:
            self.monitor.config = new
            self.monitor.set_directory(loaded.directory)
            self.node_of = self._targets()
            self.ip_of = {node: ip for ip, node in self.node_of.items()}
            self.scheduler.set_targets(list(self.node_of), new.probe.interval)
            self.scheduler.max_rate = new.probe.max_rate
        self._reloads.inc(outcome="applied")
        log.info("config.reloaded", path=str(path))

    async def _shutdown(self) -> None:
        # Give queued writes a moment (the database may be away: then they are lost, and
        # the restart's recovery re-derives what it can from the network).
        if self.monitor is not None and self.writer is not None and self.writer.available:
            self.monitor.save_history()
        if self.writer is not None and self.writer.available:
            await self.writer.drain(1.5)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)
        if self.engine is not None:
            self.engine.close()
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
