"""When to probe what: a stable phase per target, a global rate limit, urgent re-probes.

Each target is probed every `interval` seconds at a phase fixed by a hash of its address,
so 100,000 targets spread evenly over the interval instead of bursting together, and a
restart keeps the same rhythm. A token bucket holds the whole at `max_rate` probes per
second. Urgent probes (confirm a loss, check a parent) jump the queue.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Set
from dataclasses import dataclass, field
from itertools import islice

from outagemon import logs
from outagemon.clock import now as steady_now
from outagemon.probing.engine import Engine

log = logs.get("outagemon.schedule")

TICK = 0.01  # seconds between scheduler wake-ups
LOSS_WINDOW = 20  # probes the rolling loss is computed over
PLAN_SLICE = 4_096  # entries a call into C takes at most while a reload's thread plans
# Targets a plan's bucket holds, each sorted in one call into C: (due, target) tuples sort
# slowly (4,096 took 3.7 ms median, 8.4 ms at worst, thread CPU, load 2.2; 12-19 ms beside
# the loop under load): a quarter of that, about 1 ms.
PLAN_SORT = 1_024


@dataclass(frozen=True, slots=True)
class Outcome:
    """One probe's result, with the target's recent history."""

    target: str
    ok: bool
    rtt: float | None  # seconds
    reason: str | None  # why it was lost
    loss: float  # share lost over the last LOSS_WINDOW probes (this one included)
    at: float  # when (outagemon.clock: wall time at start + monotonic, never stepped)


class History:
    """The last LOSS_WINDOW results of one target as bits."""

    __slots__ = ("bits", "count", "lost")

    def __init__(self) -> None:
        self.bits = 0
        self.count = 0
        self.lost = 0

    def add(self, lost: bool) -> float:
        if self.count == LOSS_WINDOW:
            self.lost -= (self.bits >> (LOSS_WINDOW - 1)) & 1
        else:
            self.count += 1
        self.bits = ((self.bits << 1) | int(lost)) & ((1 << LOSS_WINDOW) - 1)
        self.lost += int(lost)
        return self.lost / self.count


def phase(target: str, interval: float) -> float:
    """A stable offset within the interval, from the target's address."""
    return zlib.crc32(target.encode()) / 2**32 * interval


@dataclass(slots=True)
class Plan:
    """A new set of targets, ready to apply (Scheduler.plan)."""

    interval: float
    wanted: Collection[str]
    heap: list[tuple[float, str]]  # (due, target), a heap
    gone: list[str]  # active now, not wanted
    new: list[str]  # wanted, not active now
    # `gone` as a set, made off the loop: `apply` takes it as the retired targets when
    # none are (3,333 added one by one in the swap's step: 0.6-1.5 ms, 1-4 ms loaded).
    retiring: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        # Sizes, not contents: a reload's plan is the result of the future the event loop
        # wakes on, and asyncio's repr of that (a slow-callback warning, a task's repr)
        # would list a million (due, target) pairs on the loop: 140 ms at 100,000.
        sizes = f"{len(self.heap)} in the heap, {len(self.gone)} gone, {len(self.new)} new"
        return f"Plan(interval={self.interval:g}, {len(self.wanted)} wanted, {sizes})"


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        on_outcome: Callable[[Outcome], None],
        interval: float,
        max_rate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.on_outcome = on_outcome
        self.interval = interval
        self.max_rate = max_rate
        self.clock = clock
        self.history: dict[str, History] = {}
        self._heap: list[tuple[float, str]] = []
        self._active: Collection[str] = set()
        self._urgent: deque[str] = deque()
        self._urgent_set: set[str] = set()
        # Targets a reload took away whose history is still in `history`: their results
        # (in flight at the swap) are ignored, and their entries freed a slice at a time
        # after (`Retired`): 4,300 look-ups in a dict of a million held the swap 10 ms.
        self._retired: set[str] = set()
        self._tokens = 0.0
        self._last = clock()
        self.rounds = 0  # completed intervals since start (for /readyz)
        self.started = self._last
        engine.on_result = self._result

    def set_targets(self, targets: Iterable[str], interval: float | None = None) -> None:
        """Replace the probed set; targets that stay keep their history and rhythm."""
        plan = self.plan(targets, interval)
        self.apply(plan)
        history = self.history
        for target in plan.new:  # made now (apply leaves it to their first result)
            history.setdefault(target, History())
        self._retired.difference_update(plan.gone)
        for target in plan.gone:
            history.pop(target, None)

    def plan(self, targets: Iterable[str], interval: float | None = None) -> Plan:
        """set_targets' work, without changing anything: a thread may make it while the
        event loop probes (it reads only what apply() writes), so that a million targets
        hold the loop only for apply(). Targets given as a dict or set (never changed
        after; a topology's sharded addresses among them) are kept as the probed set
        itself."""
        # No call into C here takes more than PLAN_SLICE entries: one call holds the
        # interpreter's lock, and so the event loop, throughout (set() of a million
        # targets, a set difference of two, a heapify each held it for 0.1-0.3 s).
        interval = self.interval if interval is None else interval
        wanted: Collection[str]
        if isinstance(targets, (Mapping, Set)):
            wanted = targets  # kept as it is, never changed: a copy would be a new million
        else:
            wanted = set()
            each = iter(targets)
            while chunk := list(islice(each, PLAN_SLICE)):
                wanted.update(chunk)
        now = self.clock()
        base = now - now % interval
        # A sorted list is a heap: the targets go to buckets by when they are due (their
        # phases spread them evenly), each bucket is sorted alone, the buckets in order;
        # about PLAN_SORT targets to a bucket.
        width = max(1, len(wanted) // PLAN_SORT + 1)
        buckets: list[list[tuple[float, str]]] = [[] for _ in range(width)]
        scale = width / interval
        for target in wanted:
            due = base + phase(target, interval)
            if due < now:
                due += interval
            buckets[min(width - 1, max(0, int((due - now) * scale)))].append((due, target))
        heap: list[tuple[float, str]] = []
        for bucket in buckets:
            bucket.sort()
            heap += bucket
            # Emptied as it is taken: left full to this function's end, the buckets were
            # freed in one cascade (a million references let go in one call into C) that
            # held the interpreter's lock, and a reload's event loop, for 15-19 ms.
            bucket.clear()
        active = self._active
        gone = [t for t in active if t not in wanted]
        new = [t for t in wanted if t not in active]
        retiring: set[str] = set()
        for at in range(0, len(gone), PLAN_SLICE):
            retiring.update(gone[at : at + PLAN_SLICE])
        return Plan(interval, wanted, heap, gone, new, retiring)

    def apply(self, plan: Plan) -> list[object]:
        """Probe the planned targets from now on (what was due meanwhile is sent now).
        Returns the replaced containers, and the gone targets' histories (`Retired`), for
        the caller to free a slice at a time. A new target's history is made at its first
        result; a gone one's results are ignored from now on."""
        # Nothing here is a look-up per target in the history of a million: a reload that
        # changes 1 % of a city's subscribers has ~4,300 targets gone and as many new, and
        # those look-ups held the event loop 16-18 ms.
        self.interval = plan.interval
        retired = self._retired
        if retired:  # a target back before its old history was freed starts afresh
            for target in [t for t in plan.new if t in retired]:
                retired.discard(target)
                self.history.pop(target, None)
            retired.update(plan.gone)
        elif len(plan.retiring) == len(plan.gone):  # made with the plan: taken as it is
            self._retired = plan.retiring
        else:
            retired.update(plan.gone)
        old: list[object] = [self._heap, self._active, Retired(self, plan.gone)]
        self._heap = plan.heap
        self._active = plan.wanted
        return old

    def probe_now(self, target: str) -> None:
        """Probe this target as soon as the rate allows, ahead of the regular schedule."""
        if target in self._active and target not in self._urgent_set:
            self._urgent.append(target)
            self._urgent_set.add(target)

    def tick(self) -> int:
        """Send what is due; return how many were sent."""
        now = self.clock()
        self._tokens = min(self._tokens + (now - self._last) * self.max_rate,
                           max(1.0, self.max_rate * 0.05))  # fmt: skip
        self._last = now
        sent = 0
        send = self.engine.send
        while self._urgent and self._tokens >= 1:
            target = self._urgent.popleft()
            self._urgent_set.discard(target)
            send(target)
            self._tokens -= 1
            sent += 1
        heap = self._heap
        while heap and heap[0][0] <= now:
            if self._tokens < 1:
                break  # the rest waits for the next tick
            due, target = heap[0]
            if target not in self._active:
                heapq.heappop(heap)
                continue
            send(target)
            self._tokens -= 1
            sent += 1
            nxt = due + self.interval
            if nxt <= now:  # far behind (a stall): rejoin the rhythm rather than burst
                nxt += (now - nxt) // self.interval * self.interval + self.interval
            heapq.heapreplace(heap, (nxt, target))
        self.rounds = int((now - self.started) // self.interval)
        return sent

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK)

    def _result(self, target: str, rtt: float | None, reason: str | None) -> None:
        history = self.history.get(target)
        if history is None:
            if target not in self._active:
                return  # removed by a reload while in flight (its history freed since)
            history = self.history[target] = History()  # new at a reload: its first result
        elif target in self._retired:
            return  # removed by a reload while in flight (its history not freed yet)
        loss = history.add(rtt is None)
        self.on_outcome(Outcome(target, rtt is not None, rtt, reason, loss, steady_now()))


class Retired:
    """The histories of the targets a reload took away, freed a slice at a time by the
    caller (`release`) rather than in the swap's step; a target probed again meanwhile
    keeps its new history."""

    __slots__ = ("_scheduler", "_targets")

    def __init__(self, scheduler: Scheduler, targets: list[str]) -> None:
        self._scheduler = scheduler
        self._targets = targets

    def __len__(self) -> int:
        return len(self._targets)

    def release(self, count: int) -> None:
        """Free the histories of up to `count` more targets."""
        targets, retired = self._targets, self._scheduler._retired
        history = self._scheduler.history
        for target in targets[-count:]:
            if target in retired:
                retired.discard(target)
                history.pop(target, None)
        del targets[-count:]
