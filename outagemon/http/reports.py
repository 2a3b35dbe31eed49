"""The reports API: availability by building, node or label, each incident's response
figures, and calls a minute, over a period (see http/figures.py for the budget they read
in). Bodies are written in the worker thread that figures them, not on the event loop."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from outagemon.http import figures
from outagemon.http.runtime import JSON, RUNTIME, Invalid, authorise, bad, error

_PARAMS = {
    "availability": frozenset({"from", "to", "group", "limit"}),
    "incidents": frozenset({"from", "to"}),
    "calls": frozenset({"from", "to", "step"}),
}
MAX_BUCKETS = 2000


def _checked(request: web.Request, name: str, now: float) -> tuple[float, float]:
    q = request.query
    unknown = sorted(set(q) - _PARAMS[name])
    if unknown:
        raise bad(f"unknown parameter(s): {', '.join(unknown)}; "
                  f"give {', '.join(sorted(_PARAMS[name]))}.")  # fmt: skip
    try:
        return figures.period(q, request.app[RUNTIME], now)
    except Invalid as e:
        raise bad(str(e)) from None


def _busy(e: figures.Busy) -> web.Response:
    made = error(503, str(e))
    made.headers["Retry-After"] = "10"
    return made


async def availability(request: web.Request) -> web.Response:
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    now = time.time()
    start, end = _checked(request, "availability", now)
    group = request.query.get("group", "building")
    raw_limit = request.query.get("limit", "1000")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 100_000:
        raise bad("limit must be a whole number from 1 to 100000.")
    try:
        figures.check_group(rt, group)  # an unknown group is refused before the database
        limit = int(raw_limit)

        def answer(report: figures.Report) -> bytes:
            return orjson.dumps(figures.availability(rt, report, start, end, group, limit))

        found = await figures.made(rt, start, end, now, answer, {group: limit}, False)
        return web.Response(body=found, headers=JSON)
    except Invalid as e:
        raise bad(str(e)) from None
    except figures.Busy as e:
        return _busy(e)


async def incidents(request: web.Request) -> web.Response:
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    now = time.time()
    start, end = _checked(request, "incidents", now)
    try:
        found = await figures.made(
            rt, start, end, now, lambda r: orjson.dumps(figures.incidents(r, start, end, now))
        )
    except figures.Busy as e:
        return _busy(e)
    return web.Response(body=found, headers=JSON)


async def calls(request: web.Request) -> web.Response:
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    now = time.time()
    start, end = _checked(request, "calls", now)
    raw = request.query.get("step", "")
    if raw:
        if not (raw.isascii() and raw.isdigit()) or not 60 <= int(raw) <= 86400:
            raise bad("step must be a whole number of seconds from 60 to 86400.")
        step = int(raw)
    else:  # about a hundred buckets, on whole minutes
        step = max(60, round((end - start) / 100 / 60) * 60)
    if (end - start) / step > MAX_BUCKETS:
        raise bad(f"step {step} s makes more than {MAX_BUCKETS} buckets of this period; "
                  "give a longer step.")  # fmt: skip
    try:
        found = await figures.made(
            rt, start, end, now, lambda r: orjson.dumps(figures.calls(r, start, end, step, now))
        )
    except figures.Busy as e:
        return _busy(e)
    return web.Response(body=found, headers=JSON)


def setup(routes: web.RouteTableDef) -> None:
    routes.get("/api/v1/reports/availability")(availability)
    routes.get("/api/v1/reports/incidents")(incidents)
    routes.get("/api/v1/reports/calls")(calls)
