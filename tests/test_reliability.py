"""Issue 13's findings that need no daemon process: clock steps, the ICMP engine's
failure paths and its drain budget."""

from __future__ import annotations

import asyncio
import gc
import math
import socket
import time
from pathlib import Path

import pytest

from outagemon import config
from outagemon.clock import SteadyClock
from outagemon.core.correlator import Correlator
from outagemon.core.health import Settings
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.probing import engine as engine_mod
from outagemon.probing.engine import Engine
from tests.world import build_directory

HOUR = 3600.0


class Clocks:
    """A wall clock an operator can step, and a monotonic clock that only goes on."""

    def __init__(self) -> None:
        self.wall_at = 1_790_000_000.0
        self.mono_at = 5_000.0

    def wall(self) -> float:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_at

    def advance(self, seconds: float) -> None:
        self.wall_at += seconds
        self.mono_at += seconds


def test_the_steady_clock_ignores_a_step_and_converts_for_display() -> None:
    c = Clocks()
    steady = SteadyClock(c.wall, c.mono)
    before = steady()
    assert before == c.wall_at
    c.advance(10)
    c.wall_at -= 3 * HOUR  # NTP steps the clock back
    assert steady() == before + 10
    assert steady.step() == -3 * HOUR
    assert steady.wall(steady()) == c.wall_at, "shown and stored in the wall clock of now"
    assert steady.steady(c.wall_at + 600) == steady() + 600, "an ETA in 10 minutes"


def test_an_engineers_whole_minute_eta_stays_whole_when_the_two_clocks_jitter() -> None:
    """The wall and monotonic clocks are read a few microseconds apart: an ETA of 18:00:00
    taken in and shown again must not come back as 17:59:59.99 (spoken "17:59")."""
    c = Clocks()
    steady = SteadyClock(c.wall, c.mono)
    eta = 1_790_006_400.0  # a whole minute
    for jitter in (-3e-6, 0.0, 2e-6, 4.9e-6):
        c.wall_at += jitter
        inside = steady.steady(eta)
        c.wall_at -= jitter
        c.wall_at += 1e-6  # read again, a microsecond off the other way
        assert steady.wall(inside) == eta
        c.wall_at -= 1e-6


def test_a_failed_target_becomes_an_incident_after_the_clock_steps_back_3_hours() -> None:
    """Finding 1: the monitor decides on a clock the wall clock's step does not move."""
    cfg = config.parse("[correlation]\nresolve_hold = 60\n", Path("/etc/outagemon.toml"))
    d = build_directory()
    c = Clocks()
    monitor = Monitor(cfg, d, Registry(), clock=SteadyClock(c.wall, c.mono))
    probed = [n.id for n in d.topology.nodes.values() if n.probed]
    failed = "sw-sad-5"

    def run(seconds: float, dead: str | None = None) -> None:
        # Every target answers every 5 s (the failed one not), as the scheduler probes.
        for step in range(int(seconds / 0.5)):
            c.advance(0.5)
            if step % 10 == 0:
                for node in probed:
                    monitor.observe(node, node != dead, monitor.clock())
            for node in monitor.tick():
                monitor.observe(node, node != dead, monitor.clock())

    run(600)
    monitor.first_round_done = True
    assert monitor.correlator.incidents == {}
    c.wall_at -= 3 * HOUR
    run(60, dead=failed)
    (inc,) = monitor.correlator.incidents.values()
    assert inc.root == failed
    assert math.isfinite(monitor.correlator.network_loss)
    # Shown in the wall clock as it is now: a minute ago, not three hours ahead.
    clock = monitor.clock
    assert isinstance(clock, SteadyClock)
    assert c.wall_at - 70 <= clock.wall(inc.opened_at) <= c.wall_at


def test_a_correlator_fed_a_clock_that_steps_back_neither_overflows_nor_goes_nan() -> None:
    """The core's own guard, for any caller that still feeds it the wall clock."""
    topo = build_directory().topology
    corr = Correlator(topo, Settings(down_after=3, up_after=2, window=30,
                                     infer_min_children=3, infer_ratio=0.8,
                                     resolve_hold=60))  # fmt: skip
    now = 1_790_000_000.0
    nodes = [n.id for n in topo.nodes.values() if n.probed]
    for t in range(0, 600, 5):
        for node in nodes:
            corr.observe(node, True, now + t)
        corr.tick(now + t)
    for back in (3 * HOUR, 600, 1200, 5 * HOUR):  # several steps, small and large
        now -= back
        for node in nodes:
            corr.observe(node, True, now)
        corr.tick(now)
    assert math.isfinite(corr.network_loss)
    # agg-s dies, and with it everything behind it (a child that still answers would prove
    # the path through agg-s works: then agg-s is not down).
    dead, queue = set(), ["agg-s"]
    while queue:
        node = queue.pop()
        dead.add(node)
        queue += topo.nodes[node].children
    for t in range(5, 120, 5):
        for node in nodes:
            corr.observe(node, node not in dead, now + t)
        corr.tick(now + t)
    assert [i.root for i in corr.incidents.values()] == ["agg-s"]


async def test_a_failing_result_callback_stops_the_daemon_and_the_sweep_goes_on() -> None:
    """Finding 1: an exception in the callback is passed on (the daemon exits 1) and the
    expiry sweep is rescheduled whatever happened."""
    results: list[str] = []
    failures: list[BaseException] = []

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        results.append(target)
        if target == "127.0.0.9":
            raise OverflowError("math range error")

    engine = Engine(on_result, timeout=0.1, on_failure=failures.append)
    engine.open((socket.AF_INET,))
    try:
        engine.expect("127.0.0.9", 1, 1)
        await asyncio.sleep(0.3)
        assert results == ["127.0.0.9"]
        assert [type(f) for f in failures] == [OverflowError]
        engine.expect("127.0.0.10", 1, 2)
        await asyncio.sleep(0.3)
        assert results == ["127.0.0.9", "127.0.0.10"], "lost probes are still reported"
    finally:
        engine.close()


async def test_one_wakeup_reads_at_most_the_drain_budget() -> None:
    """Finding 8: a flood of replies cannot hold the event loop in one callback."""
    got: list[str] = []
    engine = Engine(lambda t, r, x: got.append(t), timeout=5.0)
    engine.open((socket.AF_INET,))
    loop = asyncio.get_running_loop()
    fam = engine._families[socket.AF_INET]
    loop.remove_reader(fam.sock.fileno())  # read by hand below
    try:
        sent = engine_mod.DRAIN_BUDGET * 3
        for _ in range(sent):
            assert engine.send("127.0.0.1")
        time.sleep(0.3)  # noqa: ASYNC251 - the loop must not read: replies queue in the buffer
        engine._drain(fam)
        assert len(got) == engine_mod.DRAIN_BUDGET
        engine._drain(fam)
        engine._drain(fam)
        assert len(got) == sent
    finally:
        loop.add_reader(fam.sock.fileno(), engine._drain, fam)
        engine.close()


async def test_a_reload_makes_no_full_garbage_collection_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 8: gc.collect() at every reload held the loop ~2 s at a million subscribers."""
    from outagemon import daemon
    from outagemon.core import directory, messages
    from outagemon.sim import citygen

    citygen.generate(aggregations=2, access_per_aggregation=2).write(tmp_path)
    path = tmp_path / "outagemon.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[topology]\nfile = "topology.yaml"\n'
                    'subscribers = "subscribers.csv"\n')  # fmt: skip
    cfg = config.load(path)
    loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    d = daemon.Daemon(cfg, loaded, messages.load("ru"))
    collections: list[object] = []

    def collect(*args: object) -> int:
        collections.append(args)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    assert await d._reload() == ("applied", [])
    assert collections == []
