"""Availability and response figures for the reports API and page: stored incidents read
within the reports' own database budget, and figured in the core (`core/figures.py`).

A report reads the database only: /check answers from memory and never waits for one.
At most `[reports] max_running` reports read at once, each on a pooled connection in a
read-only transaction the server ends after `[reports] timeout`; one more is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from outagemon import logs
from outagemon.core import figures
from outagemon.core.figures import Stored
from outagemon.db import store
from outagemon.http.runtime import Invalid, Runtime, iso_wall, parse_time

log = logs.get("outagemon.reports")

GROUPS = ("building", "node")  # and any label the topology's nodes carry
NO_GROUP = "(none)"  # the key of nodes without the label a report groups by
DETECT_NOTE = (
    "detect_seconds runs from the time the root's own probes found it down ([probe] "
    "down_after lost probes in a row, the incident's opened_at) to the incident's opening; "
    "the first lost probe is not stored, it came at most (down_after - 1) probe intervals "
    "before opened_at."
)
CALLS_NOTE = (
    "Calls are stored per incident as a total: each incident's calls are spread evenly "
    "over its life."
)


class Busy(Exception):
    """The reports' database budget is taken, or the database does not answer."""


def period(query: Mapping[str, str], max_days: int, now: float) -> tuple[float, float]:
    """[from, to) of a report's query; Invalid with the sentence that says what is wrong."""
    missing = [k for k in ("from", "to") if not query.get(k)]
    if missing:
        raise Invalid(f"give the period: {' and '.join(missing)} (ISO 8601 times with "
                      "an offset, such as 2026-11-01T00:00:00+03:00).")  # fmt: skip
    start = parse_time(query["from"], "from")
    end = parse_time(query["to"], "to")
    if end <= start:
        raise Invalid("to must be after from.")
    if end - start > max_days * 86400:
        raise Invalid(f"the period is longer than {max_days} days ([reports] max_days); "
                      "ask for a shorter one.")  # fmt: skip
    if start > now:
        raise Invalid("from is in the future: there is nothing to report yet.")
    return start, end


async def load(rt: Runtime, start: float, end: float) -> list[Stored]:
    """Incidents open at some time in [start, end), from the database, within budget."""
    cfg = rt.config.reports
    if rt.pool is None:
        raise Busy("reports are read from the database, which is not connected.")
    if rt.reports >= cfg.max_running:
        raise Busy(f"{cfg.max_running} reports are being made already ([reports] max_running); "
                   "try again in a moment.")  # fmt: skip
    rt.reports += 1
    try:
        async with rt.pool.acquire(timeout=cfg.timeout) as conn:
            rows = await store.incidents_between(conn, _dt(start), _dt(end), cfg.timeout)
    except (TimeoutError, OSError) as e:
        log.warning("reports.database_unavailable", error=str(e) or type(e).__name__)
        raise Busy(f"the database did not answer within {cfg.timeout:g} s "
                   "([reports] timeout); try a shorter period.") from None  # fmt: skip
    except Exception as e:
        if type(e).__name__ == "QueryCanceledError":  # the server's statement_timeout
            raise Busy(f"the report took longer than {cfg.timeout:g} s ([reports] timeout); "
                       "try a shorter period.") from None  # fmt: skip
        log.warning("reports.database_unavailable", error=str(e) or type(e).__name__)
        raise Busy("the database does not answer right now; try again later.") from None
    finally:
        rt.reports -= 1
    return [_stored(r) for r in rows]


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _s(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _stored(r: Any) -> Stored:
    return Stored(
        id=r["id"], state=r["state"], kind=r["kind"], root=r["root_node"],
        opened_at=r["opened_at"].timestamp(), resolved_at=_s(r["resolved_at"]),
        merged_into=r["merged_into"], subscribers=r["subscribers"], calls=r["calls"],
        nodes=tuple(r["nodes"]), detected_at=_s(r["detected_at"]),
        first_eta_at=_s(r["first_eta_at"]), first_eta=_s(r["first_eta"]),
    )  # fmt: skip


def group_keys(rt: Runtime, group: str) -> Callable[[str], Iterable[str]]:
    """The places a node counts for, grouped by `group`; Invalid for an unknown group."""
    topo = rt.directory.topology
    if group == "node":
        return lambda node: (node,)
    if group == "building":

        def buildings(node: str) -> Iterable[str]:
            n = topo.nodes.get(node)
            return [s.address.text() for s in n.serves] if n is not None else ()

        return buildings
    names = topo.label_names()
    if group not in names:
        known = ", ".join(sorted(names)) or "none in this topology"
        raise Invalid(f"group must be building, node or a label of the topology's nodes "
                      f"(labels: {known}); {group!r} is none of them.")  # fmt: skip
    return lambda node: (topo.label(node, group) or NO_GROUP,)


def availability(rt: Runtime, incidents: list[Stored], start: float, end: float, group: str,
                 limit: int) -> dict[str, Any]:  # fmt: skip
    keys_of = group_keys(rt, group)
    now = time.time()
    rows = figures.availability(figures.cuts_of(incidents), start, end, now, keys_of)
    if group == "node":
        for row in rows:
            node = rt.directory.topology.nodes.get(str(row["key"]))
            row["name"] = node.name if node is not None else ""
            row["kind"] = node.kind if node is not None else ""
    return {
        "from": iso_wall(start), "to": iso_wall(end), "group": group,
        "period_minutes": round((end - start) / 60, 2), "places": len(rows),
        "rows": rows[:limit],
    }  # fmt: skip


def calls_series(incs: list[Stored], start: float, end: float, step: float,
                 now: float) -> list[tuple[float, float, int]]:  # fmt: skip
    return figures.calls_per_minute(incs, start, end, step, now)


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


def incidents(incs: list[Stored], start: float, end: float) -> dict[str, Any]:
    now = time.time()
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
