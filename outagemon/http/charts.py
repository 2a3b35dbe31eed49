"""The reports page's pictures, drawn on the server as SVG: no script, nothing fetched.

Every shape that stands for a figure carries it in data- attributes and a <title> (shown
on hover), so what is drawn can be read back and checked against the API. Text is
escaped; colours are classes of page.css or presentation attributes (the page's CSP
allows no inline style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from outagemon.http.runtime import local as shown

WIDTH = 1100
LEFT = 8  # the plot's left margin
RIGHT = 8


def _x(t: float, start: float, end: float, width: float = WIDTH) -> float:
    span = max(end - start, 1.0)
    return LEFT + (min(max(t, start), end) - start) / span * (width - LEFT - RIGHT)


def _attrs(**values: object) -> Markup:
    """SVG attributes, escaped; `data_x` becomes data-x, `class_` class."""
    out = []
    for key, value in values.items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        if isinstance(value, float):
            value = f"{value:.2f}"
        out.append(Markup('{}="{}"').format(Markup(name), value))
    return Markup(" ").join(out)


def _ticks(start: float, end: float) -> list[tuple[float, str]]:
    """Local-time ticks on whole hours or days: about eight across the span."""
    span = end - start
    local = shown(datetime.fromtimestamp(start, tz=UTC))
    if span <= 2 * 86400:
        step = timedelta(hours=3)
        first = local.replace(minute=0, second=0, microsecond=0)
        first += timedelta(hours=(3 - first.hour % 3) % 3)
        fmt = "%H:%M"
    else:
        days = 1 if span <= 8 * 86400 else 5
        step = timedelta(days=days)
        first = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        fmt = "%d.%m"
    ticks = []
    t = first
    while t.timestamp() < end:
        if t.timestamp() >= start:
            ticks.append((t.timestamp(), t.strftime(fmt)))
        t += step
    return ticks


def _axis(start: float, end: float, top: float, bottom: float) -> Markup:
    parts = [Markup('<g class="axis">')]
    for t, label in _ticks(start, end):
        x = _x(t, start, end)
        parts.append(Markup("<line {}/>").format(_attrs(x1=x, x2=x, y1=top, y2=bottom)))
        parts.append(Markup("<text {}>{}</text>").format(_attrs(x=x + 3, y=bottom + 14), label))
    parts.append(Markup("</g>"))
    return Markup("").join(parts)


def _lanes(bars: Sequence[tuple[float, float]]) -> list[int]:
    """A lane for each bar (in the order given) so that bars in a lane do not overlap."""
    ends: list[float] = []
    lanes = []
    for lo, hi in bars:
        for i, last in enumerate(ends):
            if last <= lo:
                ends[i] = hi
                lanes.append(i)
                break
        else:
            ends.append(hi)
            lanes.append(len(ends) - 1)
    return lanes


GROUP = "\u202f"  # a narrow no-break space between groups of thousands (SI, ISO 80000)


def figure(value: float) -> str:
    """A number for people, read alike in Russian and English: at most two decimals after
    a point (three digits after one are thousands to a Russian reader: "1.447"), trailing
    zeros dropped, thousands apart by a narrow space, never a comma ("1 234.5")."""
    text = f"{value:,.2f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text.replace(",", GROUP)


def percent(value: float) -> str:
    """An availability for people (see `figure`), cut to two decimals, never rounded up:
    99.999 % is no 100 %."""
    return figure(math.floor(value * 100 + 1e-6) / 100)  # (99.8 * 100 is 9979.999...)


def _count(n: int, word: str) -> str:
    """A count in words, "1 incident", "2 incidents": a title is read by people."""
    return f"{figure(n)} {word}{'' if n == 1 else 's'}"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "still open"
    return shown(datetime.fromtimestamp(seconds, tz=UTC)).strftime("%d.%m %H:%M")


def timeline(incidents: Sequence[dict[str, Any]], start: float, end: float,
             now: float) -> Markup:  # fmt: skip
    """Each incident a bar from its opening to its repair (a reopened one a bar for each
    fault, in one lane: the time between was service); its height and shade grow with
    the subscribers it cut off (square root: a city-wide outage does not flatten the rest).
    `incidents`: rows with id, kind, root_node, subscribers, opened and resolved (seconds),
    and its `faults` ((start, end) seconds) if it reopened."""
    lane_h, max_bar = 34, 28
    rows = sorted(incidents, key=lambda r: (r["opened"], int(r["id"])))
    spans = [(_x(r["opened"], start, end), _x(r["resolved"] or now, start, end)) for r in rows]
    lanes = _lanes([(lo, max(hi, lo + 3)) for lo, hi in spans])
    n_lanes = max(lanes, default=0) + 1
    height = n_lanes * lane_h + 24
    most = max((r["subscribers"] for r in rows), default=0) or 1
    parts = [Markup('<svg class="chart timeline" role="img" {}>').format(_attrs(
        viewBox=f"0 0 {WIDTH} {height}", width=WIDTH, height=height,
        data_from=int(start), data_to=int(end), data_bars=len(rows),
        aria_label=f"{len(rows)} incidents from {_when(start)} to {_when(end)}"))]  # fmt: skip
    parts.append(_axis(start, end, 0, n_lanes * lane_h))
    for r, lane in zip(rows, lanes, strict=True):
        share = math.sqrt(r["subscribers"] / most) if r["subscribers"] > 0 else 0.0
        h = 6 + (max_bar - 6) * share
        y = lane * lane_h + (lane_h - h) / 2
        shade = min(4, int(share * 4.999))  # five shades, page.css .s0 .. .s4
        faults = r.get("faults") or [(r["opened"], r["resolved"] or now)]
        for i, (f_lo, f_hi) in enumerate(faults):
            lo, hi = _x(f_lo, start, end), _x(f_hi, start, end)
            # The last fault ends with the incident (None while it is open).
            repaired = r["resolved"] if i == len(faults) - 1 else f_hi
            title = (f"#{r['id']} {r['kind']} at {r['root_node']}: "
                     f"{figure(r['subscribers'])} subscribers, {_when(f_lo)} – "
                     f"{_when(repaired)}")  # fmt: skip
            rect = _attrs(
                x=lo, y=y, width=max(hi - lo, 3.0), height=h, rx=2,
                class_=f"bar {r['kind']} s{shade}", data_incident=r["id"], data_kind=r["kind"],
                data_subscribers=r["subscribers"], data_opened=int(f_lo),
                data_resolved=int(repaired) if repaired is not None else "",
            )  # fmt: skip
            parts.append(Markup('<a {}><rect {}><title>{}</title></rect></a>').format(
                _attrs(href=f"/incidents/{r['id']}"), rect, title))  # fmt: skip
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def calls(buckets: Sequence[dict[str, Any]], start: float, end: float, step: float) -> Markup:
    """Calls a minute (a line) over incidents open (grey columns behind it). `buckets`:
    the API's (at, calls_per_minute, open_incidents)."""
    height, top, bottom = 200, 24, 170
    series = [(datetime.fromisoformat(b["at"]).timestamp(), b["calls_per_minute"],
               b["open_incidents"]) for b in buckets]  # fmt: skip
    most_calls = max((c for _, c, _ in series), default=0.0) or 1.0
    most_open = max((o for _, _, o in series), default=0) or 1
    parts = [Markup('<svg class="chart calls" role="img" {}>').format(_attrs(
        viewBox=f"0 0 {WIDTH} {height}", width=WIDTH, height=height,
        data_buckets=len(series), data_step=int(step),
        aria_label="calls a minute against incidents open"))]  # fmt: skip
    parts.append(_axis(start, end, top, bottom))
    points = []
    for t, rate, n_open in series:
        x0, x1 = _x(t, start, end), _x(t + step, start, end)
        h = (bottom - top) * n_open / most_open
        title = f"{_when(t)}: {figure(rate)} calls a minute, {_count(n_open, 'incident')} open"
        parts.append(Markup("<rect {}><title>{}</title></rect>").format(_attrs(
            x=x0, y=bottom - h, width=max(x1 - x0 - 0.5, 0.5), height=h, class_="open",
            data_start=int(t), data_calls=f"{rate:g}", data_open=n_open), title))  # fmt: skip
        y = bottom - (bottom - top) * rate / most_calls
        points.append(f"{(x0 + x1) / 2:.1f},{y:.1f}")
    if points:
        parts.append(Markup("<polyline {}/>").format(
            _attrs(points=" ".join(points), class_="rate", fill="none")))  # fmt: skip
    legend = (f"peak {figure(most_calls)} calls a minute; up to "
              f"{_count(most_open, 'incident')} open")  # fmt: skip
    parts.append(Markup("<text {}>{}</text>").format(
        _attrs(x=LEFT + 4, y=top - 8, class_="legend"), legend))  # fmt: skip
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def worst(rows: Sequence[dict[str, Any]], what: str, limit: int = 10) -> Markup:
    """The places that lost most, as horizontal bars: outage minutes, then planned works'
    minutes after them in another colour, each said beside the bar (a place that lost only
    planned works has a bar: "0 min · 100 %" alone beside it read as nothing drawn)."""
    shown = list(rows[:limit])
    bar_h, label_w, width = 24, 330, 760
    height = max(1, len(shown)) * bar_h + 8
    most = max((r["outage_minutes"] + r["planned_minutes"] for r in shown), default=0) or 1
    scale = (width - label_w - 230) / most  # room for the figures beside the longest
    parts = [Markup('<svg class="chart worst" role="img" {}>').format(_attrs(
        viewBox=f"0 0 {width} {height}", width=width, height=height, data_what=what,
        data_rows=len(shown), aria_label=f"the {len(shown)} {what} that lost most"))]  # fmt: skip
    if not shown:
        parts.append(Markup('<text x="8" y="18" class="legend">nothing lost</text>'))
    for i, r in enumerate(shown):
        y = i * bar_h + 4
        out_w, plan_w = r["outage_minutes"] * scale, r["planned_minutes"] * scale
        label = str(r["key"])
        if len(label) > 44:
            label = label[:43] + "…"
        parts.append(Markup("<g {}>").format(_attrs(
            class_="place", data_key=r["key"], data_outage_minutes=f"{r['outage_minutes']:g}",
            data_planned_minutes=f"{r['planned_minutes']:g}", data_incidents=r["incidents"],
            data_availability=f"{r['availability_pct']:g}")))  # fmt: skip
        title = (f"{r['key']}: {figure(r['outage_minutes'])} min out, "
                 f"{figure(r['planned_minutes'])} min planned works, "
                 f"{_count(r['incidents'], 'incident')}, "
                 f"{percent(r['availability_pct'])} % available")  # fmt: skip
        parts.append(Markup("<title>{}</title>").format(title))
        parts.append(Markup("<text {}>{}</text>").format(
            _attrs(x=label_w - 6, y=y + 16, text_anchor="end"), label))  # fmt: skip
        parts.append(Markup("<rect {}/>").format(_attrs(
            x=label_w, y=y + 3, width=max(out_w, 0.0), height=bar_h - 8,
            class_="out")))  # fmt: skip
        parts.append(Markup("<rect {}/>").format(_attrs(
            x=label_w + out_w, y=y + 3, width=max(plan_w, 0.0), height=bar_h - 8,
            class_="planned")))  # fmt: skip
        said = f"{figure(r['outage_minutes'])} min · {percent(r['availability_pct'])} %"
        if r["planned_minutes"]:
            said += f" · works {figure(r['planned_minutes'])} min"
        parts.append(Markup("<text {}>{}</text>").format(
            _attrs(x=label_w + out_w + plan_w + 6, y=y + 16, class_="value"), said))  # fmt: skip
        parts.append(Markup("</g>"))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
