"""Who may use the page and the metrics, and what a browser may do with them.

Sessions for the page (`[http] page_auth`): a token typed once into a login form becomes
a random session id in an HttpOnly, SameSite=Strict cookie; every form carries a CSRF
token bound to that cookie. Failed logins slow down per address. Failed authentication
anywhere is counted and logged with the remote address, never with what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from outagemon import logs
from outagemon.config import HttpConfig, Token
from outagemon.metrics import Metric, Registry

log = logs.get("outagemon.http.security")

SESSION_COOKIE = "om_session"
CSRF_COOKIE = "om_csrf"  # binds the forms of a browser that has no session yet
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
# The page's documents allow nothing from elsewhere and may not be framed (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Message(Enum):
    """What the page may say after a redirect: a code in the URL, the text from here, so a
    link cannot make the page say anything else (a crafted ?message= next to a token field
    is a phishing kit)."""

    SAVED = "Saved."
    CONFIRMED = "Confirmed: callers of this place now hear that there is an outage."
    DISMISSED = "Dismissed."
    REPAIRED = "Marked repaired: callers hear that service is restored."
    NOT_DECIDABLE = "This incident cannot take that decision (it is not, or no longer, suspected)."
    ROOT_ANSWERS = ("Not confirmed: its node answers the probes now, so the way through it "
                    "works and a fault its callers notice is below it. Dismiss it.")  # fmt: skip
    TOKEN_INVALID = "The write token is not valid."
    TOKEN_READ_ONLY = "That token may only read; type a write token."
    WRITES_DISABLED = "Writes are disabled: no write token is configured."
    ETA_INVALID = "The ETA is not a time."
    NOTHING = "Nothing was saved: give an ETA, a note, or both."
    ETA_ENDED = "This incident has ended: an estimate is for an open incident; nothing was saved."
    # The API's own sentences for the same refusals (runtime.estimate): one rule, one text.
    ETA_PAST = "eta is in the past; give the time the repair is expected."
    ETA_FAR = "eta is more than a year ahead; give the time the repair is expected."
    NOTE_TOO_LONG = "note must be text of at most 2000 characters."
    NOTE_REFUSED = "The note holds a character that cannot be stored; write it without."
    FORM_EXPIRED = "The form had expired; it is fresh now, send it again."
    LOGIN_FAILED = "That token is not valid."
    LOGGED_OUT = "Logged out."
    TOO_MANY = "Too many failed attempts from your address; wait a minute and try again."
    WITHDRAWN = "Withdrawn: callers behind these works no longer hear of planned works."
    STANDBY = "This host stands by (another host leads): nothing was saved; save it there."

    @classmethod
    def of(cls, code: str | None) -> str:
        """The text for a code from a URL; nothing for anything else."""
        for m in cls:
            if m.name.lower() == code:
                return m.value
        return ""

    @classmethod
    def refusal(cls, sentence: str) -> Message:
        """The message for a refusal of runtime.estimate: its own sentence where the page has
        it, else the one for a note that cannot be stored (the only other refusal)."""
        for m in cls:
            if m.value == sentence:
                return m
        return cls.NOTE_REFUSED

    @property
    def code(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class Session:
    name: str  # the token's name, as writes are signed with it
    role: str
    expires: float


class Sessions:
    """Sessions in memory: a restart logs everyone out, which is acceptable for a NOC page."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def open(self, token: Token, now: float) -> str:
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = Session(token.name, token.role, now + SESSION_SECONDS)
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return sid

    def get(self, sid: str | None, tokens: tuple[Token, ...], now: float) -> Session | None:
        """The live session for a cookie; one whose token was removed by a reload is over."""
        if not sid:
            return None
        found = self._by_id.get(sid)
        if found is None:
            return None
        if found.expires <= now or not any(
            t.name == found.name and t.role == found.role for t in tokens
        ):
            del self._by_id[sid]
            return None
        return found

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


class Backoff:
    """Failed logins per address: after a few, each further try waits twice as long."""

    FREE = 3  # failures before any wait
    LONGEST = 300.0  # seconds
    FORGET = 3600.0  # an address quiet this long starts afresh
    MAX_ADDRESSES = 10_000

    def __init__(self) -> None:
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait(self, address: str, now: float) -> float:
        """Seconds this address must still wait before its next try (0: it may try)."""
        count, last = self._failures.get(address, (0, 0.0))
        if count < self.FREE or now - last > self.FORGET:
            return 0.0
        return max(0.0, last + min(self.LONGEST, 2.0 ** (count - self.FREE)) - now)

    def failed(self, address: str, now: float) -> None:
        count, last = self._failures.pop(address, (0, 0.0))
        if now - last > self.FORGET:
            count = 0
        self._failures[address] = (count + 1, now)
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class Guard:
    """The page's and the metrics' gatekeeper, one per application."""

    def __init__(self, metrics: Registry) -> None:
        self.key = secrets.token_bytes(32)  # CSRF tokens are HMACs under it
        self.sessions = Sessions()
        self.backoff = Backoff()
        self._failures: Metric = metrics.counter(
            "outagemon_auth_failures_total", "Requests refused for a missing or wrong secret."
        )
        self._logged: dict[tuple[str, str], float] = {}

    def csrf(self, binding: str) -> str:
        return hmac.new(self.key, binding.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, binding: str | None, given: str) -> bool:
        return bool(binding) and hmac.compare_digest(self.csrf(binding or ""), given)

    def failed(self, where: str, remote: str | None, reason: str) -> None:
        """Count a refusal; log it with the address, at most once a minute per address
        and place, so that guessing cannot flood the journal. Never the secret itself."""
        self._failures.inc(where=where)
        now = time.monotonic()
        key = (where, remote or "")
        if now - self._logged.get(key, -60.0) >= 60.0:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
            log.warning("auth.failed", where=where, remote=remote or "", reason=reason)


def token_named(tokens: tuple[Token, ...], given: bytes) -> Token | None:
    """The token equal to `given`; every one is compared, in constant time."""
    found = None
    for t in tokens:
        if hmac.compare_digest(t.token.encode(), given):
            found = t
    return found


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(http: HttpConfig) -> frozenset[str] | None:
    """The Host names the server answers to; None for any.

    A browser page from elsewhere can reach a loopback server by pointing its own DNS
    name at 127.0.0.1 (DNS rebinding): the Host header then names the attacker's domain.
    So, unless [http] allowed_hosts lists the names, a server listening on one address
    answers to that address and the loopback names only; one listening on all addresses
    answers to any name (check-config warns)."""
    if http.allowed_hosts:
        return frozenset(h.lower() for h in http.allowed_hosts)
    if http.host in ("0.0.0.0", "::", ""):
        return None
    return _LOOPBACK_NAMES | {http.host.lower()}


def host_name(header: str) -> str:
    """The name in a Host header, without the port or an IPv6 address's brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, _, _port = header.rpartition(":") if header.count(":") == 1 else (header, "", "")
    return name


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
