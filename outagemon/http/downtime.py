"""The outage history over HTTP: how long one subscriber was without service, and the
billing export of every account's downtime.

Both read the database through the reports' own pool (`Runtime.reports`, [history]
connections), never the writer's or /check's way; the export streams (PostgreSQL's COPY
for CSV, a server-side cursor for JSON) so a million rows never sit in memory. What the
numbers mean is in `core/downtime.py` and the history section of `db/store.py`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import asyncpg
from aiohttp import web

from outagemon import logs
from outagemon.core import downtime as dt
from outagemon.core.directory import Match
from outagemon.core.text import bad_character
from outagemon.db import export, store
from outagemon.http.runtime import RUNTIME, Runtime, authorise, bad, json_response

log = logs.get("outagemon.api")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACQUIRE = 5.0  # seconds a lookup waits for a report connection before answering 503
_OUTAGES_PARAMS = frozenset({"from", "to", "lang"})
_LOOKUP_PARAMS = _OUTAGES_PARAMS | {"phone", "account", "address", "flat"}
_EXPORT_PARAMS = frozenset({"from", "to", "min_minutes", "format"})


# -- the question's period -------------------------------------------------------------


def period(q: Mapping[str, str], rt: Runtime) -> tuple[datetime, datetime]:
    """[from, to) as asked, or 400 with the sentence that says what is wrong."""
    try:
        return dt.period(q.get("from", ""), q.get("to", ""), rt.texts.tz,
                         rt.config.history.max_period_days)  # fmt: skip
    except dt.BadPeriod as e:
        raise bad(str(e)) from None


def _us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _iso(t: datetime, tz: tzinfo | None) -> str:
    return t.astimezone(tz).isoformat(timespec="seconds")


def _unknown(q: Mapping[str, str], allowed: frozenset[str]) -> None:
    if not allowed.issuperset(q):
        raise bad(f"unknown parameter(s): {', '.join(sorted(set(q) - allowed))}.")


def _pool(rt: Runtime) -> Any:
    if rt.reports is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "the outage history is in the database, which is not connected '
            'yet; try again shortly."}',
            content_type="application/json",
        )
    return rt.reports


def _busy() -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(
        text='{"error": "every connection of the reports is busy ([history] connections); '
        'try again shortly."}',
        content_type="application/json",
        headers={"Retry-After": "5"},
    )


@asynccontextmanager
async def _connection(rt: Runtime) -> AsyncIterator[Any]:
    """A connection of the reports' pool, or 503 with a sentence: every one busy for
    ACQUIRE seconds, or the database not answering (also in the caller's queries)."""
    pool = _pool(rt)
    try:
        conn = await pool.acquire(timeout=ACQUIRE)
    except TimeoutError:
        raise _busy() from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise _away(e) from None
    try:
        yield conn
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise _away(e) from None
    finally:
        await pool.release(conn)


def _away(e: BaseException) -> web.HTTPServiceUnavailable:
    log.warning("api.database_unavailable", error=str(e) or type(e).__name__)
    return web.HTTPServiceUnavailable(
        text='{"error": "the database did not answer the question; try again shortly."}',
        content_type="application/json",
    )


# -- one subscriber ----------------------------------------------------------------------


async def subscriber_outages(request: web.Request) -> web.Response:
    """GET /api/v1/subscribers/{account}/outages?from=&to=[&lang=]"""
    rt = request.app[RUNTIME]
    authorise(request, False, rt)
    q = request.query
    _unknown(q, _OUTAGES_PARAMS)
    account = request.match_info["account"].strip()
    if not account or len(account) > 500:
        raise bad("give an account number in the path.", 404)
    return await _outages(rt, q, account, "account")


async def outages(request: web.Request) -> web.Response:
    """GET /api/v1/outages?phone=|account=|address=[&flat=]&from=&to=: the subscriber found
    the way /check finds a caller."""
    rt = request.app[RUNTIME]
    authorise(request, False, rt)
    q = request.query
    _unknown(q, _LOOKUP_PARAMS)
    start, end = period(q, rt)
    given = [(k, v.strip()) for k in ("phone", "account", "address") if (v := q.get(k, ""))
             and v.strip()]  # fmt: skip
    if len(given) != 1:
        named = ", ".join(k for k, _ in given) if given else "none"
        raise bad(f"give exactly one of phone, account or address (with flat) "
                  f"(given: {named}).")  # fmt: skip
    key, value = given[0]
    if len(value) > 500:
        raise bad(f"{key} is too long.")
    if q.get("flat") and key != "address":
        raise bad("flat goes with address only.")
    if key == "account":
        return await _outages(rt, q, value, key)
    if key == "phone":
        match = rt.directory.phone(value)
        _found(match, f"no subscriber gives the phone number {value!r}.")
        assert match.subscriber is not None
        return await _outages(rt, q, match.subscriber.account, key)
    match = rt.directory.address(value, q.get("flat", ""))
    _found(match, f"no building in the topology matches the address {value!r}.")
    if match.address is None or not match.flat:
        raise bad("give the flat (flat=...) with the address: a building has many "
                  "subscribers.")  # fmt: skip
    building = match.address.text(with_flat=False)
    async with _connection(rt) as conn:
        found = await store.accounts_at(conn, building, match.flat, start, end)
    if not found:
        raise bad(f"no subscriber was at {match.address_text()} between "
                  f"{q['from']} and {q['to']}.", 404)  # fmt: skip
    if len(found) > 1:
        raise bad(f"several accounts were at {match.address_text()} in that period "
                  f"({', '.join(found)}); ask by account.", 409)  # fmt: skip
    return await _outages(rt, q, found[0], key)


def _found(match: Match, sentence: str) -> None:
    if match.ambiguous:
        raise bad(f"several places match: {'; '.join(match.candidates)}; be more precise "
                  "or ask by account.", 409)  # fmt: skip
    if not match.found:
        raise bad(sentence, 404)


async def _outages(rt: Runtime, q: Mapping[str, str], account: str,
                   matched_by: str) -> web.Response:  # fmt: skip
    start, end = period(q, rt)
    if bad_character(account) is not None:  # no account holds one: PostgreSQL refuses a NUL
        raise bad(f"there is no account {account!r} in the inventory, now or before.", 404)
    language = q.get("lang", rt.texts.language)
    if language not in ("ru", "en"):
        raise bad("lang must be ru or en.")
    now = datetime.now(UTC)
    async with _connection(rt) as conn:
        rows = await store.account_history(conn, account, start, end, now)
        served = [r for r in rows if r["kind"] == "served"]
        # Served at some time, if not in this period: asked only then (one round trip
        # is the usual question's all).
        if not served and not await store.account_known(conn, account):
            raise bad(f"there is no account {account!r} in the inventory, now or before.", 404)
    found = dt.downtime(
        [dt.Hit(r["incident_id"], dt.Cause(r["cause"]), _us(r["started_at"]), _us(r["ended_at"]))
         for r in rows if r["kind"] == "hit"],
        [(_us(r["started_at"]), _us(r["ended_at"])) for r in rows if r["kind"] == "blind"],
    )  # fmt: skip
    return json_response(body(found, account, matched_by, start, end, served, language, rt))


def body(found: dt.Downtime, account: str, matched_by: str, start: datetime, end: datetime,
         served: list[Any], language: str, rt: Runtime) -> dict[str, Any]:  # fmt: skip
    tz = rt.texts.tz

    def t(us: int) -> str:
        return _iso(EPOCH + timedelta(microseconds=us), tz)

    return {
        "account": account,
        "matched_by": matched_by,
        "from": _iso(start, tz),
        "to": _iso(end, tz),
        "outage_minutes": float(dt.minutes(found.outage)),
        "planned_minutes": float(dt.minutes(found.planned)),
        "unverified_minutes": float(dt.minutes(found.unverified)),
        "total_minutes": float(dt.minutes(found.total)),
        "incidents": [str(i) for i in found.incidents],
        "intervals": [
            {"from": t(s.start), "to": t(s.end),
             "minutes": float(dt.minutes(s.end - s.start)),
             "outage_minutes": float(dt.minutes(s.outage)),
             "planned_minutes": float(dt.minutes(s.planned)),
             "unverified_minutes": float(dt.minutes(s.unverified)),
             "incidents": [str(i) for i in s.incidents]}
            for s in found.stretches
        ],
        "served": [
            {"from": _iso(max(r["started_at"], start), tz),
             "to": _iso(min(r["ended_at"] or end, end), tz),
             "node": r["node_id"], "address": r["address"], "flat": r["flat"]}
            for r in served
        ],
        "message": dt.sentence(found, account, _us(start), _us(end), language, tz),
    }  # fmt: skip


# -- the billing export ------------------------------------------------------------------


async def downtime_report(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/downtime?from=&to=[&min_minutes=][&format=csv|json]"""
    rt = request.app[RUNTIME]
    authorise(request, False, rt)
    q = request.query
    _unknown(q, _EXPORT_PARAMS)
    start, end = period(q, rt)
    fmt = q.get("format", "csv")
    if fmt not in ("csv", "json"):
        raise bad("format must be csv or json.")
    least = min_minutes(q.get("min_minutes", "0"))
    _pool(rt)
    # One connection of the reports' pool is kept for the per-subscriber questions.
    if rt.exports >= max(1, rt.config.history.connections - 1):
        raise _busy()
    rt.exports += 1
    try:
        return await _stream(request, rt, start, end, least, fmt)
    finally:
        rt.exports -= 1


def min_minutes(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise bad(f"min_minutes {raw!r} is not a number of minutes.") from None
    if not 0 <= value <= 10_000_000:  # also refuses nan and inf
        raise bad(f"min_minutes must be between 0 and 10000000, not {raw!r}.")
    return value


async def _stream(request: web.Request, rt: Runtime, start: datetime,
                  end: datetime, least: float, fmt: str) -> web.StreamResponse:  # fmt: skip
    now = datetime.now(UTC)
    tz = rt.texts.tz
    name = f"downtime-{_iso(start, tz)[:10]}-{_iso(end, tz)[:10]}.{fmt}"
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if fmt == "csv"
        else "application/json; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{name}"',
    })  # fmt: skip
    response.enable_chunked_encoding()
    started = time.monotonic()
    written = 0

    async def send(chunk: bytes) -> None:
        nonlocal written
        if not response.prepared:
            await response.prepare(request)
        written += len(chunk)
        await response.write(chunk)

    try:
        async with _connection(rt) as conn:
            timeout = rt.config.history.timeout
            if fmt == "csv":
                await store.downtime_csv(conn, start, end, now, least, send, timeout)
            else:
                head = {"from": _iso(start, tz), "to": _iso(end, tz), "min_minutes": least}
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    async for chunk in export.json_chunks(conn, start, end, now, least, head):
                        await send(chunk)
    except web.HTTPServiceUnavailable:
        if not response.prepared:
            raise
        # The headers are gone: the client sees the chunked body end without its last
        # chunk, which every HTTP client reports as a cut transfer.
        log.warning("report.downtime_cut", bytes=written)
        raise ConnectionResetError("the database stopped answering mid-export") from None
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    log.info("report.downtime", start=_iso(start, tz), end=_iso(end, tz), format=fmt,
             bytes=written, seconds=round(time.monotonic() - started, 3))  # fmt: skip
    return response


def setup(routes: web.RouteTableDef) -> None:
    routes.get("/api/v1/subscribers/{account}/outages")(subscriber_outages)
    routes.get("/api/v1/outages")(outages)
    routes.get("/api/v1/reports/downtime")(downtime_report)
