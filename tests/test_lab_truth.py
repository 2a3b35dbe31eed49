"""Every caller hears the truth (issue 11), end to end in the network lab.

The real `outagemon run`, real ICMP in a namespace where nftables makes chosen loopback
addresses silent or lossy, asked over real HTTP as the phone menu asks. The settings are
the issue's: interval 1 s, timeout 0.5 s, down_after 3, up_after 2, resolve_hold 3 s,
restored_for 3600 s, and an anchor outside the topology. The city is the lab's usual one
(a core, 4 aggregations, 40 access switches, 80 entrances without IP, 400 routers) with
one access switch dual-homed to agg-1 and agg-2.

The expectations come from the contract and the issue, not from the code: a caller is in
an outage only when the node that serves them is down or cut off (every path to a root
broken); planned works answer with their end as `eta` (or an engineer's later one);
blindness leaves no evidence behind; one fault is one incident; a flap's incident ends
once the node has been stable for the flap detector's look-back, plus resolve_hold.

Each scenario needs minutes of real time, so all of them run at once, each with its own
daemon in its own namespace, from one module fixture; a test waits for its scenario and
fails with what the scenario saw.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir
from tests.lanes import selected, side_by_side
from tests.test_lab_e2e import WRITE, LabDaemon

ANCHOR = "127.0.0.9"  # answers in the lab; no topology node has it
DUAL = "sw-1-10"  # the access switch with two uplinks
UPLINKS = ("agg-1", "agg-2")
WORKS = "sw-3-4"
FLAPPER = "sw-4-7"
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
resolve_hold = 3
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[vantage]
anchors = ["{anchor}"]
[messages]
language = "en"
restored_for = 3600
[[auth.tokens]]
name = "lab"
token = "{write}"
role = "write"
"""
INTERVAL, UP_AFTER, RESOLVE_HOLD = 1.0, 2, 3.0
WARM_UP = 15.0  # seconds of clean history before the first fault
# Down/up seconds of the flapping switch: 4 to 15 s each way, as links flap.
FLAPS = [(6.0, 5.0), (4.0, 9.0), (12.0, 4.0), (5.0, 6.0), (15.0, 5.0), (4.0, 7.0)]
SOAK = 90.0  # see test_a_lossy_network_after_blindness_opens_nothing
# The flap detector looks back over 21 probe intervals (Nagios's 21 checks): a node
# stable that long is no longer flapping (the README's rules for /check).
LOOK_BACK = 21 * INTERVAL


def lab_city() -> citygen.City:
    city = citygen.generate(aggregations=4, access_per_aggregation=10,
                            subscribers_per_access=10, entrances=2)  # fmt: skip
    for node in city.nodes:
        if node["id"] == DUAL:
            node["parents"] = list(UPLINKS)
    return city


# -- one daemon per scenario -----------------------------------------------------------


@dataclass
class Run:
    """A scenario's daemon, and what it saw for the tests to judge."""

    d: LabDaemon
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def topo(self) -> Any:
        return self.d.d.topology

    def ips(self, nodes: set[str]) -> list[str]:
        """The addresses that fall silent when these nodes die: theirs and those of every
        node cut off behind them (every path to the core broken), no others."""
        cut = self.topo.cut_off(nodes)
        return sorted(ip for n in cut if (ip := self.topo.nodes[n].ip) is not None)

    def check_text(self, **params: str) -> list[str]:
        """The format=text answer, split at its bars."""
        query = urllib.parse.urlencode({**params, "format": "text"})
        req = urllib.request.Request(f"http://127.0.0.1:{self.d.port}/api/v1/check?{query}",
                                     headers={"Authorization": f"Bearer {WRITE}"})  # fmt: skip
        with self.d.lab.entered(), urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
            return list(r.read().decode().rstrip("\n").split("|"))

    def open_incidents(self, root: str | None = None) -> list[dict[str, Any]]:
        return [i for i in self.d.incidents() if root is None or i["root_node"] == root]

    def during(self, seconds: float, probe: Callable[[], None], every: float = 0.5) -> None:
        """Call `probe` (which asserts) again and again for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            probe()
            time.sleep(every)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def start_run(lab: Lab) -> Run:
    state = short_tmp_dir()
    city = lab_city()
    topo, subs = city.write(state)
    port = free_port()
    (state / "outagemon.toml").write_text(
        CONFIG.format(state=state, port=port, write=WRITE, anchor=ANCHOR)
    )
    d = LabDaemon(lab, state, port, city, directory.load(topo, subs).directory)
    d.start()
    d.warm_up(WARM_UP, INTERVAL)
    return Run(d)


# -- the scenarios (each runs in its own thread, with its own daemon and lab) ----------


def redundant_uplinks(run: Run) -> None:
    d = run.d
    dual = d.account_under(DUAL)
    for agg in UPLINKS:
        single = next(s.account for s in d.d.subscribers
                      if s.serving.startswith(f"seg-{agg[-1]}-1-"))  # fmt: skip
        d.lab.down(*run.ips({agg}))
        (inc,) = d.wait(f"{agg}'s incident", lambda a=agg: run.open_incidents(a))
        assert DUAL not in inc["nodes"], inc
        said = d.check(account=single)
        assert (said["status"], said["incident_id"]) == ("outage", inc["id"]), said

        def dual_is_ok(agg: str = agg) -> None:
            for said in (d.check(account=dual), d.check(node=DUAL)):
                assert said["status"] == "ok", f"{agg} dead, {DUAL} still has {UPLINKS}: {said}"

        run.during(3.0, dual_is_ok)
        d.lab.clear()
        d.wait(f"{agg}'s incident resolves", lambda: not run.open_incidents())
        # It covered the single-homed callers, never the dual-homed ones.
        assert d.check(account=single)["status"] == "restored"
        said = d.check(account=dual)
        assert said["status"] == "ok", f"{DUAL} was never cut off: {said}"
    d.lab.down(*run.ips(set(UPLINKS)))
    covering = d.wait(f"an incident cutting off {DUAL}", lambda: [
        i for i in run.open_incidents() if DUAL in i["nodes"]])  # fmt: skip
    said = d.check(account=dual)
    assert said["status"] == "outage", said
    assert said["incident_id"] in {i["id"] for i in covering}, (said, covering)
    assert said["root_node"] in UPLINKS, said


def planned_works(run: Run) -> None:
    d = run.d
    sub = d.account_under(WORKS)
    now = time.time()
    ends = float(int(now) + 3600)
    status, body = d.request("POST", "/api/v1/maintenance", {
        "node": WORKS, "reason": "firmware upgrade",
        "starts_at": datetime.fromtimestamp(now - 60).astimezone().isoformat(),
        "ends_at": datetime.fromtimestamp(ends).astimezone().isoformat(),
    })  # fmt: skip
    assert status == 201, body

    def heard(eta: float, incident: str = "") -> None:
        said = d.check(account=sub)
        assert said["status"] == "maintenance", said
        assert said["incident_id"] == incident, said
        assert said["eta"] and epoch(said["eta"]) == eta, f"eta should be {eta}: {said}"
        text = run.check_text(account=sub)
        assert text[0] == "maintenance" and text[1] == incident, text
        assert text[2] and epoch(text[2]) == eta, f"eta should be {eta}: {text}"

    heard(ends)  # works under way, the switch still answers
    d.lab.down(*run.ips({WORKS}))
    (inc,) = d.wait("a maintenance incident", lambda: run.open_incidents(WORKS))
    assert inc["kind"] == "maintenance", inc
    heard(ends, inc["id"])
    for eta, expected in ((ends - 600, ends), (ends + 1800, ends + 1800)):
        status, body = d.request("POST", f"/api/v1/incidents/{inc['id']}", {
            "eta": datetime.fromtimestamp(eta).astimezone().isoformat()})  # fmt: skip
        assert status == 200, body
        heard(expected, inc["id"])  # an engineer's earlier estimate does not shorten works


def blind_then_lossy(run: Run) -> None:
    d = run.d
    # The anchor and the core fall silent, and with the core everything behind it.
    silent = [ANCHOR, *run.ips({"core-1"})]
    d.lab.down(*silent)
    d.wait("blind", lambda: d.get("/readyz")[0] == 503)

    def blind() -> None:
        assert d.incidents() == [], d.incidents()
        said = d.check(account=d.account_under("agg-3"))
        assert said["status"] == "unknown", said

    run.during(12.0, blind)
    # Healed, and the loss begins at once: the re-probes that follow blindness meet it.
    d.lab.up(*silent)
    d.lab.loss(10, "127.0.0.0/8")
    soak_start = time.monotonic()
    d.wait("seeing again", lambda: d.get("/readyz")[0] == 200)

    def nothing() -> None:
        assert d.incidents("all") == [], (
            f"{time.monotonic() - soak_start:.0f} s into 10 % loss: {d.incidents('all')}"
        )

    run.during(SOAK, nothing, every=2.0)
    d.lab.clear()
    nothing()


def flapping_switch(run: Run) -> None:
    """Record, do not judge: cases 4 and 5 are two tests over one flap."""
    d = run.d
    below = set(run.topo.descendants(FLAPPER))
    ips = run.ips({FLAPPER})
    snapshots: list[tuple[float, list[dict[str, Any]]]] = []
    run.seen["snapshots"] = snapshots
    t0 = time.monotonic()

    def look() -> None:
        # On a loaded machine a late answer is a snapshot missed, not a fault.
        with contextlib.suppress(OSError):
            snapshots.append((time.monotonic() - t0, d.incidents("all")))

    for down, up in FLAPS:
        d.lab.down(*ips)
        run.during(down, look)
        d.lab.clear()
        stable = time.monotonic()  # the last change: stable from here on
        run.during(up, look)
    run.seen["stable_at"] = stable - t0
    run.seen["below"] = below
    # The contract: resolved once stable for the look-back, plus resolve_hold and the
    # up_after probes that say it is up; ten seconds spare for a loaded machine.
    budget = LOOK_BACK + RESOLVE_HOLD + UP_AFTER * INTERVAL + 10
    resolved_at = None
    while time.monotonic() - stable < budget:
        look()
        if not [i for i in snapshots[-1][1] if i["state"] == "open"]:
            resolved_at = time.monotonic() - stable
            break
        time.sleep(1.0)
    run.seen["resolved_after"] = resolved_at
    run.seen["caller"] = d.check(account=d.account_under(FLAPPER))


Futures = dict[str, concurrent.futures.Future[Run]]
SCENARIOS: dict[str, Callable[[Run], None]] = {
    "redundant": redundant_uplinks,
    "works": planned_works,
    "blind": blind_then_lossy,
    "flap": flapping_switch,
}
TEST_SCENARIO = {
    "test_a_building_with_two_uplinks_is_in_an_outage_only_when_both_die": "redundant",
    "test_planned_works_give_their_end_as_eta_in_json_and_text": "works",
    "test_a_lossy_network_after_blindness_opens_nothing": "blind",
    "test_a_flapping_switch_is_one_incident_with_no_children": "flap",
    "test_a_flap_incident_resolves_once_the_switch_is_stable": "flap",
}


def _run_in_lab(name: str) -> Run:
    with Lab() as lab:
        run = start_run(lab)
        try:
            SCENARIOS[name](run)
            return run
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon log ---\n{run.d.log()}") from None
        finally:
            if run.d.process is not None and run.d.process.poll() is None:
                run.d.process.kill()
                run.d.process.wait()


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest) -> Iterator[Futures]:
    """The scenarios the selected tests need, all started at once."""
    wanted = sorted({TEST_SCENARIO[t] for t in selected(request, TEST_SCENARIO)})
    with side_by_side(_run_in_lab, wanted, len(SCENARIOS)) as futures:
        yield futures


def _result(scenarios: Futures, name: str) -> Run:
    return scenarios[name].result(timeout=900)


# -- the five cases --------------------------------------------------------------------


def test_a_building_with_two_uplinks_is_in_an_outage_only_when_both_die(
    scenarios: Futures,
) -> None:
    _result(scenarios, "redundant")


def test_planned_works_give_their_end_as_eta_in_json_and_text(
    scenarios: Futures,
) -> None:
    _result(scenarios, "works")


def test_a_lossy_network_after_blindness_opens_nothing(
    scenarios: Futures,
) -> None:
    # 90 s of 10 % loss on every target, as the issue saw it: ~40,000 probes, about 4,000
    # lost, hundreds of streaks of two; the false incident came inside that time. Run
    # beside the flap scenario, which takes as long, it adds little time to the file.
    _result(scenarios, "blind")


def test_a_flapping_switch_is_one_incident_with_no_children(
    scenarios: Futures,
) -> None:
    run = _result(scenarios, "flap")
    snapshots = run.seen["snapshots"]
    ever = {i["id"]: i for _, incs in snapshots for i in incs}
    children = [i for i in ever.values() if i["root_node"] in run.seen["below"]]
    assert not children, f"incidents under the flapping {FLAPPER}: {children}"
    assert [i["root_node"] for i in ever.values()] == [FLAPPER], list(ever.values())
    # It was there while the switch was down, from its first minute on.
    assert any(any(i["state"] == "open" for i in incs) for t, incs in snapshots if t < 30)


def test_a_flap_incident_resolves_once_the_switch_is_stable(
    scenarios: Futures,
) -> None:
    run = _result(scenarios, "flap")
    after = run.seen["resolved_after"]
    assert after is not None, (
        f"still open {LOOK_BACK + RESOLVE_HOLD:.0f} s and more after {FLAPPER} stopped flapping"
    )
    caller = run.seen["caller"]
    assert caller["status"] == "restored", caller
