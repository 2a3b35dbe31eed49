"""The HTTP workers' fast path for the phone menu's question (issue 16).

A worker's connections start with `FastCheck`, an asyncio protocol that answers
`GET /api/v1/check` itself, with HTTP/1.1 keep-alive: no request object, no task, no
router, no response object — about half of what aiohttp spends on each /check. The
answer is `api.check_answer`'s, the one writer of /check answers, framed with the
headers aiohttp sends (Content-Type, Content-Length, Date, Server, the worker's own).

It answers only what it fully understands: a complete request head in the strict
grammar below, for that path and method, with HTTP/1.1, a Host the server answers to,
a valid token and a question `check_answer` takes. Anything else — another path or
method, a body, Expect, Upgrade, a head split across packets, a malformed or oversized
request, a refused token or question — hands the connection to aiohttp's own protocol
(the runner's request handler) with every byte not yet answered, so behaviour there,
errors and their counting included, is exactly aiohttp's.
"""

from __future__ import annotations

import asyncio
import re
import socket
import weakref
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

from outagemon.http.api import check_answer
from outagemon.http.app import KEEPALIVE_TIMEOUT
from outagemon.http.runtime import Runtime, host_allowed, read_token

PATH = b"/api/v1/check"
_LINE_START = b"GET " + PATH
_LINE_END = b" HTTP/1.1"
# Below aiohttp's own limits (8190 bytes a line, 128 headers), so that nothing it would
# refuse is answered here.
MAX_HEAD = 8190
MAX_FIELDS = 32
# A request target in origin form: visible ASCII, no fragment.
_TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+")
# A header field: a token, a colon, the value between optional whitespace; printable
# ASCII only (anything else is aiohttp's to judge).
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    rb"((?:[\x21-\x7e](?:[ \t\x21-\x7e]*[\x21-\x7e])?)?)[ \t]*"
)
# Fields that change how a request is read or answered: aiohttp's.
_HANDED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"te",
                     b"http2-settings"})  # fmt: skip
_SERVER = SERVER_SOFTWARE.encode()
_date: list[Any] = ["", b""]  # aiohttp's date (made once a second), and as bytes


def _date_bytes() -> bytes:
    said = rfc822_formatted_time()
    if said is not _date[0]:
        _date[0], _date[1] = said, said.encode()
    date: bytes = _date[1]
    return date


class Site(web.BaseSite):
    """A worker's site whose connections start with the fast path: on a listening socket
    made before the fork and shared by the workers (`sock`), or bound here to host and
    port (SO_REUSEPORT). `headers`: the worker's own, sent with every answer (as its
    on_response_prepare hook adds them to aiohttp's). Counts what it answered and handed
    over. `retire()` stops accepting and makes every later answer say "Connection: close"
    (a retiring worker's callers ask the next question of another worker); `stop()` also
    closes the connections still on the fast path."""

    def __init__(self, runner: web.AppRunner, rt: Runtime, host: str | None = None,
                 port: int | None = None, *, sock: socket.socket | None = None,
                 ssl_context: Any = None, headers: Mapping[str, str]) -> None:  # fmt: skip
        super().__init__(runner, ssl_context=ssl_context)
        if (sock is None) == (host is None or port is None):
            raise ValueError("a fast-path site takes either host and port or a socket")
        self._host, self._port, self._sock = host, port, sock
        self.rt = rt
        self.headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        # Each connection from when the loop makes its protocol (before connection_made);
        # weak: one whose TLS handshake fails is never made, nor lost.
        self.connections: weakref.WeakSet[FastCheck] = weakref.WeakSet()
        self.answered = 0  # /check requests answered on the fast path
        self.handed_over = 0  # connections handed to aiohttp
        self.retiring = False

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
        else:
            host, port = self._host, self._port
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()  # registered with the runner
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: FastCheck(self), sock=self._sock, ssl=self._ssl_context,
                backlog=self._backlog,
            )  # fmt: skip
        else:
            assert self._port is not None
            self._server = await loop.create_server(
                lambda: FastCheck(self), self._host, self._port, ssl=self._ssl_context,
                backlog=self._backlog, reuse_port=True,
            )  # fmt: skip

    async def retire(self) -> None:
        """Stop accepting: the listening server closed, once (this process's copy of the
        socket only: the queue is the other workers'). The site owns it and its fast-path
        connections; a worker's drain only waits for them (workers.py).

        The loop may have taken connections from the queue whose protocol it has not made
        yet (each is made in a task of its own); Server.close() before that would drop
        them (asyncio refuses a transport for a closed server, silently: the caller sees
        a reset). So accepting stops first, and the server is closed only after those
        tasks ran (one turn of the loop: they were scheduled before this one's next step);
        their FastCheck is in `connections` from its making, for the drain to wait for."""
        self.retiring = True
        server, self._server = self._server, None
        if server is None:
            return
        loop = asyncio.get_running_loop()
        for sock in server.sockets if isinstance(server, asyncio.Server) else ():
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        server.close()

    async def stop(self) -> None:
        """Retired, and the fast-path connections still open (idle between requests)
        closed, as aiohttp's; the handed-over ones are the runner's to close."""
        await self.retire()
        for connection in list(self.connections):
            connection.close()
        await super().stop()  # the server is closed already: unregistered only

    def aiohttp_protocol(self) -> asyncio.Protocol:
        """A new aiohttp request handler, for a connection handed over."""
        server = self._runner.server
        assert server is not None
        handler: asyncio.Protocol = server()
        return handler


class FastCheck(asyncio.Protocol):
    """One connection while on the fast path (see the module's docstring)."""

    __slots__ = ("__weakref__", "last", "paused", "site", "timer", "transport")

    def __init__(self, site: Site) -> None:
        self.site = site
        site.connections.add(self)  # accepted: the site's to drain (Site.retire)
        self.transport: asyncio.Transport | None = None
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # the transport's writing is

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self.timer = loop.call_at(self.last + KEEPALIVE_TIMEOUT, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # no more questions until the answers drain

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        out: list[bytes] = []
        start, size = 0, len(data)
        close = False
        while start < size:
            end = data.find(b"\r\n\r\n", start, start + MAX_HEAD + 4)
            answer = self._answer(data, start, end) if end >= 0 else None
            if answer is None:
                break
            out.append(answer[0])
            close = answer[1]
            start = end + 4
            if close:  # Connection: close; what follows is never read (as aiohttp)
                start = size
        if out:
            transport.write(b"".join(out))
            self.site.answered += len(out)
        if close:
            transport.close()
        elif start < size:
            self._hand_over(data[start:])
        else:
            self.last = asyncio.get_running_loop().time()

    def _answer(self, data: bytes, start: int, end: int) -> tuple[bytes, bool] | None:
        """The framed answer to the request head data[start:end], and whether the client
        asked to close; None when it is aiohttp's to answer."""
        line_end = data.find(b"\r\n", start, end)
        if line_end < 0:
            line_end = end
        if not data.startswith(_LINE_START, start) or not data.endswith(_LINE_END, start, line_end):
            return None
        target = data[start + 4 : line_end - len(_LINE_END)]
        if not _TARGET.fullmatch(target):
            return None
        path, _, query_string = target.partition(b"?")
        if path != PATH:
            return None
        host = auth = None
        close = False
        if line_end < end:
            fields = data[line_end + 2 : end].split(b"\r\n")
            if len(fields) > MAX_FIELDS:
                return None
            for line in fields:
                field = _FIELD.fullmatch(line)
                if field is None:
                    return None
                name, value = field.group(1).lower(), field.group(2)
                if name == b"host":
                    if host is not None:
                        return None
                    host = value
                elif name == b"authorization":
                    if auth is not None:
                        return None
                    auth = value
                elif name == b"connection":
                    said = value.lower()
                    if said == b"close":
                        close = True
                    elif said != b"keep-alive":
                        return None
                elif name in _HANDED:
                    return None
        rt = self.site.rt
        if not host_allowed(rt, host.decode() if host is not None else ""):
            return None
        if rt.config.tokens and read_token(rt, auth.decode() if auth is not None else "") is None:
            return None
        # The query as aiohttp reads it (its parser builds the URL so; request.query).
        query = URL.build(query_string=query_string.decode(), encoded=True).query
        try:
            body, content_type = check_answer(rt, query)
        except Exception:  # a refused question (or a failure): aiohttp answers it, as always
            return None
        close = close or self.site.retiring
        head = b"".join((
            b"HTTP/1.1 200 OK\r\nContent-Type: ", content_type.encode(),
            b"\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\nDate: ", _date_bytes(), b"\r\nServer: ", _SERVER,
            b"\r\nConnection: close\r\n" if close else b"\r\n",
            self.site.headers, b"\r\n",
        ))  # fmt: skip
        return head + body, close

    def _hand_over(self, rest: bytes) -> None:
        """Give the connection to aiohttp's protocol, with the bytes not answered here."""
        transport = self.transport
        assert transport is not None
        self._leave()
        self.transport = None
        self.site.handed_over += 1
        handler = self.site.aiohttp_protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:  # its writes wait for the drain too; it reads as it likes
            handler.pause_writing()
            transport.resume_reading()
        if rest:
            handler.data_received(rest)

    def _idle(self) -> None:
        """Closed after KEEPALIVE_TIMEOUT without a request, as aiohttp's connections."""
        self.timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        close_at = self.last + KEEPALIVE_TIMEOUT
        if loop.time() < close_at:
            self.timer = loop.call_at(close_at, self._idle)
        else:
            self.transport.close()

    def _leave(self) -> None:
        self.site.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
