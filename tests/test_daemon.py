"""The daemon as a process: starts on the embedded database, serves, reloads, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from outagemon.sim import citygen
from tests.conftest import free_port, short_tmp_dir

GOOD = """
[daemon]
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = 10
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
"""


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    config: Path
    state: Path
    log: Path
    port: int
    notify: socket.socket

    def get(self, path: str) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_for_log(self, event: str, timeout: float = 10) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("event") == event:
                        return dict(record)
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} in the log:\n{self.log.read_text()}")

    def messages(self, timeout: float = 1.0) -> list[str]:
        got: list[str] = []
        self.notify.settimeout(timeout)
        try:
            while True:
                got.append(self.notify.recv(4096).decode())
                self.notify.settimeout(0.05)
        except TimeoutError:
            return got


def postgres_pids(state: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"postgres" in cmd and str(state).encode() in cmd:
                pids.append(int(entry.name))
    return pids


def start(state: Path, port: int, notify_path: Path) -> Proc:
    if not (state / "topology.yaml").exists():
        citygen.generate(aggregations=2, access_per_aggregation=3).write(state)
    config = state / "outagemon.toml"
    config.write_text(GOOD.format(state=state, port=port))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = state / "daemon.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "outagemon", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    proc = Proc(process, config, state, log, port, notify)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if proc.get("/healthz")[0] == 200:
                return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or too busy starting to answer within the timeout
        time.sleep(0.1)
    raise AssertionError(f"the daemon did not answer /healthz:\n{log.read_text()}")


@pytest.fixture
def daemon() -> Iterator[Proc]:
    state = short_tmp_dir()
    proc = start(state, free_port(), state / "notify.sock")
    yield proc
    if proc.process.poll() is None:
        proc.process.kill()
        proc.process.wait()
    proc.notify.close()


def test_start_serve_and_stop_within_5_seconds_leaving_no_postgres(daemon: Proc) -> None:
    status, body = daemon.get("/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = daemon.get("/readyz")
    assert status == 503 and isinstance(body["reason"], str) and body["reason"]
    # READY=1 comes once the database (started in the background) is taken up: read the
    # socket meanwhile, as systemd does (its queue holds 10 datagrams: the watchdog's pings
    # would fill it, and a message to a full socket is dropped).
    messages: list[str] = []
    deadline = time.monotonic() + 60
    while "READY=1" not in messages and time.monotonic() < deadline:
        messages += daemon.messages(timeout=0.5)
    assert "READY=1" in messages
    assert "WATCHDOG=1" in messages
    daemon.wait_for_log("daemon.restored", timeout=1)
    assert postgres_pids(daemon.state), "the embedded server should be running"

    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert "STOPPING=1" in daemon.messages()
    assert postgres_pids(daemon.state) == []


def test_sighup_with_a_broken_config_keeps_the_old_one_and_says_why(daemon: Proc) -> None:
    daemon.config.write_text("[probe]\ninterval = -3\n")
    daemon.process.send_signal(signal.SIGHUP)
    record = daemon.wait_for_log("config.reload_refused")
    problems = record["problems"]
    assert isinstance(problems, list)
    assert any("[probe] interval must be a positive number" in p for p in problems)
    assert daemon.get("/healthz")[0] == 200
    assert daemon.process.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=2) as r:
        text = r.read().decode()
    assert 'outagemon_config_reloads_total{outcome="refused"} 1' in text
    assert "outagemon_topology_nodes " in text
    assert 'outagemon_probe_packets_total{kind="malformed"}' in text, "the engine's counts"


def metric(proc: Proc, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_sighup_with_a_good_config_applies_it(daemon: Proc) -> None:
    text = GOOD.format(state=daemon.state, port=daemon.port)
    daemon.config.write_text(text.replace("interval = 10", "interval = 10\ndown_after = 5"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("config.reloaded")
    assert daemon.get("/healthz")[0] == 200


def test_sighup_with_a_broken_topology_keeps_the_running_one(daemon: Proc) -> None:
    daemon.wait_for_log("inventory.saved")
    nodes = metric(daemon, "outagemon_topology_nodes")
    assert nodes > 0
    topo = daemon.state / "topology.yaml"
    topo.write_text(topo.read_text() + "- {id: core-1, kind: core}\n")
    daemon.process.send_signal(signal.SIGHUP)
    record = daemon.wait_for_log("config.reload_refused")
    assert "duplicate id 'core-1'" in str(record["problems"])
    assert metric(daemon, "outagemon_topology_nodes") == nodes


def test_sighup_with_a_changed_topology_loads_and_stores_it(daemon: Proc) -> None:
    daemon.wait_for_log("inventory.saved")
    citygen.generate(aggregations=3, access_per_aggregation=3).write(daemon.state)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("config.reloaded")
    assert (
        metric(daemon, "outagemon_topology_nodes")
        == len(
            [
                line
                for line in (daemon.state / "topology.yaml").read_text().splitlines()
                if line.startswith("- id:")
            ]
        )
        + 3 * 3 * 10
    )  # plus one cpe node a subscriber


def test_after_sigkill_the_embedded_server_stops_and_a_restart_works(daemon: Proc) -> None:
    daemon.process.kill()
    daemon.process.wait()
    deadline = time.monotonic() + 10
    while postgres_pids(daemon.state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert postgres_pids(daemon.state) == [], "postgres outlived its daemon"
    daemon.notify.close()
    again = start(daemon.state, daemon.port, daemon.state / "notify2.sock")
    try:
        assert again.get("/healthz")[0] == 200
    finally:
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=5) == 0
        again.notify.close()
