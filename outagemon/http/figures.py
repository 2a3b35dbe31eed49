"""Availability and response figures for the reports API and page.

A report reads the database only: /check answers from memory and never waits for one.
Reports read on the outage history's own pool (`Runtime.reports`, [history] connections),
each query in a read-only transaction the server ends after [history] timeout; one that
finds every connection busy for ACQUIRE seconds is refused with a sentence. Places'
losses are added up by PostgreSQL (`store.PLACES`: a year of a city's impact record never
comes into this process); what the core defines (`core/figures.py`, held equal to the SQL
by the tests) is figured here for the incidents, in a worker thread.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from outagemon import logs
from outagemon.core import downtime, figures
from outagemon.core.figures import Interval, Stored
from outagemon.core.topology import Topology, inherited_label
from outagemon.db import store
from outagemon.http.runtime import Invalid, Runtime, iso_wall

log = logs.get("outagemon.reports")
ACQUIRE = 5.0  # seconds a report waits for a connection of the reports' pool, then 503
T = TypeVar("T")

GROUPS = ("building", "node")  # and any label the topology's nodes carry
DETECT_NOTE = (
    "detect_seconds runs from the time the root's own probes found it down ([probe] "
    "down_after lost probes in a row, the incident's opened_at) to the incident's opening; "
    "the first lost probe is not stored, it came at most (down_after - 1) probe intervals "
    "before opened_at."
)
CALLS_NOTES = {
    "per_minute": "Calls are counted per minute as /check answers them.",
    "incident_totals": "No calls were counted per minute in this period (history from "
    "before they were): each incident's total is spread evenly over its life.",
}


@dataclass(frozen=True, slots=True)
class Report:
    """What a report reads: the incidents, when the monitor was blind, calls per minute
    (start, all, naming an incident), and the places asked for (group -> rows)."""

    incidents: list[Stored]
    blind: list[Interval]
    calls: list[tuple[float, int, int]]
    places: dict[str, list[Any]]


class Busy(Exception):
    """The reports' database budget is taken, or the database does not answer."""


def install_gauges(rt: Runtime) -> None:
    """Gauges of what open incidents cost now, read from memory at each scrape of
    /metrics (open incidents by kind are the monitor's `outagemon_incidents_open`): the
    minutes of the fault each is in, a reopened one's from its reopening (the time
    before it was service; its first fault is in the reports)."""
    cut_off = rt.metrics.gauge(
        "outagemon_subscribers_cut_off", "Subscribers cut off by open incidents, by kind."
    )
    minutes = rt.metrics.gauge(
        "outagemon_open_subscriber_minutes",
        "Subscriber-minutes lost so far by the faults of the incidents open now "
        "(a reopened one's since it reopened), by kind.")  # fmt: skip

    def collect() -> None:
        m = rt.monitor
        people = {"outage": 0, "maintenance": 0}
        lost = {"outage": 0.0, "maintenance": 0.0}
        if m is not None:
            now = m.clock()
            for inc in m.correlator.incidents.values():
                subscribers = m.subscribers_of(inc.nodes)
                kind = inc.kind.value
                people[kind] = people.get(kind, 0) + subscribers
                lost[kind] = lost.get(kind, 0.0) + subscribers * max(0.0, now - inc.since) / 60
        for kind, subscribers in people.items():
            cut_off.set(subscribers, kind=kind)
            minutes.set(round(lost[kind], 1), kind=kind)

    rt.metrics.on_collect(collect)


def period(query: Mapping[str, str], rt: Runtime, now: float) -> tuple[float, float]:
    """[from, to) of a report's query, read as the outage history reads it (dates or ISO
    8601 times with an offset, at most [history] max_period_days); Invalid with the
    sentence that says what is wrong."""
    try:
        start, end = downtime.period(query.get("from", ""), query.get("to", ""), rt.texts.tz,
                                     rt.config.history.max_period_days)  # fmt: skip
    except downtime.BadPeriod as e:
        raise Invalid(str(e)) from None
    if start.timestamp() < 0:
        raise Invalid("from is before 1970; nothing is recorded that early.")
    if start.timestamp() > now:
        raise Invalid("from is in the future: there is nothing to report yet.")
    return start.timestamp(), end.timestamp()


async def made(rt: Runtime, start: float, end: float, now: float,
               compute: Callable[[Report], T], places: Mapping[str, int] | None = None,
               incidents: bool = True) -> T:  # fmt: skip
    """`compute(report)` of what happened in [start, end): the incidents (unless not
    asked for) and the places of each group in `places` (group -> rows at most), read on
    one connection of the reports' own pool, then figured in a worker thread: a report
    never holds up the event loop, and /check with it."""
    maps = {group: await asyncio.to_thread(place_map, rt, group) for group in places or {}}
    async with _connection(rt) as conn:
        limit = rt.config.history.timeout
        rows: dict[str, list[Any]] = {"incidents": [], "blind": [], "calls": []}
        if incidents:
            rows = await _query(limit, store.report(conn, _dt(start), _dt(end), _dt(now),
                                                    limit))  # fmt: skip
        found: dict[str, list[Any]] = {}
        for group, (mapped, unmapped) in maps.items():
            assert places is not None
            found[group] = await _query(limit, store.places(
                conn, _dt(start), _dt(end), _dt(now), mapped, unmapped, places[group],
                limit))  # fmt: skip
    return await asyncio.to_thread(lambda: compute(_report(rows, found, start, end, now)))


@asynccontextmanager
async def _connection(rt: Runtime) -> AsyncIterator[Any]:
    pool = rt.reports
    if pool is None:
        raise Busy("reports are read from the database, which is not connected yet; "
                   "try again shortly.")  # fmt: skip
    try:
        conn = await pool.acquire(timeout=ACQUIRE)
    except TimeoutError:
        raise Busy(f"every connection of the reports is busy ([history] connections) for "
                   f"{ACQUIRE:g} s; try again shortly.") from None  # fmt: skip
    except Exception as e:
        log.warning("reports.database_unavailable", error=str(e) or type(e).__name__)
        raise Busy("the database does not answer right now; try again shortly.") from None
    try:
        yield conn
    finally:
        await pool.release(conn)


async def _query(limit: float, query: Coroutine[Any, Any, T]) -> T:
    try:
        return await query
    except (TimeoutError, asyncpg.QueryCanceledError):
        raise Busy(f"the report took longer than {limit:g} s ([history] timeout); "
                   "ask for a shorter period.") from None  # fmt: skip
    except Exception as e:
        log.warning("reports.database_unavailable", error=str(e) or type(e).__name__)
        raise Busy("the database does not answer right now; try again shortly.") from None


def _report(rows: dict[str, list[Any]], places: dict[str, list[Any]], start: float,
            end: float, now: float) -> Report:  # fmt: skip
    # An incident whose time in the period was all service between its faults was not
    # open in it.
    incidents = [inc for inc in map(_stored, rows["incidents"])
                 if not inc.gaps
                 or any(lo < end and hi > start for lo, hi in inc.faults(now))]  # fmt: skip
    blind = [(r["started_at"].timestamp(), r["ended_at"].timestamp()) for r in rows["blind"]]
    calls = [(r["minute"].timestamp(), r["calls"], r["named"]) for r in rows["calls"]]
    return Report(incidents, blind, calls, places)


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _s(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _stored(r: Any) -> Stored:
    return Stored(
        id=r["id"], state=r["state"], kind=r["kind"], root=r["root_node"],
        opened_at=r["opened_at"].timestamp(), resolved_at=_s(r["resolved_at"]),
        # Those it cut off, as billing counts them: less those its end found spared (their
        # routers answered throughout: the probes saw the way to them working).
        merged_into=r["merged_into"], subscribers=max(0, r["subscribers"] - r["spared"]),
        calls=r["calls"],
        detected_at=_s(r["detected_at"]),
        first_eta_at=_s(r["first_eta_at"]), first_eta=_s(r["first_eta"]),
        gaps=_gaps(r["resolutions"], r["reopenings"], r["since"]),
    )  # fmt: skip


def _gaps(resolutions: list[datetime] | None, reopenings: list[datetime] | None,
          since: list[datetime] | None) -> tuple[Interval, ...]:  # fmt: skip
    """Service between faults: from the resolution before each reopening to the start of
    the fault that reopened it (none where that fault began before it was resolved)."""
    if not reopenings or not since or not resolutions:
        return ()
    gaps = []
    for at, began in zip(reopenings, since, strict=True):
        before = [r for r in resolutions if r <= at]
        if before and began > before[-1]:
            gaps.append((before[-1].timestamp(), began.timestamp()))
    return tuple(gaps)


def check_group(rt: Runtime, group: str) -> None:
    """Invalid for a group that is neither building, node nor a label of the topology."""
    if group in GROUPS:
        return
    names = {k for n in rt.directory.topology.nodes.values() for k in n.labels}
    if group not in names:
        known = ", ".join(sorted(names)) or "none in this topology"
        raise Invalid(f"group must be building, node or a label of the topology's nodes "
                      f"(labels: {known}); {group!r} is none of them.")  # fmt: skip


PlaceMap = tuple[str, str]
# The maps of the topology last asked about: made again only when a reload brings another.
_MAPS: dict[str, PlaceMap] = {}
_MAPPED: list[Any] = [None]  # the topology _MAPS are of


def place_map(rt: Runtime, group: str) -> PlaceMap:
    """The nodes and the places they count for, as "node TAB place" lines (a node may
    count for several), and what the SQL does with a node not in them: `store.PLACES`'s
    arguments."""
    topo = rt.directory.topology
    if _MAPPED[0] is not topo:
        _MAPS.clear()
        _MAPPED[0] = topo
    found = _MAPS.get(group)
    if found is None:
        found = _MAPS[group] = _place_map(topo, group)
    return found


def _place_map(topo: Topology, group: str) -> PlaceMap:
    # Topology texts hold no tab or line break (topology.parse_text refuses them).
    if group == "node":
        return "", "node"
    lines: list[str] = []
    if group == "building":
        for node in topo.nodes.values():
            for served in dict.fromkeys(s.address.text() for s in node.serves):
                lines.append(f"{node.id}\t{served}")
        return "\n".join(lines), ""
    for node in topo.nodes.values():
        if node.kind == "cpe":  # never in the impact record
            continue
        value = inherited_label(topo, node.id, group)
        if value is not None:
            lines.append(f"{node.id}\t{value}")
    return "\n".join(lines), "label"


def availability(rt: Runtime, report: Report, start: float, end: float, group: str,
                 limit: int) -> dict[str, Any]:  # fmt: skip
    """The places of `group` as the API gives them (`report.places[group]`)."""
    period = end - start
    rows: list[dict[str, Any]] = []
    found = report.places.get(group, [])
    for r in found:
        outage = float(r["outage_seconds"])
        row: dict[str, Any] = {
            "key": r["key"],
            "outage_minutes": round(outage / 60, 2),
            "planned_minutes": round(float(r["planned_seconds"]) / 60, 2),
            "unverified_minutes": round(float(r["unverified_seconds"]) / 60, 2),
            "availability_pct": round(100 * (1 - outage / period), 4),
            "incidents": r["incidents"],
        }
        if group == "node":
            node = rt.directory.topology.nodes.get(r["key"])
            row["name"] = node.name if node is not None else ""
            row["kind"] = node.kind if node is not None else ""
        rows.append(row)
    return {
        "from": iso_wall(start), "to": iso_wall(end), "group": group,
        "period_minutes": round(period / 60, 2),
        "places": found[0]["places"] if found else 0, "rows": rows[:limit],
    }  # fmt: skip


def calls(report: Report, start: float, end: float, step: float,
          now: float) -> dict[str, Any]:  # fmt: skip
    """Calls a minute that named an incident, and incidents open, per `step` seconds."""
    # Buckets from a whole second, as their times are written: from 04:52:00.6 a bucket
    # written "04:52:00" held the calls of 04:53:00.
    start = math.floor(start)
    source = "per_minute" if report.calls else "incident_totals"
    minutes = [(t, named) for t, _, named in report.calls] if report.calls else None
    series = figures.calls_per_minute(report.incidents, start, end, step, now, minutes)
    return {
        "from": iso_wall(start), "to": iso_wall(end), "step_seconds": int(step),
        "source": source, "note": CALLS_NOTES[source],
        "calls": sum(named for _, _, named in report.calls) if report.calls
        else sum(i.calls for i in report.incidents),
        "buckets": [{"at": iso_wall(t), "calls_per_minute": rate, "open_incidents": n}
                    for t, rate, n in series],
    }  # fmt: skip


def incident_rows(incidents: list[Stored], now: float) -> list[dict[str, Any]]:
    out = []
    for inc in incidents:
        row: dict[str, Any] = {
            "id": str(inc.id), "state": inc.state, "kind": inc.kind, "root_node": inc.root,
            "opened_at": iso_wall(inc.opened_at),
            "detected_at": iso_wall(inc.detected_at) or None,
            "resolved_at": iso_wall(inc.resolved_at) or None,
            "merged_into": str(inc.merged_into) if inc.merged_into is not None else None,
            "subscribers": inc.subscribers, "calls": inc.calls,
            "first_eta_at": iso_wall(inc.first_eta_at) or None,
            "first_eta": iso_wall(inc.first_eta) or None,
        }  # fmt: skip
        row.update(figures.response(inc, now))
        out.append(row)
    return out


def incidents(report: Report, start: float, end: float, now: float) -> dict[str, Any]:
    incs = report.incidents
    rows = incident_rows(incs, now)
    repairs = sorted(r["repair_seconds"] for r in rows if r["repair_seconds"] is not None)
    return {
        "from": iso_wall(start), "to": iso_wall(end),
        "totals": {
            "incidents": len(rows),
            "outages": sum(1 for i in incs if i.kind == "outage"),
            "planned": sum(1 for i in incs if i.kind == "maintenance"),
            "subscriber_hours": round(sum(r["subscriber_hours"] for r in rows), 3),
            "calls": sum(i.calls for i in incs),
            "median_repair_seconds": repairs[len(repairs) // 2] if repairs else None,
        },
        "incidents": rows,
        "notes": {"detect_seconds": DETECT_NOTE},
    }  # fmt: skip
