"""What every HTTP handler shares: the runtime it reads, JSON, errors as sentences,
authorisation, and the one validation of engineers' estimates and notes.

Handlers (`api.py`, `page.py`) import this module, never each other; only `app.py`
imports the handlers.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import hdrs, web

from outagemon import clock
from outagemon.cluster.lease import Leadership
from outagemon.cluster.replica import Replica
from outagemon.config import Config, Token
from outagemon.core import messages
from outagemon.core.assess import AnswerMemory
from outagemon.core.directory import Directory
from outagemon.core.messages import Texts
from outagemon.core.text import bad_character
from outagemon.http import security
from outagemon.metrics import Metric, Registry
from outagemon.monitor import Monitor

MAX_NOTE = 2000
# Times an engineer may give: later ones are mistakes (and year 9999 at -14:00 cannot even
# be stored), earlier ones would never be spoken.
DAY = 86400.0
YEAR = 366 * DAY
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
    # None once the database is connected and what it remembers taken up; else why not.
    database: str | None = None
    # Once connected: None while the database answers the daemon's ping; else since when
    # (wall clock) and why not. /readyz stays 200 (/check answers from memory, writes are
    # queued) and says so in its body.
    db_lost: tuple[float, str] | None = None
    reads: int = 0  # database reads of HTTP requests running now (http/queries.py)
    # The correlator's state this process answers from: its own Monitor, or a Replica of
    # the leader's (an HTTP worker, a standby); the handlers read either alike.
    monitor: Monitor | Replica | None = None
    # A cluster's node ([cluster]): its role, epoch and who leads; None on a single host.
    # `leadership.changed` is set at every change of role (the standby's answers follow).
    leadership: Leadership | None = None
    pool: Any = None  # asyncpg.Pool once connected: the page's timelines read it
    # The outage history's reports' own asyncpg.Pool ([history] connections), and the
    # billing exports streaming now: a report never takes the writer's or /check's way.
    reports: Any = None
    exports: int = 0
    probe_rate: float = 0.0  # probes a second, as last measured
    texts: Texts = field(default_factory=lambda: messages.load("ru"))
    answers: AnswerMemory = field(default_factory=AnswerMemory)  # what /check remembers
    token_check: TokenCheck = field(default_factory=lambda: TokenCheck())
    checks: Metric = field(init=False)  # /check answers by status and channel
    guard: security.Guard = field(init=False)  # sessions, CSRF, failed authentication
    failures: Metric = field(init=False)  # 5xx answers by route and error
    # The Host names answered (None: any), for which [http] section, and verdicts so far.
    hosts_for: Any = field(default=None, init=False)
    hosts: frozenset[str] | None = field(default=None, init=False)
    host_verdicts: dict[str, bool] = field(default_factory=dict, init=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "texts":  # at start and at each reload: times shown where they are heard
            show_times_in(value.tz)

    def __post_init__(self) -> None:
        self.checks = self.metrics.counter(
            "outagemon_checks_total", "Check answers by status and channel."
        )
        self.guard = security.Guard(self.metrics)
        self.failures = self.metrics.counter(
            "outagemon_http_failures_total", "Requests the server failed to answer (5xx)."
        )


RUNTIME = web.AppKey("runtime", Runtime)


def json_response(data: Any, status: int = 200) -> web.Response:
    # orjson writes UTF-8 rather than \u escapes: addresses and spoken texts stay readable in
    # logs, curl and dialplans alike (JSON_DECODE reads both); it is also several times
    # quicker than the standard library, which counts on /check during a call surge.
    return web.Response(body=orjson.dumps(data), status=status, headers=JSON)


def iso(seconds: float | None) -> str:
    """A time of the monitor's steady clock (outagemon.clock) as wall-clock ISO 8601: the
    same seconds unless the wall clock was stepped since start."""
    if seconds is None:
        return ""
    whole = math.floor(clock.wall(seconds))  # whole seconds: few keys for the cache
    return _iso(whole, _shown_zone)


def iso_wall(seconds: float | None) -> str:
    """A wall-clock time (a database row's, a request's) as ISO 8601."""
    return "" if seconds is None else _iso(seconds, _shown_zone)


@lru_cache(maxsize=4096)  # the same few incident times, asked about all day
def _iso(seconds: float, zone: tzinfo | None) -> str:
    # The zone is in the key: a report's thread may be formatting as a reload changes it.
    return datetime.fromtimestamp(seconds, tz=UTC).astimezone(zone).isoformat(timespec="seconds")


# The zone the API and the page give times in: [messages] timezone, the one callers hear
# times in (None: the server's), so that an engineer reads the clock a caller was told
# (a server on UTC showed 04:55 where callers heard 07:55). One a process, as its
# Runtime's texts are: set with them (Runtime.__setattr__).
_shown_zone: tzinfo | None = None


def show_times_in(tz: tzinfo | None) -> None:
    global _shown_zone
    _shown_zone = tz


def local(t: datetime) -> datetime:
    """A time in the zone the API and the page show times in."""
    return t.astimezone(_shown_zone)


def local_naive(t: datetime) -> datetime:
    """A time without an offset (a browser's datetime-local field) read in that zone."""
    if t.tzinfo is not None:
        return t
    return t.replace(tzinfo=_shown_zone) if _shown_zone is not None else t.astimezone()


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


def host_allowed(rt: Runtime, header: str) -> bool:
    """Whether a request's Host header names this server (see security.allowed_hosts).

    On /check's way: the verdict for each Host value is remembered, until a reload
    brings another [http] section."""
    http = rt.config.http
    if http is not rt.hosts_for:
        rt.hosts_for, rt.hosts, rt.host_verdicts = http, security.allowed_hosts(http), {}
    if rt.hosts is None:
        return True
    verdict = rt.host_verdicts.get(header)
    if verdict is None:
        verdict = security.host_name(header) in rt.hosts
        if len(rt.host_verdicts) > 1000:
            rt.host_verdicts.clear()
        rt.host_verdicts[header] = verdict
    return verdict


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
        # A header is decoded from bytes that need not be UTF-8 (aiohttp keeps them as
        # surrogate escapes), and a form's field may hold anything: compare bytes as sent.
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
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
    token = read_token(rt, header)
    if token is None:
        sent = "Authorization" in request.headers
        rt.guard.failed("api", request.remote, "invalid" if sent else "missing")
        scheme, _, given = header.partition(" ")
        if sent and (scheme.lower() != "bearer" or not given):
            # Basic, the bare token, no token: the header is what is wrong, not a token.
            raise bad("the Authorization header must be Bearer TOKEN.", 401)
        if sent:
            raise bad("the token is not valid.", 401)
        raise bad("a token is required: send Authorization: Bearer TOKEN.", 401)
    if write and token.role != "write":
        raise bad(f"the token {token.name!r} may only read; this needs a write token.", 403)
    return token.name


def read_token(rt: Runtime, header: str) -> Token | None:
    """The configured token an Authorization header carries, if any; nothing is counted
    (authorise() counts a failure)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        return rt.token_check.find(rt.config.tokens, given)
    return None


# -- the one validation of engineers' input --------------------------------------------


class Invalid(ValueError):
    """An engineer's input refused, with the sentence that says why."""


def incident_id(raw: str) -> int | None:
    """An incident id from a path, or None when it cannot be one: ASCII digits only ("²"
    and "١" are digits to str.isdigit() but not to int()), at most 18 of them."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return None
    return int(raw)


def parse_time(value: Any, name: str) -> float:
    """An ISO 8601 time with an offset, as epoch seconds; Invalid otherwise."""
    if value is None:  # absent (or null): say so, not that it is malformed
        raise Invalid(f"{name} is required: an ISO 8601 time such as 2026-11-26T18:00:00+03:00.")
    if not isinstance(value, str):
        raise Invalid(f"{name} must be an ISO 8601 time such as 2026-11-26T18:00:00+03:00.")
    try:
        parsed = datetime.fromisoformat(value)
        seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        raise Invalid(f"{name} {value!r} is not an ISO 8601 time "
                      "such as 2026-11-26T18:00:00+03:00.") from None  # fmt: skip
    if parsed.tzinfo is None:
        raise Invalid(f"{name} {value!r} has no UTC offset; add one, such as +03:00 or Z.")
    return seconds


def estimate(eta: float | None, note: Any, now: float) -> tuple[float | None, str]:
    """An estimate and a note as an engineer gave them, checked the same way wherever they
    come from (the API or the page's form): an estimate more than a minute in the past is
    refused (it would never be spoken), and so is a note that is not text or is longer
    than MAX_NOTE characters (cutting it would lose what the engineer wrote). Returns the
    estimate and the note, stripped."""
    if eta is not None and eta < now - 60:
        raise Invalid("eta is in the past; give the time the repair is expected.")
    if eta is not None and eta > now + YEAR:
        raise Invalid("eta is more than a year ahead; give the time the repair is expected.")
    return eta, text(note, "note")


def text(value: Any, name: str) -> str:
    """A note or a reason: text of at most MAX_NOTE characters that can be stored (no
    control characters, no lone surrogates), stripped."""
    given = value or ""
    if not isinstance(given, str) or len(given) > MAX_NOTE:
        raise Invalid(f"{name} must be text of at most {MAX_NOTE} characters.")
    stripped: str = given.strip()
    found = bad_character(stripped, multiline=True)
    if found is not None:
        raise Invalid(f"{name} holds {found}; write it without.")
    return stripped


def new_end(starts: float, ends: float, now: float) -> None:
    """A new end for planned works (cut short or extended): after their start and now,
    at most a year ahead."""
    if ends <= now:
        raise Invalid('ends_at is in the past; to end the works now, give {"withdraw": true}.')
    if ends <= starts:
        raise Invalid("ends_at must be after the works' starts_at.")
    if ends > now + YEAR:
        raise Invalid("ends_at is more than a year ahead.")


def works(starts: float, ends: float, now: float) -> None:
    """Planned works' times: in order, started at most a day ago, ended at most a year ahead."""
    if ends <= starts:
        raise Invalid("ends_at must be after starts_at.")
    if ends <= now:
        raise Invalid("ends_at is in the past.")
    if starts < now - DAY:
        raise Invalid("starts_at is more than a day in the past; give works still to come "
                      "or running.")  # fmt: skip
    if ends > now + YEAR:
        raise Invalid("ends_at is more than a year ahead.")
