"""How fast and how right the correlator decides, on simulated networks in simulated time.

    .venv/bin/python -m benchmarks.correlate_bench
        [--parts detection,loss,core,steady,reload,freeze,saves] [--subscribers 1000000]
        [--profile] [--where] [--change PCT] [--nodes 1000000] [--parts blind --blind-for 150]
        [--parts handoff]

A city-sized network cannot exist on this machine, so the network is simulated
(outagemon/simnet.py): probes are scheduled as the real scheduler does and lost or
answered by the simulated devices; the correlator is the real one. The measurements:

1. Detection latency (interval 5 s, timeout 1 s, down_after 3): 200 faults of single
   access or aggregation switches, each repaired before the next; time from the fault to
   the incident. Beside it, in the same run and on the same faults, a model of Icinga 2's
   host checks with its documented defaults (check_interval 5m, retry_interval 1m,
   max_check_attempts 3: a host is HARD DOWN, and notifies, on its third failed check).
2. Loss: 1,000 targets with 10 % random loss for 10 minutes: no incident may open, and a
   real failure injected at minute 5 must still be found.
3. Cost of a core failure that cuts off 100,000 nodes: every node's probes are lost, the
   results arriving in random order at the scheduler's rate (20,000 a second, a tick every
   100 ms); the CPU time of the decisions (the ticks) and of taking in the results
   (observe), measured separately.
   The longest single hold of the event loop is the longest tick or step of results: the
   engine calls at most EXPIRE_SLICE (256) probes lost in one step of the loop, so a
   tick's 2,000 results are taken in as steps of that many, as in the daemon. Beside it,
   the full collections of the cyclic collector that landed in those steps.
4. Steady state: 10,000 results a second for 10 seconds, CPU share of one core.
5. A SIGHUP reload of a generated city of 1,000,000 subscribers (every router probed) in
   the daemon's own reload code (`Daemon._reload`, a writer without a database, the ICMP
   source's scheduler without sockets), with the event loop's lag measured the way the
   daemon measures it (outagemon.metrics.LoopLag, a timer every 20 ms): the longest hold;
   beside it, a 2 ms timer's lateness in the process's CPU time (a loaded machine makes
   wall time wait for a core), with where the reload's thread was after each hold over
   5 ms (`--profile`: also the longest steps of the loop itself, and the holds less the
   loop thread's own wait for a core, which a loaded machine adds), until the replaced
   directory has been freed. `--change PCT`: the subscriber file is changed first (PCT %
   of its rows: a third removed, a third moved to other buildings and router addresses,
   as many new), so that the reload has routers new, gone and moved.
6. Full collections of the cyclic collector with a node's state for each of `--nodes`
   nodes, made (as by the first probe results) after the topology was frozen: a full
   collection's CPU time with the states as they are made, and after the ICMP source's
   `freeze_made` (which its decision loop calls at the end of the first rounds after the
   start and after a reload), side by side in one run.
7. The big writes (`--parts saves`, not in the default parts: it needs PostgreSQL,
   OUTAGEMON_TEST_DSN or the tests' server): a city of `--subscribers` with a state for
   every target, written by the monitor and the writer into a fresh database: the
   inventory (and again, as a reload of the same files writes it), every node's loss
   history (`save_history`, every ten minutes), the node states of a mass outage (100,000
   down in one tick), and of a cut of every router (a million at a million subscribers,
   each its own time); each followed by the next write (what the writer held of the last
   is let go of by then); the loop's holds through each (LoopLag, and the 2 ms timer in
   CPU time; `--profile`: the loop's longest steps; `--where`: also the lines each step
   over 8 ms was seen at, its stack sampled every 0.5 ms).
8. Going blind and seeing again (`--parts blind`, not in the default parts: ~30 s): a
   city of `--nodes` nodes behind one anchor (the topology's probed root, as with no
   anchors configured), every node with a state and a clean history; the uplink fails
   (every result lost, 20,000 a second, a tick every 100 ms) until the monitor is blind
   and `--blind-for` seconds more, then every probe is answered until it sees. The tick
   that went blind and the one that saw again (thread CPU and wall, with the passes over
   every state and the failed set's cut in them), the ticks around each, and the longest
   other tick.
9. The interpreter's lock handed to the loop (`--parts handoff`, not in the default parts:
   ~15 s): a thread running plain Python (no long call into C) beside the loop's 2 ms
   timer, at the interpreter's default switch interval, at 1 ms and at the reload's
   (`RELOAD_SWITCH_INTERVAL`), the timer's step making 0 or 9 calls that let go of the
   lock (a file's open, read and close, as `Path.read_text` makes them; the daemon's steps
   read sockets): the timer's lateness in the process's CPU time (the thread's, while the
   loop waits for the lock), and how much plain Python the thread ran meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from outagemon.core.correlator import Correlator
from outagemon.core.health import NodeState, Settings, State
from outagemon.core.topology import Node, Topology
from outagemon.probing.engine import EXPIRE_SLICE
from outagemon.sim import citygen
from outagemon.sim.simnet import SimNet

SETTINGS = Settings(down_after=3, up_after=2, window=30, infer_min_children=3,
                    infer_ratio=0.8, resolve_hold=60)  # fmt: skip


def city(aggs: int, access: int, cpes: int = 0) -> Topology:
    ip = iter(range(1, 10_000_000))

    def addr() -> str:
        n = next(ip)
        return f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"

    nodes = [Node("uplink", "core", addr()), Node("core", "core", addr(), ("uplink",))]
    for a in range(aggs):
        nodes.append(Node(f"agg{a}", "aggregation", addr(), ("core",)))
        for s in range(access):
            nodes.append(Node(f"sw{a}-{s}", "access", addr(), (f"agg{a}",)))
            for c in range(cpes):
                nodes.append(Node(f"cpe{a}-{s}-{c}", "cpe", addr(), (f"sw{a}-{s}",)))
    return Topology(nodes)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def icinga_detection(node: str, fault: float, start: float) -> float:
    """Seconds from a fault to HARD DOWN under Icinga 2's default host check timing."""
    check_interval, retry_interval, attempts = 300.0, 60.0, 3
    phase = zlib.crc32(node.encode()) / 2**32 * check_interval
    first = start + phase
    k = max(0, int((fault - first) // check_interval) + 1)
    next_check = first + k * check_interval
    return next_check + (attempts - 1) * retry_interval - fault


def detection() -> None:
    topo = city(aggs=20, access=25)
    c = Correlator(topo, SETTINGS)
    start = 1_000_000.0
    net = SimNet(topo, c, interval=5.0, timeout=1.0, seed=7, start=start)
    net.run_for(3600)
    rng = random.Random(3)
    ours: list[float] = []
    icinga: list[float] = []
    missed = 0
    candidates = [n for n in topo.nodes if n.startswith(("sw", "agg"))]
    for _ in range(200):
        net.run_for(rng.uniform(60, 240))
        victim = rng.choice(candidates)
        fault = net.now
        net.fail(victim)
        events = net.run_for(60)
        opened = [e for e in events if e.kind in ("opened", "reopened") and e.root == victim]
        if opened:
            ours.append(opened[0].at - fault)
        else:
            missed += 1
        icinga.append(icinga_detection(victim, fault, start))
        net.repair(victim)
        net.run_for(150)
    print(f"1. detection, {len(ours) + missed} faults (interval 5 s, timeout 1 s, down_after 3):")
    p50, p95 = percentile(ours, 0.5), percentile(ours, 0.95)
    within = sum(x <= 10 for x in ours) / len(ours)
    print(f"   outagemon:        p50 {p50:5.1f} s  p95 {p95:5.1f} s  max {max(ours):5.1f} s"
          f"  within 10 s: {within:.0%}  missed {missed}  (target: 95 % within 10 s)")  # fmt: skip
    print(f"   Icinga 2 defaults: p50 {percentile(icinga, 0.5):5.1f} s  "
          f"p95 {percentile(icinga, 0.95):5.1f} s  max {max(icinga):5.1f} s  (a model of its "
          "check timing, on the same faults)")  # fmt: skip


def loss() -> None:
    topo = city(aggs=10, access=99)  # 1,002 probed targets
    c = Correlator(topo, SETTINGS)
    net = SimNet(topo, c, interval=5.0, timeout=1.0, seed=11)
    net.run_for(3600)
    net.default_loss = 0.10
    false = [e for e in net.run_for(300) if e.kind == "opened"]
    net.fail("sw4-40")
    fault = net.now
    events = net.run_for(300)
    found = [e for e in events if e.kind == "opened" and e.root == "sw4-40"]
    false += [e for e in events if e.kind == "opened" and e.root != "sw4-40"]
    outcome = f"found after {found[0].at - fault:.1f} s" if found else "NOT found"
    print(f"2. {len(topo.by_ip):,} targets, 10 % random loss, 10 minutes: {len(false)} false "
          f"incidents (target 0); the real failure at minute 5 {outcome}")  # fmt: skip


def core_failure() -> None:
    topo = city(aggs=100, access=10, cpes=99)  # 100 + 1,000 + 99,000 below the core
    c = Correlator(topo, SETTINGS, anchors=["uplink"])
    now = 1_000_000.0
    nodes = [n for n in topo.nodes if n != "uplink"]
    for _ in range(300):  # a clean history for everyone, as in steady operation
        now += 5
        for n in topo.nodes:
            c.observe(n, True, now)
    c.tick(now)
    c.take_requests()
    # As the daemon does after a load: the long-lived objects are left out of the cyclic
    # collector's walks (else a full collection lands in some step, ~100 ms here).
    gc.collect()
    gc.freeze()
    order = nodes[:]
    random.Random(5).shuffle(order)  # results arrive in no particular order
    observe_cpu = tick_cpu = 0.0
    hold = hold_cpu = 0.0  # the longest single step: one tick, or one step of results
    opened: list[str] = []
    ticks: list[tuple[float, int]] = []  # each tick's thread CPU, and its number
    first_open = -1
    full: list[float] = []  # each full collection's thread CPU (it lands inside some step)
    began = [0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.thread_time()
            else:
                full.append(time.thread_time() - began[0])

    gc.callbacks.append(collected)
    batch = 2000  # results per 100 ms tick: the scheduler's default max_rate, 20,000/s
    step = EXPIRE_SLICE  # losses the engine reports in one step of the event loop
    for _ in range(6):  # six rounds of re-probes at timeout spacing
        for start in range(0, len(order), batch):
            now += 0.1
            end = min(start + batch, len(order))
            for at in range(start, end, step):
                t0, w0 = time.process_time(), time.perf_counter()
                for n in order[at : min(at + step, end)]:
                    c.observe(n, False, now)
                if at + step >= end:
                    c.observe("uplink", True, now)
                observe_cpu += time.process_time() - t0
                hold = max(hold, time.perf_counter() - w0)
                hold_cpu = max(hold_cpu, time.process_time() - t0)
            t0, w0, c0 = time.process_time(), time.perf_counter(), time.thread_time()
            events = c.tick(now)
            ticks.append((time.thread_time() - c0, len(ticks)))
            tick_cpu += time.process_time() - t0
            hold = max(hold, time.perf_counter() - w0)
            hold_cpu = max(hold_cpu, time.process_time() - t0)
            opened += [e.root or "" for e in events if e.kind == "opened"]
            if opened and first_open < 0:
                first_open = len(ticks) - 1
            c.take_requests()
    gc.callbacks.remove(collected)
    (inc,) = c.incidents.values()
    print(f"3. core failure cutting off {len(inc.nodes) - 1:,} nodes: {len(opened)} incident "
          f"(root {inc.root}); decisions {tick_cpu * 1000:.0f} ms CPU (target < 100 ms), "
          f"taking in {len(order) * 6:,} results {observe_cpu * 1000:.0f} ms CPU "
          f"({observe_cpu / (len(order) * 6) * 1e6:.1f} us each, in steps of {step} as the "
          f"engine reports losses); longest single step "
          f"{hold_cpu * 1000:.1f} ms CPU, {hold * 1000:.1f} ms wall (target: no hold of the "
          f"loop > 20 ms); load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    longest = sorted(ticks, reverse=True)[:3]
    print("   longest ticks (thread CPU, tick number of " + f"{len(ticks)}): "
          + ", ".join(f"{t * 1000:.1f} ms (#{i})" for t, i in longest)
          + f"; the incident opened at tick #{first_open}")  # fmt: skip
    print(f"   full collections of the cyclic collector during it: {len(full)}"
          + (f" (longest {max(full) * 1000:.1f} ms CPU)" if full else ""))  # fmt: skip


def steady() -> None:
    topo = city(aggs=20, access=499)  # 10,000 probed switches
    c = Correlator(topo, SETTINGS)
    targets = list(topo.by_ip.values())
    now = 1_000_000.0
    for _ in range(50):
        now += 1
        for n in targets:
            c.observe(n, True, now)
    c.tick(now)
    rng = random.Random(1)
    t0 = time.process_time()
    for second in range(10):
        for i, n in enumerate(targets):
            c.observe(n, rng.random() > 0.001, now + second + i / len(targets))
            if i % 1000 == 999:
                c.tick(now + second + i / len(targets))
                c.take_requests()
    used = time.process_time() - t0
    print(
        f"4. steady state, 10,000 results/s for 10 s: {used / 10 * 100:.1f} % of one core "
        "(target < 10 %)"
    )


RELOAD_CONFIG = """
[daemon]
state_dir = "{state}"
[http]
listen = "127.0.0.1:1"
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
"""


class Holds:
    """The loop's holds measured beside LoopLag, in wall and in CPU time: a timer every
    2 ms, how late it fires (wall), and the process's CPU time over the same span less
    the timer's interval (a hold by the loop's own work or by the reload's thread holding
    the interpreter's lock costs CPU; waiting for a core on a loaded machine does not).
    With `steps`, also each callback the loop ran, timed (wall and the loop's own CPU)."""

    def __init__(self, interval: float = 0.002, steps: bool = False) -> None:
        self.interval = interval
        self.worst_wall = self.worst_cpu = 0.0
        self.over = 0  # samples whose CPU lateness exceeds 20 ms
        self.over10 = 0  # and 10 ms
        self.where: list[tuple[float, float, str]] = []  # (cpu, wall, the thread's line)
        # With `steps`: samples over 20 ms CPU that the loop's thread's own wait for a core
        # (Linux's schedstat) does not explain: on a loaded machine the loop's thread waits
        # in the run queue to wake, or to take the lock it was handed, while the reload's
        # thread runs on and the process's CPU time grows; no hold of the lock, that.
        self.over_own = 0
        self.worst_own = 0.0
        self.steps: list[tuple[float, float, str]] = []  # (loop CPU, wall, callback)
        self._patched = steps
        self._run = asyncio.Handle._run
        # With `steps`, what explains each hold: the collections of the cyclic collector
        # (gc.callbacks: perf_counter at start and end, generation, its thread's CPU, whether
        # on the loop's thread) and each timed step's end (perf_counter, loop CPU, callback),
        # against each sample over 5 ms (perf_counter at ask and wake, CPU, own, the line).
        self.collections: list[tuple[float, float, int, float, bool]] = []
        self.ended: list[tuple[float, float, str]] = []
        self.samples: list[tuple[float, float, float, float, str]] = []
        self._began: dict[int, tuple[float, float]] = {}
        self._loop_thread = 0
        self._queued: Callable[[], float] | None = None  # the loop thread's wait, once watched
        self.sampler: StepSampler | None = None  # --where: what each long step was doing

    def reset(self) -> None:
        self.worst_wall = self.worst_cpu = 0.0
        self.over = self.over10 = self.over_own = 0
        self.worst_own = 0.0
        self.where.clear()
        self.steps.clear()
        self.collections.clear()
        self.ended.clear()
        self.samples.clear()
        if self.sampler is not None:
            self.sampler.long.clear()

    async def run(self) -> None:
        if self._patched:
            self._patch()
            gc.callbacks.append(self._collected)
        try:
            await self._watch()
        finally:
            self.stop()

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        me = threading.get_ident()
        if phase == "start":
            self._began[me] = (time.perf_counter(), time.thread_time())
        elif me in self._began:
            w0, c0 = self._began.pop(me)
            self.collections.append((w0, time.perf_counter(), info["generation"],
                                     time.thread_time() - c0, me == self._loop_thread))  # fmt: skip

    def stop(self) -> None:
        """Time no more steps: the benchmark's own teardown (freeing its city as it
        returns) is no step of the reload, and runs before this task is cancelled."""
        from asyncio import events

        events.Handle._run = self._run  # type: ignore[method-assign]
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)

    async def _watch(self) -> None:
        import sys
        import threading

        main = self._loop_thread = threading.get_ident()
        mine = {main, self.sampler.thread if self.sampler is not None else None}
        loop = asyncio.get_running_loop()
        queued = _run_queue_wait(threading.get_native_id()) if self._patched else None
        self._queued = queued
        while True:
            # The loop thread's wait for a core is read outside the timed span: each read
            # is a call that lets go of the interpreter's lock and takes it back, and beside
            # a reload's busy thread each taking back waits up to a switch interval (the
            # file's open, read and close inside the span added about 5 ms CPU to every
            # sample, a 2 ms timer's sleep needing the lock only twice).
            waited = queued() if queued is not None else 0.0
            asked, cpu, w0 = loop.time(), time.process_time(), time.perf_counter()
            await asyncio.sleep(self.interval)
            late = max(0.0, time.process_time() - cpu - self.interval)
            wall = max(0.0, loop.time() - asked - self.interval)
            self.worst_wall = max(self.worst_wall, wall)
            self.worst_cpu = max(self.worst_cpu, late)
            self.over += late > 0.02
            self.over10 += late > 0.01
            own = late
            if queued is not None:
                # (at least 0: with no other thread busy, the loop's wait for a core
                # adds no CPU to take away; the figure may undercount, never below 0, the
                # wait read over a span a little longer than the timed one)
                own = max(0.0, late - (queued() - waited))
                self.worst_own = max(self.worst_own, own)
                self.over_own += own > 0.02
            if late > 0.005:  # where the other threads are now (just past the hold)
                lines = [f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}"
                         f" {f.f_code.co_name}"
                         for t, f in sys._current_frames().items() if t not in mine]  # fmt: skip
                self.where.append((late, wall, "; ".join(lines)))
                self.samples.append((w0, time.perf_counter(), late, own, "; ".join(lines)))

    def _patch(self) -> None:
        from asyncio import events

        run, steps, ended = events.Handle._run, self.steps, self.ended
        sampler = self.sampler
        if sampler is not None:
            sampler.watch(threading.get_ident())

        def timed(handle: events.Handle) -> None:
            w0, c0 = time.perf_counter(), time.thread_time()
            if sampler is not None:
                sampler.begin()
            run(handle)
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            if cpu > 0.002 or wall > 0.02:
                steps.append((cpu, wall, _label(handle)))
                ended.append((w0 + wall, cpu, steps[-1][2]))
            if sampler is not None:
                sampler.end(cpu, steps[-1][2] if steps else "")

        events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def report(self, top: int = 12) -> str:
        worst = f"{self.worst_cpu * 1000:.1f} ms CPU ({self.worst_wall * 1000:.0f} ms wall)"
        lines = [
            f"   longest hold {worst}, {self.over} samples over 20 ms CPU, {self.over10} over 10 ms"
        ]
        if self._patched and self._queued is not None:
            lines.append(
                f"   less the loop thread's own wait for a core in each (schedstat): longest "
                f"{self.worst_own * 1000:.1f} ms CPU, {self.over_own} samples over 20 ms"
            )
        places: dict[str, list[float]] = {}
        for cpu, _, where in self.where:
            places.setdefault(where, []).append(cpu)
        for where, cpus in sorted(places.items(), key=lambda kv: -max(kv[1]))[:top]:
            lines.append(f"     holds over 5 ms: longest {max(cpus) * 1000:6.1f} ms CPU, "
                         f"{len(cpus)} times, the thread then at {where}")  # fmt: skip
        swap = [f"{what} {cpu * 1000:.1f} ms CPU" for cpu, _, what in self.steps
                if not what.startswith("<")]  # fmt: skip
        if swap:
            lines.append(f"     the swap's steps: {', '.join(swap)}")
        for cpu, wall, what in sorted(self.steps, reverse=True)[:top]:
            lines.append(
                f"     loop step {cpu * 1000:6.1f} ms CPU {wall * 1000:6.1f} ms wall: {what}"
            )
        if self._patched:
            lines += self._causes(top)
        if self.sampler is not None:
            lines += self.sampler.report(top)
        return "\n".join(lines)

    def _causes(self, top: int) -> list[str]:
        """The collections in the reload, and the longest holds (by their own CPU, less the
        loop's wait for a core) each with the collections and loop steps inside it."""
        lines = []
        for gen in (0, 1, 2):
            for on_loop in (True, False):
                made = [c for _, _, g, c, o in self.collections if g == gen and o == on_loop]
                if made:
                    lines.append(f"     collections of generation {gen} on the "
                                 f"{'loop' if on_loop else 'other'} thread: {len(made)}, "
                                 f"longest {max(made) * 1000:.1f} ms CPU")  # fmt: skip
        if not self.collections:
            lines.append("     no collection of the cyclic collector in the reload")
        for w0, w1, late, own, where in sorted(self.samples, key=lambda s: -s[3])[:top]:
            gcs = [f"gen{g} {c * 1000:.1f} ms {'loop' if o else 'thread'}"
                   for a, b, g, c, o in self.collections if a < w1 and b > w0]  # fmt: skip
            done = [f"{what} {c * 1000:.1f}" for end, c, what in self.ended if w0 < end <= w1]
            lines.append(f"     hold {own * 1000:5.1f} ms own CPU ({late * 1000:.1f} with the "
                         f"wait): gc [{', '.join(gcs)}] steps [{', '.join(done)}] thread at "
                         f"{where}")  # fmt: skip
        return lines


class StepSampler:
    """`--where`: the loop thread's stack sampled every 0.5 ms while a step runs (a thread
    that waits on an event between steps, so it costs nothing then), and for each step of
    more than `over` CPU the lines it was seen at most: a step's label names only its task.
    The sampler needs the interpreter's lock to look, so the switch interval is cut to
    0.5 ms while it watches (a step's figures grow by its looks: read them as where)."""

    def __init__(self, over: float = 0.008) -> None:
        self.over = over
        self.long: list[tuple[float, str, list[tuple[str, ...]]]] = []
        self._main = 0
        self.thread: int | None = None  # its own, not one to report where it was
        self._running = threading.Event()
        self._seen: list[tuple[str, ...]] = []

    def watch(self, main: int) -> None:
        import sys

        self._main = main
        sys.setswitchinterval(0.0005)
        looker = threading.Thread(target=self._sample, daemon=True)
        looker.start()
        self.thread = looker.ident

    def begin(self) -> None:
        self._seen = []
        self._running.set()

    def end(self, cpu: float, label: str) -> None:
        self._running.clear()
        if cpu > self.over:
            self.long.append((cpu, label, self._seen))

    def _sample(self) -> None:
        import sys

        while True:
            self._running.wait()
            frame = sys._current_frames().get(self._main)
            stack: list[str] = []
            while frame is not None and len(stack) < 6:
                name = frame.f_code.co_filename.rsplit("/", 1)[-1]
                stack.append(f"{name}:{frame.f_lineno} {frame.f_code.co_name}")
                frame = frame.f_back
            if self._running.is_set():
                self._seen.append(tuple(stack))
            time.sleep(0.0005)

    def report(self, top: int) -> list[str]:
        from collections import Counter

        lines = []
        for cpu, label, seen in sorted(self.long, key=lambda x: -x[0])[:top]:
            lines.append(f"     step {cpu * 1000:.1f} ms CPU {label}: {len(seen)} looks, at")
            for stack, n in Counter(seen).most_common(3):
                lines.append(f"       {n} x {' < '.join(stack)}")
        return lines


def _run_queue_wait(tid: int) -> Callable[[], float] | None:
    """The thread's total time waiting for a core so far, in seconds (Linux's schedstat),
    as a function to call; None where there is no such file."""
    path = Path(f"/proc/self/task/{tid}/schedstat")
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)  # kept open: one read a call (the process's life)

    def waited() -> float:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9

    return waited


def _label(handle: asyncio.Handle) -> str:
    """What a loop step ran, named without repr(): a handle's repr formats its arguments,
    a reload's finished future among them, whose result listed whole (a million targets
    due) held the loop itself for 140 ms at 100,000 subscribers, outside the timed step."""
    callback = handle._callback  # type: ignore[attr-defined]
    name: str = getattr(callback, "__qualname__", None) or type(callback).__name__
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        name += f" of {getattr(task.get_coro(), '__qualname__', '?')}"
    return f"<{name}>"


class _NoEngine:
    """The scheduler's engine, never asked to send here (no sockets in a benchmark)."""

    on_result: object = None
    timeout = 0.0  # set by a reload (IcmpSource.retarget)

    def check_rcvbuf(self, targets: dict[int, int]) -> None:
        """No socket: no receive queue to warn about (a reload asks)."""


def _timed(obj: object, name: str, into: list[tuple[float, float, str]]) -> None:
    """Wrap a method to time each call (the swap's steps, for --profile)."""
    inner = getattr(obj, name)

    def timed(*args: object, **kwargs: object) -> object:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            into.append((time.thread_time() - c0, time.perf_counter() - w0, name))

    setattr(obj, name, timed)


def changed_rows(rows: list[tuple[str, str, str, str, str]], pct: float,
                 seed: int = 7) -> list[tuple[str, str, str, str, str]]:  # fmt: skip
    """The subscriber rows after a day's changes in `pct` % of them, a third each: some
    leave, some move (another building and flat, a new router address), some join (new
    accounts, phones, routers at new addresses, in the city's buildings)."""
    rng = random.Random(seed)
    each = round(len(rows) * pct / 100 / 3)
    out = rows[:]
    picked = rng.sample(range(len(out)), 2 * each)
    leave, move = set(picked[:each]), picked[each:]
    fresh = iter(range(3_000_000, 16_000_000))  # addresses the generated city never uses
    for i in move:
        account, phones, _, _, _ = out[i]
        _, _, address, flat, _ = out[rng.randrange(len(out))]
        out[i] = (account, phones, address, flat, citygen.ip_of(next(fresh)))
    out = [row for i, row in enumerate(out) if i not in leave]
    for k in range(each):
        _, _, address, flat, _ = out[rng.randrange(len(out))]
        out.append((str(90_000_000 + k), f"+7999{k:07d}", address, flat,
                    citygen.ip_of(next(fresh))))  # fmt: skip
    return out


async def _reload(config_path: Path, holds: Holds, change: float = 0.0,
                  rows: list[tuple[str, str, str, str, str]] | None = None,
                  ) -> tuple[float, int, str, float]:  # fmt: skip
    from outagemon import config as config_mod
    from outagemon.core import directory, messages
    from outagemon.daemon import Daemon, Started
    from outagemon.db.writer import Writer
    from outagemon.metrics import LoopLag, Registry
    from outagemon.monitor import Monitor
    from outagemon.probing.icmp import IcmpSource
    from outagemon.probing.scheduler import Scheduler

    cfg = config_mod.load(config_path)
    texts = messages.load(cfg.messages.language, cfg.messages.file, cfg.messages.timezone)
    loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    if change and rows is not None and cfg.topology.subscribers is not None:
        # The file the reload reads: `change` % of its subscribers changed since the load.
        city = citygen.City(rows=changed_rows(rows, change))
        cfg.topology.subscribers.write_text(city.subscribers_csv(), encoding="utf-8")
    source = IcmpSource(cfg.probe)
    daemon = Daemon(cfg, loaded, texts, source)
    metrics = daemon.runtime.metrics
    writer = Writer(None, cfg.database.write_queue, metrics, cfg.database.queue_bytes)
    monitor = Monitor(cfg, loaded.directory, metrics, writer)
    now = monitor.clock()
    for node in loaded.directory.topology.by_ip.values():  # every target has a state
        monitor.correlator.observe(node, True, now)
    monitor.correlator.tick(now)
    daemon.started = Started(monitor, writer)
    daemon.runtime.monitor = monitor
    source.engine = _NoEngine()  # type: ignore[assignment]
    source.scheduler = Scheduler(_NoEngine(), lambda o: None, cfg.probe.interval,  # type: ignore[arg-type]
                                 cfg.probe.max_rate)  # fmt: skip
    source.retarget(daemon._targets(monitor), cfg.probe)
    # The loaded directory is the daemon's alone, as in `outagemon run`: what of it the
    # reload's release leaves is freed there, on the loop, not at this function's end.
    del loaded
    if holds._patched:  # the swap's steps, each timed
        _timed(daemon, "_loaded", holds.steps)
        _timed(monitor, "set_directory", holds.steps)
        _timed(monitor.journal, "inventory", holds.steps)
        _timed(source, "retarget", holds.steps)
    lag = LoopLag(Registry())
    watching = asyncio.create_task(lag.run())
    holding = asyncio.create_task(holds.run())
    await asyncio.sleep(0.5)
    lag.worst = 0.0
    holds.reset()
    started = time.perf_counter()
    outcome, _ = await daemon._reload()
    took = time.perf_counter() - started
    await asyncio.sleep(RELEASE_WAIT)  # the replaced directory is freed in slices after a grace
    # The benchmark's own teardown (what this frees as it returns, after the reload and its
    # release: the step timed 24-43 ms CPU as a wake-up of `_reload`, taken for the swap's)
    # is no step of the reload: the steps are timed no more, and it is the next one.
    holds.stop()
    await asyncio.sleep(0)
    watching.cancel()
    holding.cancel()
    held = sum(n for b, n in zip(lag.histogram.bounds, lag.histogram.counts, strict=False)
               if b > 0.02) + lag.histogram.counts[-1]  # fmt: skip
    return took, held, outcome, lag.worst


RELEASE_WAIT = 7.0  # s: past the daemon's RELEASE_GRACE, while the old directory is freed


def reload_hold(subscribers: int, profile: bool = False, change: float = 0.0) -> None:
    holds = Holds(steps=profile)
    cpu0 = time.process_time()

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        city = citygen.sized(max(10, subscribers // 200), subscribers)
        city.write(state)
        config = state / "outagemon.toml"
        config.write_text(RELOAD_CONFIG.format(state=state))
        took, held, outcome, worst = asyncio.run(_reload(config, holds, change, city.rows))
    what = f"{change:g} % of the subscribers changed" if change else "unchanged"
    print(f"5. SIGHUP reload of a city of {subscribers:,} subscribers (every router probed), "
          f"{what}: "
          f"{outcome} in {took:.1f} s; longest single hold of the loop {worst * 1000:.0f} ms "
          f"wall (LoopLag, target < 20 ms), {held} lateness samples over 20 ms; load average "
          f"{os.getloadavg()[0]:.2f}; this part {time.process_time() - cpu0:.1f} s CPU"
          )  # fmt: skip
    print(holds.report(12 if profile else 3))


SAVES_DSN = os.environ.get("OUTAGEMON_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _saves(config_path: Path, holds: Holds, dsn: str, outage: int) -> list[str]:
    """The daemon's periodic and big writes, each made as the monitor makes it and written
    by the writer to a real PostgreSQL, with the loop's holds measured through each: the
    inventory (start, and a reload's over it), every node's loss history (`save_history`,
    every HISTORY_EVERY), the node states of a mass outage (`outage` nodes down in one tick)."""
    from outagemon import config as config_mod
    from outagemon.core import directory
    from outagemon.db import store
    from outagemon.db.writer import Writer
    from outagemon.metrics import LoopLag, Registry
    from outagemon.monitor import Monitor

    cfg = config_mod.load(config_path)
    loaded = directory.load(cfg.topology.file, cfg.topology.subscribers)
    gc.collect()
    gc.freeze()  # as the daemon does after a load
    metrics = Registry()
    pool = await store.connect(dsn)
    writer = Writer(pool, cfg.database.write_queue, metrics, cfg.database.queue_bytes)
    monitor = Monitor(cfg, loaded.directory, metrics, writer)
    now = monitor.clock()
    targets = list(loaded.directory.topology.by_ip.values())
    for node in targets:  # every target has a state, and a loss history to save
        monitor.correlator.observe(node, True, now)
    monitor.correlator.tick(now)
    monitor.correlator.transitions = []
    gc.collect()
    gc.freeze()  # as the ICMP source's freeze_made after the first rounds
    lag = LoopLag(Registry())
    writing = asyncio.create_task(writer.run())
    watching = asyncio.create_task(lag.run())
    holding = asyncio.create_task(holds.run())
    out: list[str] = []

    async def measured(what: str, step: Callable[[], None]) -> None:
        await asyncio.sleep(0.3)
        lag.worst = 0.0
        holds.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        await writer.drain(600)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        # And the next write (the daemon writes every tick): what the writer held of this
        # one is let go of by then at the latest, in the steps measured here.
        monitor.journal.blind(monitor.correlator.blind)
        await writer.drain(600)
        await asyncio.sleep(0.1)
        out.append(f"   {what}: written in {took:.1f} s ({cpu:.1f} s CPU); longest hold "
                   f"of the loop {lag.worst * 1000:.0f} ms wall (LoopLag); load average "
                   f"{os.getloadavg()[0]:.2f}")  # fmt: skip
        out.append(holds.report(4))

    try:
        await measured(f"inventory ({len(loaded.directory.topology):,} nodes, "
                       f"{len(loaded.directory.subscribers):,} subscribers)",
                       lambda: monitor.journal.inventory(loaded.directory))  # fmt: skip
        # A reload's: the same files again, over what the first wrote (every period kept).
        await measured("inventory again (a reload of the same files)",
                       lambda: monitor.journal.inventory(loaded.directory))  # fmt: skip
        await measured(f"loss histories of {len(monitor.correlator.states):,} nodes "
                       "(save_history)", monitor.save_history)  # fmt: skip
        at = monitor.clock()  # the correlator's transitions of one tick, made beforehand
        monitor.correlator.transitions = [(n, "down", at) for n in targets[:outage]]
        await measured(f"node states of a mass outage ({outage:,} nodes down in one "
                       "tick, _save_states)", monitor._save_states)  # fmt: skip
        # A cut of every router (a core failure in a city whose routers are probed): each
        # transition with its own time, as results arriving one by one make them.
        routers = [n for n in targets if loaded.directory.topology.nodes[n].kind == "cpe"]
        at = monitor.clock()
        monitor.correlator.transitions = [(n, "down", at + i * 1e-6)
                                          for i, n in enumerate(routers)]  # fmt: skip
        del routers
        await measured(f"node states of a cut of every router ({len(targets):,} targets, "
                       f"{len(monitor.correlator.transitions):,} routers down in one tick, "
                       "_save_states)", monitor._save_states)  # fmt: skip
    finally:
        holds.stop()
        for task in (writing, watching, holding):
            task.cancel()
        await pool.close()
    return out


def saves(subscribers: int, profile: bool = False, where: bool = False) -> None:
    """7. The big writes (inventory, loss histories, a mass outage's node states) into a
    fresh database, with the loop's holds measured through each."""
    import uuid

    import asyncpg

    from outagemon.db import migrate

    holds = Holds(steps=profile or where)
    holds.sampler = StepSampler() if where else None
    name = f"om_bench_saves_{uuid.uuid4().hex[:8]}"
    dsn = SAVES_DSN.rsplit("/", 1)[0] + "/" + name

    async def admin(sql: str) -> None:  # create or drop the run's database
        conn = await asyncpg.connect(SAVES_DSN)
        await conn.execute(sql)  # a failure ends the run (and its connection with it)
        await conn.close()

    asyncio.run(admin(f'create database "{name}"'))
    try:
        asyncio.run(migrate.migrate(dsn))
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            citygen.sized(max(10, subscribers // 200), subscribers).write(state)
            config = state / "outagemon.toml"
            # The inventory's writes are bigger than the default bound of the queue at a
            # city's size (and would be dropped, their nodes missing for every later write).
            config.write_text(RELOAD_CONFIG.format(state=state)
                              + "[database]\nqueue_bytes = 4294967296\n")  # fmt: skip
            out = asyncio.run(_saves(config, holds, dsn, min(100_000, subscribers)))
    finally:
        asyncio.run(admin(f'drop database if exists "{name}" with (force)'))
    print(f"7. big writes to PostgreSQL, a city of {subscribers:,} subscribers (every router "
          f"probed; target: no hold of the loop > 20 ms); load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n".join(out))


class _Rounds:
    """The ICMP source's scheduler, as far as freezing reads it: its round count."""

    rounds = 0


def _full_collections(times: int = 3) -> tuple[float, float, int]:
    """The median CPU and wall time of a full collection (timed by gc.callbacks, from
    its start to its stop), and how many objects it had to walk (the generations')."""
    took: list[tuple[float, float]] = []
    began: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[:] = [time.thread_time(), time.perf_counter()]
        else:
            took.append((time.thread_time() - began[0], time.perf_counter() - began[1]))

    gc.callbacks.append(timed)
    try:
        for _ in range(times):
            gc.collect()
    finally:
        gc.callbacks.remove(timed)
    return (percentile([c for c, _ in took], 0.5), percentile([w for _, w in took], 0.5),
            len(gc.get_objects()))  # fmt: skip


def freeze_states(nodes: int) -> None:
    """6. Full collections with a node's state for every node: made by the first probe
    results, after the directory was frozen. Before: as they are until the first round's
    end (main leaves them so); after: once the ICMP source froze them (`freeze_made`, as
    its decision loop calls it at the end of the first rounds)."""
    from outagemon.config import ProbeConfig
    from outagemon.probing.icmp import IcmpSource

    topo = city(aggs=max(1, nodes // 10_101), access=100, cpes=100)
    gc.collect()
    gc.freeze()  # the loaded topology, as the daemon freezes it after a load
    c = Correlator(topo, SETTINGS, anchors=["uplink"])
    for n in topo.nodes:  # the first round: every node's first result makes its state
        c.observe(n, True, 1_000_000.0)
    source = IcmpSource(ProbeConfig())
    source.scheduler = _Rounds()  # type: ignore[assignment]
    before = _full_collections()
    source.scheduler.rounds = 1
    froze = source.freeze_made()
    after = _full_collections()
    gc.unfreeze()
    print(
        f"6. Full collections of the cyclic collector with {len(c.states):,} node states "
        f"(median of 3, gc.callbacks start to stop; load average {os.getloadavg()[0]:.2f}):"
    )
    for name, (cpu, wall, walked) in (("states not frozen (main)", before),
                                      (f"after freeze_made ({froze})", after)):  # fmt: skip
        print(
            f"   {name}: {cpu * 1000:.1f} ms CPU ({wall * 1000:.1f} ms wall), "
            f"{walked:,} objects in the generations"
        )


def _blind_city(nodes: int) -> tuple[Correlator, list[str], float]:
    """A correlator of a city of about `nodes` nodes behind one anchor, every node with a
    state and a clean history of 300 answers, as after hours of steady operation."""
    topo = city(aggs=max(1, nodes // 10_101), access=100, cpes=100)
    c = Correlator(topo, SETTINGS, anchors=["uplink"])
    now = 1_000_000.0
    for _ in range(SETTINGS.up_after):
        now += 5
        for n in topo.nodes:
            c.observe(n, True, now)
    clean = NodeState()
    clean.record(False, 300)  # the history 300 answers make, copied to every state
    for ns in c.states.values():
        ns.n, ns.lost = clean.n, clean.lost
    c.tick(now)
    c.take_requests()
    order = [n for n in topo.nodes if n != "uplink"]
    random.Random(7).shuffle(order)  # results arrive in no particular order
    gc.collect()
    gc.freeze()  # as the daemon does after a load and after the first rounds
    return c, order, now


def blind(nodes: int, blind_for: float) -> None:
    """8. The monitor goes blind at city scale and sees again: its uplink (the one anchor)
    fails, so every probe is lost, at the scheduler's rate (20,000 results a second, a tick
    every 100 ms, the anchor's result once a second), until the anchor is down (blind) and
    `blind_for` seconds more; then every probe is answered again until it sees. Each tick
    (the correlator's `tick` and `take_requests`, one step of the daemon's loop) is timed
    in thread CPU and wall; the results are taken in as steps of EXPIRE_SLICE."""
    c, order, now = _blind_city(nodes)
    batch, step = 2000, EXPIRE_SLICE
    ticks: list[tuple[float, float, str]] = []  # each tick's thread CPU, wall, what it did
    # Where a tick's time went: the passes over every state on going blind and on seeing
    # again, and the cut of the failed set (the anchor's cut is the whole city).
    spent: list[tuple[float, float, str]] = []
    split: list[dict[str, float]] = []
    for name in ("_lead_up", "_vantage", "_cut", "_infer", "_decide"):
        _timed(c, name, spent)
    observe_hold = 0.0  # the longest step of results, thread CPU
    looks: list[float] = []  # the ticks that looked at every node, a slice each, before seeing
    at = 0
    marks: dict[str, int] = {}

    def run(ok: bool, until: Callable[[], bool]) -> None:
        nonlocal now, at, observe_hold
        while not until():
            now += 0.1
            for s in range(0, batch, step):
                c0 = time.thread_time()
                for i in range(at + s, at + min(s + step, batch)):
                    c.observe(order[i % len(order)], ok, now)
                observe_hold = max(observe_hold, time.thread_time() - c0)
            at = (at + batch) % len(order)
            if len(ticks) % 10 == 0:
                c.observe("uplink", ok, now)
            spent.clear()
            w0, c0 = time.perf_counter(), time.thread_time()
            events = c.tick(now)
            c.take_requests()
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            parts: dict[str, float] = {}
            for took, _, name in spent:
                parts[name] = parts.get(name, 0.0) + took
            split.append(parts)
            kinds = {e.kind.value for e in events}
            if c.looking:
                looks.append(cpu)
            what = "blind" if "blind" in kinds else "seeing" if "seeing" in kinds else ""
            if what:
                marks[what] = len(ticks)
            ticks.append((cpu, wall, what))

    started = len(ticks)
    run(True, lambda: len(ticks) - started >= 10)  # a second of steady operation first
    failed = len(ticks)
    run(False, lambda: "blind" in marks)
    started_blind = marks["blind"] - failed
    went = now
    run(False, lambda: now - went >= blind_for)
    # Counted from the states (a node down while blind is not listed in the failed set).
    down_at_sight = sum(ns.state is State.DOWN for ns in c.states.values())
    run(True, lambda: "seeing" in marks)
    run(True, lambda: len(ticks) - marks["seeing"] >= 20)  # two seconds after
    print(f"8. Going blind and seeing again at city scale: {len(c.states):,} node states, "
          f"the uplink down {blind_for:g} s after the monitor went blind "
          f"({down_at_sight:,} nodes down as it sees again); load average "
          f"{os.getloadavg()[0]:.2f} (target: no hold of the loop > 20 ms)")  # fmt: skip

    def within(i: int) -> str:
        took = {name: t for name, t in split[i].items() if t >= 0.001}
        if "_lead_up" in took:  # called by _vantage: a part of its time
            took["_vantage"] -= took["_lead_up"]
        return ", ".join(f"{name} {t * 1000:.1f}" for name, t in took.items()) or "-"

    for what in ("blind", "seeing"):
        i = marks[what]
        cpu, wall, _ = ticks[i]
        around = range(max(0, i - 3), min(len(ticks), i + 4))
        near = ", ".join(f"#{j - i:+d} {ticks[j][0] * 1000:.1f}" for j in around if j != i)
        print(f"   {'going blind' if what == 'blind' else 'seeing again'}: its tick "
              f"{cpu * 1000:.1f} ms CPU, {wall * 1000:.1f} ms wall (of it, ms CPU: "
              f"{within(i)}); the ticks around it (ms CPU): {near}")  # fmt: skip
    if looks:
        print(f"   seeing again, the look at every node before it: {len(looks)} ticks (a "
              f"slice each, the monitor blind till the last), longest {max(looks) * 1000:.1f} "
              f"ms CPU, {sum(looks) * 1000:.0f} ms in all")  # fmt: skip
    (cpu, wall, _), i = max((t, i) for i, t in enumerate(ticks) if not t[2])
    where = ", ".join(f"{i - marks[w]:+d} from {w}" for w in ("blind", "seeing"))
    over = sum(1 for t in ticks if not t[2] and t[0] > 0.02)
    print(f"   longest other tick {cpu * 1000:.1f} ms CPU ({wall * 1000:.1f} ms wall; of it "
          f"{within(i)}) of {len(ticks):,} ({where}; the uplink failed at "
          f"{-started_blind:+d} from blind); {over} other ticks over 20 ms CPU; longest "
          f"step of {step} results {observe_hold * 1000:.1f} ms CPU")  # fmt: skip
    gc.unfreeze()


def handoff(seconds: float = 2.5) -> None:
    """9. How late a 2 ms timer of the loop fires, in CPU time, beside a thread running
    plain Python: the interpreter's hand-off of its lock alone, at two switch intervals."""
    import sys

    from outagemon.daemon import RELOAD_SWITCH_INTERVAL

    def busy(stop: threading.Event, done: list[int]) -> None:
        x = 0
        while not stop.is_set():
            for _ in range(1000):
                x = abs(x - 1)
            done[0] += 1

    async def timer(calls: int) -> list[float]:
        late: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            cpu = time.process_time()
            for _ in range(calls):  # each lets go of the lock and takes it back
                os.stat("/")
            await asyncio.sleep(0.002)
            late.append(max(0.0, time.process_time() - cpu - 0.002))
        return late

    default = sys.getswitchinterval()
    print(f"9. The loop's 2 ms timer beside a thread running plain Python (no call into C "
          f"over 0.1 ms), lateness in process CPU (p50 / p99 / max); load average "
          f"{os.getloadavg()[0]:.2f}:")  # fmt: skip
    # the default, the reload's before the fourteenth session (1 ms), the reload's now
    for interval in sorted({default, 0.001, RELOAD_SWITCH_INTERVAL}, reverse=True):
        for calls in (0, 9):
            stop, done = threading.Event(), [0]
            worker = threading.Thread(target=busy, args=(stop, done))
            sys.setswitchinterval(interval)
            worker.start()
            try:
                late = asyncio.run(timer(calls))
            finally:
                stop.set()
                worker.join()
                sys.setswitchinterval(default)
            p50, p99 = percentile(late, 0.5) * 1000, percentile(late, 0.99) * 1000
            print(f"   switch interval {interval * 1000:g} ms, {calls} calls letting go of "
                  f"the lock a step: {len(late)} steps, late {p50:.2f} / {p99:.2f} / "
                  f"{max(late) * 1000:.2f} ms CPU; the thread's Python "
                  f"{done[0] / seconds / 1000:.0f} k loops a second")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="detection,loss,core,steady,reload,freeze")
    ap.add_argument("--nodes", type=int, default=1_000_000,
                    help="freeze: the nodes (each with its state) of the city")  # fmt: skip
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--profile", action="store_true",
                    help="reload: list the longest steps of the loop and of the swap")  # fmt: skip
    ap.add_argument("--where", action="store_true",
                    help="saves: as --profile, and where each step over 8 ms CPU was "
                         "(its stack sampled every 0.5 ms)")  # fmt: skip
    ap.add_argument("--change", type=float, default=0.0, metavar="PCT",
                    help="reload: change PCT %% of the subscribers first (a third leave, a "
                         "third move to other buildings and router addresses, as many "
                         "join)")  # fmt: skip
    ap.add_argument("--blind-for", type=float, default=150.0, metavar="S",
                    help="blind: how long the uplink stays down after the monitor went "
                         "blind (simulated seconds)")  # fmt: skip
    args = ap.parse_args()
    parts = args.parts.split(",")
    print("simulated networks, simulated time; the correlator is the real one")
    if "detection" in parts:
        detection()
    if "loss" in parts:
        loss()
    if "core" in parts:
        core_failure()
    if "steady" in parts:
        steady()
    if "reload" in parts:
        reload_hold(args.subscribers, args.profile, args.change)
    if "freeze" in parts:
        freeze_states(args.nodes)
    if "saves" in parts:
        saves(args.subscribers, args.profile, args.where)
    if "blind" in parts:
        blind(args.nodes, args.blind_for)
    if "handoff" in parts:
        handoff()
    more = f" --change {args.change:g}" if args.change else ""
    more += f" --nodes {args.nodes}" if "freeze" in parts or "blind" in parts else ""
    more += f" --blind-for {args.blind_for:g}" if "blind" in parts else ""
    more += " --profile" if args.profile else ""
    more += " --where" if args.where else ""
    print(f"reproduce: .venv/bin/python -m benchmarks.correlate_bench --parts {args.parts} "
          f"--subscribers {args.subscribers}{more}")  # fmt: skip


if __name__ == "__main__":
    main()
