"""The TOML configuration file, read into frozen dataclasses.

Every problem is collected and reported at once, one sentence each, naming the file and
the key, so an operator fixes a broken file in one pass rather than one error per restart.

Secrets (tokens, a DSN's password) may stay out of the file, which then needs no secrecy:
`token_file` and `dsn_file` name files read at load time, found in systemd's
`$CREDENTIALS_DIRECTORY` (`LoadCredential=`) when it is set, else next to the config file.
The value of a secret key is never repeated in a problem or a log line.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from outagemon.errors import ConfigError, read_text


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/outagemon")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str = field(default="", repr=False)  # may hold a password
    write_queue: int = 100_000
    # Writes waiting for the database, in memory and in the journal file, in bytes.
    queue_bytes: int = 64 << 20
    timeout: float = 60.0  # seconds one statement may take before the writer gives up on it
    read_timeout: float = 2.0  # seconds an HTTP request may wait for the database


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, the API speaks HTTPS
    tls_key: Path | None = None
    page_auth: bool = False  # the page, its events and /metrics need a login (a token)
    metrics_token: str = field(default="", repr=False)  # a bearer token for /metrics alone
    allowed_hosts: tuple[str, ...] = ()  # Host names answered; () = the listen address's
    max_streams: int = 100  # live-page streams (/events) open at once; more get 503
    # Processes answering on the port (one listening socket, shared) from a replica of the
    # incident state; 1: the daemon's own process answers everything, as before workers.
    workers: int = 1
    # The workers' CPU priority (nice): lower than the daemon's, so a caller's answer does
    # not wait behind the correlator or the database for a core. 0: the daemon's. Taking
    # it needs CAP_SYS_NICE or RLIMIT_NICE (the unit's LimitNICE=); else it is kept.
    workers_nice: int = -5


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    interval: float = 10.0
    timeout: float = 1.0
    down_after: int = 3
    up_after: int = 2
    max_rate: int = 20_000


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    window: float = 30.0
    infer_min_children: int = 3
    infer_ratio: float = 0.8
    resolve_hold: float = 60.0


@dataclass(frozen=True, slots=True)
class PhonesConfig:
    """How a number written without its country code is read (`core.addresses.PhonePlan`):
    in the subscribers' file and in `/check?phone=`. The defaults are Russia's."""

    country_code: int = 7
    trunk_prefix: str = "8"
    national_digits: int = 10


@dataclass(frozen=True, slots=True)
class TopologyConfig:
    file: Path = Path("topology.yaml")
    subscribers: Path | None = None
    phones: PhonesConfig = PhonesConfig()  # [phones]: the subscribers' numbers are read by it


@dataclass(frozen=True, slots=True)
class VantageConfig:
    anchors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MessagesConfig:
    language: str = "ru"
    restored_for: float = 3600.0
    file: Path | None = None  # the operator's own texts (TOML), over the built-in ones
    timezone: str = ""  # an IANA zone for spoken times ("Europe/Moscow"); "": the server's


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Two or more hosts on one PostgreSQL: one leads (decides and writes incidents) under
    a lease row, the others stand by. Absent (`enabled` False): a single host, as always."""

    enabled: bool = False
    node: str = ""  # this host's name in the lease row; default: the host name
    lease: float = 10.0  # seconds a leader holds the lease without renewing it


@dataclass(frozen=True, slots=True)
class CallersConfig:
    """Callers as sensors (`core/calls.py`): suspected incidents from clusters of calls."""

    enabled: bool = True
    window: float = 3600.0  # seconds over which distinct callers are counted
    min_callers: int = 3  # the window count's floor (the sequential test may raise on two)
    chance: float = 1e-7  # how rarely a place's usual rate may reach the threshold by luck
    prior_rate: float = 0.01  # calls per subscriber a day assumed before history is learned
    learn_for: float = 604800.0  # seconds: how long history weighs in the learned rate
    expire_after: float = 3600.0  # a suspected incident with no call for this long ends
    keep: int = 100_000  # calls held between detector ticks at most
    max_subscribers: int = 2000  # the largest place suspected (subscribers behind it)
    by_hour: bool = True  # the usual rate follows the hour of the day (a learned shape)
    evidence: float = 16.1  # the sequential test's log-likelihood ratio; 0: off
    fault_rate: float = 0.25  # calls a subscriber an hour a fault makes (the test's alternative)
    burst: float = 600.0  # seconds: a fault's calls come in a burst falling so; 0: constant
    burst_evidence: float = 0.0  # with burst: the constant test too, the burst's at this; 0: off
    wake_at: float = 25200.0  # seconds after midnight (UTC) a night's faults begin to be noticed
    wake_evidence: float = 10.5  # the constant test's evidence in the waking hour; 0: off
    scan_chance: float = 3e-7  # the scan over the newest callers' spans: its chance; 0: off
    sentence: str = ""  # said to callers behind a suspected incident; "": nothing special


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """The outage history's reports (per-subscriber downtime, the billing export)."""

    max_period_days: int = 366  # the longest period one question may ask about
    connections: int = 2  # database connections of their own: never the writer's or /check's
    timeout: float = 600.0  # seconds one report's query may run


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    token: str = field(repr=False)  # never printed, never logged
    role: str


# What a webhook may be told; `events` picks among them (outagemon/alerting).
WEBHOOK_EVENTS = (
    "opened", "reopened", "eta", "note", "root_moved", "kind_changed", "merged", "resolved",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str = field(repr=False)  # never printed, never logged
    events: tuple[str, ...] = WEBHOOK_EVENTS


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    alertmanagers: tuple[str, ...] = ()  # base URLs; each gets every alert (a cluster)
    external_url: str = ""  # the incident page's base URL, for links in alerts
    critical_subscribers: int = 500  # at least this many cut off: severity=critical
    major_subscribers: int = 50  # at least this many: major; fewer: warning
    labels: tuple[str, ...] = ()  # topology node labels sent (inherited down the tree)
    resend_interval: float = 45.0  # seconds between re-sends of an open incident's alert
    give_up_after: float = 86400.0  # seconds after which an undelivered notification is dropped
    webhooks: tuple[Webhook, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    daemon: DaemonConfig = DaemonConfig()
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    probe: ProbeConfig = ProbeConfig()
    correlation: CorrelationConfig = CorrelationConfig()
    topology: TopologyConfig = TopologyConfig()
    vantage: VantageConfig = VantageConfig()
    messages: MessagesConfig = MessagesConfig()
    cluster: ClusterConfig = ClusterConfig()
    callers: CallersConfig = CallersConfig()
    history: HistoryConfig = HistoryConfig()
    tokens: tuple[Token, ...] = ()
    notify: NotifyConfig = NotifyConfig()
    # Not problems, but worth an operator's attention (a short token): printed, logged.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def phones(self) -> PhonesConfig:
        """`[phones]`, kept with the files it reads (`topology.phones`)."""
        return self.topology.phones


# What a reload cannot change in a running daemon, since it is read once at start (a
# socket, a connection pool, the alert sender, the lease): section -> those of its keys,
# or None for every key. The rest of a reloaded config takes effect at once.
NEEDS_RESTART: dict[str, tuple[str, ...] | None] = {
    "daemon": None,
    "database": ("dsn", "write_queue", "queue_bytes", "timeout"),
    "http": ("listen", "tls_cert", "tls_key", "max_streams", "workers", "workers_nice"),
    "notify": None,
    "cluster": None,
    "history": ("connections", "timeout"),
    "callers": ("keep",),
}


def restart_needed(running: Config, new: Config) -> list[str]:
    """What `new` changes that only a restart takes ("[notify]", "[http] listen"), against
    the config the daemon started with."""
    pending: list[str] = []
    for section, keys in NEEDS_RESTART.items():
        old, now = getattr(running, section), getattr(new, section)
        if keys is None:
            if old != now:
                pending.append(f"[{section}]")
            continue
        pending += [f"[{section}] {k}" for k in keys if getattr(old, k) != getattr(now, k)]
    return pending


# Keys whose values are secrets: a problem with one names its type, never its value.
SECRET_KEYS = frozenset({"token", "dsn", "metrics_token", "secret"})
TOKEN_MIN = 16  # characters; shorter ones are refused
TOKEN_GOOD = 32  # shorter ones are accepted with a warning
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


# A check returns None when the value is good, else the end of a sentence: "must be ...".
Check = Callable[[Any], str | None]


class Whole(str):
    """A check's reason that names the bad part of the value itself: the value is not
    repeated after it (", not [...]" after "'gw' is not one" said "not" twice)."""


# Upper bounds of times, in seconds: a typo (a missing decimal point, 1e30, inf) is named
# at check-config rather than overflowing a timer or a conversion in the running daemon.
MINUTE = 60
HOUR = 3600
DAY = 86_400
WEEK = 7 * DAY
YEAR = 365 * DAY
_SPANS = {MINUTE: "a minute", 10 * MINUTE: "10 minutes", HOUR: "an hour", DAY: "a day",
          WEEK: "a week", YEAR: "a year"}  # fmt: skip
# Upper bounds of counts: far past any city, short of what a typo makes.
MANY = 10_000_000


def _number(v: Any) -> bool:
    """A TOML integer or float, not a boolean."""
    return not isinstance(v, bool) and isinstance(v, int | float)


def _finite(v: Any, what: str) -> str | None:
    """None for a finite number, else the sentence's end: nan, inf and -inf are refused."""
    if not _number(v):
        return f"must be {what}"
    if not math.isfinite(v):
        return "must be " + what.replace("a number", "a finite number", 1)
    return None


def _seconds(positive: bool, maximum: int) -> Check:
    """Seconds, at most `maximum`; more than 0 when `positive`, else 0 or more."""
    most = f"at most {maximum} ({_SPANS[maximum]})"

    def check(v: Any) -> str | None:
        if (reason := _finite(v, "a number of seconds")) is not None:
            return reason
        if positive and v <= 0:
            return f"must be a positive number of seconds, {most}"
        if v < 0:
            return f"must not be negative (seconds, {most})"
        if v > maximum:
            return f"must be {most} seconds"
        return None

    return check


MAX_WORKERS = 64


def _integer(minimum: int, maximum: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be a whole number"
        if v < minimum:
            return f"must be at least {minimum}"
        if v > maximum:
            return f"must be at most {maximum}"
        return None

    return check


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _nonempty_string(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    return None if v.strip() else "must not be empty"


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _host_names(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(h, str) and h.strip() for h in v):
        return 'must be a list of host names, such as ["noc.example.net"]'
    for h in v:
        if not all(c.isascii() and (c.isalnum() or c in ".-:[]") for c in h):
            return Whole(f"must list host names or addresses: {h!r} is not one")
    return None


def _ratio(v: Any) -> str | None:
    if (reason := _finite(v, "a number")) is not None:
        return reason
    return None if 0 < v <= 1 else "must be more than 0 and at most 1"


def _chance(v: Any) -> str | None:
    if (reason := _finite(v, "a number")) is not None:
        return reason
    return None if 0 < v < 0.5 else "must be more than 0 and less than 0.5"


def _scan_chance(v: Any) -> str | None:
    if (reason := _finite(v, "a number")) is not None:
        return reason
    return None if 0 <= v < 0.5 else "must be from 0 (off) to less than 0.5"


def _rate(v: Any) -> str | None:
    if (reason := _finite(v, "a number of calls per subscriber a day")) is not None:
        return reason
    return None if 0 <= v <= 10 else "must be from 0 to 10 calls per subscriber a day"


def _evidence(v: Any) -> str | None:
    if (reason := _finite(v, "a log-likelihood ratio")) is not None:
        return reason
    return None if 0 <= v <= 100 else "must be from 0 (off) to 100"


def _fault_rate(v: Any) -> str | None:
    if (reason := _finite(v, "a number of calls per subscriber an hour")) is not None:
        return reason
    return None if 0 < v <= 60 else "must be more than 0 and at most 60 calls a subscriber an hour"


def _sentence(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    if len(v) > 500:
        return "must be at most 500 characters"
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in v):
        return "must be one line of plain text (no control characters)"
    return None


def _trunk_prefix(v: Any) -> str | None:
    if isinstance(v, str) and len(v) <= 2 and v.isascii() and (v == "" or v.isdigit()):
        return None
    return (
        "must be the digits dialled before a national number, as a string of at most "
        'two ("8" in Russia, "0" in most of Europe, "1" in North America), or "" for none'
    )


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, str) and v in choices:
            return None
        return "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _addresses(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of IP addresses"
    if not all(isinstance(item, str) for item in v):
        return "must be a list of IP addresses as strings"
    bad = [repr(item) for item in v if not _is_address(item)]
    if not bad:
        return None
    said = (
        f"{bad[0]} is not one" if len(bad) == 1 else f"{', '.join(bad[:-1])} and {bad[-1]} are not"
    )
    return Whole(f"must list IP addresses (a node's ip, not its id): {said}")


def parse_listen(value: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ValueError with the reason."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [address]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError("it must be host:port, such as 127.0.0.1:8080")
        if ":" in host:
            raise ValueError("an IPv6 address is written [address]:port")
        if not all(c.isalnum() or c in ".-" for c in host):
            raise ValueError(f"{host!r} is not an address or host name")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _listen(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string host:port"
    try:
        parse_listen(v)
    except ValueError as e:
        return f"is not a listen address: {e}"
    return None


def _url(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be an http:// or https:// URL"
    parts = urllib.parse.urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not hold a user or password (put the secret in [[notify.webhooks]] secret)"
    return None


def _label_name(v: Any) -> str | None:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        return "must be a label name (letters, digits and _, not starting with a digit)"
    return None


EACH_SHOWN = 10  # bad items of one list named at most; the rest are counted


def _each(v: Any, check: Check, what: str) -> str | None:
    """Every bad item is named (up to EACH_SHOWN), those with one reason together."""
    if not isinstance(v, list):
        return f"must be a list of {what}"
    bad: dict[str, list[str]] = {}  # reason -> the items refused for it, in order
    count = 0
    for item in v:
        reason = check(item)
        if reason is not None:
            count += 1
            if count <= EACH_SHOWN:
                bad.setdefault(reason, []).append(re.sub(r"//[^/@\s']*@", "//***@", repr(item)))
    if not bad:
        return None
    parts = [f"{_and(shown)} {reason}" for reason, shown in bad.items()]
    if count > EACH_SHOWN:
        parts.append(f"and {count - EACH_SHOWN} more")
    return f"must be a list of {what} ({'; '.join(parts)})"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _timezone(v: Any) -> str | None:
    if not isinstance(v, str):
        return 'must be an IANA time zone name such as "Europe/Moscow"'
    if v == "":
        return None
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return 'is not a time zone this system knows (an IANA name such as "Europe/Moscow")'
    return None


def _node_name(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty name, such as the host's"
    if len(v) > 63 or not all(c.isascii() and (c.isalnum() or c in ".-_") for c in v):
        return "must be at most 63 letters, digits, '.', '-' or '_'"
    return None


# Seconds: the probe engine waits in poll(), which counts whole milliseconds; a shorter
# timeout is not kept (a reply already received was reported lost). As `outagemon probe
# -t` refuses below 1 ms (probecmd.MIN_TIMEOUT_MS).
PROBE_TIMEOUT_MIN = 0.001


def _probe_timeout(v: Any) -> str | None:
    if (reason := _finite(v, "a number of seconds")) is not None:
        return reason
    if not PROBE_TIMEOUT_MIN <= v <= HOUR:
        return (f"must be from {PROBE_TIMEOUT_MIN:g} (1 ms: the probe engine waits in whole "
                f"milliseconds and cannot keep a shorter timeout) to {HOUR} ({_SPANS[HOUR]}) "
                "seconds")  # fmt: skip
    return None


LEASE_MIN = 1.0  # seconds: renewals every third of it must fit a loaded database's answer


def _lease(v: Any) -> str | None:
    if (reason := _finite(v, "a number of seconds")) is not None:
        return reason
    if not LEASE_MIN <= v <= 3600:
        return f"must be from {LEASE_MIN:g} to 3600 seconds"
    return None


# section -> key -> check; the dataclass defaults are the defaults.
SCHEMA: dict[str, dict[str, Check]] = {
    "daemon": {"state_dir": _nonempty_string},
    "database": {
        "dsn": _string,
        "dsn_file": _nonempty_string,
        "write_queue": _integer(1, MANY),
        "queue_bytes": _integer(1 << 20, 64 << 30),
        "timeout": _seconds(positive=True, maximum=HOUR),
        "read_timeout": _seconds(positive=True, maximum=10 * MINUTE),
    },
    "http": {
        "listen": _listen,
        "tls_cert": _nonempty_string,
        "tls_key": _nonempty_string,
        "page_auth": _boolean,
        "metrics_token": _nonempty_string,
        "metrics_token_file": _nonempty_string,
        "allowed_hosts": _host_names,
        "max_streams": _integer(1, 100_000),
        "workers": _integer(1, MAX_WORKERS),
        "workers_nice": _integer(-20, 0),
    },
    "probe": {
        "interval": _seconds(positive=True, maximum=DAY),
        "timeout": _probe_timeout,
        "down_after": _integer(1, 1000),
        "up_after": _integer(1, 1000),
        "max_rate": _integer(1, MANY),
    },
    "correlation": {
        "window": _seconds(positive=True, maximum=DAY),
        "infer_min_children": _integer(1, MANY),
        "infer_ratio": _ratio,
        "resolve_hold": _seconds(positive=False, maximum=DAY),
    },
    "topology": {"file": _nonempty_string, "subscribers": _string},
    "phones": {
        "country_code": _integer(1, 999),
        "trunk_prefix": _trunk_prefix,
        "national_digits": _integer(4, 14),
    },
    "vantage": {"anchors": _addresses},
    "messages": {
        "language": _one_of("ru", "en"),
        "restored_for": _seconds(positive=False, maximum=WEEK),
        "file": _nonempty_string,
        "timezone": _timezone,
    },
    "cluster": {"node": _node_name, "lease": _lease},
    "callers": {
        "enabled": _boolean,
        "window": _seconds(positive=True, maximum=WEEK),
        "min_callers": _integer(2, 1000),
        "chance": _chance,
        "prior_rate": _rate,
        "learn_for": _seconds(positive=True, maximum=YEAR),
        "expire_after": _seconds(positive=True, maximum=WEEK),
        "keep": _integer(100, MANY),
        "max_subscribers": _integer(1, MANY),
        "by_hour": _boolean,
        "evidence": _evidence,
        "fault_rate": _fault_rate,
        "burst": _seconds(positive=False, maximum=DAY),
        "burst_evidence": _evidence,
        "wake_at": _seconds(positive=False, maximum=DAY),
        "wake_evidence": _evidence,
        "scan_chance": _scan_chance,
        "sentence": _sentence,
    },
    "history": {
        "max_period_days": _integer(1, 3660),
        "connections": _integer(1, 100),
        "timeout": _seconds(positive=True, maximum=DAY),
    },
}
NOTIFY_SCHEMA: dict[str, Check] = {
    "alertmanagers": lambda v: _each(v, _url, "Alertmanager base URLs"),
    "external_url": lambda v: None if v == "" else _url(v),
    "critical_subscribers": _integer(1, MANY),
    "major_subscribers": _integer(1, MANY),
    "labels": lambda v: _each(v, _label_name, "topology label names"),
    "resend_interval": _seconds(positive=True, maximum=DAY),
    "give_up_after": _seconds(positive=True, maximum=WEEK),
}
WEBHOOK_SCHEMA: dict[str, Check] = {
    "url": _url,
    "secret": _nonempty_string,
    "secret_file": _nonempty_string,
    "events": lambda v: _each(v, _one_of(*WEBHOOK_EVENTS), "events"),
}
TOKEN_SCHEMA: dict[str, Check] = {
    "name": _nonempty_string,
    "token": _nonempty_string,
    "token_file": _nonempty_string,
    "role": _one_of("read", "write"),
}


def _kind(value: Any) -> str:
    """What a value is, in words, for a secret whose value must not be shown."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def secret_file(value: str, base: Path) -> Path:
    """Where a `*_file` key points: systemd's credentials directory, else the config's."""
    credentials = os.environ.get(CREDENTIALS_ENV)
    return (Path(credentials) if credentials else base) / value


def _read_secret(value: str, base: Path, where: str, problems: list[str]) -> str | None:
    path = secret_file(value, base)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = ""
        if not os.environ.get(CREDENTIALS_ENV):  # by hand, not under the unit
            hint = (
                f" (for a file the unit hands over with LoadCredential=, set {CREDENTIALS_ENV}"
                " to its directory, e.g. /etc/outagemon/credentials)"
            )
        problems.append(f"{where}: the file {path} does not exist{hint}.")
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        problems.append(f"{where}: the file {path} cannot be read: {reason}.")
        return None
    secret = text.strip()
    if not secret:
        problems.append(f"{where}: the file {path} is empty.")
        return None
    return secret


def _unknown(where: str, key: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    if not where:
        return f"unknown section [{key}]{suffix}."
    return f"unknown key {where}{key!r}{suffix}."


def _checked(
    table: dict[str, Any], schema: dict[str, Check], where: str, problems: list[str]
) -> dict[str, Any]:
    good: dict[str, Any] = {}
    for key, value in table.items():
        check = schema.get(key)
        if check is None:
            problems.append(_unknown(where, key, list(schema)))
            continue
        reason = check(value)
        if reason is None:
            good[key] = value
        elif isinstance(reason, Whole) and key not in SECRET_KEYS:
            problems.append(f"{where}{key} {reason}.")
        elif key in SECRET_KEYS:
            problems.append(f"{where}{key} {reason}, not {_kind(value)} (its value is not shown).")
        else:
            # A URL's user and password are a secret too: never repeated back.
            shown = re.sub(r"//[^/@\s']*@", "//***@", repr(value))
            if isinstance(value, bool):  # as the file spells it, not Python's True
                shown = "true" if value else "false"
            problems.append(f"{where}{key} {reason}, not {shown}.")
    return good


def parse(text: str, path: Path) -> Config:
    """Parse the text of a config file; raise ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}."]) from None
    problems: list[str] = []
    warnings: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    tokens: list[Token] = []
    notify = NotifyConfig()
    base = path.parent
    for name, table in raw.items():
        if name == "auth":
            tokens = _tokens(table, base, problems, warnings)
            continue
        if name == "notify":
            notify = _notify(table, base, problems, warnings)
            continue
        if name not in SCHEMA:
            problems.append(_unknown("", name, [*SCHEMA, "auth", "notify"]))
            continue
        if not isinstance(table, dict):
            problems.append(f"[{name}] must be a table of keys, not {table!r}.")
            continue
        sections[name] = _checked(table, SCHEMA[name], f"[{name}] ", problems)

    probe = ProbeConfig(**sections.get("probe", {}))
    # Against an interval as written: one refused has its own problem, and the default
    # put in its place is not what the operator wrote.
    written = raw.get("probe", {}) if isinstance(raw.get("probe"), dict) else {}
    refused = any(k in written and k not in sections.get("probe", {})
                  for k in ("interval", "timeout"))  # fmt: skip
    if probe.timeout > probe.interval and not refused:
        problems.append(
            f"[probe] timeout ({probe.timeout} s) must not be longer than "
            f"[probe] interval ({probe.interval} s)."
        )
    http = _http(sections.get("http", {}), base, problems)
    # Entries written but refused are named by their own problems: page_auth does not
    # then say that there are none.
    written = raw.get("auth", {}).get("tokens") if isinstance(raw.get("auth"), dict) else None
    _http_warnings(http, bool(tokens or written), problems, warnings)
    database = _database(sections.get("database", {}), base, problems)
    if http.workers > MAX_WORKERS:
        problems.append(f"[http] workers = {http.workers} is more than {MAX_WORKERS}; give at "
                        "most one or two a core.")  # fmt: skip
    if http.workers > 1 and not database.dsn:
        problems.append(f"[http] workers = {http.workers} needs [database] dsn: workers read "
                        "the incident state from a PostgreSQL server they can reach, and the "
                        "embedded one is started after them.")  # fmt: skip
    daemon_raw = sections.get("daemon", {})
    daemon = (
        DaemonConfig((base / daemon_raw["state_dir"]).resolve()) if daemon_raw else DaemonConfig()
    )
    relative = daemon_raw and not Path(daemon_raw["state_dir"]).is_absolute()
    if relative and daemon.state_dir.is_relative_to("/etc"):
        # The example's "../state", copied to /etc/outagemon unedited.
        warnings.append(f"[daemon] state_dir = {daemon_raw['state_dir']!r} is taken from the "
                        f"config file's folder: {daemon.state_dir}, under /etc. Give an "
                        "absolute path for a service, such as /var/lib/outagemon.")  # fmt: skip
    topology = _topology(sections.get("topology", {}), base, sections.get("phones", {}))
    if (problem := _phones_problem(topology.phones)) is not None:
        problems.append(problem)
    anchors = tuple(sections.get("vantage", {}).get("anchors", ()))
    cluster = _cluster(raw, sections.get("cluster", {}), database, problems)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return Config(
        path=path,
        daemon=daemon,
        database=database,
        http=http,
        probe=probe,
        correlation=CorrelationConfig(**sections.get("correlation", {})),
        topology=topology,
        vantage=VantageConfig(anchors=anchors),
        messages=_messages(sections.get("messages", {}), base),
        cluster=cluster,
        callers=CallersConfig(**sections.get("callers", {})),
        history=HistoryConfig(**sections.get("history", {})),
        tokens=tuple(tokens),
        notify=notify,
        warnings=tuple(f"{path}: {w}" for w in warnings),
    )


def _topology(raw: dict[str, Any], base: Path, phones: dict[str, Any]) -> TopologyConfig:
    subscribers = raw.get("subscribers", "")
    return TopologyConfig(
        file=(base / raw.get("file", "topology.yaml")).resolve(),
        subscribers=(base / subscribers).resolve() if subscribers else None,
        phones=PhonesConfig(**phones),
    )


def _phones_problem(phones: PhonesConfig) -> str | None:
    """A plan whose numbers E.164 cannot hold (15 digits with the country code, at most)."""
    code = str(phones.country_code)
    if len(code) + phones.national_digits > 15:
        return (f"[phones] country_code {code} and national_digits {phones.national_digits} "
                f"make numbers of {len(code) + phones.national_digits} digits; an "
                "international number (E.164) has at most 15.")  # fmt: skip
    return None


def files_of(path: Path | str) -> TopologyConfig | None:
    """The topology and subscribers files a config names, even when it has problems
    elsewhere (check-config then reports theirs too); None when they cannot be told."""
    path = Path(path).absolute()
    try:
        raw = tomllib.loads(read_text(path))
    except (ConfigError, tomllib.TOMLDecodeError):
        return None
    table, phones = raw.get("topology", {}), raw.get("phones", {})
    if not isinstance(table, dict) or not isinstance(phones, dict):
        return None
    good = {k: v for k, v in table.items() if k in SCHEMA["topology"] and
            SCHEMA["topology"][k](v) is None}  # fmt: skip
    plan = {k: v for k, v in phones.items() if k in SCHEMA["phones"] and
            SCHEMA["phones"][k](v) is None}  # fmt: skip
    if len(good) != len(table) or len(plan) != len(phones):
        return None  # a bad [topology] or [phones] key: its own problem says which
    files = _topology(good, path.parent, plan)
    return files if _phones_problem(files.phones) is None else None


def keyed(problems: list[str], cfg: Config | TopologyConfig) -> list[str]:
    """Problems of a file that is missing or unreadable, said with the key naming it:
    "[topology] file /etc/om/topo.yaml: no such file."."""
    topo = cfg.topology if isinstance(cfg, Config) else cfg
    keys = {topo.file: "[topology] file", topo.subscribers: "[topology] subscribers"}
    if isinstance(cfg, Config) and cfg.messages.file is not None:
        keys[cfg.messages.file] = "[messages] file"
    said: list[str] = []
    for problem in problems:
        for file, key in keys.items():
            unreadable = (f"{file}: cannot be read: ", f"{file}: is not UTF-8 text")
            if file is not None and (problem == f"{file}: no such file." or
                                     problem.startswith(unreadable)):  # fmt: skip
                problem = f"{key} {problem}"
                break
        said.append(problem)
    return said


def _http(raw: dict[str, Any], base: Path, problems: list[str]) -> HttpConfig:
    listen = raw.get("listen", HttpConfig().listen)
    host, port = parse_listen(listen)
    cert, key = raw.get("tls_cert"), raw.get("tls_key")
    if (cert is None) != (key is None):
        problems.append("[http] tls_cert and tls_key go together: give both or neither.")
    if cert and key:
        _tls_usable((base / cert).resolve(), (base / key).resolve(), problems)
    metrics_token = raw.get("metrics_token", "")
    if "metrics_token_file" in raw:
        if metrics_token:
            problems.append("[http] give metrics_token or metrics_token_file, not both.")
        where = "[http] metrics_token_file"
        metrics_token = _read_secret(raw["metrics_token_file"], base, where, problems) or ""
    if metrics_token and len(metrics_token) < TOKEN_MIN:
        problems.append(
            f"[http] the metrics token is shorter than {TOKEN_MIN} characters; "
            "make one with: openssl rand -hex 24"
        )
    return HttpConfig(
        listen=listen,
        host=host,
        port=port,
        tls_cert=(base / cert).resolve() if cert else None,
        tls_key=(base / key).resolve() if key else None,
        page_auth=raw.get("page_auth", False),
        metrics_token=metrics_token,
        allowed_hosts=tuple(h.strip().lower().strip("[]") for h in raw.get("allowed_hosts", [])),
        max_streams=raw.get("max_streams", HttpConfig().max_streams),
        workers=raw.get("workers", HttpConfig().workers),
        workers_nice=raw.get("workers_nice", HttpConfig().workers_nice),
    )


def _tls_usable(cert: Path, key: Path, problems: list[str]) -> None:
    """What `run` does with them (daemon.tls_context), so check-config and run agree."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            problems.append(f"[http] {name} {path}: {_no_file(e)}.")
            return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        problems.append(f"[http] tls_cert {cert} with tls_key {key} cannot be used: {reason}.")


def _no_file(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "a directory, not a file"
    return f"cannot be read: {e.strerror or e}"


def _dsn_problem(dsn: str) -> str | None:
    """Why asyncpg would refuse `dsn` (its connect parses it so), or None: a postgresql://
    or postgres:// URL, one host or several (h1:5432,h2:5433), each port a number."""
    scheme, sep, _ = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        kind = (
            f"a {scheme}:// URL"
            if sep
            else ("a libpq key=value string" if "=" in dsn else "not a URL")
        )
        return (f"must be a postgresql:// (or postgres://) URL, such as "
                f"postgresql://outagemon@db.example.net:5432/outagemon; it is {kind} "
                "(its value is not shown)")  # fmt: skip
    hosts = urllib.parse.urlsplit(dsn).netloc.rpartition("@")[2]
    for spec in hosts.split(",") if hosts else []:
        port = spec.rpartition("]")[2].rpartition(":")[2] if ":" in spec.rpartition("]")[2] else ""
        if port and not port.isdigit():
            return "has a port that is not a number (its value is not shown)"
    return None


def _http_warnings(
    http: HttpConfig, has_tokens: bool, problems: list[str], warnings: list[str]
) -> None:
    if http.page_auth and not has_tokens:
        problems.append(
            "[http] page_auth needs at least one [[auth.tokens]]: the login form asks for one."
        )
    loopback = http.host == "localhost" or _is_loopback_ip(http.host)
    if not loopback and not http.page_auth:
        warnings.append(
            f"[http] listen {http.listen} serves other hosts, and the incident page, its "
            "timelines and /metrics need no login: set [http] page_auth = true (and "
            "metrics_token), or keep the port to the NOC's network."
        )
    if not loopback and http.tls_cert is None:
        warnings.append(
            f"[http] listen {http.listen} serves other hosts in plain HTTP: tokens cross the "
            "network readable; set tls_cert and tls_key, or put a TLS reverse proxy in front."
        )
    if http.host in ("0.0.0.0", "::") and not http.allowed_hosts:
        warnings.append(
            "[http] allowed_hosts is empty while listening on every address: any Host name "
            "is answered (DNS rebinding); list the names the NOC uses."
        )


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _database(raw: dict[str, Any], base: Path, problems: list[str]) -> DatabaseConfig:
    dsn = raw.get("dsn", "")
    if "dsn_file" in raw:
        if dsn:
            problems.append("[database] give dsn or dsn_file, not both.")
        dsn = _read_secret(raw["dsn_file"], base, "[database] dsn_file", problems) or ""
        where = f"[database] dsn_file {secret_file(raw['dsn_file'], base)}: the text it holds"
    else:
        where = "[database] dsn"
    if dsn and (why := _dsn_problem(dsn)) is not None:
        problems.append(f"{where} {why}.")
    other = {
        k: raw[k] for k in ("write_queue", "queue_bytes", "timeout", "read_timeout") if k in raw
    }
    return DatabaseConfig(dsn=dsn, **other)


def _cluster(raw_file: dict[str, Any], raw: dict[str, Any], database: DatabaseConfig,
             problems: list[str]) -> ClusterConfig:  # fmt: skip
    """A [cluster] section, even empty, turns the lease on; without one, a single host."""
    if "cluster" not in raw_file:
        return ClusterConfig()
    if not database.dsn:
        problems.append(
            "[cluster] needs [database] dsn (or dsn_file): the hosts share one PostgreSQL "
            "server, and the embedded one is private to a host."
        )
    return ClusterConfig(
        enabled=True,
        node=raw.get("node") or socket.gethostname(),
        lease=float(raw.get("lease", ClusterConfig().lease)),
    )


def _messages(raw: dict[str, Any], base: Path) -> MessagesConfig:
    file = raw.get("file")
    return MessagesConfig(
        language=raw.get("language", "ru"),
        restored_for=raw.get("restored_for", 3600.0),
        file=(base / file).resolve() if file else None,
        timezone=raw.get("timezone", ""),
    )


def _notify(raw: Any, base: Path, problems: list[str], warnings: list[str]) -> NotifyConfig:
    if not isinstance(raw, dict):
        problems.append(f"[notify] must be a table of keys, not {raw!r}.")
        return NotifyConfig()
    entries = raw.get("webhooks", [])
    good = _checked({k: v for k, v in raw.items() if k != "webhooks"}, NOTIFY_SCHEMA,
                    "[notify] ", problems)  # fmt: skip
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append("notify.webhooks must be written as [[notify.webhooks]] tables.")
        entries = []
    webhooks: list[Webhook] = []
    for i, entry in enumerate(entries, start=1):
        where = f"[[notify.webhooks]] number {i}: "
        hook = _checked(entry, WEBHOOK_SCHEMA, where, problems)
        if "url" not in entry:
            problems.append(f"{where}url is required.")
        if "secret" in entry and "secret_file" in entry:
            problems.append(f"{where}give secret or secret_file, not both.")
            continue
        if "secret" not in entry and "secret_file" not in entry:
            problems.append(
                f"{where}secret is required: receivers check the signature made with it "
                "(make one with: openssl rand -hex 32). Or secret_file: a file that holds it."
            )
            continue
        if "secret_file" in hook:
            secret = _read_secret(hook.pop("secret_file"), base, f"{where}secret_file", problems)
            if secret is not None:
                hook["secret"] = secret
        if {"url", "secret"} <= hook.keys() and ("events" in hook or "events" not in entry):
            events = tuple(hook.get("events", WEBHOOK_EVENTS))
            webhooks.append(Webhook(url=hook["url"], secret=hook["secret"], events=events))
    default = NotifyConfig()
    critical = good.get("critical_subscribers", default.critical_subscribers)
    major = good.get("major_subscribers", default.major_subscribers)
    if major > critical:
        problems.append(
            f"[notify] major_subscribers ({major}) must not be more than "
            f"critical_subscribers ({critical})."
        )
    external_url = good.get("external_url", "").rstrip("/")
    if (good.get("alertmanagers") or webhooks) and not external_url:
        warnings.append(
            "[notify] external_url is not set: the links in alerts and webhooks (generatorURL) "
            "point to http://outagemon.invalid/incidents/<id> and open nothing in Telegram or "
            "e-mail; set it to the incident page's base URL as the NOC reaches it, such as "
            '"https://noc.example.net".'
        )
    return NotifyConfig(
        alertmanagers=tuple(u.rstrip("/") for u in good.get("alertmanagers", ())),
        external_url=external_url,
        critical_subscribers=critical,
        major_subscribers=major,
        labels=tuple(good.get("labels", ())),
        resend_interval=float(good.get("resend_interval", default.resend_interval)),
        give_up_after=float(good.get("give_up_after", default.give_up_after)),
        webhooks=tuple(webhooks),
    )


def _tokens(auth: Any, base: Path, problems: list[str], warnings: list[str]) -> list[Token]:
    if not isinstance(auth, dict):
        problems.append("[auth] must be a table holding [[auth.tokens]].")
        return []
    for key in auth:
        if key != "tokens":
            problems.append(_unknown("[auth] ", key, ["tokens"]))
    entries = auth.get("tokens", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append("auth.tokens must be written as [[auth.tokens]] tables.")
        return []
    tokens: list[Token] = []
    names: set[str] = set()
    secrets: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"[[auth.tokens]] number {i}: "
        good = _checked(entry, TOKEN_SCHEMA, where, problems)
        for key in ("name", "role"):
            if key not in entry:
                problems.append(f"{where}{key} is required.")
        if "token" in entry and "token_file" in entry:
            problems.append(f"{where}give token or token_file, not both.")
            continue
        if "token" not in entry and "token_file" not in entry:
            problems.append(f"{where}token is required. (Or token_file: a file that holds it.)")
            continue
        if "token_file" in good:
            secret = _read_secret(good.pop("token_file"), base, f"{where}token_file", problems)
            if secret is not None:
                good["token"] = secret
        # A short token is said even when the name or role is wrong too: every problem
        # at once, not one more round of check-config for each.
        short = "token" in good and len(good["token"]) < TOKEN_MIN
        if short:
            whose = f"the token of {good['name']!r}" if "name" in good else "its token"
            problems.append(
                f"{where}{whose} is shorter than {TOKEN_MIN} characters; "
                "make one with: openssl rand -hex 24"
            )
        if not {"name", "token", "role"} <= good.keys():
            continue
        if not short and len(good["token"]) < TOKEN_GOOD:
            warnings.append(
                f"{where}the token of {good['name']!r} is shorter than {TOKEN_GOOD} characters; "
                "a longer one is safer: openssl rand -hex 24"
            )
        if good["name"] in names:
            problems.append(f"{where}the name {good['name']!r} is used twice.")
        if good["token"] in secrets:
            # the secret itself is never repeated back
            problems.append(f"{where}its token is the same as an earlier one's.")
        names.add(good["name"])
        secrets.add(good["token"])
        tokens.append(Token(name=good["name"], token=good["token"], role=good["role"]))
    return tokens


def load(path: Path | str) -> Config:
    """Read and parse a config file; raise ConfigError naming every problem."""
    path = Path(path).absolute()
    text = read_text(path)
    cfg = parse(text, path)
    exposed = _exposed_secrets(text, path)
    if exposed:
        cfg = replace(cfg, warnings=(*cfg.warnings, exposed))
    return cfg


def _url_password(url: str) -> bool:
    try:
        return bool(urllib.parse.urlsplit(url).password)
    except ValueError:  # not a URL: a libpq keyword string has no password but password=
        return False


def _exposed_secrets(text: str, path: Path) -> str:
    """A warning when the file holds secrets written in it and every local user may read
    it (as ssh warns of a key file others can read); "" otherwise. Only the keys are
    named, never a value."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if not mode & 0o004:
        return ""
    raw = tomllib.loads(text)  # parse() has read it: valid
    auth = raw.get("auth")
    tokens = auth.get("tokens", []) if isinstance(auth, dict) else []
    named = [f"the token of {t.get('name')!r}" for t in tokens if "token" in t]
    if raw.get("http", {}).get("metrics_token"):
        named.append("[http] metrics_token")
    dsn = raw.get("database", {}).get("dsn", "")
    if isinstance(dsn, str) and ("password=" in dsn or _url_password(dsn)):
        named.append("the password in [database] dsn")
    webhooks = raw.get("notify", {}).get("webhooks", [])
    named += [f"the secret of webhook {w.get('url')!r}" for w in webhooks if "secret" in w]
    if not named:
        return ""
    return (
        f"{path}: every local user may read this file (mode {mode & 0o777:04o}), and it "
        f"holds secrets written in it ({', '.join(named)}): keep them in files named by "
        "token_file, metrics_token_file, dsn_file or secret_file (root-only, handed to the "
        "unit with LoadCredential=: see the README's Security), or make this file unreadable "
        f"to others (chmod o-r {path}) where the service does not read it as another user."
    )
