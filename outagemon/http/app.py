"""The aiohttp application: make_app(runtime) for the daemon and for tests.

The only module that imports the handlers (`api`, `page`); they share `runtime`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import importlib.resources
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from aiohttp import hdrs, web

from outagemon import __version__, logs
from outagemon.http import api, badrequest, downtime, figures, page, reports, security
from outagemon.http.runtime import RUNTIME, Runtime, error, host_allowed, json_response

log = logs.get("outagemon.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The server's timeouts: aiohttp's own keep an idle connection for an hour and wait a
# minute, twice, for each handler on the way out.
KEEPALIVE_TIMEOUT = 10.0  # s: a connection idle, or still sending its headers, is closed
BODY_TIMEOUT = 10.0  # s: a request's body must be in this long after its headers
SHUTDOWN_TIMEOUT = 1.0  # s: handlers still running at stop get this long, then are cancelled


def runner(app: web.Application) -> web.AppRunner:
    """The daemon's runner for `app`, with the timeouts above; the requests aiohttp's
    parser refuses are answered with JSON sentences too (http/badrequest.py)."""
    return badrequest.Runner(app, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT,
                         shutdown_timeout=SHUTDOWN_TIMEOUT)  # fmt: skip


def _body_late(request: web.Request) -> None:
    """A body still arriving BODY_TIMEOUT after its headers: a slow (or idle) sender
    holding a connection and a handler. Closed; the handler's read ends as a disconnect."""
    if not request.content.is_eof() and request.transport is not None:
        log.info("http.body_timeout", path=request.path, timeout=BODY_TIMEOUT)
        request.transport.close()


def sentences(handler: Handler, runtime: Runtime | None = None) -> Handler:
    """Every error a client sees is JSON with a sentence; nothing it sends becomes a 5xx.

    A wrapper around each handler rather than an aiohttp middleware: with any middleware
    at all, aiohttp adds two coroutines and a cache lookup to every request's way, which
    cost /check about 5 % of its throughput under a call surge. It also answers only to
    the Host names allowed (DNS rebinding), at the cost of one dictionary look-up."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        timer = None
        if not request.content.is_eof():  # a body still on its way (rare: most are in)
            timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT, _body_late, request)
        try:
            host = request.headers.get(hdrs.HOST, "")
            if runtime is not None and not host_allowed(runtime, host):
                return error(421, "this server does not answer to that host name; "
                                  "see [http] allowed_hosts.")  # fmt: skip
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _sentence(request, e)
        except UnicodeError:
            # Text that is not UTF-8 (a query, a header, a form) is the client's mistake.
            return error(400, "the request holds text that is not valid UTF-8.")
        except ConnectionError:
            raise  # the client went away: aiohttp ends the request quietly
        except Exception as e:
            _failed(request, e)
            return error(500, "the server failed to answer; the failure is logged.")
        finally:
            if timer is not None:
                timer.cancel()

    return answer


def _failed(request: web.Request, e: Exception) -> None:
    """Count a 5xx; log its traceback once per route and kind of error, not per request:
    one bug hit by every call of a surge must not bury the journal."""
    route = request.match_info.route.resource
    where = route.canonical if route is not None else request.path
    kind = type(e).__name__
    runtime = request.app.get(RUNTIME)
    first = (where, kind) not in _FAILED
    if first:
        if len(_FAILED) > 1000:
            _FAILED.clear()
        _FAILED.add((where, kind))
        log.exception("http.handler_failed", route=where, error=kind, path=request.path)
    if runtime is not None:
        runtime.failures.inc(route=where, error=kind)


_FAILED: set[tuple[str, str]] = set()


def _sentence(request: web.Request, e: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in e.headers.items()
               if k in ("WWW-Authenticate", "Allow", "Retry-After")}  # fmt: skip
    if e.content_type == "application/json":  # ours: already a sentence in JSON
        return web.Response(status=e.status, text=e.text, content_type="application/json",
                            headers=headers)  # fmt: skip
    reason = {
        404: f"there is nothing at {request.path}.",
        405: f"{request.method} is not allowed on {request.path}.",
        413: "the request body is too large.",
        421: "this server does not answer to that host name.",
    }.get(e.status, e.text or e.reason)
    made = error(e.status, reason or e.reason)
    made.headers.update(headers)
    return made


def _no_route(app: web.Application) -> None:
    """A last route for every path and method: unknown paths (404) and methods (405) get
    their sentence too, as they did from the middleware this replaces."""
    catch_all = app.router.add_resource("/{tail:.*}")

    async def no_route(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not catch_all:
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    catch_all.add_route("*", sentences(no_route, app[RUNTIME]))


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return json_response(
        {"status": "ok", "version": __version__, "uptime": round(time.time() - rt.started_at, 3)}
    )


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.not_ready is not None:
        return json_response({"status": "not_ready", "reason": rt.not_ready}, status=503)
    if rt.database is not None:
        return json_response({"status": "not_ready", "reason": rt.database}, status=503)
    if rt.monitor is not None and rt.monitor.correlator.blind:
        reason = "the monitor is blind: none of its anchors answers, so it cannot see the network"
        return json_response({"status": "blind", "reason": reason}, status=503)
    body: dict[str, object] = {"status": "ready"}
    if rt.leadership is not None:  # a cluster's standby is ready too: it probes and answers
        body |= {"role": rt.leadership.role.value, "leader": rt.leadership.leader}
    if rt.db_lost is not None:
        # Still ready by the contract (topology loaded, probes done): /check answers from
        # memory and writes are queued. The body and outagemon_db_up say the database is away.
        since, error = rt.db_lost
        when = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        body["database"] = {
            "up": False,
            "since": when,
            "reason": f"the database has not answered since {when} ({error}); /check answers "
            "from memory and writes are queued until it answers",
        }
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    _authorise_metrics(request, rt)
    text = rt.metrics.render()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _authorise_metrics(request: web.Request, rt: Runtime) -> None:
    """/metrics: its own bearer token if [http] metrics_token is set; with page_auth and
    none, any configured token (Prometheus sends a bearer, never a cookie); else open."""
    http = rt.config.http
    if not http.metrics_token and not http.page_auth:
        return
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, given = header.partition(" ")
    ok = False
    if scheme.lower() == "bearer" and given:
        secret = given.strip().encode("utf-8", "surrogateescape")
        if http.metrics_token:
            ok = hmac.compare_digest(http.metrics_token.encode(), secret)
        else:
            ok = security.token_named(rt.config.tokens, secret) is not None
    if not ok:
        rt.guard.failed("metrics", request.remote, "missing" if not header else "invalid")
        raise web.HTTPUnauthorized(
            text=orjson.dumps({"error": "/metrics needs its token: Authorization: Bearer TOKEN."}
                              ).decode(),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="outagemon metrics"'},
        )  # fmt: skip


STATIC = {"page.css": "text/css", "live.js": "text/javascript"}


async def static(request: web.Request) -> web.Response:
    """The page's style sheet and script: files, so its CSP needs no 'unsafe-inline'."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = importlib.resources.files("outagemon.http").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC[name],
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"},
    )


# What an HTTP worker answers itself, from its replica: the phone menu's question and the
# read API. The rest (writes, the page with its sessions and streams, /metrics for the
# whole daemon) is forwarded to the daemon's own process.
WORKER_ROUTES = frozenset({
    ("GET", "/api/v1/check"), ("GET", "/api/v1/incidents"), ("GET", "/api/v1/incidents/{id}"),
    ("GET", "/api/v1/maintenance"), ("GET", "/api/v1/openapi.json"), ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/static/{name}"),
})  # fmt: skip


@web.middleware
async def _forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request a worker forwarded over the daemon's Unix socket: its caller's address
    and scheme are the worker's X-Forwarded-For and X-Forwarded-Proto (so a login's
    backoff is the caller's own, and a session cookie over HTTPS is Secure). Trusted on
    the Unix socket only (its directory is the daemon's, 0700); from TCP, ignored."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) or hdrs.X_FORWARDED_FOR not in request.headers:
        return await handler(request)
    proto = request.headers.get(hdrs.X_FORWARDED_PROTO, "http")
    return await handler(request.clone(remote=request.headers[hdrs.X_FORWARDED_FOR],
                                       scheme="https" if proto == "https" else "http"))  # fmt: skip


CALLS_PATH = "/_workers/calls"  # the workers' call counts, on the daemon's Unix socket


async def _calls_from_workers(request: web.Request) -> web.Response:
    """Check answers a worker gave, by incident, and its callers' records (for the
    calls' detector): counted and recorded as if answered here."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    rt = request.app[RUNTIME]
    if isinstance(peer, tuple) or rt.monitor is None:
        raise web.HTTPNotFound()
    body = orjson.loads(await request.read())
    batch: dict[str, int] = body.get("counts") or {}
    monitor = rt.monitor
    for iid, n in batch.items():
        monitor.count_call(int(iid), max(0, min(int(n), 1_000_000)))
    records = body.get("records") or []
    for node, building, kind, value, channel, status, router in records:
        monitor.record_call(str(node), str(building), str(kind), str(value), str(channel),
                            str(status), str(router))  # fmt: skip
    return json_response({"counted": sum(int(n) for n in batch.values()),
                          "records": len(records)})  # fmt: skip


def make_app(runtime: Runtime, forward: Handler | None = None,
             behind_workers: bool = False) -> web.Application:  # fmt: skip
    """The daemon's application; with `forward`, an HTTP worker's: WORKER_ROUTES are
    answered here and every other request is handed to `forward`. `behind_workers`: the
    daemon's own when its workers forward to it (see `_forwarded`)."""
    app = web.Application(client_max_size=64 * 1024,
                          middlewares=[_forwarded] if behind_workers else [])  # fmt: skip
    app[RUNTIME] = runtime
    runtime.metrics.gauge("outagemon_up", "1 while the daemon serves.").set(1)
    figures.install_gauges(runtime)
    routes = web.RouteTableDef()
    routes.get("/healthz")(healthz)
    routes.get("/readyz")(readyz)
    routes.get("/metrics")(metrics)
    routes.get("/static/{name}")(static)
    api.setup(routes)
    downtime.setup(routes)
    reports.setup(routes)
    page.setup(routes)
    if forward is None:
        page.install(app, runtime)
    for route in routes:
        assert isinstance(route, web.RouteDef)
        handler = route.handler
        if forward is not None and (
            (route.method, route.path) not in WORKER_ROUTES
            # A cluster node's role and leader are its daemon's (the workers' runtime has
            # no lease): its /readyz says them, as a single process's does.
            or (route.path == "/readyz" and runtime.config.cluster.enabled)
        ):
            handler = forward
        app.router.add_route(route.method, route.path, sentences(handler, runtime),
                             **route.kwargs)  # fmt: skip
    if behind_workers:
        app.router.add_post(CALLS_PATH, _calls_from_workers)
    if forward is not None:
        app.router.add_route("*", "/{tail:.*}", sentences(forward, runtime))
    else:
        _no_route(app)
    return app
