"""Requests aiohttp's parser refuses before any handler runs (a raw space or raw UTF-8 in
the URL, a malformed header, a line too long), answered as every other error: JSON
`{"error": sentence}` that says what was wrong, instead of aiohttp's text/plain 400.

aiohttp has no hook for these (aio-libs/aiohttp#3287): its protocol's `handle_error`
makes the answer, so the runner here builds the server with a protocol that overrides it.
Raw non-ASCII in a URL is refused, not repaired: HTTP allows only ASCII there (RFC 9112
3.2, RFC 3986), a raw space makes the request line ambiguous, and other servers and
proxies refuse such requests too (nginx a raw space), so a client that sent them would
work in a test and fail behind a proxy. The sentence shows the bytes percent-encoded.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler

from outagemon import logs
from outagemon.http.runtime import error

log = logs.get("outagemon.http")

# A request line: method, target (with whatever raw bytes it holds), version.
_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/.*?) HTTP/\d\.\d")
# Bytes a URL never carries raw (RFC 3986: visible ASCII only).
_RAW = re.compile(rb"[^\x21-\x7e]")
# The line aiohttp's C parser (llhttp) quotes in its message: b'...' alone on a line.
_QUOTED = re.compile(r"^\s*(b'.*'|b\".*\")\s*$", re.MULTILINE)
SHOWN = 120  # characters of the client's own text at most in a sentence


def sentence(exc: BaseException | None, status: int = 400) -> str:
    """What the client did wrong, for an error aiohttp's protocol answers itself."""
    if status >= 500:
        if status == 504:
            return "the server took too long to answer."
        return "the server failed to answer; the failure is logged."
    if isinstance(exc, BadHttpMethod) and "HTTPS" in exc.message:
        return "this port speaks plain HTTP, and the request was HTTPS (TLS): use http://."
    line = _request_line(exc)
    said = _unencoded(line) if line is not None else None
    if said is not None:
        return said
    if isinstance(exc, LineTooLong):
        return "the request line or a header is too long (8190 bytes at most)."
    if isinstance(exc, HttpProcessingError) and exc.message.strip():
        reason = exc.message.strip().splitlines()[0].strip().rstrip(":.")
        return f"the request is not valid HTTP/1.1: {reason[:SHOWN]}."
    return "the request is not valid HTTP/1.1."


def _request_line(exc: BaseException | None) -> bytes | None:
    """The raw line the parser refused: quoted in the C parser's message; or the pure
    Python parser's BadStatusLine.line (decoded with surrogateescape), or the target its
    InvalidURLError holds (decoded as latin-1)."""
    if not isinstance(exc, HttpProcessingError):
        return None
    quoted = _QUOTED.search(exc.message)
    if quoted is not None:
        try:
            raw = ast.literal_eval(quoted.group(1))
        except (ValueError, SyntaxError):
            return None
        return raw if isinstance(raw, bytes) else None
    if isinstance(exc, BadStatusLine) and exc.line:
        return exc.line.encode("utf-8", "surrogateescape")
    if isinstance(exc, InvalidURLError) and exc.message.startswith("/"):
        return b"GET " + exc.message.encode("latin-1", "replace") + b" HTTP/1.1"
    return None


def _unencoded(line: bytes) -> str | None:
    """The sentence for a URL that holds raw bytes (a space, a control character, text
    not percent-encoded), naming the query parameter and showing it encoded; None when
    the URL is not what is wrong."""
    match = _LINE.fullmatch(line)
    if match is None:
        return None
    target = match.group(2)
    raw = _RAW.search(target)
    if raw is None:
        return None
    path, _, query = target.partition(b"?")
    encoded = _RAW.sub(lambda m: b"%%%02X" % m.group()[0], target)
    if raw.start() < len(path):
        shown = encoded.decode("ascii")
        example = f": {shown}" if len(shown) <= SHOWN else ""
        return ("the URL's path holds characters a URL cannot carry raw (spaces, control "
                f"characters or non-ASCII text); percent-encode them as UTF-8"
                f"{example}.")  # fmt: skip
    for part in query.split(b"&"):
        if _RAW.search(part) is None:
            continue
        name, has_value, value = part.partition(b"=")
        what = _text(name) if has_value else None
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            how = ("its bytes are not UTF-8 either: encode the text as UTF-8, then "
                   "percent-encode it (п is %D0%BF)")  # fmt: skip
        else:
            fixed = _RAW.sub(lambda m: b"%%%02X" % m.group()[0], part).decode("ascii")
            how = "percent-encode it as UTF-8" + (f": {fixed}" if len(fixed) <= SHOWN else "")
        whose = f"the query parameter {what!r}" if what else "the query"
        return (f"{whose} holds characters a URL cannot carry raw (spaces, control "
                f"characters or non-ASCII text); {how}.")  # fmt: skip
    return None


def _text(raw: bytes) -> str:
    said = raw.decode("utf-8", "replace")
    return said if len(said) <= SHOWN else said[:SHOWN] + "…"


class _Protocol(RequestHandler):
    """aiohttp's protocol, whose own error answers are the contract's JSON sentences."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:  # fmt: skip
        if request.writer.output_size > 0:  # too late to answer: aiohttp closes
            return super().handle_error(request, status, exc, message)
        said = sentence(exc, status)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        else:  # the client's mistake: one line, no traceback
            log.info("http.bad_request", remote=request.remote, status=status, error=said)
        response = error(status, said)
        response.force_close()  # what follows on the connection cannot be read reliably
        return response


class _Server(web.Server):
    """aiohttp's server, whose connections get `_Protocol` (as its own __call__ does)."""

    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return _Protocol(self, loop=self._loop, **kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose server answers refused requests with JSON sentences."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Built by Application._make_handler with its arguments; only __call__ differs.
        server.__class__ = _Server
        return server
