"""Defects found by the ninth new user's trial (a NOC engineer's first day), each pinned."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from outagemon import config
from outagemon.core import topology
from outagemon.core.correlator import Correlator
from outagemon.core.health import State
from outagemon.core.topology import Topology
from outagemon.http import page
from outagemon.sim import truth
from outagemon.sim.simnet import SimNet
from outagemon.sim.worlds import Action, Customer, Device, Step, World
from outagemon.testing.lab import Lab
from tests.test_cli import minimal_config, run_cli
from tests.test_correlate import SETTINGS, WARM, n
from tests.test_lab_e2e import CONFIG as LAB_CONFIG
from tests.test_lab_e2e import small_daemon
from tests.test_topology import PATH, problems
from tests.world import world


def test_an_empty_topology_is_refused() -> None:
    # `nodes: []` passed: check-config only said every subscriber was "served by no node",
    # and without a subscribers file it was valid: nothing probed, every caller not_found.
    assert problems("nodes: []\n") == [
        f"{PATH}: 'nodes:' is empty: list the network's nodes under it."
    ]


def test_topology_problems_are_listed_in_the_order_of_the_file() -> None:
    # They came check by check: a bad ip at line 8 before a duplicate address at line 2.
    found = problems(
        "nodes:\n"
        "  - id: a\n"
        "    kind: core\n"
        '    serves: ["Oak Street 1", "Oak Street 1"]\n'
        "  - {id: b, kind: access, ip: 300.1.1.1, parents: [nope]}\n"
        "  - {id: b, kind: access}\n"
    )
    lines = [int(p.split(": line ")[1].split(":")[0]) for p in found]
    assert lines == sorted(lines) and lines[0] == 2 and len(found) == 4, found


@pytest.mark.parametrize(
    ("serves", "said"),
    [
        ('["Oak Street 1", "Oak Street 1"]', ""),
        ('[{address: "Oak Street 1", flats: "1-20"}, {address: "Oak Street 1", flats: "15-30"}]',
         " (flats 1-20 and 15-30 overlap)"),
    ],
)  # fmt: skip
def test_a_building_listed_twice_on_one_node_is_said_so(serves: str, said: str) -> None:
    # Was: "the address '1 Oak St' is served by both 'a' (line 2) and 'a'."
    found = problems(f"nodes:\n  - {{id: a, kind: access, serves: {serves}}}\n")
    assert found == [
        f"{PATH}: line 2: node 'a' lists the address '1 Oak St' twice in serves{said}: "
        "keep one entry."
    ]
    # Two nodes sharing a building still name both.
    two = problems(
        "nodes:\n  - {id: a, kind: core}\n"
        '  - {id: b, kind: access, parents: [a], serves: ["Oak Street 1"]}\n'
        '  - {id: c, kind: access, parents: [a], serves: ["Oak Street 1"]}\n'
    )
    assert two == [f"{PATH}: line 4: the address '1 Oak St' is served by both 'b' (line 3) "
                   "and 'c'."]  # fmt: skip
    topology.parse_text(
        'nodes:\n  - {id: a, kind: access, serves: [{address: "Oak Street 1", flats: "1-9"},'
        ' {address: "Oak Street 1", flats: "10-20"}]}\n',
        PATH,
    )


TOKENS = (
    '[[auth.tokens]]\nname = "ivr"\ntoken = "ivr-0123456789abcdef0123456789abcdef"\nrole = "read"\n'
)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640, 0o600])
def test_inline_secrets_in_a_file_others_may_read_are_warned_about(
    tmp_path: Path, mode: int
) -> None:
    # As ssh warns of a key others can read: tokens written in a 0644 outagemon.toml drew
    # no word from check-config nor from the daemon's start (both print cfg.warnings).
    path = minimal_config(tmp_path, TOKENS + '[http]\nmetrics_token = "m' + "x" * 31 + '"\n')
    os.chmod(path, mode)
    warned = [w for w in config.load(path).warnings if "every local user may read" in w]
    if mode & 0o004:
        assert warned == [
            f"{path}: every local user may read this file (mode {mode:04o}), and it holds "
            "secrets written in it (the token of 'ivr', [http] metrics_token): keep them in "
            "files named by token_file, metrics_token_file, dsn_file or secret_file "
            "(root-only, handed to the unit with LoadCredential=: see the README's "
            f"Security), or make this file unreadable to others (chmod o-r {path}) where "
            "the service does not read it as another user."
        ]
        result = run_cli("check-config", "-c", str(path))
        assert result.returncode == 0 and f"warning: {warned[0]}" in result.stderr, result
        assert "0123456789abcdef" not in result.stderr + result.stdout
    else:
        assert warned == []


def test_secrets_kept_in_files_draw_no_warning(tmp_path: Path) -> None:
    (tmp_path / "ivr-token").write_text("ivr-0123456789abcdef0123456789abcdef\n")
    path = minimal_config(
        tmp_path,
        '[database]\ndsn = "postgresql://om@127.0.0.1/om"\n'
        '[[auth.tokens]]\nname = "ivr"\ntoken_file = "ivr-token"\nrole = "read"\n',
    )
    os.chmod(path, 0o644)
    assert config.load(path).warnings == ()
    path.write_text(path.read_text().replace("om@127", "om:pw@127"))
    (warned,) = config.load(path).warnings
    assert "(the password in [database] dsn)" in warned and "pw" not in warned.split("(")[0]


async def test_a_split_building_without_a_flat_asks_for_the_flat(fresh_db: str) -> None:
    # "Several addresses match. Please give your full address": the caller had given it;
    # only the flat was missing (candidates: the building's parts by flat).
    async with world(fresh_db) as w:
        w.net.fail("seg-mira-1")
        w.run(60)
        a = await w.check(address="Мира 10")
        assert a["status"] == "ambiguous", a
        assert a["message"] == (
            "По адресу проспект Мира, дом 10 ответ зависит от номера квартиры. Пожалуйста, "
            "назовите номер квартиры или оставайтесь на линии, вам ответит оператор."
        ), a
        assert a["candidates"] == "пр-т Мира, д. 10, кв. 1-40;пр-т Мира, д. 10, кв. 41-80", a
        # Several buildings named at once still ask for the whole address.
        many = await w.check(address="Садовая 3")
        assert many["status"] == "ambiguous", many
        assert many["message"].startswith("Под ваш запрос подходит несколько адресов"), many


def test_the_page_writes_an_english_buildings_flats_in_english() -> None:
    # "2 Elm St (кв. 21-40)" on the page of an English network.
    topo = topology.parse_text(
        'nodes:\n  - {id: a, kind: access, serves: [{address: "Elm Street 2", '
        'flats: "21-40"}, {address: "ул. Ленина, д. 5", flats: "1-9"}]}\n',
        PATH,
    )
    rt = SimpleNamespace(directory=SimpleNamespace(topology=topo))
    assert page._addresses(rt, ["a"]) == (  # type: ignore[arg-type]
        ["2 Elm St (Apt 21-40)", "ул. Ленина, д. 5 (кв. 1-9)"],
        0,
    )


class _Mute(SimNet):
    """Nodes that drop every probe to themselves and forward all the rest."""

    mute: frozenset[str] = frozenset()

    def answers(self, node: str) -> bool:
        return super().answers(node) and node not in self.mute


@pytest.mark.parametrize("mute", ["core", "agg0"])
def test_a_node_that_forwards_but_drops_its_own_probes_is_not_down(mute: str) -> None:
    # Before: the core (the only anchor) muted made the monitor blind for good; agg0 muted
    # opened an outage that took in sw0, which answered through it all along.
    topo = Topology([
        n("core", "core"), n("agg0", "aggregation", ("core",)), n("sw0", "access", ("agg0",)),
    ])  # fmt: skip
    settings = dataclasses.replace(SETTINGS, interval=10.0)
    c = Correlator(topo, settings)
    s = _Mute(topo, c, interval=10.0, timeout=1.0)
    s.run_for(WARM)
    s.mute = frozenset({mute})
    events = s.run_for(300)
    assert events == [] and not c.blind and c.incidents == {}
    assert c.states[mute].state is State.UP
    # It still dies for real: everything behind it falls silent too.
    s.fail(mute)
    events = s.run_for(60)
    if mute == "core":
        assert c.blind
    else:
        (inc,) = c.incidents.values()
        assert inc.root == "agg0" and set(inc.nodes) == {"agg0", "sw0"}


RATE_LIMITED_TOPOLOGY = """nodes:
  - {id: core-1, kind: core, ip: 127.42.0.1}
  - {id: agg-a, kind: aggregation, ip: 127.42.1.1, parents: [core-1]}
  - {id: agg-b, kind: aggregation, ip: 127.42.1.2, parents: [core-1]}
  - {id: sw-oak-1, kind: access, ip: 127.42.2.1, parents: [agg-a], serves: ["Oak Street 1"]}
  - {id: sw-elm-2, kind: access, ip: 127.42.2.2, parents: [agg-b], serves: ["Elm Street 2"]}
"""
# The lab's config with the defaults' probing and correlation ([probe] interval 10 s).
RATE_LIMITED_CONFIG = re.sub(r"\[probe\].*?(?=\[topology\])", "", LAB_CONFIG, flags=re.S)


def test_a_core_that_rate_limits_icmp_leaves_the_monitor_seeing(lab: Lab) -> None:
    # The trial's network, the defaults ([probe] interval 10 s, timeout 1 s), and the one
    # core router (the topology's only probed root, so the only anchor) answering one echo
    # request a minute, as routers' ICMP rate limits do. Its losses took it down within
    # two minutes and it never gave the two answers in a row that bring a node back: the
    # monitor stayed blind and every caller heard "unknown", while the aggregations
    # behind it, alone, answered every probe through it. A node that carries its
    # children's answers is up (they are asked for as soon as it loses a probe).
    daemon = small_daemon(lab, RATE_LIMITED_TOPOLOGY,
                          'account,phones,address,flat,ip\n500001,,"Oak Street 1",3,\n',
                          RATE_LIMITED_CONFIG)  # fmt: skip
    lab.limit(1, "127.42.0.1")
    try:
        daemon.start()
        started = time.monotonic()
        blind = []
        while time.monotonic() - started < 180:
            _, metrics = daemon.get_text("/metrics")
            blind += [line for line in metrics.splitlines() if line == "outagemon_blind 1"]
            assert not blind, daemon.log()
            time.sleep(2)
        answer = daemon.check(account="500001")
        assert answer["status"] == "ok", answer
        # The core is shown as what it is: losing most probes, not down.
        _, metrics = daemon.get_text("/metrics")
        assert "outagemon_nodes_down 0" in metrics.splitlines(), daemon.log()
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()


def _world_686(*steps: Step) -> World:
    """truth_bench world 686, shrunk: two cores (the anchors), a switch under both."""
    return World(
        seed=686,
        devices=(
            Device("core", "core", True),
            Device("core-b", "core", True),
            Device("agg1-0-2", "aggregation", True, ("core",)),
            Device("agg1-1-1", "aggregation", True, ("core-b",)),
            Device("sw2-2-0", "access", True, ("agg1-0-2",)),
            Device("sw2-2-1", "access", True, ("agg1-0-2", "agg1-1-1")),
            Device("sw2-4-1", "access", True, ("agg1-1-1",)),
            Device("seg3-2-0", "segment", False, ("sw2-2-1", "sw2-2-0")),
            Device("seg3-10-0", "segment", False, ("sw2-2-1",)),
        ),
        customers=(
            Customer("1035", ("+79210350000",), "seg3-2-0", False),
            Customer("1062", ("+79210620000",), "seg3-10-0", True),
        ),
        steps=(Step(302.0, Action.FAIL, "sw2-2-1"), *steps, Step(1729.0, Action.CHECK)),
        resolve_hold=30.0,
        restored_for=604800.0,
        external_anchor=False,
    )


def test_an_incident_whose_root_was_not_heard_from_again_after_blindness_stays_open() -> None:
    # sw2-2-1 fails for good; under random loss the monitor goes blind, and just before it
    # does seg3-2-0 (dual-homed: sw2-2-0 still carries it) joins sw2-2-1's incident. With
    # sw2-4-1's answer through agg1-1-1 bringing agg1-1-1 up (a node that forwards is not
    # down), sight came back a little sooner, and sw2-2-1, looked at afresh, took longer
    # than resolve_hold to lose the longer streak the loss asks for: its incident resolved
    # with seg3-2-0 in it, and 1035, who never lost service, heard "restored" for a week.
    # A root that has not answered since it was looked at afresh has not come back.
    outcome = truth.run(
        _world_686(
            Step(1179.0, Action.LOSS, value=0.136),
            Step(1435.0, Action.BLIND),
            Step(1491.0, Action.SEE),
        )
    )
    assert outcome.checks == 1
    assert outcome.disagreements == [], outcome.disagreements


@pytest.mark.parametrize("repaired", [1440.0, 1460.0, 1480.0])
def test_what_joins_an_incident_as_the_monitor_goes_blind_leaves_it(repaired: float) -> None:
    # The monitor's uplink fails while sw2-2-1 is down: before the anchors (the two
    # cores) are called down, sw2-2-0 is, and seg3-2-0 behind it and sw2-2-1 joins
    # sw2-2-1's incident. While the cores were down they cut it off still, so it stayed:
    # sw2-2-1 repaired meanwhile, the incident resolved with it, and 1035, who never lost
    # service, heard "restored" for a week. 1062, behind sw2-2-1 alone, hears it.
    outcome = truth.run(
        _world_686(
            Step(1435.0, Action.BLIND),
            Step(repaired, Action.REPAIR, "sw2-2-1"),
            Step(1491.0, Action.SEE),
        )
    )
    assert outcome.checks == 1
    assert outcome.disagreements == [], outcome.disagreements
