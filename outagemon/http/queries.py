"""The incident read model, shared by the API and the page: open incidents from memory,
resolved ones and timelines from the database (which may be away)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from outagemon import logs
from outagemon.cluster.replica import Replica
from outagemon.core.assess import later, works_end
from outagemon.core.calls import building_text
from outagemon.core.incidents import Incident, Kind
from outagemon.db import store
from outagemon.http.runtime import Runtime, iso, local
from outagemon.monitor import Monitor

log = logs.get("outagemon.api")  # its lines have always been the API's


def not_deciding(rt: Runtime) -> str | None:
    """Why an engineer's write cannot be taken by this process, else None: a cluster's
    standby (naming the leader), or a process answering from a replica."""
    if rt.leadership is not None and (why := rt.leadership.not_leading()) is not None:
        return why
    if isinstance(rt.monitor, Replica):
        return rt.monitor.not_leading()
    return None


def incident_json(inc: Incident, monitor: Monitor | Replica | None) -> dict[str, Any]:
    subs = monitor.subscribers_of(inc.nodes) if monitor is not None else 0
    return {
        "id": str(inc.id),
        "state": inc.state.value,
        "kind": inc.kind.value,
        "root_node": inc.root,
        "inferred": inc.inferred,
        "nodes": list(inc.nodes),
        "subscribers": subs,
        "opened_at": iso(inc.opened_at),
        "resolved_at": iso(inc.resolved_at) or None,
        "eta": iso(eta_of(inc, monitor)) or None if monitor else None,
        "calls": monitor.calls.get(inc.id, 0) if monitor else 0,
        "raised_by": inc.raised_by,
        **(_suspicion(inc, monitor) if monitor is not None else {}),
    }


def eta_of(inc: Incident, monitor: Monitor | Replica) -> float | None:
    """What its callers hear as `eta`: an engineer's estimate; for planned works, their
    end (of the chain of works that carries on), or a later estimate (the API's and the
    page's)."""
    eta = monitor.eta.get(inc.id)
    if inc.kind is not Kind.MAINTENANCE:
        return eta
    topology = monitor.directory.topology
    return later(works_end(inc, monitor.maintenance, topology, monitor.clock()), eta)


def _suspicion(inc: Incident, monitor: Monitor | Replica) -> dict[str, Any]:
    """For an incident raised by calls: the calls that raised it (per minute, for the
    page's chart), the distinct callers, and when the first of them called."""
    if isinstance(monitor, Replica):  # the leader's, as its opening said them
        copy = monitor.watch.open.get(inc.id)
        if copy is None:
            return {}
        return {"callers": copy.callers, "first_call_at": iso(copy.first_call),
                "calls_per_minute": [], "buildings": copy.buildings[:20]}  # fmt: skip
    sus = monitor.watch.open.get(inc.id)
    if sus is None:
        return {}
    now = monitor.clock()
    buildings = {building_text(c.building) for c in sus.calls if c.building}
    buildings.update(sus.earlier_buildings)  # before a restart (from its opening)
    return {
        "callers": sus.distinct_callers,
        "first_call_at": iso(sus.first_call),
        "calls_per_minute": sus.per_minute(now),
        "buildings": sorted(buildings)[:20],
    }


def row_json(r: Any) -> dict[str, Any]:
    def t(v: datetime | None) -> str | None:
        return local(v).isoformat(timespec="seconds") if v is not None else None

    return {
        "id": str(r["id"]),
        "state": r["state"],
        "kind": r["kind"],
        "root_node": r["root_node"],
        "inferred": r["inferred"],
        "nodes": list(r["nodes"]),
        "subscribers": r["subscribers"],
        "opened_at": t(r["opened_at"]),
        "resolved_at": t(r["resolved_at"]),
        "eta": t(r["eta"]),
        "calls": r["calls"],
        "raised_by": r["raised_by"],
    }


def open_incidents(rt: Runtime) -> list[dict[str, Any]]:
    """Open incidents, newest first, from memory."""
    if rt.monitor is None:
        return []
    incs = sorted(rt.monitor.open_incidents(), key=lambda i: (-i.opened_at, -i.id))
    return [incident_json(i, rt.monitor) for i in incs]


async def stored(rt: Runtime, state: str) -> list[dict[str, Any]]:
    """Incidents from the database; 503 with a sentence while it does not answer."""
    if rt.pool is None and rt.database is not None:
        raise _away()
    if rt.pool is None:
        return []
    try:
        rows = await read(rt, store.list_incidents(rt.pool, state))
    except Exception as e:  # the database is away: say so rather than fail the request
        log.warning("api.database_unavailable", error=str(e) or type(e).__name__)
        raise _away() from None
    return [row_json(r) for r in rows]


def _away() -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(
        text=json.dumps({"error": "resolved incidents are in the database, which does not "
                                  "answer right now; open incidents are still served."}),
        content_type="application/json",
    )  # fmt: skip


async def one(rt: Runtime, iid: int) -> dict[str, Any] | None:
    """One incident: open ones from memory, others from the database (None if away)."""
    found = rt.monitor.open_incident(iid) if rt.monitor is not None else None
    if found is not None:
        return incident_json(found, rt.monitor)
    if rt.pool is None:
        return None
    try:
        row = await read(rt, store.get_incident(rt.pool, iid))
    except Exception as e:
        log.warning("api.database_unavailable", error=str(e) or type(e).__name__)
        return None
    return row_json(row) if row is not None else None


async def timeline(rt: Runtime, iid: int) -> list[tuple[datetime, str, Any]]:
    """(when, kind, detail) of an incident's events; raises while the database is away."""
    if rt.pool is None:
        return []
    return [(r["at"], r["kind"], json.loads(r["detail"]))
            for r in await read(rt, store.timeline(rt.pool, iid))]  # fmt: skip


T = TypeVar("T")
READS = 3  # database reads for HTTP requests at once: the writer keeps the rest of the pool


async def read(rt: Runtime, query: Coroutine[Any, Any, T]) -> T:
    """A database read for a request, within its budget: READS at once, and
    [database] read_timeout each. A read that runs out is left to finish (or fail) in
    the background, and the request answers at once: waiting for asyncpg to cancel a
    query on a hung server would hold the request as long as the server hangs."""
    if rt.reads >= READS:
        query.close()
        raise TimeoutError("every database read of the HTTP side is taken")
    rt.reads += 1
    task = asyncio.ensure_future(query)

    def done(_: object) -> None:
        rt.reads -= 1
        if not task.cancelled():
            task.exception()  # retrieved: a late failure is no one's to log

    task.add_done_callback(done)
    finished, _ = await asyncio.wait({task}, timeout=rt.config.database.read_timeout)
    if not finished:
        task.cancel()
        raise TimeoutError(f"no answer within {rt.config.database.read_timeout:g} s")
    return task.result()
