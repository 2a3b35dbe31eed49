"""The aiohttp application: make_app(runtime) for the daemon and for tests.

The only module that imports the handlers (`api`, `page`); they share `runtime`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from outagemon import __version__, logs
from outagemon.http import api, page
from outagemon.http.runtime import RUNTIME, Runtime, error, json_response

log = logs.get("outagemon.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The server's timeouts: aiohttp's own keep an idle connection for an hour and wait a
# minute, twice, for each handler on the way out.
KEEPALIVE_TIMEOUT = 10.0  # s: a connection idle, or still sending its headers, is closed
BODY_TIMEOUT = 10.0  # s: a request's body must be in this long after its headers
SHUTDOWN_TIMEOUT = 1.0  # s: handlers still running at stop get this long, then are cancelled


def runner(app: web.Application) -> web.AppRunner:
    """The daemon's runner for `app`, with the timeouts above."""
    return web.AppRunner(app, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT,
                         shutdown_timeout=SHUTDOWN_TIMEOUT)  # fmt: skip


def _body_late(request: web.Request) -> None:
    """A body still arriving BODY_TIMEOUT after its headers: a slow (or idle) sender
    holding a connection and a handler. Closed; the handler's read ends as a disconnect."""
    if not request.content.is_eof() and request.transport is not None:
        log.info("http.body_timeout", path=request.path, timeout=BODY_TIMEOUT)
        request.transport.close()


def sentences(handler: Handler) -> Handler:
    """Every error a client sees is JSON with a sentence; nothing it sends becomes a 5xx.

    A wrapper around each handler rather than an aiohttp middleware: with any middleware
    at all, aiohttp adds two coroutines and a cache lookup to every request's way, which
    cost /check about 5 % of its throughput under a call surge."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        timer = None
        if not request.content.is_eof():  # a body still on its way (rare: most are in)
            timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT, _body_late, request)
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _sentence(request, e)
        except ConnectionError:
            raise  # the client went away: aiohttp ends the request quietly
        except Exception:
            log.exception("http.handler_failed", path=request.path)
            return error(500, "the server failed to answer; the failure is logged.")
        finally:
            if timer is not None:
                timer.cancel()

    return answer


def _sentence(request: web.Request, e: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in e.headers.items() if k in ("WWW-Authenticate", "Allow")}
    if e.content_type == "application/json":  # ours: already a sentence in JSON
        return web.Response(status=e.status, text=e.text, content_type="application/json",
                            headers=headers)  # fmt: skip
    reason = {
        404: f"there is nothing at {request.path}.",
        405: f"{request.method} is not allowed on {request.path}.",
        413: "the request body is too large.",
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

    catch_all.add_route("*", sentences(no_route))


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return json_response(
        {"status": "ok", "version": __version__, "uptime": round(time.time() - rt.started_at, 3)}
    )


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.not_ready is not None:
        return json_response({"status": "not_ready", "reason": rt.not_ready}, status=503)
    if rt.monitor is not None and rt.monitor.correlator.blind:
        reason = "the monitor is blind: none of its anchors answers, so it cannot see the network"
        return json_response({"status": "blind", "reason": reason}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[RUNTIME].metrics.render()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def make_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    runtime.metrics.gauge("outagemon_up", "1 while the daemon serves.").set(1)
    routes = web.RouteTableDef()
    routes.get("/healthz")(healthz)
    routes.get("/readyz")(readyz)
    routes.get("/metrics")(metrics)
    api.setup(routes)
    page.setup(routes)
    page.install(app, runtime)
    for route in routes:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, route.path, sentences(route.handler),
                             **route.kwargs)  # fmt: skip
    _no_route(app)
    return app
