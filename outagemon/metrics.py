"""Counters and gauges in the Prometheus text format.

Written here rather than taken from prometheus-client: that library keeps one global
registry per process, which tests that build several apps trip over, and all we need is
a dict of floats and the text format (exposition format 0.0.4).
"""

from __future__ import annotations

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


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, name: str, kind: str, help: str) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, kind, help)
        return metric

    def counter(self, name: str, help: str) -> Metric:
        return self._add(name, "counter", help)

    def gauge(self, name: str, help: str) -> Metric:
        return self._add(name, "gauge", help)

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
            for labels, value in (m.values or {(): 0.0}).items():
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                series = f"{m.name}{{{text}}}" if text else m.name
                lines.append(f"{series} {value:.17g}")
        return "\n".join(lines) + "\n"
