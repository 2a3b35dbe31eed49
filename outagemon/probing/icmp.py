"""The daemon's probe source over ICMP: one engine, its scheduler, and the decision loop.

Results go to the monitor (`observe`); every TICK the monitor decides (`tick`) and the
nodes it wants probed at once are probed ahead of their schedule. The daemon sees this
through its `ProbeSource` protocol; the demo supplies a simulated network instead.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from outagemon import logs
from outagemon.config import ProbeConfig
from outagemon.errors import OutagemonError
from outagemon.metrics import Registry
from outagemon.probing.engine import Engine, PermissionProblem
from outagemon.probing.scheduler import Outcome, Plan, Scheduler

log = logs.get("outagemon.daemon")  # its lines have always been the daemon's

TICK = 0.1  # seconds between correlator decisions
# Rounds after the start, and after a reload, at whose end what was made meanwhile is
# frozen (gc.freeze): the first results make a state for every node and a history for
# every target (a million in a city), after the directory's objects were frozen; the
# second round catches the replies still in flight at the end of the first.
FREEZE_ROUNDS = 2


class Feed(Protocol):
    """What the results feed: the monitor."""

    first_round_done: bool

    def observe(self, node: str, ok: bool, at: float) -> None: ...
    def tick(self) -> list[str]: ...
    @property
    def looking(self) -> bool: ...
    def address(self, node: str) -> str | None: ...


class Readiness(Protocol):
    """Where the daemon's readiness and probe rate are shown: the HTTP runtime."""

    not_ready: str | None
    probe_rate: float
    metrics: Registry


@dataclass(slots=True)
class Retarget:
    node_of: Mapping[str, str]  # address -> node
    schedule: Plan
    families: dict[int, int]  # address family -> its targets (the receive queue's need)

    def __repr__(self) -> str:  # sizes, not a million addresses (see Plan.__repr__)
        return f"Retarget({len(self.node_of)} targets, {self.schedule!r})"


class IcmpSource:
    """Probes every target address over ICMP at the configured interval and rate."""

    follows_reload = True  # a reload changes the targets, interval and rate
    # Made by start(): the scheduler counts its rounds from when it is made.
    engine: Engine
    scheduler: Scheduler

    def __init__(self, probe: ProbeConfig) -> None:
        self.probe = probe
        # address -> node (a node's address, the other way, the monitor knows: a reload
        # made a second dict of a million entries, and its growing held the event loop)
        self.node_of: Mapping[str, str] = {}
        self._freeze_from = 0  # the scheduler's round count when probing (re)started
        self._frozen = 0  # rounds since then whose end was frozen

    def start(self, feed: Feed, shown: Readiness,
              targets: Mapping[str, str]) -> dict[str, Coroutine[Any, Any, None]]:  # fmt: skip
        """Open the sockets and begin; returns the background tasks, by name."""
        probe = self.probe
        self.node_of = targets
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_failure(e: BaseException) -> None:
            # A result callback raised: results are no longer trusted. The "engine" task
            # fails with it, and the daemon stops (exit 1) for systemd to restart it.
            if not failed.done():
                failed.set_exception(e)

        self.engine = Engine(lambda *a: None, timeout=probe.timeout, on_failure=on_failure)
        families = _per_family(self.node_of)
        try:
            self.engine.open(tuple(sorted(families)) or (socket.AF_INET,))
        except PermissionProblem as e:
            raise OutagemonError(str(e)) from None

        def outcome(o: Outcome) -> None:
            node = self.node_of.get(o.target)
            if node is not None:
                feed.observe(node, o.ok, o.at)

        self.scheduler = Scheduler(self.engine, outcome, probe.interval, probe.max_rate)
        self.scheduler.set_targets(self.node_of)
        self.engine.check_rcvbuf(families)
        shown.metrics.on_collect(lambda: self._probe_metrics(shown.metrics))
        shown.not_ready = "the first probe round has not finished yet"
        return {"scheduler": self.scheduler.run(), "correlate": self._correlate(feed, shown),
                "engine": _wait(failed)}  # fmt: skip

    def plan(self, targets: Mapping[str, str], probe: ProbeConfig) -> Retarget:
        """retarget()'s work that changes nothing yet: made in a thread at a reload."""
        return Retarget(targets, self.scheduler.plan(targets, probe.interval),
                        _per_family(targets))  # fmt: skip

    def retarget(self, targets: Mapping[str, str], probe: ProbeConfig,
                 plan: object = None) -> list[object]:  # fmt: skip
        """A reload: new targets, interval and rate; the old targets keep their phase.
        `plan`: from plan() with the same targets, when made already. Returns the
        replaced containers (a million entries: the caller frees them in slices)."""
        if not isinstance(plan, Retarget):
            plan = self.plan(targets, probe)
        old: list[object] = [self.node_of]
        self.node_of = plan.node_of
        old += self.scheduler.apply(plan.schedule)
        self.scheduler.max_rate = probe.max_rate
        # Probes sent from now on wait the new timeout (they kept the start's for good);
        # those in flight keep theirs, so a shorter one's first losses may come that late.
        self.engine.timeout = probe.timeout
        self.engine.check_rcvbuf(plan.families)
        self._freeze_from, self._frozen = self.scheduler.rounds, 0  # new targets' states
        return old

    def freeze_made(self) -> bool:
        """Freeze (gc.freeze) what the results made, once at the end of each of the first
        FREEZE_ROUNDS rounds after the start or a reload: a node's state and a target's
        history, a million of each in a city, are made by their first result, after the
        directory was frozen, and every full collection of the cyclic collector walked
        them all (on the loop). Moving them out of the collector's generations is O(1);
        they are still freed by reference counting (a reload's gone nodes), but a cycle
        of garbage already in the oldest generation then is kept for good (the young
        ones are collected first). Returns whether it froze now."""
        done = self.scheduler.rounds - self._freeze_from
        if self._frozen >= FREEZE_ROUNDS or done <= self._frozen:
            return False
        self._frozen = min(done, FREEZE_ROUNDS)
        gc.collect(1)  # the young generations' garbage first (small), not frozen with them
        gc.freeze()
        return True

    def close(self) -> None:
        self.engine.close()

    def _probe_metrics(self, metrics: Registry) -> None:
        """The engine's counters, read when /metrics is asked (malformed and foreign
        packets, late replies, kernel drops are counted, never silent)."""
        stats = self.engine.stats
        self.engine.kernel_drops()
        counter = metrics.counter("outagemon_probe_packets_total", "ICMP engine counts by kind.")
        for kind, value in stats.as_dict().items():
            counter.set(float(value), kind=kind)
        metrics.gauge(
            "outagemon_probes_in_flight", "Probes sent and not yet answered or expired."
        ).set(self.engine.in_flight)

    async def _correlate(self, feed: Feed, shown: Readiness) -> None:
        sent_before, measured = self.engine.stats.sent, time.monotonic()
        while True:
            started = time.monotonic()
            for node in feed.tick():
                ip = feed.address(node)
                if ip is not None:
                    self.scheduler.probe_now(ip)
            if shown.not_ready is not None and self.scheduler.rounds >= 1:
                shown.not_ready = None
                feed.first_round_done = True
                log.info("daemon.first_round_done", targets=len(self.node_of))
            self.freeze_made()
            if started - measured >= 5:
                stats = self.engine.stats
                shown.probe_rate = (stats.sent - sent_before) / (started - measured)
                sent_before, measured = stats.sent, started
            # Subtract the time the work took, so a busy tick does not slow the rhythm;
            # while the correlator looks at every node a slice a tick (as it sees again,
            # blind till done), the next slice at the loop's next step.
            pause = 0.0 if feed.looking else TICK - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, pause))


async def _wait(failed: asyncio.Future[None]) -> None:
    await failed


def _per_family(targets: Mapping[str, str]) -> dict[int, int]:
    """How many of the target addresses are IPv4 and IPv6, by socket family (only the
    families that have any)."""
    v6 = sum(1 for ip in targets if ":" in ip)
    counts = {socket.AF_INET: len(targets) - v6, socket.AF_INET6: v6}
    return {family: n for family, n in counts.items() if n}
