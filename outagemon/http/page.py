"""The incident page for engineers: server-rendered, updated live over server-sent events.

Everything user-supplied (notes, node names, addresses) is escaped by Jinja2's
autoescaping; the only script is a static file that swaps in the live fragment, and the
Content-Security-Policy allows no other. With `[http] page_auth` every route here needs a
session (see http/security.py); every form, with or without it, carries a CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from outagemon import clock, logs
from outagemon.cluster.replica import Replica
from outagemon.core.calls import building_text
from outagemon.core.health import State
from outagemon.core.incidents import Incident, Maintenance
from outagemon.http import charts, figures, queries
from outagemon.http.runtime import (
    RUNTIME,
    Invalid,
    Runtime,
    bad,
    error,
    estimate,
    incident_id,
    iso_wall,
    local,
    local_naive,
)
from outagemon.http.security import (
    CSRF_COOKIE,
    PAGE_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Message,
    Session,
)
from outagemon.monitor import Monitor

log = logs.get("outagemon.page")

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("outagemon.http", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _human(value: str | None) -> str:
    """An ISO time from the API as the page shows it: 26.11.2026 18:30, local time."""
    if not value:
        return ""
    try:
        return local(datetime.fromisoformat(value)).strftime("%d.%m.%Y %H:%M")
    except ValueError:
        return value


ENV.filters["human"] = _human
ENV.filters["figure"] = charts.figure  # numbers for people (`charts.figure`)
LIVE_EVERY = 1.0  # seconds between checks for a change to push
KEEP_ALIVE_EVERY = 15.0  # seconds of silence on a stream before a comment line
WRITE_TIMEOUT = 10.0  # seconds a stream's reader may take to accept one write
MAX_ROWS = 50


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return local(datetime.fromtimestamp(seconds, tz=UTC)).strftime("%d.%m %H:%M:%S")


def _addresses(rt: Runtime, nodes: list[str], limit: int = 5) -> tuple[list[str], int]:
    topo = rt.directory.topology.nodes
    found: list[str] = []
    for n in nodes:
        node = topo.get(n)
        if node is None:
            continue
        for s in node.serves:
            text = s.address.text()
            if s.flats:  # in the address's own language, as its text
                text += f" ({'Apt' if s.address.english else 'кв.'} {s.flats_text()})"
            if text not in found:
                found.append(text)
    return found[:limit], max(0, len(found) - limit)


def _card(rt: Runtime, inc: Incident) -> dict[str, Any]:
    m = rt.monitor
    assert m is not None
    addresses, more = _addresses(rt, inc.nodes)
    root = rt.directory.topology.nodes.get(inc.root)
    return {
        "id": inc.id, "kind": inc.kind.value, "root": inc.root,
        "root_name": root.name if root else "",
        "inferred": _inferred_badge(inc.inferred, inc.raised_by),
        "recovering": inc.recovering_since is not None, "since": _when(inc.opened_at),
        "nodes": len(inc.nodes), "subscribers": m.subscribers_of(inc.nodes),
        "calls": m.calls.get(inc.id, 0), "eta": _when(queries.eta_of(inc, m)),
        "addresses": addresses, "more_addresses": more,
        "resolved": _when(inc.resolved_at),
        "reopened": _when(inc.reopened_at),
        **_suspicion_card(m, inc),
    }  # fmt: skip


def _suspicion_card(m: Monitor | Replica, inc: Incident) -> dict[str, Any]:
    """An incident raised by calls: its distinct callers and the chart of its calls."""
    if isinstance(m, Replica):  # the leader's, as its opening said them: no chart
        copy = m.watch.open.get(inc.id)
        return {"callers": copy.callers if copy is not None else 0, "chart": ""}
    sus = m.watch.open.get(inc.id)
    if sus is None:
        return {"callers": 0, "chart": ""}
    return {"callers": sus.distinct_callers, "chart": chart(sus.per_minute(m.clock()))}


def chart(per_minute: list[int]) -> Markup:
    """Calls per minute as a small bar chart (inline SVG: no script, no request)."""
    if not per_minute:
        return Markup("")
    top = max(max(per_minute), 1)
    width, height = 4 * len(per_minute), 24
    bars = "".join(
        f'<rect x="{4 * i}" y="{height - round(height * n / top)}" width="3" '
        f'height="{round(height * n / top)}"></rect>'
        for i, n in enumerate(per_minute) if n
    )  # fmt: skip
    title = f"calls per minute over the last {len(per_minute)} minutes: {sum(per_minute)}"
    return Markup(
        f'<svg class="calls" width="{width}" height="{height}" role="img" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>{bars}</svg>'
    )


def _works(rt: Runtime, maintenance: list[Maintenance]) -> list[dict[str, Any]]:
    """Planned works under way or to come, soonest first: callers behind them hear
    `maintenance`, so the engineers see them too (not only once a node fails inside)."""
    now = clock.now()
    topo = rt.directory.topology.nodes
    shown = sorted((w for w in maintenance if w.ends_at > now), key=lambda w: w.starts_at)
    return [{
        "id": w.id, "node": w.node, "name": topo[w.node].name if w.node in topo else "",
        "running": w.starts_at <= now, "starts": _when(w.starts_at), "ends": _when(w.ends_at),
        "reason": w.reason,
    } for w in shown[:MAX_ROWS]]  # fmt: skip


def live_context(rt: Runtime) -> dict[str, Any]:
    m = rt.monitor
    open_cards: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    works: list[dict[str, Any]] = []
    more = 0
    if m is not None:
        c = m.correlator
        works = _works(rt, m.maintenance)
        incs = sorted(m.open_incidents(), key=lambda i: -i.opened_at)
        open_cards = [_card(rt, i) for i in incs]
        # A reopened incident is open again: its earlier resolution is not "recent".
        still_open = {i.id for i in incs}
        seen: dict[int, Incident] = {}
        for inc in m.recently_resolved():
            if inc.id not in still_open:
                seen.setdefault(inc.id, inc)
        resolved = [
            _card(rt, i) for i in sorted(seen.values(), key=lambda i: -(i.resolved_at or 0))
        ]
        resolved = resolved[:20]
        topo = rt.directory.topology.nodes
        # Nodes inside an incident are on its card; these are the ones that are not.
        # The state first: nearly every node is up, and this walk runs once a second.
        down = State.DOWN
        # A replica's states (cluster/replica.py) say which are down or degraded themselves.
        troubled = getattr(c.states, "troubled", None)
        pairs = troubled() if troubled is not None else [
            (n, ns) for n, ns in c.states.items() if ns.state is down or ns.degraded
        ]  # fmt: skip
        bad = [(n, ns) for n, ns in pairs if n in topo and n not in c.node_incident]
        bad.sort(key=lambda item: -item[1].changed_at)
        more = max(0, len(bad) - MAX_ROWS)
        for n, ns in bad[:MAX_ROWS]:
            problems.append({
                "id": n, "kind": topo[n].kind,
                "state": "down" if ns.state is State.DOWN else "degraded",
                "since": _when(ns.down_at if ns.state is State.DOWN else ns.changed_at),
                "loss": f"{ns.short_lost / ns.short_n:.0%}" if ns.short_n else "",
            })  # fmt: skip
    writer = m.writer if m is not None else None
    health = {
        "blind": bool(m and m.correlator.blind),
        "rate": f"{rt.probe_rate:,.0f}",
        "targets": len(rt.directory.topology.by_ip),
        "ready": rt.not_ready is None,
        "last_tick": _when(m.last_tick) if m and m.last_tick else "never",
        "db": writer is None or writer.available,
        "queued": len(writer) if writer is not None else 0,
        "network_loss": f"{m.correlator.network_loss:.1%}" if m else "",
    }
    return {
        "open": open_cards, "resolved": resolved, "problems": problems,
        "more_problems": more, "health": health, "works": works,
        "restored_period": period_text(rt.config.messages.restored_for),
    }  # fmt: skip


# -- who is asking ---------------------------------------------------------------------


class Visitor:
    """A browser as the page sees it: its session, if any, and what binds its forms."""

    def __init__(self, request: web.Request, rt: Runtime) -> None:
        self.secure = request.secure
        cookies = request.cookies
        self.sid = cookies.get(SESSION_COOKIE)
        self.session: Session | None = rt.guard.sessions.get(self.sid, rt.config.tokens,
                                                             time.time())  # fmt: skip
        self.new_binding: str | None = None
        self.binding = self.sid if self.session is not None else cookies.get(CSRF_COOKIE)
        self.rt = rt

    def csrf(self) -> str:
        """The token for this browser's forms; a fresh cookie to bind it to if it has none."""
        if not self.binding:
            self.binding = self.new_binding = secrets.token_urlsafe(24)
        return self.rt.guard.csrf(self.binding)

    def csrf_ok(self, given: object) -> bool:
        return isinstance(given, str) and self.rt.guard.csrf_ok(self.binding, given)

    def page(self, html: str, status: int = 200) -> web.Response:
        response = web.Response(text=html, status=status, content_type="text/html",
                                charset="utf-8", headers=PAGE_HEADERS)  # fmt: skip
        if self.new_binding is not None:
            response.set_cookie(CSRF_COOKIE, self.new_binding, httponly=True, samesite="Strict",
                                path="/", secure=self.secure or None)  # fmt: skip
        return response

    def context(self) -> dict[str, Any]:
        return {"session": self.session.name if self.session else "", "csrf": self.csrf()}


def _required(request: web.Request) -> Visitor:
    """The visitor; with page_auth and no session, a redirect to the login form."""
    rt = request.app[RUNTIME]
    visitor = Visitor(request, rt)
    if rt.config.http.page_auth and visitor.session is None:
        target = request.path if request.method == "GET" else "/"
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode({"next": target}))
    return visitor


def _back(path: str, message: Message) -> web.HTTPSeeOther:
    # 303 (as the OpenAPI says, and as the login's redirects are): the browser GETs the
    # page back, whatever the form's method.
    return web.HTTPSeeOther(f"{path}?message={message.code}")


async def _form(request: web.Request) -> dict[str, str]:
    """A posted form's text fields; a sentence (400) for one that cannot be read."""
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise bad("the form is too large (64 KiB at most).", 413)
    try:
        form = await request.post()
    except (UnicodeError, LookupError, ValueError):
        # Bytes that are not UTF-8, or a charset Python does not know ("klingon").
        raise bad("the form is not readable: send it as UTF-8.") from None
    fields: dict[str, str] = {}
    for key, value in form.items():
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise bad("the form is not readable: send it as UTF-8.") from None
            fields[key] = value
    return fields


# -- pages -------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    visitor = _required(request)
    rt = visitor.rt
    html = ENV.get_template("index.html").render(
        now=_when(time.time()), **visitor.context(), **live_context(rt)
    )
    return visitor.page(html)


class Live:
    """The live fragment for every open page: one producer renders it once per tick
    (walking every node's state costs ~30 ms at 100,000 nodes) and each `/events` stream
    writes the same bytes. A stream that falls behind skips to the newest fragment (each
    replaces the whole section); one that cannot take a write in WRITE_TIMEOUT is ended.
    At most `max_streams` are open; the producer runs only while one is."""

    def __init__(self, rt: Runtime, max_streams: int) -> None:
        self.rt = rt
        self.max_streams = max_streams
        self.streams = 0
        self.closed = False
        self._message = b""  # the newest "event: live", b"" until the producer rendered
        self._version = 0
        self._changed = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        m = rt.metrics
        self.renders = m.counter("outagemon_live_renders_total", "Live fragments rendered.")
        self._open = m.gauge("outagemon_live_streams", "Live-page streams (/events) open.")
        self._refused = m.counter(
            "outagemon_live_refused_total", "Live-page streams refused: over [http] max_streams."
        )

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream now (the daemon is stopping): handlers return at once."""
        self.closed = True
        self._wake()
        if self._producer is not None:
            self._producer.cancel()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _produce(self) -> None:
        template = ENV.get_template("live.html")
        last = ""
        try:
            failing = False
            while self.streams and not self.closed:
                try:
                    fragment = template.render(**live_context(self.rt))
                except Exception:
                    if not failing:  # once, not every second while it lasts
                        log.exception("page.live_render_failed")
                    failing = True
                    await asyncio.sleep(LIVE_EVERY)
                    continue
                failing = False
                self.renders.inc()
                if fragment != last:
                    last = fragment
                    data = "\n".join(f"data: {line}" for line in fragment.splitlines())
                    self._message = f"event: live\n{data}\n\n".encode()
                    self._version += 1
                    self._wake()
                await asyncio.sleep(LIVE_EVERY)
        finally:
            # No await from the check of `streams` to here: a stream that arrives later
            # finds no producer and starts one, which renders before anything is sent.
            self._producer = None
            self._message = b""

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.closed:
            return _busy("the server is stopping; the page reconnects by itself.", 5)
        if self.streams >= self.max_streams:
            self._refused.inc()
            return _busy(f"too many live pages are open (at most {self.max_streams}); "
                         "reload the page later.", 30)  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})  # fmt: skip
        self.streams += 1
        self._open.set(self.streams)
        try:
            await response.prepare(request)
            if self._producer is None:
                self._producer = asyncio.get_running_loop().create_task(
                    self._produce(), name="live"
                )
            await self._follow(request, response)
        except (ConnectionError, TimeoutError):
            pass  # the browser went away or stopped reading: not an error
        finally:
            self.streams -= 1
            self._open.set(self.streams)
        return response

    async def _follow(self, request: web.Request, response: web.StreamResponse) -> None:
        seen = 0
        quiet = 0.0  # seconds since the last write
        while not self.closed:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if seen != self._version and self._message:
                seen = self._version
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(self._message)
                quiet = 0.0
            elif quiet >= KEEP_ALIVE_EVERY:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b": keep-alive\n\n")
                quiet = 0.0
            changed = self._changed
            started = asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                # Woken by a new fragment or the close; at least once a second, to notice
                # a closed connection and to keep it alive.
                async with asyncio.timeout(LIVE_EVERY):
                    await changed.wait()
            quiet += asyncio.get_running_loop().time() - started


def _busy(sentence: str, retry_after: int) -> web.Response:
    made = error(503, sentence)
    made.headers["Retry-After"] = str(retry_after)
    return made


LIVE = web.AppKey("live", Live)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the live fragment, whenever it changes."""
    _required(request)  # with page_auth, a session first
    return await request.app[LIVE].stream(request)


def _tree(rt: Runtime, inc: dict[str, Any]) -> Markup:
    """The nodes the incident cuts off, as nested lists from the root (escaped)."""
    members = set(inc["nodes"])
    topo = rt.directory.topology.nodes
    shown = 0

    def branch(node: str, depth: int) -> str:
        nonlocal shown
        shown += 1
        n = topo.get(node)
        label = escape(node) + (Markup(" <span class=muted>") + escape(n.kind) +
                                Markup("</span>") if n else Markup(""))  # fmt: skip
        kids = [c for c in (n.children if n else []) if c in members]
        if not kids or depth > 6 or shown > 500:
            more = f" (+{len(kids)})" if kids else ""
            return str(Markup("<li>") + label + escape(more) + Markup("</li>"))
        inner = "".join(branch(c, depth + 1) for c in sorted(kids)[:100])
        return str(Markup("<li>") + label + Markup('<ul class="tree">') + Markup(inner)
                   + Markup("</ul></li>"))  # fmt: skip

    return Markup('<ul class="tree">' + branch(inc["root_node"], 0) + "</ul>")


def _timeline_text(kind: str, detail: dict[str, Any], raised_by: str | None = None) -> str:
    """A timeline line as a sentence; `raised_by`: the incident's (a root the probes moved
    up is not a suspicion widened by callers)."""
    if kind == "root_moved" and raised_by != "calls":
        absorbed = detail.get("absorbed") or []
        also = f", absorbing incident(s) {', '.join(map(str, absorbed))}" if absorbed else ""
        return f"Its root moved up from {detail.get('from')}: a failure above it cuts it off{also}."
    if kind == "note":
        return f"{detail.get('note', '')} — {detail.get('by', '')}"
    if kind == "eta" and detail.get("eta") is None:
        why = {
            "reopened": " (the incident reopened: it was for the last repair)",
            "refailed": " (the root failed again while recovering: it was for that repair)",
        }.get(str(detail.get("withdrawn")), "")
        return f"ETA withdrawn{why} — {detail.get('by', '')}"
    if kind == "eta":
        # As the page's header says it (26.11.2026 18:30), not the API's ISO text.
        return f"ETA {_human(str(detail.get('eta', '')))} — {detail.get('by', '')}"
    if kind == "nodes" and isinstance(detail.get("added"), int):
        # Counted as the page's "cuts off" and the API's `nodes`: the root among them.
        n = detail["added"]
        joined = f"{n} node{'' if n == 1 else 's'} joined the root"
        total = detail.get("nodes")
        return joined + (f": it cuts off {total}, the root included" if total else "")
    if kind == "kind_changed" and detail.get("works_ended"):
        ended = detail["works_ended"]
        if isinstance(ended, int | float):  # stored as seconds before the eleventh session
            ended = datetime.fromtimestamp(ended, tz=UTC).isoformat()
        return (f"Planned works ended {_human(str(ended))} with its root still down: an "
                "outage now.")  # fmt: skip
    if kind in ("reopened", "refailed") and detail.get("since"):
        # As the header's times, not the stored ISO text with its microseconds.
        return f"Its root failed again: this fault since {_human(str(detail['since']))}."
    said = _suspicion_text(kind, detail)
    if said:
        return said
    return "; ".join(f"{k.replace('_', ' ')}: {_value_text(v)}" for k, v in detail.items())


def _value_text(value: Any) -> str:
    """A detail's value as words (lists joined, yes/no), never a Python repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_value_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_value_text(v)}" for k, v in value.items())
    return str(value)


def _minutes(seconds: Any) -> str:
    n = round(float(seconds) / 60)
    if n == 0:
        return "less than a minute"  # not "0 minutes"
    return f"{n} minute{'' if n == 1 else 's'}"


def period_text(seconds: float) -> str:
    """A span of time as words ("hour", "3 hours", "10 minutes"): "0.2 h" read as a typo."""
    hours = seconds / 3600
    if hours >= 1 and hours == int(hours):
        return "hour" if hours == 1 else f"{int(hours)} hours"
    return _minutes(seconds)


def _suspicion_text(kind: str, detail: dict[str, Any]) -> str:
    """The suspected-incident events (core/calls.py) as sentences; "" for the others."""
    by = f" by {detail['by']}" if detail.get("by") else ""
    if kind == "opened" and detail.get("raised_by") == "calls":
        n = int(detail.get("callers") or 0)
        out = f"Suspected from calls: {n} distinct caller{'' if n == 1 else 's'}"
        if detail.get("first_call_ago") is not None:
            out += f", the first {_minutes(detail['first_call_ago'])} before"
        buildings = [building_text(str(b)) for b in detail.get("buildings") or []]
        if buildings:
            out += f", from {'; '.join(buildings)}"
        return out + ". Not confirmed: an engineer confirms or dismisses it."
    if kind == "kind_changed" and detail.get("from") == "suspected":
        who = "the probes" if detail.get("confirmed_by") == "probes" else None
        return f"Confirmed as an outage{by or (' by ' + who if who else '')}."
    if kind == "resolved" and detail.get("dismissed"):
        return f"Dismissed{by}: not an outage."
    if kind == "resolved" and detail.get("expired"):
        quiet = detail.get("quiet_for")
        return ("Expired: no more calls than usual"
                + (f" for {_minutes(quiet)}" if quiet is not None else "") + ".")  # fmt: skip
    if kind == "resolved" and isinstance(detail.get("answering"), list):
        back = ", ".join(map(str, detail["answering"]))
        more = int(detail.get("count") or 0) - len(detail["answering"])
        back += f" and {more} more" if more > 0 else ""
        what = "Repaired" if detail.get("repaired") else "Ended, never confirmed"
        return f"{what}: the probes see its place answering again ({back})."
    if kind == "resolved" and detail.get("repaired"):
        return f"Repaired (said{by})."
    if kind == "merged" and detail.get("confirmed_by") == "probes":
        was = "suspected incident" if detail.get("was") == "suspected" else "outage"
        return f"The probes see it: this {was} goes on as incident {detail.get('into')}."
    if kind == "root_moved" and detail.get("narrowed"):
        return (f"Narrowed from {detail.get('from')}: its callers are here, the others"
                " were the usual calls.")  # fmt: skip
    if kind == "root_moved" and "absorbed" in detail:
        out = f"Widened from {detail.get('from')}: more callers further up"
        absorbed = detail.get("absorbed") or []
        if absorbed:
            out += f", absorbing incident(s) {', '.join(str(a) for a in absorbed)}"
        return out + "."
    return ""


def _inferred_badge(inferred: bool, raised_by: str | None) -> bool:
    """Whether a page shows the "inferred" badge: it tells the probes' inference; an
    incident raised by calls says so itself."""
    return inferred and raised_by != "calls"


async def incident_page(request: web.Request) -> web.Response:
    visitor = _required(request)
    rt = visitor.rt
    raw = request.match_info["id"]
    iid = incident_id(raw)
    inc = await queries.one(rt, iid) if iid is not None else None
    if iid is None or inc is None:
        raise bad(f"there is no incident {raw}.", 404)
    timeline: list[dict[str, str]] = []
    raised_by = inc.get("raised_by")
    try:
        for at, kind, detail in await queries.timeline(rt, iid):
            timeline.append({"at": local(at).strftime("%d.%m %H:%M:%S"), "kind": kind,
                             "text": _timeline_text(kind, detail, raised_by)})  # fmt: skip
    except Exception as e:
        log.warning("page.database_unavailable", error=str(e))
    html = ENV.get_template("incident.html").render(
        now=_when(time.time()), i=inc, timeline=timeline, tree=_tree(rt, inc),
        inferred=_inferred_badge(bool(inc["inferred"]), inc.get("raised_by")),
        chart=chart(inc.get("calls_per_minute") or []),
        message=Message.of(request.query.get("message")),
        can_write=visitor.session is not None and visitor.session.role == "write",
        tz=local(datetime.now(UTC)).strftime("%Z %z"), **visitor.context(),
    )  # fmt: skip
    return visitor.page(html)


async def incident_form(request: web.Request) -> web.Response:
    """The page's form. Without a write session the token comes in a field, since a browser
    sends no bearer header; either way the form's CSRF token must match this browser's.

    The estimate and the note are checked as the API checks them (`runtime.estimate`);
    the form's time has no offset (a browser's datetime-local field), so it is taken in
    the zone the page shows times in ([messages] timezone, else the server's)."""
    visitor = _required(request)
    rt = visitor.rt
    raw = request.match_info["id"]
    iid = incident_id(raw)
    if iid is None:
        raise bad(f"there is no incident {raw}.", 404)
    back = f"/incidents/{iid}"
    form = await _form(request)
    who = _writer(request, visitor, form, back)
    decision = form.get("decision", "")
    if decision:
        raise _back(back, _decide(rt, iid, decision, who))
    eta_text = form.get("eta", "").strip()
    eta = None
    if eta_text:
        try:
            eta = local_naive(datetime.fromisoformat(eta_text)).timestamp()
        except (ValueError, OverflowError, OSError):
            raise _back(back, Message.ETA_INVALID) from None
    now = time.time()
    try:
        eta, note = estimate(eta, form.get("note", ""), now)
    except Invalid as e:
        raise _back(back, Message.refusal(str(e))) from None
    if eta is None and not note:  # as the API refuses `{}`: "Saved." would say otherwise
        raise _back(back, Message.NOTHING)
    if queries.not_deciding(rt) is not None or isinstance(rt.monitor, Replica):
        raise _back(back, Message.STANDBY)
    monitor = rt.monitor
    found = await queries.one(rt, iid) if monitor is not None else None
    if monitor is None or found is None:
        raise bad(f"there is no incident {raw}.", 404)
    if eta is not None and found["state"] != "open":  # the API's rule (a stale form)
        raise _back(back, Message.ETA_ENDED)
    monitor.set_eta(iid, clock.steady(eta) if eta is not None else None, note, who)
    raise _back(back, Message.SAVED)


def _writer(request: web.Request, visitor: Visitor, form: dict[str, str], back: str) -> str:
    """Who sends a page's form that writes: the write session's name, else the write
    token's typed into the form; the CSRF token must match this browser's. Anything
    else goes back to `back` with a sentence."""
    rt = visitor.rt
    if not visitor.csrf_ok(form.get("csrf")):
        rt.guard.failed("form", request.remote, "csrf")
        raise _back(back, Message.FORM_EXPIRED)
    tokens = rt.config.tokens
    if not any(t.role == "write" for t in tokens):
        raise _back(back, Message.WRITES_DISABLED)
    session = visitor.session
    if session is not None and session.role == "write":
        return session.name
    # A token typed into the form can be guessed like a login: the same backoff.
    address, now = request.remote or "", time.time()
    if rt.guard.backoff.wait(address, now) > 0:
        rt.guard.failed("form", address, "backoff")
        raise _back(back, Message.TOO_MANY)
    token = rt.token_check.find(tokens, form.get("token", ""))
    if token is None or token.role != "write":
        rt.guard.backoff.failed(address, now)
        rt.guard.failed("form", address, "invalid")
        # A read token is a real one (the API says so too): "not valid" sent engineers
        # looking for a typo.
        raise _back(back, Message.TOKEN_INVALID if token is None else Message.TOKEN_READ_ONLY)
    rt.guard.backoff.succeeded(address)
    return token.name


def _current_works(rt: Runtime, raw: str) -> Maintenance | None:
    """The planned works a page's path names, while under way or to come."""
    wid = incident_id(raw)  # the same rule for any id in a path
    m = rt.monitor
    if wid is None or m is None:
        return None
    now = m.clock()
    return next((w for w in m.maintenance if w.id == wid and w.ends_at > now), None)


async def works_page(request: web.Request) -> web.Response:
    """One planned works, with a button to withdraw them (the live section links here: a
    fragment every visitor shares cannot hold a visitor's CSRF token)."""
    visitor = _required(request)
    rt = visitor.rt
    raw = request.match_info["id"]
    window = _current_works(rt, raw)
    message = Message.of(request.query.get("message"))
    if window is None and not message:
        raise bad(f"there are no planned works {raw} under way or to come.", 404)
    works = _works(rt, [window]) if window is not None else []
    html = ENV.get_template("works.html").render(
        now=_when(time.time()), raw=raw, w=works[0] if works else None, message=message,
        by=window.by if window is not None else "",
        can_write=visitor.session is not None and visitor.session.role == "write",
        **visitor.context(),
    )  # fmt: skip
    return visitor.page(html)


async def works_form(request: web.Request) -> web.Response:
    """The works page's button: withdraw them (`POST /api/v1/maintenance/{id}` with
    `{"withdraw": true}`, as a form)."""
    visitor = _required(request)
    rt = visitor.rt
    raw = request.match_info["id"]
    if incident_id(raw) is None:
        raise bad(f"there are no planned works {raw} under way or to come.", 404)
    back = f"/maintenance/{raw}"
    who = _writer(request, visitor, await _form(request), back)
    m = rt.monitor
    if queries.not_deciding(rt) is not None or isinstance(m, Replica):
        raise _back(back, Message.STANDBY)
    window = _current_works(rt, raw)
    if m is None or window is None:
        raise bad(f"there are no planned works {raw} under way or to come.", 404)
    m.end_maintenance(window.id, None, who)
    log.info("page.maintenance_withdrawn", id=window.id, node=window.node, by=who)
    raise _back(back, Message.WITHDRAWN)


def _decide(rt: Runtime, iid: int, decision: str, who: str) -> Message:
    """The page's buttons for an incident raised by calls: confirm, dismiss, repaired."""
    m = rt.monitor
    if queries.not_deciding(rt) is not None or isinstance(m, Replica):
        return Message.STANDBY
    act = {"confirm": (m.confirm, Message.CONFIRMED), "dismiss": (m.dismiss, Message.DISMISSED),
           "resolve": (m.repaired, Message.REPAIRED)} if m is not None else {}  # fmt: skip
    if decision not in act:
        return Message.NOT_DECIDABLE
    do, said = act[decision]
    if do(iid, who):
        return said
    sus = m.watch.open.get(iid) if m is not None else None
    if decision == "confirm" and sus is not None and m is not None and not sus.confirmed:
        return Message.ROOT_ANSWERS  # (refused only while its root is cleared)
    return Message.NOT_DECIDABLE


# -- reports ---------------------------------------------------------------------------

# The page's periods: (label, seconds, the calls chart's bucket).
RANGES = {"24h": ("24 hours", 86400, 900), "7d": ("7 days", 7 * 86400, 7200),
          "30d": ("30 days", 30 * 86400, 6 * 3600)}  # fmt: skip


async def reports_page(request: web.Request) -> web.Response:
    """Pictures of the last 24 hours, 7 or 30 days: the incidents' timeline, calls a
    minute against incidents open, and the buildings and nodes that lost most. The same
    figures as /api/v1/reports/*, read in the reports' own database budget."""
    visitor = _required(request)
    rt = visitor.rt
    chosen = request.query.get("range", "24h")
    now = float(int(time.time()))  # whole seconds: the period is the API's to the second
    if chosen not in RANGES:
        # A person's browser asked: a page with the sentence, not the API's JSON.
        problem = f"range must be one of {', '.join(RANGES)}, not {chosen[:40]!r}."
        html = ENV.get_template("reports.html").render(
            now=_when(now), ranges=list(RANGES), range="", label="", from_iso="",
            to_iso="", problem=problem, **visitor.context()
        )  # fmt: skip
        return visitor.page(html, status=400)
    label, seconds, step = RANGES[chosen]
    start, end = now - seconds, now
    context: dict[str, Any] = {"ranges": list(RANGES), "range": chosen, "label": label,
                               "from_iso": iso_wall(start),
                               "to_iso": iso_wall(end), "problem": ""}  # fmt: skip
    try:
        pictures = await figures.made(
            rt,
            start,
            end,
            now,
            lambda r: _pictures(rt, r, start, end, step, now),
            {"building": 10, "node": 10},
        )
    except figures.Busy as e:
        html = ENV.get_template("reports.html").render(
            now=_when(now), **(context | {"problem": str(e)}), **visitor.context()
        )
        return visitor.page(html, status=503)
    html = ENV.get_template("reports.html").render(
        now=_when(now), **context, **pictures, **visitor.context()
    )
    return visitor.page(html)


def _pictures(rt: Runtime, report: figures.Report, start: float, end: float, step: float,
              now: float) -> dict[str, Any]:  # fmt: skip
    """The reports page's figures and charts (in a worker thread: see figures.made)."""
    bars = [{"id": str(i.id), "kind": i.kind, "root_node": i.root, "subscribers": i.subscribers,
             "opened": i.opened_at, "resolved": i.resolved_at,
             "faults": i.faults(now) if i.gaps else None}
            for i in report.incidents]  # fmt: skip
    buildings = figures.availability(rt, report, start, end, "building", 10)
    nodes = figures.availability(rt, report, start, end, "node", 10)
    calls = figures.calls(report, start, end, step, now)
    return {
        "totals": figures.incidents(report, start, end, now)["totals"],
        "timeline": charts.timeline(bars, start, end, now),
        "calls": charts.calls(calls["buckets"], start, end, step),
        "calls_note": calls["note"],
        "buildings": charts.worst(buildings["rows"], "buildings"),
        "nodes": charts.worst(nodes["rows"], "nodes"),
    }


# -- logging in and out ----------------------------------------------------------------


def _next(value: object) -> str:
    """Where to go after logging in: a path on this server only (no open redirect)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//") \
            and "\\" not in value and value.isprintable():  # fmt: skip
        return value
    return "/"


async def login_page(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    visitor = Visitor(request, rt)
    target = _next(request.query.get("next"))
    if not rt.config.http.page_auth:
        raise web.HTTPSeeOther(target)
    html = ENV.get_template("login.html").render(
        now=_when(time.time()), message=Message.of(request.query.get("message")),
        next=target, **visitor.context(),
    )  # fmt: skip
    return visitor.page(html)


async def login(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    if not rt.config.http.page_auth:
        raise web.HTTPSeeOther("/")
    visitor = Visitor(request, rt)
    address = request.remote or ""
    now = time.time()
    wait = rt.guard.backoff.wait(address, now)
    if wait > 0:
        rt.guard.failed("login", address, "backoff")
        html = ENV.get_template("login.html").render(
            now=_when(now), message=Message.TOO_MANY.value, next="/", **visitor.context()
        )
        response = visitor.page(html, status=429)
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    form = await _form(request)
    target = _next(form.get("next"))
    if not visitor.csrf_ok(form.get("csrf")):
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode(
            {"message": Message.FORM_EXPIRED.code, "next": target}))  # fmt: skip
    token = rt.token_check.find(rt.config.tokens, form.get("token", ""))
    if token is None:
        rt.guard.backoff.failed(address, now)
        rt.guard.failed("login", address, "invalid")
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode(
            {"message": Message.LOGIN_FAILED.code, "next": target}))  # fmt: skip
    rt.guard.backoff.succeeded(address)
    rt.guard.sessions.close(visitor.sid)  # a new id at each login (no session fixation)
    sid = rt.guard.sessions.open(token, now)
    log.info("page.login", name=token.name, remote=address)
    response = web.HTTPSeeOther(target)
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/",
                        max_age=SESSION_SECONDS, secure=request.secure or None)  # fmt: skip
    raise response


async def logout(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    visitor = Visitor(request, rt)
    form = await _form(request)
    if visitor.session is not None and visitor.csrf_ok(form.get("csrf")):
        rt.guard.sessions.close(visitor.sid)
    response = web.HTTPSeeOther("/login?message=" + Message.LOGGED_OUT.code)
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def install(app: web.Application, rt: Runtime) -> None:
    """The live producer, closed first on the way out so open pages do not hold the stop."""
    app[LIVE] = live = Live(rt, rt.config.http.max_streams)
    app.on_shutdown.append(live.close)


def setup(routes: web.RouteTableDef) -> None:
    routes.get("/")(index)
    routes.get("/events")(events)
    routes.get("/incidents/{id}")(incident_page)
    routes.get("/reports")(reports_page)
    routes.post("/incidents/{id}")(incident_form)
    routes.get("/maintenance/{id}")(works_page)
    routes.post("/maintenance/{id}")(works_form)
    routes.get("/login")(login_page)
    routes.post("/login")(login)
    routes.post("/logout")(logout)
