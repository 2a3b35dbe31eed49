"""A simulated network in simulated time, standing in for the ICMP engine.

Used where a real network cannot exist: scenario tests of the correlator, benchmarks of
detection latency and cost on city-sized networks, and the demo. Devices fail, links
lose packets, the monitor's own uplink goes silent; probes are scheduled like the real
scheduler does (a stable phase per target, urgent re-probes on request) and answered or
lost after `timeout`, all on a virtual clock: an hour replays in a second.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable, Iterable

from outagemon.core.correlator import Correlator
from outagemon.core.incidents import Event
from outagemon.core.topology import Topology

RTT = 0.001


class SimNet:
    def __init__(
        self,
        topology: Topology,
        correlator: Correlator,
        interval: float = 10.0,
        timeout: float = 1.0,
        seed: int = 1,
        start: float = 1_000_000.0,
        tick: float = 0.1,
        extra_targets: Iterable[str] = (),
    ) -> None:
        self.topology = topology
        self.correlator = correlator
        self.interval = interval
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.now = start
        self.tick_every = tick
        self.broken: set[str] = set()  # devices or (for passive nodes) cables that failed
        self.loss: dict[str, float] = {}
        self.default_loss = 0.0
        self.uplink_down = False  # the monitor's own uplink: nothing answers
        self.events: list[Event] = []
        self.on_event: Callable[[Event], None] | None = None
        self.probes = 0
        self._cut: set[str] = set()
        self._queue: list[tuple[float, int, str, str]] = []  # (time, seq, kind, node)
        self._seq = 0
        self._in_flight: set[str] = set()
        targets = [n.id for n in topology.nodes.values() if n.probed]
        targets += [t for t in extra_targets if t not in topology]
        self.targets = targets
        for t in targets:
            offset = zlib.crc32(t.encode()) / 2**32 * interval
            self._push(start + offset, "due", t)
        self._push(start, "tick", "")

    def _push(self, at: float, kind: str, node: str) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, node))

    # -- faults ----------------------------------------------------------------------

    def fail(self, *nodes: str) -> None:
        self.broken.update(nodes)
        self._cut = self.topology.cut_off(self.broken)

    def repair(self, *nodes: str) -> None:
        self.broken.difference_update(nodes)
        self._cut = self.topology.cut_off(self.broken)

    def answers(self, node: str) -> bool:
        if self.uplink_down or node in self._cut or node in self.broken:
            return False
        loss = self.loss.get(node, self.default_loss)
        return not (loss and self.rng.random() < loss)

    # -- time ------------------------------------------------------------------------

    def run_for(self, seconds: float) -> list[Event]:
        return self.run_until(self.now + seconds)

    def run_until(self, end: float) -> list[Event]:
        """Advance the clock, probing and deciding; return the events it produced."""
        produced: list[Event] = []
        while self._queue and self._queue[0][0] <= end:
            at, _, kind, node = heapq.heappop(self._queue)
            self.now = at
            if kind == "due":
                self._send(node)
                self._push(at + self.interval, "due", node)
            elif kind == "result_ok" or kind == "result_lost":
                self._in_flight.discard(node)
                self.correlator.observe(node, kind == "result_ok", at)
            elif kind == "tick":
                for ev in self.correlator.tick(at):
                    produced.append(ev)
                    if self.on_event is not None:
                        self.on_event(ev)
                for node in self.correlator.take_requests():
                    self._send(node)
                self._push(at + self.tick_every, "tick", "")
        self.now = end
        self.events.extend(produced)
        return produced

    def probe(self, node: str) -> None:
        """Probe a node now (an urgent probe asked for by the correlator)."""
        self._send(node)

    def _send(self, node: str) -> None:
        if node in self._in_flight:
            return  # one probe at a time per target, as the real scheduler's urgent queue
        self._in_flight.add(node)
        self.probes += 1
        if self.answers(node):
            self._push(self.now + RTT, "result_ok", node)
        else:
            self._push(self.now + self.timeout, "result_lost", node)
