"""The HTTP workers' /check fast path (http/fastcheck.py, issue 16).

Byte for byte, the fast path answers as aiohttp does: one worker app (as a worker makes
it) served both ways from the same runtime, asked the same raw requests. Then the real
`outagemon run` with `[http] workers = 2`, over raw sockets: keep-alive, pipelining, a
request split across packets, and connections handed to aiohttp (another path, a
malformed request) and taken on from there.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from outagemon import workers
from outagemon.http import fastcheck
from outagemon.http.app import make_app, runner
from tests.conftest import free_port, short_tmp_dir
from tests.test_secrets import self_signed
from tests.test_workers import COMPARED, WRITE, Cluster, cluster, wait
from tests.world import READ, World, world

__all__ = ["cluster"]  # the real daemon with its workers (tests/test_workers.py)

WORKER = "X-Outagemon-Worker"
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


async def _forward(request: web.Request) -> web.Response:
    return web.Response(text="forwarded")  # what a worker hands to its daemon: not here


@asynccontextmanager
async def both(
    w: World, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, int, fastcheck.Site]]:
    """The worker's app from w's runtime on two ports: with the fast path, and aiohttp's
    alone (the worker's header added as a worker's on_response_prepare adds it)."""
    app = make_app(w.runtime, _forward)

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER] = "0/1"

    app.on_response_prepare.append(mark)
    r = runner(app)
    await r.setup()
    fast_port, plain_port = free_port(), free_port()
    fast = fastcheck.Site(r, w.runtime, "127.0.0.1", fast_port, ssl_context=tls,
                          headers={WORKER: "0/1"})  # fmt: skip
    await fast.start()
    await web.TCPSite(r, "127.0.0.1", plain_port, ssl_context=tls).start()
    try:
        yield fast_port, plain_port, fast
    finally:
        await r.cleanup()


async def exchange(port: int, raw: bytes, pieces: int = 1,
                   tls: ssl.SSLContext | None = None) -> bytes:  # fmt: skip
    """Everything the server answers to `raw` (sent in `pieces`), until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    step = -(-len(raw) // pieces)
    for i in range(0, len(raw), step):
        writer.write(raw[i : i + step])
        await writer.drain()
        await asyncio.sleep(0.02)
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return _DATE.sub(b"\r\nDate: -\r\n", got)


def get(target: str, token: str | None = READ, extra: str = "Connection: close\r\n") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}\r\n".encode()


def checks(w: World) -> float:
    return sum(w.runtime.checks.values.values())


def refusals(w: World) -> float:
    return sum(w.runtime.metrics.counter("outagemon_auth_failures_total", "").values.values())


ANSWERED = [
    "/api/v1/check?phone=89210000001",  # behind the outage
    "/api/v1/check?phone=%2B7%20921%20000-00-01",  # the same phone as written by people
    "/api/v1/check?account=1007",
    "/api/v1/check?account=1007&format=text&channel=helpdesk",
    "/api/v1/check?phone=89210000001&format=text",
    "/api/v1/check?address=%D0%9C%D0%B8%D1%80%D0%B0+10&flat=50",
    "/api/v1/check?address=%D0%BB%D0%B5%D0%BD%D0%B8%D0%BD%D0%B0%205",  # lowercase
    "/api/v1/check?address=%D0%9B%D0%B5%D0%BD%D0%B8%D0%BD%D0%BE%D0%B9+5",  # misspelt
    "/api/v1/check?address=%D0%A1%D0%B0%D0%B4%D0%BE%D0%B2%D0%B0%D1%8F+3",  # ambiguous
    "/api/v1/check?address=%D0%9C%D0%B8%D1%80%D0%B0+10",  # entrances that differ
    "/api/v1/check?phone=%2B79999999999",  # unknown
    "/api/v1/check?phone=%FF",  # not UTF-8: yarl reads U+FFFD, for aiohttp too
    "/api/v1/check?node=agg-n&call_id=7",
    "/api/v1/check?node=nowhere",
]
HANDED = [
    "/api/v1/check?phone=89210000001&colour=red",  # an unknown parameter
    "/api/v1/check?phone=1&account=2",  # two questions
    "/api/v1/check?format=xml&node=core",
    "/api/v1/check?channel=fax&node=core",
    "/api/v1/check?flat=1&phone=89210000001",
    "/api/v1/check",
    "/api/v1/check?address=" + "x" * 600,
    "/api/v1/check/",
    "/readyz",
]


async def test_the_fast_path_answers_byte_for_byte_as_aiohttp(fresh_db: str) -> None:
    async with world(fresh_db, language="en") as w, both(w) as (fast, plain, site):
        w.net.fail("agg-n")
        w.run(60)
        records: list[tuple[Any, ...]] = []
        w.monitor.record_call = lambda *a: records.append(a)  # type: ignore[method-assign]
        statuses = set()
        for target in ANSWERED:
            before, calls = checks(w), dict(w.monitor.calls)
            theirs = await exchange(plain, get(target))
            taken = records[:]
            counted = checks(w) - before
            ours = await exchange(fast, get(target))
            assert ours == theirs, target
            assert (
                ours.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Outagemon-Worker: 0/1" in ours
            )
            assert checks(w) - before == 2 * counted == 2, "counted once each way"
            assert records == 2 * taken, "the same caller's record each way"
            records.clear()
            for iid, n in w.monitor.calls.items():
                assert n - calls.get(iid, 0) in (0, 2), "the incident's calls counted alike"
            body = ours.partition(b"\r\n\r\n")[2]
            statuses.add(json.loads(body)["status"] if body[:1] == b"{" else body.decode())
        assert site.answered == len(ANSWERED) and site.handed_over == 0
        said = {"outage", "ok", "ambiguous", "not_found", "ok||\n", "outage|1|\n"}
        assert said <= statuses, statuses


async def test_what_the_fast_path_refuses_is_aiohttps_answer(fresh_db: str) -> None:
    async with world(fresh_db, language="en") as w, both(w) as (fast, plain, site):
        cases = [get(t) for t in HANDED] + [
            get("/api/v1/check?account=1007", token=None),  # no token
            get("/api/v1/check?account=1007", token="wrong-token-0123456789"),
            get("/api/v1/check?account=1007", extra="Connection: close\r\nHost: other\r\n"),
            b"GET /api/v1/check?account=1007 HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
            b"GET /api/v1/check?account=1007 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            b"POST /api/v1/check?account=1007 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
            b"GET /api/v1/check?account=1007 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ]
        for raw in cases:
            before = refusals(w)
            theirs = await exchange(plain, raw)
            counted = refusals(w) - before
            ours = await exchange(fast, raw)
            assert ours == theirs, raw
            assert refusals(w) - before == 2 * counted, "refused once each way, as by aiohttp"
        assert site.answered == 0 and site.handed_over == len(cases)


async def test_keep_alive_pipelining_split_packets_and_hand_over(fresh_db: str) -> None:
    async with world(fresh_db, language="en") as w, both(w) as (fast, plain, site):
        keep = ""
        ask = [get(t, extra=keep) for t in ANSWERED[:4]]
        health = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        last = get(ANSWERED[4])
        for raw, pieces in [
            (b"".join(ask) + last, 1),  # keep-alive, pipelined in one packet
            (b"".join(ask) + last, 7),  # split anywhere, heads included
            (ask[0] + ask[1] + health + ask[2] + last, 1),  # handed over mid-way
            (health + ask[0] + last, 1),  # aiohttp's from the start
        ]:
            theirs = await exchange(plain, raw, pieces)
            ours = await exchange(fast, raw, pieces)
            assert ours == theirs, (raw, pieces)
            assert ours.count(b"HTTP/1.1 200 OK\r\n") == raw.count(b"GET "), ours
        assert site.answered >= 5 and site.handed_over >= 3


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastcheck, "KEEPALIVE_TIMEOUT", 0.5)
    async with world(fresh_db, language="en") as w, both(w) as (fast, _, site):
        reader, writer = await asyncio.open_connection("127.0.0.1", fast)
        for _ in range(2):  # answered, and kept open meanwhile
            writer.write(get(ANSWERED[2], extra=""))
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
            await reader.readuntil(b"}")
            await asyncio.sleep(0.3)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert 0.1 < time.monotonic() - started < 2
        writer.close()
        assert site.answered == 2 and not site.connections


async def test_a_retired_site_closes_its_listening_server_once(fresh_db: str) -> None:
    """As a retiring worker stops (workers.py): retire(), its drain, then the runner's
    cleanup. The site is the one owner of its server and its fast-path connections: the
    server is closed once, by retire() (stop() only unregisters it), a connection still
    open is answered "close" meanwhile and closed by stop()."""
    async with world(fresh_db, language="en") as w:
        r = runner(make_app(w.runtime, _forward))
        await r.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        site = fastcheck.Site(r, w.runtime, sock=sock, headers={WORKER: "0/1"})
        await site.start()
        server = site._server
        assert server is not None
        closes: list[int] = []
        close = server.close

        def counted() -> None:
            closes.append(1)
            close()

        server.close = counted  # type: ignore[method-assign]
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            for reader, writer in kept:  # each answered, then idle (keep-alive)
                writer.write(get(ANSWERED[2], extra=""))
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
                await reader.readuntil(b"}")
            await site.retire()
            assert closes == [1] and sock.fileno() == -1  # this process's copy: closed
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            (reader, writer), (idle, _) = kept
            writer.write(get(ANSWERED[2], extra=""))  # answered, and told to go elsewhere
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"\r\nConnection: close\r\n" in head, head
            await reader.readuntil(b"}")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert len(site.connections) == 1
            await r.cleanup()  # Site.stop closes the idle one; nothing is closed twice
            assert await asyncio.wait_for(idle.read(), 5) == b""
            assert closes == [1] and not site.connections
        finally:
            for _, writer in kept:
                writer.close()


class _Accepting(socket.socket):
    """A listening socket that calls `then()` as the loop takes a connection from its
    queue: what `then` wakes runs before the loop makes that connection's protocol (its
    task is created after accept() returns; the loop runs callbacks in order)."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.then: Callable[[], object] = lambda: None

    def accept(self) -> tuple[socket.socket, Any]:
        taken = super().accept()
        self.then()
        return taken


async def test_a_connection_accepted_as_the_worker_retires_is_answered(fresh_db: str) -> None:
    """A worker told to stop just after its loop accepted a connection, before it read a
    byte of it (once in test_a_reload_under_steady_load_fails_no_request: a new
    connection reset during the workers' replacement). It is still this worker's: the
    drain (workers.drain, as a retiring worker runs it) waits for it and it is answered,
    "Connection: close", never dropped."""
    async with world(fresh_db, language="en") as w:
        r = runner(make_app(w.runtime, _forward))
        await r.setup()
        sock = _Accepting()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        site = fastcheck.Site(r, w.runtime, sock=sock, headers={WORKER: "0/1"})
        await site.start()
        taken = asyncio.Event()
        sock.then = taken.set

        async def ask() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(get(ANSWERED[2], extra=""))
                return await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                return b"reset"
            finally:
                writer.close()

        asking = asyncio.create_task(ask())
        try:
            await taken.wait()  # accepted, and its protocol not made yet
            await workers.drain(site, r)  # SIGTERM's: retire, then wait for what it holds
            answer = await asking
        finally:
            await r.cleanup()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0], answer
        assert site.answered == 1 and not site.connections


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_over_tls_the_fast_path_answers_and_hands_over_alike(fresh_db: str) -> None:
    cert, key = self_signed(short_tmp_dir())
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with world(fresh_db, language="en") as w, both(w, serving) as (fast, plain, site):
        health = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        raw = get(ANSWERED[0], extra="") + health + get(ANSWERED[2])
        theirs = await exchange(plain, raw, tls=trusting)
        ours = await exchange(fast, raw, tls=trusting)
        assert ours == theirs and ours.count(b"HTTP/1.1 200 OK\r\n") == 3, ours
        assert site.answered == 1 and site.handed_over == 1


# -- the real daemon with its workers ----------------------------------------------------


def _read(f: Any) -> tuple[int, dict[str, str], bytes]:
    """One response from a socket's file: (status, headers, body)."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


@pytest.fixture
def conn(cluster: Cluster) -> Iterator[tuple[socket.socket, Any]]:
    s = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
    try:
        yield s, s.makefile("rb")
    finally:
        s.close()


def _ask(target: str) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {WRITE}\r\n\r\n").encode()  # fmt: skip


def test_a_worker_keeps_a_connection_across_checks_and_hand_over(
    cluster: Cluster, conn: tuple[socket.socket, Any]
) -> None:
    """On one connection to the real workers: checks (one at a time, pipelined, split),
    then the read API (aiohttp's), then checks again; each answer as the leader's."""
    s, f = conn
    account = cluster.d.subscribers[0].account
    target = f"/api/v1/check?account={account}"
    query = f"account={account}"
    wait("the leader and both workers say ok",
         lambda: cluster.leader(target)["status"] == "ok"
         and all(a["status"] == "ok" for a in cluster.check_each(query).values()))  # fmt: skip
    leader = cluster.leader(target)
    workers = set()
    heads = []  # each answer's headers but its Date

    def check_answers(n: int) -> None:
        for _ in range(n):
            status, headers, body = _read(f)
            assert status == 200, body
            said = json.loads(body)
            assert all(said[k] == leader[k] for k in COMPARED), (said, leader)
            workers.add(headers[WORKER.lower()])
            heads.append({k: v for k, v in headers.items() if k != "date"})

    for _ in range(3):
        s.sendall(_ask(target))
        check_answers(1)
    s.sendall(_ask(target) * 2)  # a pipelined pair
    check_answers(2)
    raw = _ask(target)
    s.sendall(raw[:9])
    time.sleep(0.05)
    s.sendall(raw[9:])  # split across packets
    check_answers(1)
    s.sendall(_ask("/api/v1/incidents"))  # not /check: handed to aiohttp
    status, headers, body = _read(f)
    assert status == 200 and "incidents" in json.loads(body)
    workers.add(headers[WORKER.lower()])
    s.sendall(_ask(target))  # and /check again, on aiohttp's side now
    check_answers(1)
    assert len(workers) == 1, "one connection, one worker"
    # The worker's own aiohttp answer (the last) has the fast path's headers, the worker's
    # hooks included: a header added there and not to the fast path shows here.
    assert all(h == heads[-1] for h in heads), heads


def test_a_malformed_request_gets_the_json_400_from_a_worker(
    cluster: Cluster, conn: tuple[socket.socket, Any]
) -> None:
    """aiohttp's parser refuses it; the answer is still the contract's JSON sentence
    (http/badrequest.py), from a worker as from the daemon's own server."""
    s, f = conn
    s.sendall(_ask("/api/v1/check?node=core"))
    assert _read(f)[0] == 200
    s.sendall(b"GET /api/v1/check?node=core HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
    status, headers, body = _read(f)
    assert status == 400 and headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"error": "the request is not valid HTTP/1.1: Invalid header token."}
    with socket.socket(socket.AF_UNIX) as leader:  # aiohttp alone, in the daemon's process
        leader.settimeout(5)
        leader.connect(cluster.socket_path)
        leader.sendall(b"GET /api/v1/check?node=core HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Bad Header\r\n\r\n")  # fmt: skip
        assert _read(leader.makefile("rb"))[::2] == (status, body)
    # Raw UTF-8 and a space in the query (as typed into curl): the parameter named.
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as raw:
        raw.sendall(_ask("/api/v1/check?address=пр-т Мира 10"))
        status, headers, body = _read(raw.makefile("rb"))
    assert status == 400 and headers["content-type"] == "application/json; charset=utf-8"
    said = json.loads(body)["error"]
    encoded = "address=%D0%BF%D1%80-%D1%82%20%D0%9C%D0%B8%D1%80%D0%B0%2010"
    assert "'address'" in said and f": {encoded}." in said, said


def test_a_refused_check_is_aiohttps_answer_from_a_worker(
    cluster: Cluster, conn: tuple[socket.socket, Any]
) -> None:
    s, f = conn
    s.sendall(b"GET /api/v1/check?node=core HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, _ = _read(f)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="outagemon"'
    assert WORKER.lower() in headers
    s.sendall(_ask("/api/v1/check?node=core&colour=red"))
    assert _read(f)[::2] == (400, b'{"error": "unknown parameter(s): colour."}')
    s.sendall(_ask("/api/v1/check?node=core"))
    assert _read(f)[0] == 200
