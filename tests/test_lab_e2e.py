"""End to end in the network lab: the real `outagemon run` with real ICMP in a namespace
where nftables makes chosen loopback addresses silent or lossy, asked over HTTP as the
phone menu would ask it.

The city: a core, 4 aggregation switches, 40 access switches, 80 entrance segments
without IP, 400 subscribers with routers (CPE) at their own 127.x addresses.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from outagemon import config
from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir
from tests.lanes import selected, side_by_side

WRITE = "lab-write-token-0123456789"
CONFIG = """
[daemon]
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = 1.0
timeout = 0.5
down_after = 3
up_after = 2
max_rate = 5000
[correlation]
window = 10
resolve_hold = 5
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "en"
restored_for = 600
[[auth.tokens]]
name = "lab"
token = "{write}"
role = "write"
"""
WARM_UP = 15.0  # seconds of clean history before a fault, as in steady operation
INTERVAL = 1.0  # [probe] interval above
# One daemon starts at a time (its embedded PostgreSQL's initdb is most of a start's work):
# scenarios run side by side (see SCENARIOS), their starts do not pile up on two cores.
STARTING = threading.Lock()


@dataclass
class LabDaemon:
    lab: Lab
    state: Path
    port: int
    city: citygen.City
    d: directory.Directory
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.state / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            self.lab.command(sys.executable, "-m", "outagemon", "run", "-c",
                             str(self.state / "outagemon.toml")),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        said = self.log()
        self.process.kill()  # not left running (a caller's cleanup may never see it)
        self.process.wait()
        raise AssertionError(f"the daemon never became ready:\n{said}")

    def warm_up(self, seconds: float = WARM_UP, interval: float = INTERVAL) -> float:
        """Wait until every probed target has `seconds` of clean history: as many answers
        as probe intervals in it, and one more (the scheduler spreads a round's probes,
        so the count per target is the average within one). The history starts with the
        first probe, seconds before /readyz says ready on a loaded machine (8 answers a
        target at load average 24), so a fixed sleep after readiness gave more history
        the slower the start. The seconds waited (a 15 s sleep before)."""
        targets = sum(1 for n in self.d.topology.nodes.values() if n.ip is not None)
        needed = (seconds / interval + 1) * targets
        started = time.monotonic()
        self.wait(f"{seconds:g} s of answers from each of {targets} targets",
                  lambda: self.answered() >= needed, within=4 * seconds + 30)  # fmt: skip
        return time.monotonic() - started

    def answered(self) -> float:
        """Probe results that were answers, from the daemon's /metrics."""
        _, text = self.get_text("/metrics")
        for line in text.splitlines():
            if line.startswith('outagemon_probe_results_total{result="answered"} '):
                return float(line.split()[-1])
        return 0.0

    def log(self) -> str:
        return (self.state / "daemon.log").read_text(errors="replace")[-4000:]

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Authorization": f"Bearer {WRITE}",
                                              "Content-Type": "application/json"})  # fmt: skip
        # The daemon listens inside the namespace: so must our socket be.
        with self.lab.entered():
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def get_text(self, path: str) -> tuple[int, str]:
        with (
            self.lab.entered(),
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r,
        ):
            return r.status, str(r.read().decode())

    def check(self, **params: str) -> dict[str, str]:
        status, body = self.get("/api/v1/check?" + urllib.parse.urlencode(params))
        assert status == 200, body
        return dict(body)

    def incidents(self, state: str = "open") -> list[dict[str, Any]]:
        status, body = self.get(f"/api/v1/incidents?state={state}")
        assert status == 200, body
        return list(body["incidents"])

    def wait(self, what: str, condition: Any, within: float = 40.0) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {within} s\n{self.log()}")

    def ips_behind(self, node: str) -> list[str]:
        """The node's address and those of everything it cuts off when it dies."""
        topo = self.d.topology
        nodes = [node, *topo.descendants(node)]
        return [ip for n in nodes if (ip := topo.nodes[n].ip) is not None]

    def account_under(self, node: str) -> str:
        below = {node, *self.d.topology.descendants(node)}
        return next(s.account for s in self.d.subscribers if s.serving in below)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


def small_daemon(lab: Lab, topology: str, subscribers: str, template: str) -> LabDaemon:
    """A daemon (not started yet) of a hand-written network: its topology file, its
    subscribers file and its config, a template of `state`, `port` and `write`."""
    state = short_tmp_dir()
    (state / "topology.yaml").write_text(topology)
    (state / "subscribers.csv").write_text(subscribers)
    port = free_port()
    (state / "outagemon.toml").write_text(template.format(state=state, port=port, write=WRITE))
    files = config.load(state / "outagemon.toml").topology
    d = directory.load(files.file, files.subscribers).directory
    return LabDaemon(lab, state, port, citygen.City(), d)


@contextlib.contextmanager
def city_daemon(lab: Lab) -> Iterator[LabDaemon]:
    state = short_tmp_dir()
    city = citygen.generate(aggregations=4, access_per_aggregation=10,
                            subscribers_per_access=10, entrances=2)  # fmt: skip
    topo, subs = city.write(state)
    port = free_port()
    (state / "outagemon.toml").write_text(CONFIG.format(state=state, port=port, write=WRITE))
    d = directory.load(topo, subs).directory
    daemon = LabDaemon(lab, state, port, city, d)
    try:
        with STARTING:
            daemon.start()
        daemon.warm_up()
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def an_aggregation_dies_and_comes_back(d: LabDaemon, lab: Lab) -> None:
    lab.down(*d.ips_behind("agg-2"))
    (inc,) = d.wait("one incident at agg-2", lambda: [
        i for i in d.incidents() if i["root_node"] == "agg-2"])  # fmt: skip
    assert len(d.incidents()) == 1, d.incidents()
    assert inc["subscribers"] == 100 and not inc["inferred"]
    for account in {s.account for s in d.d.subscribers if s.serving.startswith("seg-2-")}:
        answer = d.check(account=account)
        assert (answer["status"], answer["incident_id"]) == ("outage", inc["id"]), answer
    assert d.check(account=d.account_under("agg-3"))["status"] == "ok"
    lab.up(*d.ips_behind("agg-2"))
    d.wait("the incident resolves", lambda: not d.incidents())
    # Resolved incidents are read from the database, which the writer reaches a moment
    # after the open list changes (seconds on a loaded machine): wait for it there.
    resolved = d.wait("the resolved incident in the database", lambda: [
        i for i in d.incidents("resolved") if i["id"] == inc["id"]], within=20)  # fmt: skip
    assert len(resolved) == 1 and resolved[0]["state"] == "resolved"
    assert len(d.incidents("all")) == 1, "no child incidents on recovery"
    assert d.check(account=d.account_under("agg-2"))["status"] == "restored"


def a_crushed_entrance_cable(d: LabDaemon, lab: Lab) -> None:
    lab.down(*d.ips_behind("seg-1-3-2"))  # its routers only: the segment has no address
    (inc,) = d.wait("an inferred incident", d.incidents)
    assert inc["root_node"] == "seg-1-3-2" and inc["inferred"]
    assert d.check(account=d.account_under("seg-1-3-2"))["status"] == "outage"
    assert d.check(account=d.account_under("seg-1-3-1"))["status"] == "ok"


def one_router_switched_off(d: LabDaemon, lab: Lab) -> None:
    sub = next(s for s in d.d.subscribers if s.ip)
    lab.down(sub.ip or "")
    d.wait("cpe_down", lambda: d.check(account=sub.account)["status"] == "cpe_down")
    neighbour = next(s for s in d.d.subscribers
                     if s.serving == sub.serving and s.account != sub.account)  # fmt: skip
    assert d.check(account=neighbour.account)["status"] == "ok"
    assert d.incidents() == []


def the_monitors_own_uplink_goes_silent(d: LabDaemon, lab: Lab) -> None:
    lab.down("127.0.0.0/8")
    d.wait("blind", lambda: d.get("/readyz")[0] == 503)
    assert d.check(account=d.account_under("agg-1"))["status"] == "unknown"
    time.sleep(10)
    assert d.incidents() == []
    lab.clear()
    d.wait("seeing again", lambda: d.get("/readyz")[0] == 200)
    time.sleep(10)
    assert d.incidents() == [], "no burst of false incidents on recovery"


def ten_percent_loss_for_minutes(d: LabDaemon, lab: Lab) -> None:
    lab.loss(10, "127.0.0.0/8")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        assert d.incidents() == [], d.incidents()
        time.sleep(5)
    assert d.incidents("all") == []


def planned_works_then_the_switch_goes_down(d: LabDaemon, lab: Lab) -> None:
    now = time.time()
    ends = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 3600))
    starts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    status, body = d.request("POST", "/api/v1/maintenance",
                             {"node": "sw-3-4", "starts_at": starts, "ends_at": ends,
                              "reason": "firmware upgrade"})  # fmt: skip
    assert status == 201, body
    lab.down(*d.ips_behind("sw-3-4"))
    (inc,) = d.wait("a maintenance incident", d.incidents)
    assert inc["kind"] == "maintenance" and inc["root_node"] == "sw-3-4"
    answer = d.check(account=d.account_under("sw-3-4"))
    assert answer["status"] == "maintenance" and answer["incident_id"] == inc["id"]
    assert "Planned works" in answer["message"] and "end" in answer["message"]


def sigkill_during_an_incident(d: LabDaemon, lab: Lab) -> None:
    lab.down(*d.ips_behind("agg-4"))
    (inc,) = d.wait("an incident", d.incidents)
    time.sleep(1)  # let its nodes reach the database
    assert d.process is not None
    d.process.kill()
    d.process.wait()
    d.start()
    d.wait("the same incident after the restart", lambda: [
        i for i in d.incidents() if i["root_node"] == "agg-4"], within=30)  # fmt: skip
    time.sleep(8)
    again = d.incidents("all")
    assert [i["id"] for i in again] == [inc["id"]], again
    assert again[0]["state"] == "open"
    assert d.stop() == 0


# -- callers as sensors (issue 18) ------------------------------------------------------

SENTENCE = "We have several calls from your building and are checking."
UNMANAGED = ("seg-1-3-2", "seg-2-4-1")  # entrances whose routers are not ours: no address


@contextlib.contextmanager
def unmanaged_daemon(lab: Lab) -> Iterator[LabDaemon]:
    """A city where two entrances' subscribers have routers the monitor cannot probe."""
    state = short_tmp_dir()
    city = citygen.generate(aggregations=2, access_per_aggregation=5,
                            subscribers_per_access=24, entrances=2)  # fmt: skip
    topo_path, _ = city.write(state)
    d = directory.load(topo_path, None).directory
    flats = {n["id"]: n["serves"][0] for n in city.nodes if n["id"] in UNMANAGED}  # type: ignore[index]
    keep = []
    for account, phones, address, flat, ip in city.rows:
        for served in flats.values():
            lo, hi = (int(x) for x in served["flats"].split("-"))
            if served["address"] == address and lo <= int(flat) <= hi:
                ip = ""
        keep.append((account, phones, address, flat, ip))
    city.rows = keep
    topo, subs = city.write(state)
    port = free_port()
    config = CONFIG.format(state=state, port=port, write=WRITE)
    (state / "outagemon.toml").write_text(config + f'[callers]\nsentence = "{SENTENCE}"\n')
    d = directory.load(topo, subs).directory
    for seg in UNMANAGED:
        behind = [s for s in d.subscribers if s.serving == seg]
        assert len(behind) >= 6 and not any(s.ip for s in behind), seg
    daemon = LabDaemon(lab, state, port, city, d)
    try:
        with STARTING:
            daemon.start()
        daemon.warm_up()
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def callers_of_an_unprobed_entrance(d: LabDaemon, lab: Lab) -> None:
    """The entrance's cable is crushed: no probe can show it (its routers have no address
    the monitor may ping), so nftables has nothing to cut; its callers show it."""
    confirmed_seg, dismissed_seg = UNMANAGED
    for seg in UNMANAGED:
        callers = [s for s in d.d.subscribers if s.serving == seg]
        for s in callers[:5]:  # five different subscribers within a minute
            answer = d.check(phone=s.phones[0]) if s.phones else d.check(account=s.account)
            assert answer["status"] == "ok", answer  # the probes see nothing wrong
    found = d.wait("two suspected incidents", lambda: sorted(
        (i for i in d.incidents() if i["kind"] == "suspected"),
        key=lambda i: i["root_node"]) if len(d.incidents()) == 2 else None)  # fmt: skip
    by_root = {i["root_node"]: i for i in found}
    assert set(by_root) == set(UNMANAGED), found
    sus = by_root[confirmed_seg]
    assert sus["raised_by"] == "calls" and sus["callers"] == 5
    assert sum(sus["calls_per_minute"]) == 5
    # Not an outage to callers until confirmed: the sixth hears the configured sentence.
    sixth = [s for s in d.d.subscribers if s.serving == confirmed_seg][5]
    answer = d.check(account=sixth.account)
    assert answer["status"] == "ok" and answer["incident_id"] == "", answer
    assert answer["message"] == SENTENCE

    # It survives a restart, with its id.
    time.sleep(1)
    assert d.process is not None
    d.process.kill()
    d.process.wait()
    d.start()
    again = d.wait("the suspected incident after the restart", lambda: [
        i for i in d.incidents() if i["id"] == sus["id"]], within=30)  # fmt: skip
    assert again[0]["kind"] == "suspected" and again[0]["root_node"] == confirmed_seg

    # An engineer confirms it: an outage with the same id; the sixth caller hears it.
    status, body = d.request("POST", f"/api/v1/incidents/{sus['id']}", {"confirm": True})
    assert status == 200 and body["kind"] == "outage" and body["id"] == sus["id"], body
    answer = d.check(account=sixth.account)
    assert (answer["status"], answer["incident_id"]) == ("outage", sus["id"]), answer
    assert answer["root_node"] == confirmed_seg
    neighbour = d.check(account=d.account_under("seg-1-3-1"))
    assert neighbour["status"] == "ok", neighbour

    # The other is dismissed: its callers hear ok, without the sentence.
    other = by_root[dismissed_seg]
    status, body = d.request("POST", f"/api/v1/incidents/{other['id']}", {"dismiss": True})
    assert status == 200, body
    sixth_other = [s for s in d.d.subscribers if s.serving == dismissed_seg][5]
    answer = d.check(account=sixth_other.account)
    assert answer["status"] == "ok" and answer["message"] != SENTENCE, answer
    status, body = d.request("POST", f"/api/v1/incidents/{other['id']}", {"confirm": True})
    assert status == 409, body

    # Repaired: callers hear restored; the database keeps both.
    status, body = d.request("POST", f"/api/v1/incidents/{sus['id']}", {"resolve": True})
    assert status == 200, body
    assert d.check(account=sixth.account)["status"] == "restored"
    assert d.incidents() == []

    def both_stored() -> dict[str, Any] | None:
        found = {i["id"]: i for i in d.incidents("all")}
        ids = (sus["id"], other["id"])
        done = all(i in found and found[i]["state"] == "resolved" for i in ids)
        return found if done else None

    stored = d.wait("both written to the database", both_stored, within=20)
    assert stored[sus["id"]]["kind"] == "outage" and stored[sus["id"]]["state"] == "resolved"
    assert stored[other["id"]]["kind"] == "suspected"
    status, metrics_text = d.get_text("/metrics")  # counted since the restart
    for outcome in ("confirmed", "dismissed", "repaired"):
        assert f'outagemon_suspicions_total{{outcome="{outcome}"}} 1' in metrics_text, outcome


# -- the tests: every scenario has its own daemon in its own namespace -------------------
# Each scenario waits minutes of real time, most of it for its daemon to start and build a
# clean history (WARM_UP) and for the faults to play out, with little work meanwhile; so the
# selected ones run side by side, LANES at a time, from one module fixture (as in
# tests/test_lab_truth.py), the longest first, and each test waits for its own and fails
# with what it saw and its daemon's log.

LANES = 3  # daemons at once: each is a tenth of a core; more would crowd a 2-core machine
Futures = dict[str, concurrent.futures.Future[None]]
SCENARIOS: dict[str, tuple[Callable[[Lab], contextlib.AbstractContextManager[LabDaemon]],
                           Callable[[LabDaemon, Lab], None]]] = {
    # test name: (its daemon, its scenario); in the order they start, the longest first
    "test_ten_percent_loss_everywhere_for_minutes_opens_nothing":
        (city_daemon, ten_percent_loss_for_minutes),
    "test_the_monitors_own_uplink_goes_silent": (city_daemon, the_monitors_own_uplink_goes_silent),
    "test_sigkill_during_an_incident_then_restart_keeps_its_id":
        (city_daemon, sigkill_during_an_incident),
    "test_callers_of_an_unprobed_entrance_raise_a_suspected_incident":
        (unmanaged_daemon, callers_of_an_unprobed_entrance),
    "test_an_aggregation_dies_and_comes_back": (city_daemon, an_aggregation_dies_and_comes_back),
    "test_a_crushed_entrance_cable_while_its_switch_answers":
        (city_daemon, a_crushed_entrance_cable),
    "test_one_router_switched_off_is_cpe_down_for_that_subscriber_only":
        (city_daemon, one_router_switched_off),
    "test_planned_works_then_the_switch_goes_down_inside_them":
        (city_daemon, planned_works_then_the_switch_goes_down),
}  # fmt: skip


def _run_in_lab(name: str) -> None:
    daemon, scenario = SCENARIOS[name]
    with Lab() as lab, daemon(lab) as d:
        try:
            scenario(d, lab)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon log ---\n{d.log()}") from None


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest) -> Iterator[Futures]:
    """The scenarios the selected tests need, started LANES at a time."""
    with side_by_side(_run_in_lab, selected(request, SCENARIOS), LANES) as futures:
        yield futures


def _result(scenarios: Futures, name: str) -> None:
    scenarios[name].result(timeout=900)


def test_an_aggregation_dies_and_comes_back(scenarios: Futures) -> None:
    _result(scenarios, "test_an_aggregation_dies_and_comes_back")


def test_a_crushed_entrance_cable_while_its_switch_answers(scenarios: Futures) -> None:
    _result(scenarios, "test_a_crushed_entrance_cable_while_its_switch_answers")


def test_one_router_switched_off_is_cpe_down_for_that_subscriber_only(scenarios: Futures) -> None:
    _result(scenarios, "test_one_router_switched_off_is_cpe_down_for_that_subscriber_only")


def test_the_monitors_own_uplink_goes_silent(scenarios: Futures) -> None:
    _result(scenarios, "test_the_monitors_own_uplink_goes_silent")


def test_ten_percent_loss_everywhere_for_minutes_opens_nothing(scenarios: Futures) -> None:
    _result(scenarios, "test_ten_percent_loss_everywhere_for_minutes_opens_nothing")


def test_planned_works_then_the_switch_goes_down_inside_them(scenarios: Futures) -> None:
    _result(scenarios, "test_planned_works_then_the_switch_goes_down_inside_them")


def test_sigkill_during_an_incident_then_restart_keeps_its_id(scenarios: Futures) -> None:
    _result(scenarios, "test_sigkill_during_an_incident_then_restart_keeps_its_id")


def test_callers_of_an_unprobed_entrance_raise_a_suspected_incident(scenarios: Futures) -> None:
    """The entrance's cable is crushed: no probe can show it, its callers show it."""
    _result(scenarios, "test_callers_of_an_unprobed_entrance_raise_a_suspected_incident")
