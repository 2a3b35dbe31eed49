"""The JSON interface: the phone menu's question, incidents, and engineers' writes.

`/api/v1/check` is answered from memory only (topology, subscribers, incidents, planned
works) and never waits for the database. Every value in its answer is a string, so a
dialplan's JSON_DECODE can read it. What a caller hears is decided in the core
(`core/assess.py`); this module reads the question and writes the answer.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from outagemon import clock, logs
from outagemon.cluster.replica import Replica
from outagemon.core.assess import Answer, KeptBody, Status, assess
from outagemon.core.directory import Directory, Match, flat_key, is_flat
from outagemon.core.incidents import Kind, Maintenance
from outagemon.core.messages import Texts, next_local_day
from outagemon.http import queries
from outagemon.http.openapi import spec
from outagemon.http.runtime import (
    JSON,
    RUNTIME,
    Invalid,
    Runtime,
    authorise,
    bad,
    estimate,
    incident_id,
    iso,
    json_response,
    local,
    new_end,
    parse_time,
    text,
    works,
)

log = logs.get("outagemon.api")

# The metric's label sets, made once rather than sorted on every answer.
_CHECK_KEYS = {
    (status.value, channel): (("channel", channel), ("status", status.value))
    for status in Status
    for channel in ("ivr", "helpdesk")
}  # fmt: skip


# -- the phone menu's question ---------------------------------------------------------


_KEYS = ("phone", "account", "address", "node")


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def find(directory: Directory, query: Mapping[str, str]) -> tuple[str, Match]:
    """Which caller the query names; HTTPBadRequest for a malformed question."""
    given = []
    for k in _KEYS:
        v = query.get(k)
        if v and (v := v.strip()):
            given.append((k, v))
    if len(given) != 1:
        named = ", ".join(k for k, _ in given) if given else "none"
        # A phone menu sends `phone=` for a withheld number: say so rather than "none".
        empty = [k for k in _KEYS if k in query and not query[k].strip()]
        also = f"; {_and(empty)} {'is' if len(empty) == 1 else 'are'} empty" if empty else ""
        raise bad(f"give exactly one of phone, account, address or node (given: {named}{also}).")
    key, value = given[0]
    if len(value) > 500:
        raise bad(f"{key} is too long.")
    if query.get("flat") and key != "address":
        raise bad("flat goes with address only.")
    if key == "phone":
        return key, directory.phone(value)
    if key == "account":
        return key, directory.account(value)
    if key == "address":
        flat = query.get("flat", "")
        return key, _flat_checked(directory, directory.address(value, flat), flat)
    if value in directory.topology:
        return key, Match(nodes=(value,))
    return key, Match()


def _flat_checked(directory: Directory, match: Match, asked: str) -> Match:
    """The match of an address, unless its flat (`asked`, or written in the address) is
    no flat: a number, perhaps with a letter or part ("12", "12а", "12/1"), or a name the
    subscribers' file gives a home of that building ("abc" would be spoken "квартира
    abc"): HTTPBadRequest naming it, whether or not the building was found."""
    flat = asked.strip() or match.flat
    if not flat or is_flat(flat):
        return match
    building = match.address
    if building is not None and directory.has_flat(building.key, flat):
        return match
    shown = flat.strip()
    shown = shown if len(shown) <= 40 else shown[:40] + "…"
    where = f" of {building.text(with_flat=False)}" if building is not None else ""
    raise bad(f"flat {shown!r} is not a flat number (such as 12, 12а or 12/1), and no "
              f"subscriber{where} lives in a flat so named.")  # fmt: skip


_CHECK_PARAMS = frozenset({"phone", "account", "address", "flat", "node", "format", "call_id",
                           "channel"})  # fmt: skip


async def check(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    authorise(request, False, rt)
    body, content_type = check_answer(rt, request.query)
    return web.Response(body=body, headers={"Content-Type": content_type})


TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = JSON["Content-Type"]


def check_answer(rt: Runtime, q: Mapping[str, str]) -> tuple[bytes, str]:
    """The answer to an authorised /check query: its body and Content-Type; counted, and
    the caller recorded. The one writer of /check answers: the aiohttp handler above and
    the HTTP workers' fast path (http/fastcheck.py) both call it. A malformed question
    raises HTTPBadRequest before anything is counted or recorded."""
    if not _CHECK_PARAMS.issuperset(q):
        unknown = sorted(set(q) - _CHECK_PARAMS)
        raise bad(f"unknown parameter(s): {', '.join(unknown)}.")
    fmt = q.get("format", "json")
    if fmt not in ("json", "text"):
        raise bad("format must be json or text.")
    channel = q.get("channel", "ivr")
    if channel not in ("ivr", "helpdesk"):
        raise bad("channel must be ivr or helpdesk.")
    matched_by, match = find(rt.directory, q)
    now = clock.now()  # the monitor's clock: never stepped
    answer = assess(rt.monitor, rt.directory, match, now, rt.config.messages.restored_for,
                    rt.answers)  # fmt: skip
    if answer.status is Status.AMBIGUOUS and not match.candidates:
        match = dataclasses.replace(match, candidates=parts_of(rt.directory, match))
    inc = answer.incident
    if fmt == "text":
        said = f"{answer.status}|{inc.id if inc else ''}|{iso(_promised(answer.eta, now))}\n"
        reply = said.encode(), TEXT_TYPE
    else:
        reply = remembered_body(rt, answer, match, matched_by, now), JSON_TYPE
    monitor = rt.monitor
    if monitor is not None:
        if inc is not None:
            monitor.count_call(inc.id)
        if matched_by != "node" and answer.node and (match.subscriber or match.address):
            # A caller from a known place: kept for the detector's next look (core/calls.py).
            # The building as written for people (it is shown on the page and in the API);
            # the caller's own router, when probed: if it answers, the call is not the
            # entrance's (the detector leaves it out).
            address = match.address
            sub = match.subscriber
            building = address.text(with_flat=False) if address is not None else ""
            monitor.record_call(place_of(rt.directory, match, answer.node), building,
                                *caller_of(match, building),
                                channel, answer.status.value,
                                sub.node if sub is not None and sub.ip else "")  # fmt: skip
    rt.checks.inc_key(_CHECK_KEYS[answer.status, channel])
    return reply


def parts_of(directory: Directory, match: Match) -> tuple[str, ...]:
    """The parts of a building split between nodes by flat, written out ("пр-т Мира, д. 10,
    кв. 1-40"): the candidates of an answer that is ambiguous because no flat was given
    (the contract's `candidates` is never empty for `ambiguous`)."""
    building = match.address
    if building is None:
        return ()
    nodes = set(match.nodes)
    return tuple(
        building.text(flat=s.flats_text()) if s.flats else building.text(with_flat=False)
        for s, n in directory.topology.served.get(building.key, ())
        if n in nodes
    )


def place_of(directory: Directory, match: Match, node: str) -> str:
    """Where a caller is below, for the calls' detector: the node serving them, or for a
    building split between nodes and asked about without a flat, the lowest node its
    parts share (the caller may be behind any of them; the answer's node is the first)."""
    if len(match.nodes) < 2:
        return node
    return directory.topology.lowest_shared(match.nodes) or node


def caller_of(match: Match, building: str) -> tuple[str, str]:
    """Who called, as the calls' detector tells callers apart (kind, value: kept as a
    keyed hash): the home they ask about, their building and flat, however they named it
    (by phone, by account, or by the address and flat), so one person asking by account
    and then by their address is one caller; one naming no flat, their building. Two
    accounts of one flat are one household, one caller. A subscriber of no flat (a house,
    an office) is their account: several share a building. See "Callers as sensors"."""
    flat = flat_key(match.flat)
    if flat:
        return "home", f"{building}\x00{flat}"
    if match.subscriber is not None:
        return "account", match.subscriber.account
    return "building", building


def check_body(texts: Texts, answer: Answer, match: Match, matched_by: str, now: float) -> bytes:
    """The JSON of a /check answer, written out."""
    inc = answer.incident
    address = match.address_text()
    # Said in wall-clock time: the monitor's times plus the wall clock's step since start.
    step = clock.CLOCK.step()
    if answer.suspected is not None and texts.suspected:
        message = texts.suspected  # [callers] sentence: several calls, being checked
    else:
        # One building split between nodes by flat, asked about without one: only the
        # flat is missing ("ambiguous" otherwise asks for the whole address again).
        said = "ambiguous_flat" if answer.status is Status.AMBIGUOUS and match.found \
            else answer.status  # fmt: skip
        if answer.status is Status.RESTORED and inc is not None and inc.kind is Kind.MAINTENANCE:
            said = "restored_maintenance"  # its callers heard of planned works, not an outage
        message = texts.render(said, now + step, address=address,
                               since=_add(answer.since, step), eta=_add(answer.eta, step),
                               until=_add(answer.until, step),
                               resolved=_add(answer.resolved, step),
                               node="" if address else answer.node)  # fmt: skip
    return orjson.dumps({
        "status": answer.status,
        "incident_id": str(inc.id) if inc is not None else "",
        "root_node": inc.root if inc is not None else "",
        "since": iso(answer.since),
        "eta": iso(_promised(answer.eta, now)),
        "message": message,
        "matched_by": matched_by,
        "node": answer.node,
        "address": address,
        "candidates": ";".join(match.candidates),
    })  # fmt: skip


# A flat stands in for itself in the remembered bodies: it is the one part of a
# subscriber's answer that differs between the callers of a building.
_FLAT_MARK = "\x00"
_FLAT_MARK_JSON = b"\\u0000"  # as orjson writes it


def remembered_body(rt: Runtime, answer: Answer, match: Match, matched_by: str,
                    now: float) -> bytes:  # fmt: skip
    """check_body(), remembered with the answer for each building it is given for.

    The body is kept as its pieces around each place the flat appears (the message and
    the address), and the caller's flat, JSON-escaped, joins them. That is the same text
    for any flat when every template puts the address in plainly (JSON escapes character
    by character); with an operator's template that converts or cuts the address, nothing
    is remembered. A new entry is also kept only if joining gives the body written out.
    An entry lasts until the local day ends (times are said as "today", "tomorrow") or the
    estimate in it passes, and goes with the answer when the network changes."""
    texts, address, flat = rt.texts, match.address, match.flat
    if address is None or not answer.kept or not texts.plain_address or _FLAT_MARK in flat:
        return check_body(texts, answer, match, matched_by, now)
    if answer.bodies is None:
        answer.bodies = {}
    key = (id(address), matched_by, flat != "")
    found = answer.bodies.get(key)
    if found is not None and found.address is address and found.texts is texts \
            and now < found.until:  # fmt: skip
        return _json_text(flat).join(found.pieces)
    written = check_body(texts, answer, match, matched_by, now)
    marked = Match(match.nodes, address, match.subscriber, (), _FLAT_MARK if flat else "")
    pieces = tuple(check_body(texts, answer, marked, matched_by, now).split(_FLAT_MARK_JSON))
    if _json_text(flat).join(pieces) == written:  # a check that cannot cost a wrong answer
        step = clock.CLOCK.step()
        until = next_local_day(now + step, texts.tz) - step
        if answer.eta is not None and answer.eta > now:
            until = min(until, answer.eta)  # then "work continues" is said instead
        # The entry holds the address, so the id in the key stays its.
        answer.bodies[key] = KeptBody(address, texts, until, pieces)
    return written


def _promised(eta: float | None, now: float) -> float | None:
    """An estimate still ahead; one that has passed is not given (a dialplan reading `eta`
    would promise a time gone by, which the spoken message never does)."""
    return eta if eta is not None and eta > now else None


def _add(t: float | None, step: float) -> float | None:
    return None if t is None else t + step


def _json_text(text: str) -> bytes:
    """A string as it appears inside JSON quotes."""
    return orjson.dumps(text)[1:-1]


# -- incidents -------------------------------------------------------------------------


async def incidents(request: web.Request) -> web.Response:
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    state = request.query.get("state", "open")
    if state not in ("open", "resolved", "all"):
        raise bad("state must be open, resolved or all.")
    found = queries.open_incidents(rt) if state in ("open", "all") else []
    if state in ("resolved", "all"):
        open_ids = {i["id"] for i in found}
        found += [r for r in await queries.stored(rt, "resolved") if r["id"] not in open_ids]
        found.sort(key=lambda i: (i["opened_at"] or "", int(i["id"])), reverse=True)
    return json_response({"incidents": found})


def _incident_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    iid = incident_id(raw)
    if iid is None:
        raise bad(f"{raw!r} is not an incident id.", 404)
    return iid


async def incident(request: web.Request) -> web.Response:
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    iid = _incident_id(request)
    found = await queries.one(rt, iid)
    if found is None:
        raise bad(f"there is no incident {iid}.", 404)
    events: list[dict[str, Any]] = []
    try:
        for at, kind, detail in await queries.timeline(rt, iid):
            events.append({"at": local(at).isoformat(timespec="seconds"),
                           "kind": kind, "detail": detail})  # fmt: skip
    except Exception as e:
        log.warning("api.database_unavailable", error=str(e))
    found["timeline"] = events
    return json_response(found)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise bad("the request body is too large (64 KiB at most).", 413)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad("the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object.")
    if not _encodable(body):
        # JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 text can hold.
        raise bad("the body holds text that is not valid Unicode (a lone surrogate).")
    return body


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


async def update_incident(request: web.Request) -> web.Response:
    who = authorise(request, write=True)
    rt = request.app[RUNTIME]
    iid = _incident_id(request)
    body = await _json_body(request)
    unknown = set(body) - {"eta", "note", *DECISIONS}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}; give eta and/or note, "
                  "or one of confirm, dismiss, resolve.")  # fmt: skip
    decided = [k for k in DECISIONS if k in body]
    if decided:
        return await _decide(request, rt, iid, body, decided, who or "anonymous")
    if "eta" not in body and "note" not in body:
        raise bad("give eta and/or note.")
    if "eta" not in body and isinstance(body["note"], str) and not body["note"].strip():
        raise bad("note is empty: give its text, or an eta.")
    try:
        given = parse_time(body["eta"], "eta") if body.get("eta") is not None else None
        eta, note = estimate(given, body.get("note", ""), time.time())
    except Invalid as e:
        raise bad(str(e)) from None
    if (why := queries.not_deciding(rt)) is not None:
        raise bad(why, 409)
    monitor = rt.monitor
    found = await queries.one(rt, iid) if monitor is not None else None
    if monitor is None or found is None:
        raise bad(f"there is no incident {iid}.", 404)
    if "eta" in body and found["state"] != "open":
        # The page offers no estimate for an ended incident; the API took one (200) and
        # wrote it after the repair, where the reports read it as the first estimate.
        raise bad(f"incident {iid} is {found['state']}: an estimate is for an open "
                  "incident (a note alone may still be added).", 409)  # fmt: skip
    steady_eta = clock.steady(eta) if eta is not None else None
    # "eta": null withdraws the estimate (callers hear that work continues).
    withdraw = "api" if "eta" in body and body["eta"] is None else ""
    monitor.set_eta(iid, steady_eta, note, who or "anonymous", withdraw)
    log.info("api.incident_updated", incident=iid, by=who, eta=iso(steady_eta),
             note=bool(body.get("note")))  # fmt: skip
    found = await queries.one(rt, iid)
    return json_response(found)


# An engineer's decision on an incident raised by calls (core/calls.py).
DECISIONS = ("confirm", "dismiss", "resolve")


async def _decide(request: web.Request, rt: Runtime, iid: int, body: dict[str, Any],
                  decided: list[str], who: str) -> web.Response:  # fmt: skip
    """confirm (a suspected incident becomes an outage, same id), dismiss (it ends), or
    resolve (an outage raised by calls and confirmed is repaired); a note may go along."""
    if len(decided) > 1 or "eta" in body:
        raise bad("give one of confirm, dismiss or resolve (a note may go with it).")
    what = decided[0]
    if body[what] is not True:
        raise bad(f"{what} must be true.")
    try:
        note = text(body.get("note", ""), "note")
    except Invalid as e:
        raise bad(str(e)) from None
    if (why := queries.not_deciding(rt)) is not None:
        raise bad(why, 409)
    monitor = rt.monitor
    if monitor is None or isinstance(monitor, Replica):
        raise bad("the daemon is starting; try again in a moment.", 409)
    inc = monitor.open_incident(iid)
    if inc is None:
        if await queries.one(rt, iid) is None:
            raise bad(f"there is no incident {iid}.", 404)
        raise bad(f"incident {iid} is not open: there is nothing to {what}.", 409)
    done = {"confirm": monitor.confirm, "dismiss": monitor.dismiss,
            "resolve": monitor.repaired}[what](iid, who)  # fmt: skip
    if not done:
        if what == "resolve" and inc.kind is Kind.SUSPECTED:
            raise bad(
                f"incident {iid} is only suspected: confirm it first (it is marked repaired once "
                "confirmed), or dismiss it.",
                409,
            )
        if what == "resolve":
            raise bad(f"incident {iid} was not raised by calls and confirmed: the probes "
                      "resolve it when its root answers again.", 409)  # fmt: skip
        if what == "confirm" and inc.kind is Kind.SUSPECTED and monitor.cleared(inc.root):
            raise bad(f"incident {iid} is suspected at {inc.root}, which answers the probes "
                      "now: the way through it works, so a fault its callers notice is "
                      "below it; not confirmed (callers whose way works would hear of an "
                      "outage). Dismiss it: callers below are suspected at their own "
                      "places.", 409)  # fmt: skip
        raise bad(f"incident {iid} is not a suspected incident ({inc.kind.value}): only "
                  "a suspected one can be confirmed or dismissed.", 409)  # fmt: skip
    if note:
        monitor.set_eta(iid, None, note, who)
    log.info("api.incident_decided", incident=iid, decision=what, by=who)
    # As it is now (ended ones are in the database only once the writer gets there).
    return json_response(queries.incident_json(inc, monitor))


async def add_maintenance(request: web.Request) -> web.Response:
    who = authorise(request, write=True)
    rt = request.app[RUNTIME]
    body = await _json_body(request)
    unknown = set(body) - {"node", "starts_at", "ends_at", "reason"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}.")
    node = body.get("node")
    if not isinstance(node, str):
        raise bad(f"node must be a string, a node's id in the topology, not {json.dumps(node)}.")
    if node not in rt.directory.topology:
        raise bad(f"node {node!r} is not in the topology.")
    try:
        starts = parse_time(body.get("starts_at"), "starts_at")
        ends = parse_time(body.get("ends_at"), "ends_at")
        works(starts, ends, time.time())
        reason = text(body.get("reason", ""), "reason")
    except Invalid as e:
        raise bad(str(e)) from None
    if rt.monitor is None:
        raise bad("the daemon is starting; try again in a moment.", 409)
    if (why := queries.not_deciding(rt)) is not None:
        raise bad(why, 409)
    window = Maintenance(rt.monitor.next_maintenance, node, clock.steady(starts),
                         clock.steady(ends), reason, who or "anonymous")  # fmt: skip
    rt.monitor.next_maintenance += 1
    rt.monitor.add_maintenance(window, who or "anonymous")
    log.info("api.maintenance_added", id=window.id, node=node, by=who)
    return json_response(
        {"id": str(window.id), "node": node, "starts_at": iso(window.starts_at),
         "ends_at": iso(window.ends_at),
         "reason": reason, "nodes": len(rt.directory.topology.descendants(node)) + 1},
        status=201,
    )  # fmt: skip


def works_json(window: Maintenance, now: float) -> dict[str, Any]:
    return {"id": str(window.id), "node": window.node, "starts_at": iso(window.starts_at),
            "ends_at": iso(window.ends_at), "reason": window.reason, "by": window.by,
            "running": window.starts_at <= now}  # fmt: skip


async def list_maintenance(request: web.Request) -> web.Response:
    """Planned works under way and to come, soonest first; `node=` those on one node."""
    authorise(request, write=False)
    rt = request.app[RUNTIME]
    unknown = set(request.query) - {"node"}
    if unknown:
        raise bad(f"unknown parameter(s): {', '.join(sorted(unknown))}; give node or nothing.")
    node = request.query.get("node")
    now = clock.now()
    found = sorted((m for m in (rt.monitor.maintenance if rt.monitor is not None else [])
                    if m.ends_at > now and (node is None or m.node == node)),
                   key=lambda m: (m.starts_at, m.id))  # fmt: skip
    return json_response({"maintenance": [works_json(m, now) for m in found]})


async def update_maintenance(request: web.Request) -> web.Response:
    """Planned works withdrawn (`{"withdraw": true}`: they end now, or never begin) or
    their end moved (`{"ends_at": ...}`); the same style as an incident's decisions."""
    who = authorise(request, write=True) or "anonymous"
    rt = request.app[RUNTIME]
    raw = request.match_info["id"]
    wid = incident_id(raw)  # the same rule for any id in a path
    if wid is None:
        raise bad(f"{raw!r} is not a planned works id.", 404)
    body = await _json_body(request)
    unknown = set(body) - {"withdraw", "ends_at"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}; give withdraw or ends_at.")
    if ("withdraw" in body) == ("ends_at" in body):
        raise bad('give one of {"withdraw": true} or {"ends_at": "..."}.')
    if "withdraw" in body and body["withdraw"] is not True:
        raise bad("withdraw must be true.")
    if (why := queries.not_deciding(rt)) is not None:
        raise bad(why, 409)
    monitor = rt.monitor
    if monitor is None or isinstance(monitor, Replica):
        raise bad("the daemon is starting; try again in a moment.", 409)
    now = monitor.clock()
    window = next((m for m in monitor.maintenance if m.id == wid and m.ends_at > now), None)
    if window is None:
        raise bad(f"there are no planned works {wid} under way or to come.", 404)
    ends: float | None = None
    if "ends_at" in body:
        try:
            given = parse_time(body["ends_at"], "ends_at")
            new_end(clock.wall(window.starts_at), given, time.time())
        except Invalid as e:
            raise bad(str(e)) from None
        ends = clock.steady(given)
    monitor.end_maintenance(wid, ends, who)
    log.info("api.maintenance_changed", id=wid, node=window.node, by=who,
             withdrawn=ends is None, ends_at=iso(ends))  # fmt: skip
    kept = next((m for m in monitor.maintenance if m.id == wid), None)
    answer = works_json(kept or window, now)
    if ends is None:
        # Ended now, or never begun: running no longer (it said true, the works as they were).
        answer.update(ends_at=iso(now) if window.starts_at <= now else None, withdrawn=True,
                      running=False)  # fmt: skip
    return json_response(answer)


def setup(routes: web.RouteTableDef) -> None:
    routes.get("/api/v1/check")(check)
    routes.get("/api/v1/incidents")(incidents)
    routes.get("/api/v1/incidents/{id}")(incident)
    routes.post("/api/v1/incidents/{id}")(update_incident)
    routes.post("/api/v1/maintenance")(add_maintenance)
    routes.get("/api/v1/maintenance")(list_maintenance)
    routes.post("/api/v1/maintenance/{id}")(update_maintenance)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(spec())

    routes.get("/api/v1/openapi.json")(openapi)
