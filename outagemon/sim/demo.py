"""`outagemon demo`: the whole product on a simulated city, with no root and no network.

The real daemon runs (embedded PostgreSQL, correlator, HTTP interface, incident page);
only the ICMP engine is replaced by a simulated network that replays a script of faults
every five minutes: an aggregation switch dies, an entrance cable is crushed, a router is
switched off, planned works take a switch down, a link flaps; then all is repaired.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outagemon import logs
from outagemon.config import ProbeConfig
from outagemon.core.incidents import Maintenance
from outagemon.http.runtime import Runtime
from outagemon.monitor import Monitor
from outagemon.probing.icmp import TICK
from outagemon.sim import citygen
from outagemon.sim.simnet import SimNet

log = logs.get("outagemon.daemon")  # the demo's steps have always been logged as the daemon's

LOOP = 300.0  # seconds the script takes before it starts again
CONFIG = """
[daemon]
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = 5
timeout = 1
[correlation]
window = 20
resolve_hold = 30
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "{language}"
restored_for = 600
[[auth.tokens]]
name = "demo-noc"
token = "{write}"
role = "write"
[[auth.tokens]]
name = "demo-ivr"
token = "{read}"
role = "read"
"""


@dataclass(frozen=True)
class Tokens:
    """Made afresh for every run: a fixed, published token would let any web page the
    demo's user visits write to it (DNS rebinding, or a form posted to 127.0.0.1)."""

    write: str
    read: str

    @classmethod
    def new(cls) -> Tokens:
        return cls(write=secrets.token_hex(16), read=secrets.token_hex(16))


@dataclass(frozen=True)
class Step:
    at: float  # seconds into the loop
    action: str  # fail, repair, works, repair_all
    node: str
    note: str


def script(city: citygen.City) -> list[Step]:
    router = "cpe:" + city.rows[len(city.rows) // 2][0]
    steps = [
        Step(10, "works", "sw-4-5", "planned works on sw-4-5 for the next four minutes"),
        Step(20, "fail", "agg-2", "aggregation switch agg-2 dies: 10 buildings cut off"),
        Step(35, "fail", "seg-1-3-2", "the cable to entrance 2 of sw-1-3's building is crushed"),
        Step(40, "fail", router, f"a subscriber switches their router off ({router})"),
        Step(50, "fail", "sw-4-5", "sw-4-5 goes down inside its planned works"),
    ]
    for k in range(6):  # a link that flaps: down 15 s, up 15 s
        steps.append(Step(70 + 30 * k, "fail", "sw-3-7", "sw-3-7 flaps" if k == 0 else ""))
        steps.append(Step(85 + 30 * k, "repair", "sw-3-7", ""))
    steps += [
        Step(150, "repair", "agg-2", "agg-2 is repaired"),
        Step(200, "repair", "seg-1-3-2", "the entrance cable is spliced"),
        Step(250, "repair", "sw-4-5", "the planned works end"),
        Step(280, "repair_all", "", "everything repaired; the script starts again"),
    ]
    return sorted(steps, key=lambda s: s.at)


class Scenario:
    """Applies the script's steps to the simulated network as the clock reaches them."""

    def __init__(self, city: citygen.City) -> None:
        self.steps = script(city)
        self.started = 0.0
        self.done = 0
        self.loop = 0

    def apply(self, net: SimNet, monitor: Monitor, now: float) -> list[str]:
        if not self.started:
            self.started = now
        said: list[str] = []
        while True:
            if self.done == len(self.steps):
                if now - self.started < LOOP:
                    return said
                self.started += LOOP
                self.done = 0
                self.loop += 1
            step = self.steps[self.done]
            if now - self.started < step.at:
                return said
            self.done += 1
            if step.action == "fail":
                net.fail(step.node)
            elif step.action == "repair":
                net.repair(step.node)
            elif step.action == "repair_all":
                net.repair(*net.broken)
            elif step.action == "works":
                window = Maintenance(monitor.next_maintenance, step.node, now, now + 240,
                                     "demo: замена коммутатора")  # fmt: skip
                monitor.next_maintenance += 1
                monitor.add_maintenance(window, "demo")
            if step.note:
                said.append(step.note)


RATE_EVERY = 2.0  # seconds over which the simulated probe rate is measured


class SimulatedSource:
    """The daemon's probe source in the demo: a simulated network replaying the script
    (no ICMP, no root); it ignores reloads."""

    follows_reload = False

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def start(self, monitor: Monitor, runtime: Runtime,
              targets: Mapping[str, str]) -> dict[str, Coroutine[Any, Any, None]]:  # fmt: skip
        """Half an hour of clean history, in a moment; then the script, in real time."""
        cfg = runtime.config
        now = time.time()
        net = SimNet(runtime.directory.topology, monitor.correlator,
                     interval=cfg.probe.interval, timeout=cfg.probe.timeout,
                     start=now - 1800)  # fmt: skip
        net.on_event = monitor.handle
        net.run_until(now)
        monitor.first_round_done = True
        runtime.not_ready = None
        return {"simulate": self._simulate(net, monitor, runtime)}

    def plan(self, targets: Mapping[str, str], probe: ProbeConfig) -> None:
        return None

    def retarget(self, targets: Mapping[str, str], probe: ProbeConfig,
                 plan: object = None) -> list[object]:  # fmt: skip
        return []

    def close(self) -> None:
        pass

    async def _simulate(self, net: SimNet, monitor: Monitor, runtime: Runtime) -> None:
        measured, probes_before = time.time(), net.probes
        while True:
            now = time.time()
            for note in self.scenario.apply(net, monitor, now):
                log.info("demo.step", what=note)
            net.run_until(now)
            for node in monitor.tick():
                net.probe(node)
            if now - measured >= RATE_EVERY:  # the page's "probing N probes/s", as ICMP's
                runtime.probe_rate = (net.probes - probes_before) / (now - measured)
                measured, probes_before = now, net.probes
            await asyncio.sleep(TICK)


def prepare(port: int, language: str, tokens: Tokens) -> tuple[Path, Path, citygen.City]:
    """A state directory with a config, a generated city and its subscribers."""
    state = Path(tempfile.mkdtemp(prefix="outagemon-demo-"))
    state.chmod(0o755)  # the embedded database's user must be able to enter it
    city = citygen.generate(aggregations=4, access_per_aggregation=10,
                            subscribers_per_access=10, entrances=2)  # fmt: skip
    city.write(state)
    config = state / "outagemon.toml"
    config.write_text(CONFIG.format(state=state, port=port, language=language,
                                    write=tokens.write, read=tokens.read))  # fmt: skip
    return state, config, city


def port_taken(port: int) -> bool:
    """Whether 127.0.0.1:port is held by another listener (asked before any banner)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A port of 127.0.0.1 that no one listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable() -> str:
    """The outagemon command running now, as a path a user can paste; else the venv's."""
    running = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if running is not None and running.name == "outagemon" and running.is_file():
        return str(running)
    return ".venv/bin/outagemon"


def banner(port: int, city: citygen.City, tokens: Tokens, config: Path) -> str:
    base = f"http://127.0.0.1:{port}"
    command = executable()
    today = datetime.date.today()
    tomorrow = today + datetime.timedelta(days=1)
    inside = next(r for r in city.rows if r[2] == _address_of(city, "sw-2-4"))
    entrance = next(r for r in city.rows if r[2] == _address_of(city, "sw-1-3") and int(r[3]) > 36)
    outside = next(r for r in city.rows if r[2] == _address_of(city, "sw-3-2"))

    def curl(**params: str) -> str:
        query = urllib.parse.urlencode(params)
        return f"curl -s -H 'Authorization: Bearer {tokens.read}' '{base}/api/v1/check?{query}'"

    return "\n".join([
        "outagemon demo: a simulated city (4 aggregation switches, 40 access switches,",
        f"{len(city.rows)} subscribers); faults replay every {LOOP / 60:.0f} minutes.",
        "",
        f"  Incident page:      {base}/",
        f"  Inside an outage (from about 30 s):\n    {curl(phone=inside[1])}",
        f"  Behind a crushed entrance cable (from about 45 s):\n    {curl(account=entrance[0])}",
        f"  Outside any outage:\n    {curl(address=outside[2], flat=outside[3])}",
        f"  or:  OUTAGEMON_TOKEN={tokens.read} {command} lookup --phone '{inside[1]}' --url {base}",
        f"  Write token for the page's ETA and note form (new every run): {tokens.write}",
        f"  Its config file (removed on Ctrl-C): {config}",
        "  Its billing CSV of today (`outagemon report downtime`'s, served by the demo):",
        f"    curl -s -H 'Authorization: Bearer {tokens.read}' "
        f"'{base}/api/v1/reports/downtime?from={today}&to={tomorrow}'",
        f"  or:  {command} report downtime -c {config} --from {today} --to {tomorrow}",
        "",
        "Ctrl-C stops it and removes its files.",
        "",
    ])  # fmt: skip


def _address_of(city: citygen.City, switch: str) -> str:
    for node in city.nodes:
        if node["id"] == switch:
            return str(node["name"]).split(", ", 1)[1]
    raise KeyError(switch)


def main(port: int, language: str) -> int:
    from outagemon import config as config_mod
    from outagemon import daemon, logs
    from outagemon.core import directory, messages
    from outagemon.core.addresses import PhonePlan
    from outagemon.errors import OutagemonError

    if port == 0:  # any free port; the banner and the config name the one it got
        port = free_port()
    if port_taken(port):
        other = port + 1 if port < 65535 else 0
        print(f"outagemon demo: port {port} is in use: try outagemon demo --port {other}",
              file=sys.stderr)  # fmt: skip
        return 1
    tokens = Tokens.new()
    state, config_path, city = prepare(port, language, tokens)
    try:
        cfg = config_mod.load(config_path)
        print(banner(port, city, tokens, config_path), flush=True)
        logs.setup()
        loaded = directory.load(cfg.topology.file, cfg.topology.subscribers,
                                PhonePlan.of(cfg.topology.phones))  # fmt: skip
        texts = messages.load(cfg.messages.language)
        d = daemon.Daemon(cfg, loaded, texts, source=SimulatedSource(Scenario(city)))
        try:
            return asyncio.run(d.run())
        except OutagemonError as e:
            print(f"outagemon demo: {e}", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(state, ignore_errors=True)
