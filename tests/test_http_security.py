"""The HTTP interface against a stranger: a login for the page and the metrics, CSRF, no
5xx from anything a client sends, and a page a browser cannot be turned against."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from outagemon.http.app import sentences
from tests.world import READ, WRITE, World, world

PAGE_AUTH = "[http]\npage_auth = true\n"
METRICS_TOKEN = "metrics-token-0123456789abcdef0123"


async def raw(w: World, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (a client library would refuse or re-encode them)."""
    assert w.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", w.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return status, headers, body
    finally:
        writer.close()


def get_request(w: World, target: str, *extra: bytes) -> bytes:
    host = f"127.0.0.1:{w.server.port}".encode()
    lines = [b"GET " + target.encode() + b" HTTP/1.1", b"Host: " + host, *extra,
             b"Connection: close"]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n"


def metric(w: World, name: str, **labels: str) -> float:
    text = w.runtime.metrics.render()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                   if labels else "")  # fmt: skip
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def notes(w: World, incident: int) -> list[str]:
    await w.flushed()
    rows = await w.pool.fetch(
        "select detail from incident_event where incident_id = $1 and kind = 'note' order by at",
        incident,
    )
    return [json.loads(r["detail"])["note"] for r in rows]


async def login_form(w: World, session: aiohttp.ClientSession, path: str = "/") -> str:
    """Open a page without a session: redirected to the login form; its CSRF token."""
    async with session.get(w.url(path)) as r:
        assert r.status == 200 and r.url.path == "/login", (r.status, r.url)
        html = await r.text()
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(w: World, session: aiohttp.ClientSession, token: str) -> aiohttp.ClientResponse:
    csrf = await login_form(w, session)
    async with session.post(w.url("/login"), data={"token": token, "csrf": csrf, "next": "/"},
                            allow_redirects=False) as r:  # fmt: skip
        await r.read()
        return r


# -- finding 2: the page, its events and /metrics behind a login ---------------------------


async def test_without_page_auth_the_page_stays_open_as_before(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        for path in ("/", "/metrics"):
            async with w.session.get(w.url(path)) as r:
                assert r.status == 200, path


async def test_with_page_auth_every_page_route_and_metrics_need_a_login(fresh_db: str) -> None:
    async with world(fresh_db, extra=PAGE_AUTH) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        for path in ("/", "/events", f"/incidents/{inc.id}"):
            async with w.session.get(w.url(path), allow_redirects=False) as r:
                assert r.status == 303, path
                assert r.headers["Location"].startswith("/login?next=")
        async with w.session.post(w.url(f"/incidents/{inc.id}"),
                                  data={"note": "x", "token": WRITE},
                                  allow_redirects=False) as r:  # fmt: skip
            assert r.status in (303, 403)
        assert not w.monitor.eta and inc.id not in w.monitor.eta
        # /metrics: for Prometheus, a bearer token; without one, any configured token works.
        async with w.session.get(w.url("/metrics")) as r:
            assert r.status == 401
        async with w.session.get(w.url("/metrics"), headers=w.auth(READ)) as r:
            assert r.status == 200 and "outagemon_up 1" in await r.text()


async def test_a_login_sets_an_httponly_strict_cookie_and_opens_the_page(fresh_db: str) -> None:
    async with (
        world(fresh_db, extra=PAGE_AUTH) as w,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        r = await log_in(w, browser, READ)
        assert r.status == 303 and r.headers["Location"] == "/"
        cookie = next(v for v in r.headers.getall("Set-Cookie") if v.startswith("om_session="))
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path"} <= attributes
        assert "samesite=strict" in cookie.lower()
        async with browser.get(w.url("/")) as page:
            assert page.status == 200 and page.url.path == "/"
            assert "Open incidents" in await page.text()
        # Logging out ends the session on the server, not only in the browser.
        sid = browser.cookie_jar.filter_cookies(yarl.URL(w.url("/")))["om_session"].value
        async with browser.get(w.url("/")) as page:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
        assert csrf
        async with browser.post(w.url("/logout"), data={"csrf": csrf.group(1)}) as out:
            assert out.url.path == "/login"
        async with w.session.get(w.url("/"), cookies={"om_session": sid},
                                 allow_redirects=False) as r2:  # fmt: skip
            assert r2.status == 303


async def test_a_wrong_login_is_counted_logged_without_the_value_and_slowed(
    fresh_db: str,
) -> None:
    async with (
        world(fresh_db, extra=PAGE_AUTH) as w,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        with capture_logs() as logs:
            for _ in range(3):
                r = await log_in(w, browser, "wrong-token-0123456789-guess")
                assert r.status == 303 and "message=login_failed" in r.headers["Location"]
        assert metric(w, "outagemon_auth_failures_total", where="login") == 3
        failed = [e for e in logs if e["event"] == "auth.failed"]
        assert failed and failed[0]["remote"] == "127.0.0.1"
        assert "wrong-token" not in repr(logs)
        # The fourth try waits, even with the right token.
        csrf = await login_form(w, browser)
        async with browser.post(w.url("/login"), data={"token": READ, "csrf": csrf},
                                allow_redirects=False) as r:  # fmt: skip
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert "om_session" not in {c.key for c in browser.cookie_jar}


async def test_every_form_needs_its_csrf_token(fresh_db: str) -> None:
    async with (
        world(fresh_db, extra=PAGE_AUTH) as w,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        # The login form itself: a token sent without the form's CSRF token is not tried.
        async with browser.post(w.url("/login"), data={"token": WRITE},
                                allow_redirects=False) as r:  # fmt: skip
            assert r.status == 303 and "message=form_expired" in r.headers["Location"]
        assert (await log_in(w, browser, WRITE)).status == 303
        async with browser.get(w.url(f"/incidents/{inc.id}")) as page:
            html = await page.text()
        assert 'name="token"' not in html, "a write session needs no token in the form"
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert csrf
        # A form posted from elsewhere carries the cookie (were it not SameSite) but not
        # the CSRF token: nothing is written.
        async with browser.post(w.url(f"/incidents/{inc.id}"), data={"note": "forged"},
                                allow_redirects=False) as r:  # fmt: skip
            assert r.status == 303 and "message=form_expired" in r.headers["Location"]
        assert inc.id not in w.monitor.eta and await notes(w, inc.id) == []
        async with browser.post(w.url(f"/incidents/{inc.id}"),
                                data={"note": "crew on site", "csrf": csrf.group(1)},
                                allow_redirects=False) as r:  # fmt: skip
            assert r.status == 303 and r.headers["Location"].endswith("?message=saved")
        assert await notes(w, inc.id) == ["crew on site"]


async def test_a_metrics_token_is_the_only_key_to_metrics(fresh_db: str) -> None:
    extra = f'[http]\npage_auth = true\nmetrics_token = "{METRICS_TOKEN}"\n'
    async with world(fresh_db, extra=extra) as w:
        async with w.session.get(w.url("/metrics"), headers=w.auth(READ)) as r:
            assert r.status == 401
        async with w.session.get(w.url("/metrics"), headers=w.auth(METRICS_TOKEN)) as r:
            assert r.status == 200
        assert metric(w, "outagemon_auth_failures_total", where="metrics") == 1


async def test_a_wrong_api_token_is_counted_and_logged_with_the_address(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        with capture_logs() as logs:
            async with w.session.get(w.url("/api/v1/check"), params={"phone": "89210000001"},
                                     headers=w.auth("not-a-token-0123456789")) as r:  # fmt: skip
                assert r.status == 401
        assert metric(w, "outagemon_auth_failures_total", where="api") == 1
        (entry,) = [e for e in logs if e["event"] == "auth.failed"]
        assert entry["remote"] == "127.0.0.1" and "not-a-token" not in repr(entry)


# -- finding 6: nothing a client sends becomes a 5xx ---------------------------------------


async def test_client_input_that_used_to_be_a_5xx_is_a_4xx_without_a_traceback(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        with capture_logs() as logs:
            status, _, body = await raw(w, get_request(w, "/incidents/%C2%B2"))
            assert status == 404, body
            status, _, body = await raw(
                w,
                get_request(
                    w, "/api/v1/incidents/%C2%B2", b"Authorization: Bearer " + READ.encode()
                ),
            )
            assert status == 404, body
            status, _, body = await raw(
                w,
                get_request(
                    w,
                    "/api/v1/check?address=%D1%83%D0%BB.%20%D0%9B%D0%B5%D0%BD%D0%B8%D0%BD%D0%B0"
                    "%2C%205&flat=%C2%B2",
                    b"Authorization: Bearer " + READ.encode(),
                ),
            )
            assert status in (200, 400), body
            status, _, body = await raw(
                w,
                get_request(
                    w, "/api/v1/check?phone=89210000001", b"Authorization: Bearer \xff\xfe"
                ),
            )
            assert status == 401, body
            form = b"note=\xff\xfe&token=" + WRITE.encode()  # raw bytes, not UTF-8
            for content_type in (b"application/x-www-form-urlencoded",
                                 b"application/x-www-form-urlencoded; charset=klingon",
                                 b"multipart/form-data; boundary=x; charset=utf-8"):  # fmt: skip
                host = f"127.0.0.1:{w.server.port}".encode()
                request = (b"POST /incidents/" + str(inc.id).encode() + b" HTTP/1.1\r\nHost: "
                           + host + b"\r\nContent-Type: " + content_type
                           + b"\r\nContent-Length: " + str(len(form)).encode()
                           + b"\r\nConnection: close\r\n\r\n" + form)  # fmt: skip
                status, _, body = await raw(w, request)
                assert 400 <= status < 500, (content_type, status, body)
        assert not [e for e in logs if e.get("exc_info") or e["log_level"] == "error"], logs


async def test_a_server_failure_is_logged_once_per_kind_and_counted() -> None:
    failures = []

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/broken", sentences(broken))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            with capture_logs() as logs:
                for _ in range(5):
                    async with session.get(server.make_url("/broken")) as r:
                        failures.append(r.status)
                        body = await r.json()
    finally:
        await server.close()
    assert failures == [500] * 5 and "logged" in body["error"]
    logged = [e for e in logs if e["event"] == "http.handler_failed"]
    assert len(logged) == 1, logs
    assert logged[0]["error"] == "RuntimeError" and logged[0].get("exc_info")


# -- finding 7: what a browser may do with the page ----------------------------------------


async def test_the_page_says_only_its_own_messages(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        bait = "Your session expired, send your token to evil.example"
        async with w.session.get(w.url(f"/incidents/{inc.id}"), params={"message": bait}) as r:
            html = await r.text()
        assert "evil.example" not in html and "session expired" not in html
        async with w.session.get(w.url(f"/incidents/{inc.id}?message=saved")) as r:
            assert "Saved." in await r.text()


async def test_pages_forbid_framing_and_foreign_scripts(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        for path in ("/", f"/incidents/{inc.id}"):
            async with w.session.get(w.url(path)) as r:
                html = await r.text()
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["X-Frame-Options"] == "DENY"
            assert "<script>" not in html and "<style>" not in html, "inline code needs no CSP"
        assert 'autocomplete="off"' in html and "current-password" not in html
        for asset in ("/static/live.js", "/static/page.css"):
            async with w.session.get(w.url(asset)) as r:
                assert r.status == 200 and r.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_request_for_another_host_name_is_refused(fresh_db: str) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends its name.
    async with world(fresh_db) as w:
        for target in ("/", "/api/v1/check?phone=89210000001", "/metrics"):
            status, _, body = await raw(w, get_request_for(w, target, b"evil.example"))
            assert status == 421, (target, body)
        status, _, _ = await raw(w, get_request_for(w, "/", b"localhost"))
        assert status == 200
    async with world(fresh_db, extra='[http]\nallowed_hosts = ["noc.example.net"]\n') as w:
        status, _, _ = await raw(w, get_request_for(w, "/", b"noc.example.net"))
        assert status == 200
        status, _, _ = await raw(w, get_request_for(w, "/", b"127.0.0.1"))
        assert status == 421


def get_request_for(w: World, target: str, host: bytes) -> bytes:
    port = str(w.server.port).encode()
    return (b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host + b":" + port
            + b"\r\nConnection: close\r\n\r\n")  # fmt: skip


async def test_guessing_the_write_token_in_the_incident_form_is_slowed_too(fresh_db: str) -> None:
    async with (
        world(fresh_db) as w,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        async with browser.get(w.url(f"/incidents/{inc.id}")) as page:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
        assert csrf
        said = []
        for token in ["guess-0123456789abcdef"] * 3 + [WRITE]:
            async with browser.post(w.url(f"/incidents/{inc.id}"),
                                    data={"note": "x", "token": token, "csrf": csrf.group(1)},
                                    allow_redirects=False) as r:  # fmt: skip
                said.append(r.headers["Location"].split("message=")[1])
        assert said == ["token_invalid"] * 3 + ["too_many"]
        assert await notes(w, inc.id) == []
        assert metric(w, "outagemon_auth_failures_total", where="form") == 4
