"""The TOML configuration file, read into frozen dataclasses.

Every problem is collected and reported at once, one sentence each, naming the file and
the key, so an operator fixes a broken file in one pass rather than one error per restart.
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outagemon.errors import ConfigError, read_text


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/outagemon")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str = ""
    write_queue: int = 100_000


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    max_streams: int = 100  # live-page streams (/events) open at once; more get 503


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
class TopologyConfig:
    file: Path = Path("topology.yaml")
    subscribers: Path | None = None


@dataclass(frozen=True, slots=True)
class VantageConfig:
    anchors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MessagesConfig:
    language: str = "ru"
    restored_for: float = 3600.0
    file: Path | None = None  # the operator's own texts (TOML), over the built-in ones


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    token: str = field(repr=False)  # never printed, never logged
    role: str


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
    tokens: tuple[Token, ...] = ()


# A check returns None when the value is good, else the end of a sentence: "must be ...".
Check = Callable[[Any], str | None]


def _seconds(positive: bool) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "must be a number of seconds"
        if positive and v <= 0:
            return "must be a positive number of seconds"
        if v < 0:
            return "must not be negative"
        return None

    return check


def _integer(minimum: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be a whole number"
        if v < minimum:
            return f"must be at least {minimum}"
        return None

    return check


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _nonempty_string(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    return None if v.strip() else "must not be empty"


def _ratio(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "must be a number"
    return None if 0 < v <= 1 else "must be more than 0 and at most 1"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, str) and v in choices:
            return None
        return "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def _addresses(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of IP addresses"
    for item in v:
        if not isinstance(item, str):
            return "must be a list of IP addresses as strings"
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return f"must list IP addresses, and {item!r} is not one"
    return None


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
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
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


# section -> key -> check; the dataclass defaults are the defaults.
SCHEMA: dict[str, dict[str, Check]] = {
    "daemon": {"state_dir": _nonempty_string},
    "database": {"dsn": _string, "write_queue": _integer(1)},
    "http": {"listen": _listen, "max_streams": _integer(1)},
    "probe": {
        "interval": _seconds(positive=True),
        "timeout": _seconds(positive=True),
        "down_after": _integer(1),
        "up_after": _integer(1),
        "max_rate": _integer(1),
    },
    "correlation": {
        "window": _seconds(positive=True),
        "infer_min_children": _integer(1),
        "infer_ratio": _ratio,
        "resolve_hold": _seconds(positive=False),
    },
    "topology": {"file": _nonempty_string, "subscribers": _string},
    "vantage": {"anchors": _addresses},
    "messages": {
        "language": _one_of("ru", "en"),
        "restored_for": _seconds(positive=False),
        "file": _nonempty_string,
    },
}
TOKEN_SCHEMA: dict[str, Check] = {
    "name": _nonempty_string,
    "token": _nonempty_string,
    "role": _one_of("read", "write"),
}


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
        else:
            problems.append(f"{where}{key} {reason}, not {value!r}.")
    return good


def parse(text: str, path: Path) -> Config:
    """Parse the text of a config file; raise ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}."]) from None
    problems: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    tokens: list[Token] = []
    for name, table in raw.items():
        if name == "auth":
            tokens = _tokens(table, problems)
            continue
        if name not in SCHEMA:
            problems.append(_unknown("", name, [*SCHEMA, "auth"]))
            continue
        if not isinstance(table, dict):
            problems.append(f"[{name}] must be a table of keys, not {table!r}.")
            continue
        sections[name] = _checked(table, SCHEMA[name], f"[{name}] ", problems)

    base = path.parent
    probe = ProbeConfig(**sections.get("probe", {}))
    if probe.timeout > probe.interval:
        problems.append(
            f"[probe] timeout ({probe.timeout} s) must not be longer than "
            f"[probe] interval ({probe.interval} s)."
        )
    http_raw = sections.get("http", {})
    http = HttpConfig(max_streams=http_raw.get("max_streams", HttpConfig().max_streams))
    if "listen" in http_raw:
        host, port = parse_listen(http_raw["listen"])
        http = HttpConfig(http_raw["listen"], host, port, http.max_streams)
    daemon_raw = sections.get("daemon", {})
    daemon = (
        DaemonConfig((base / daemon_raw["state_dir"]).resolve()) if daemon_raw else DaemonConfig()
    )
    topo_raw = sections.get("topology", {})
    subscribers = topo_raw.get("subscribers", "")
    topology = TopologyConfig(
        file=(base / topo_raw.get("file", "topology.yaml")).resolve(),
        subscribers=(base / subscribers).resolve() if subscribers else None,
    )
    anchors = tuple(sections.get("vantage", {}).get("anchors", ()))
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return Config(
        path=path,
        daemon=daemon,
        database=DatabaseConfig(**sections.get("database", {})),
        http=http,
        probe=probe,
        correlation=CorrelationConfig(**sections.get("correlation", {})),
        topology=topology,
        vantage=VantageConfig(anchors=anchors),
        messages=_messages(sections.get("messages", {}), base),
        tokens=tuple(tokens),
    )


def _messages(raw: dict[str, Any], base: Path) -> MessagesConfig:
    file = raw.get("file")
    return MessagesConfig(
        language=raw.get("language", "ru"),
        restored_for=raw.get("restored_for", 3600.0),
        file=(base / file).resolve() if file else None,
    )


def _tokens(auth: Any, problems: list[str]) -> list[Token]:
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
        missing = [k for k in TOKEN_SCHEMA if k not in entry]
        for key in missing:
            problems.append(f"{where}{key} is required.")
        if len(good) != len(TOKEN_SCHEMA):
            continue
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
    return parse(read_text(path), path)
