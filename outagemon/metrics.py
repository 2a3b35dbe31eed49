"""Counters, gauges and histograms in the Prometheus text format; the event loop's lag.

Written here rather than taken from prometheus-client: that library keeps one global
registry per process, which tests that build several apps trip over, and all we need is
a dict of floats and the text format (exposition format 0.0.4).
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metric:
    __slots__ = ("help", "kind", "name", "values")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def inc_key(self, key: Labels, amount: float = 1.0) -> None:
        """inc() with the labels already as a sorted tuple (for hot paths)."""
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


class Histogram:
    """Observations counted into cumulative buckets (upper bounds, +Inf last)."""

    __slots__ = ("bounds", "count", "counts", "help", "name", "sum")
    kind = "histogram"

    def __init__(self, name: str, help: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.help = help
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; +Inf last
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out: list[str] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{self.name}_bucket{{le="{le}"}} {total}')
        out.append(f"{self.name}_sum {number(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL = 0.02  # a hold of the loop this long or longer always delays a timer


class LoopLag:
    """The event loop's lag, measured continuously: a timer asked every LAG_INTERVAL
    seconds, and how late it fires, into a histogram (and the worst since start). Any step
    that holds the loop for T seconds makes the timer due during it up to T late."""

    def __init__(self, registry: Registry, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.histogram = registry.histogram(
            "outagemon_loop_lag_seconds",
            f"How late a timer asked every {interval:g} s fired: the event loop's lag.",
            LAG_BOUNDS,
        )
        self.gauge = registry.gauge(
            "outagemon_loop_hold_max_seconds",
            f"Longest the event loop was held since start (a {interval:g} s timer's lateness).",
        )
        self.worst = 0.0
        self.recent = 0.0  # the worst since the last take_recent()

    def take_recent(self) -> float:
        """The longest hold since the last call (a reporter's window)."""
        worst, self.recent = self.recent, 0.0
        return worst

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval, observe = self.interval, self.histogram.observe
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            late = max(0.0, loop.time() - asked - interval)
            observe(late)
            if late > self.recent:
                self.recent = late
            if late > self.worst:
                self.worst = late
                self.gauge.set(round(late, 4))


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric | Histogram] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, name: str, kind: str, help: str) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, kind, help)
        assert isinstance(metric, Metric), name
        return metric

    def histogram(self, name: str, help: str, bounds: tuple[float, ...]) -> Histogram:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Histogram(name, help, bounds)
        assert isinstance(metric, Histogram), name
        return metric

    def counter(self, name: str, help: str) -> Metric:
        return self._add(name, "counter", help)

    def gauge(self, name: str, help: str) -> Metric:
        return self._add(name, "gauge", help)

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value for these labels (0 when never set)."""
        metric = self._metrics.get(name)
        if metric is None:
            return 0.0
        assert isinstance(metric, Metric), f"{name} is a histogram"
        return metric.get(**labels)

    def on_collect(self, collector: Callable[[], None]) -> None:
        """Run `collector` before each rendering, to refresh gauges read from elsewhere."""
        self._collectors.append(collector)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        lines: list[str] = []
        for m in self._metrics.values():
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            if isinstance(m, Histogram):
                lines += m.lines()
                continue
            for labels, value in (m.values or {(): 0.0}).items():
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                series = f"{m.name}{{{text}}}" if text else m.name
                lines.append(f"{series} {number(value)}")
        return "\n".join(lines) + "\n"


def number(value: float) -> str:
    """A sample's value as Prometheus reads it, in the shortest text that reads back to the
    same float ("0.4", not .17g's "0.40000000000000002"; a whole number without ".0")."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
