"""What every HTTP handler shares: the runtime it reads, JSON, errors as sentences,
authorisation, and the one validation of engineers' estimates and notes.

Handlers (`api.py`, `page.py`) import this module, never each other; only `app.py`
imports the handlers.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import hdrs, web

from outagemon.config import Config, Token
from outagemon.core import messages
from outagemon.core.assess import AnswerMemory
from outagemon.core.directory import Directory
from outagemon.core.messages import Texts
from outagemon.metrics import Metric, Registry
from outagemon.monitor import Monitor

MAX_NOTE = 2000
JSON = {"Content-Type": "application/json; charset=utf-8"}


@dataclass
class Runtime:
    """What the HTTP handlers read: the daemon owns it and swaps parts on reload."""

    config: Config
    directory: Directory
    metrics: Registry = field(default_factory=Registry)
    started_at: float = field(default_factory=time.time)
    # None when ready; otherwise the sentence /readyz answers with.
    not_ready: str | None = "the daemon is starting"
    monitor: Monitor | None = None
    pool: Any = None  # asyncpg.Pool once connected: the page's timelines read it
    probe_rate: float = 0.0  # probes a second, as last measured
    texts: Texts = field(default_factory=lambda: messages.load("ru"))
    answers: AnswerMemory = field(default_factory=AnswerMemory)  # what /check remembers
    token_check: TokenCheck = field(default_factory=lambda: TokenCheck())
    checks: Metric = field(init=False)  # /check answers by status and channel

    def __post_init__(self) -> None:
        self.checks = self.metrics.counter(
            "outagemon_checks_total", "Check answers by status and channel."
        )


RUNTIME = web.AppKey("runtime", Runtime)


def json_response(data: Any, status: int = 200) -> web.Response:
    # orjson writes UTF-8 rather than \u escapes: addresses and spoken texts stay readable in
    # logs, curl and dialplans alike (JSON_DECODE reads both); it is also several times
    # quicker than the standard library, which counts on /check during a call surge.
    return web.Response(body=orjson.dumps(data), status=status, headers=JSON)


def iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return _iso(seconds)


@lru_cache(maxsize=4096)  # the same few incident times, asked about all day
def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).astimezone().isoformat(timespec="seconds")


def error(status: int, sentence: str) -> web.Response:
    return json_response({"error": sentence}, status=status)


def bad(sentence: str, status: int = 400) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
           404: web.HTTPNotFound, 409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge,
           415: web.HTTPUnsupportedMediaType}[status]  # fmt: skip
    headers = {"WWW-Authenticate": 'Bearer realm="outagemon"'} if status == 401 else None
    text = json.dumps({"error": sentence}, ensure_ascii=False)
    if status == 413:
        return web.HTTPRequestEntityTooLarge(max_size=64 * 1024, actual_size=0, text=text,
                                             content_type="application/json")  # fmt: skip
    made: web.HTTPException = cls(text=text, content_type="application/json",
                                  headers=headers)  # fmt: skip
    return made


# -- authorisation ---------------------------------------------------------------------


class TokenCheck:
    """The configured tokens as bytes, made again only when a reload brings new ones;
    every token is compared, in constant time, so timing tells nothing."""

    __slots__ = ("_encoded", "_tokens")

    def __init__(self) -> None:
        self._tokens: tuple[Token, ...] = ()
        self._encoded: tuple[bytes, ...] = ()

    def find(self, tokens: tuple[Token, ...], given: str) -> Token | None:
        """The token whose secret is `given`, if any."""
        if self._tokens is not tokens:
            self._tokens, self._encoded = tokens, tuple(t.token.encode() for t in tokens)
        given_bytes = given.strip().encode()
        found = None
        for i, secret in enumerate(self._encoded):
            if hmac.compare_digest(secret, given_bytes):
                found = tokens[i]
        return found


def authorise(request: web.Request, write: bool, rt: Runtime | None = None) -> str:
    """The name of the caller's token ("" when reads are open); raise 401/403 otherwise."""
    rt = rt or request.app[RUNTIME]
    tokens = rt.config.tokens
    if not tokens:
        if write:
            raise bad("writes are disabled: configure a token with role = \"write\" "
                      "in [[auth.tokens]].", 403)  # fmt: skip
        return ""
    header = request.headers.get(hdrs.AUTHORIZATION, "")  # istr: no case folding per call
    scheme, _, given = header.partition(" ")
    token = None
    if scheme.lower() == "bearer" and given:
        token = rt.token_check.find(tokens, given)
    if token is None:
        if "Authorization" in request.headers:
            raise bad("the token is not valid.", 401)
        raise bad("a token is required: send Authorization: Bearer TOKEN.", 401)
    if write and token.role != "write":
        raise bad(f"the token {token.name!r} may only read; this needs a write token.", 403)
    return token.name


# -- the one validation of engineers' input --------------------------------------------


class Invalid(ValueError):
    """An engineer's input refused, with the sentence that says why."""


def incident_id(raw: str) -> int | None:
    """An incident id from a path, or None when it cannot be one."""
    if not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


def parse_time(value: Any, name: str) -> float:
    """An ISO 8601 time with an offset, as epoch seconds; Invalid otherwise."""
    if not isinstance(value, str):
        raise Invalid(f"{name} must be an ISO 8601 time such as 2026-11-26T18:00:00+03:00.")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{name} {value!r} is not an ISO 8601 time "
                      "such as 2026-11-26T18:00:00+03:00.") from None  # fmt: skip
    if parsed.tzinfo is None:
        raise Invalid(f"{name} {value!r} has no UTC offset; add one, such as +03:00 or Z.")
    return parsed.timestamp()


def estimate(eta: float | None, note: Any, now: float) -> tuple[float | None, str]:
    """An estimate and a note as an engineer gave them, checked the same way wherever they
    come from (the API or the page's form): an estimate more than a minute in the past is
    refused (it would never be spoken), and so is a note that is not text or is longer
    than MAX_NOTE characters (cutting it would lose what the engineer wrote). Returns the
    estimate and the note, stripped."""
    if eta is not None and eta < now - 60:
        raise Invalid("eta is in the past; give the time the repair is expected.")
    note = note or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise Invalid(f"note must be text of at most {MAX_NOTE} characters.")
    return eta, note.strip()
