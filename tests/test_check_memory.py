"""What /check remembers between callers must never change what a caller hears.

Answers are remembered per serving node (until the network or the clock changes them) and
their JSON per building with the flat left out; each test compares the remembered answer
with one worked out afresh, or moves the clock past a moment that must change it.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import orjson
import pytest

from outagemon import config
from outagemon.core import directory, messages, topology
from outagemon.core.assess import Answer, AnswerMemory, assess
from outagemon.core.directory import Directory, Match
from outagemon.core.health import NodeState, State
from outagemon.core.incidents import Incident, IncidentState, Kind, Maintenance
from outagemon.http import api
from outagemon.http.runtime import Runtime, iso
from outagemon.metrics import Registry
from outagemon.monitor import Monitor

TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: agg, kind: aggregation, ip: 127.0.0.3, parents: [core]}
  - {id: sw-1, kind: access, ip: 127.0.0.4, parents: [agg], serves: ["ул. Ленина, д. 5"]}
  - {id: sw-2, kind: access, ip: 127.0.0.5, parents: [core], serves: ["ул. Ленина, д. 7"]}
"""
# Flats as CRM exports have them, awkward ones included: each must come back as given.
FLATS = ["12", "", '7"', "3\\", "1а", "кв 5", "<b>", "5/2", "8\u20289", "ЖЭК"]
SUBSCRIBERS = "account,phones,address,flat,ip\n" + "".join(
    f'{100 + i},+7921000{i:04d},"ул. Ленина, д. {5 if i % 2 else 7}",'
    f'"{flat.replace(chr(34), chr(34) * 2)}",\n'
    for i, flat in enumerate(FLATS * 2)
)
NOW = time.time()


def make(language: str = "ru", override: Path | None = None) -> tuple[Runtime, Monitor]:
    topo = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("t.yaml"))
    subs, problems = directory.parse_csv(SUBSCRIBERS, Path("s.csv"), topo)
    assert problems == []
    d = Directory(directory.with_cpes(topo, subs), subs)
    cfg = config.parse("", Path("outagemon.toml"))
    rt = Runtime(config=cfg, directory=d, texts=messages.load(language, override))
    monitor = Monitor(cfg, d, Registry())
    for node in d.topology.nodes.values():
        if node.probed:
            monitor.correlator.states[node.id] = NodeState(state=State.UP, changed_at=NOW)
    monitor.first_round_done = True
    rt.monitor = monitor
    return rt, monitor


def answer(rt: Runtime, match: Match, now: float) -> bytes:
    got = assess(rt.monitor, rt.directory, match, now, 3600, rt.answers)
    return api.remembered_body(rt, got, match, "account", now)


def afresh(rt: Runtime, match: Match, now: float) -> bytes:
    """The same answer with nothing remembered."""
    got = assess(rt.monitor, rt.directory, match, now, 3600, AnswerMemory())
    return api.check_body(rt.texts, got, match, "account", now)


def kept_answers(rt: Runtime) -> list[tuple[str, float, Answer]]:
    return [(node, kept.expires, kept.after) for node, kept in rt.answers.entries.items()]


@pytest.mark.parametrize("language", ["ru", "en"])
def test_remembered_bodies_equal_bodies_written_out(language: str) -> None:
    rt, monitor = make(language)
    cut = ["agg", "sw-1"]
    monitor.correlator.restore([Incident(1, "agg", Kind.OUTAGE, False, NOW - 600, cut)], 2)
    monitor.set_eta(1, NOW + 7200, "", "noc")
    for _ in range(2):  # the second time round, every building's body is remembered
        for sub in rt.directory.subscribers:
            match = rt.directory.account(sub.account)
            body = answer(rt, match, NOW)
            assert body == afresh(rt, match, NOW), sub.flat
            said = orjson.loads(body)
            assert said["status"] == ("outage" if sub.serving == "sw-1" else "ok")
            assert said["address"].endswith(sub.flat)
    # One per building and answer, with a flat or without: д. 5 has callers with and
    # without one, д. 7 only with (the empty flats fall on odd rows).
    assert sum(len(a.bodies or {}) for _, _, a in kept_answers(rt)) == 3


@pytest.mark.parametrize("field", ["{address!r}", "{address:.30}"])
def test_a_template_that_transforms_the_address_is_not_remembered(
    tmp_path: Path, field: str
) -> None:
    # Converted or cut, the flat inside the message is no longer the flat as given: such
    # answers are written out each time.
    override = tmp_path / "messages.toml"
    override.write_text(f'[ru]\nok = "По адресу {field} всё в порядке."\n')
    rt, _ = make("ru", override)
    assert not rt.texts.plain_address
    for _ in range(2):
        for sub in rt.directory.subscribers:
            match = rt.directory.account(sub.account)
            assert answer(rt, match, NOW) == afresh(rt, match, NOW), sub.flat
    assert not [a for _, _, a in kept_answers(rt) if a.bodies]


def test_planned_works_start_and_end_by_the_clock_alone() -> None:
    rt, monitor = make()
    starts, ends = NOW + 600, NOW + 1200
    monitor.add_maintenance(Maintenance(1, "sw-2", starts, ends, "замена"), "noc")
    match = rt.directory.account("100")  # ул. Ленина, д. 7, behind sw-2
    version = monitor.correlator.version
    assert orjson.loads(answer(rt, match, NOW))["status"] == "ok"
    assert orjson.loads(answer(rt, match, starts + 1))["status"] == "maintenance"
    assert orjson.loads(answer(rt, match, ends + 1))["status"] == "ok"
    assert monitor.correlator.version == version, "only the clock moved"


def test_overlapping_works_say_the_end_that_applies_as_the_clock_moves() -> None:
    # Works on agg (sw-1 behind it) and, overlapping and longer, on sw-1 itself: sw-1's
    # callers are covered from the first start to the chain's end (service returns only
    # then, so that is the eta from the start); the remembered answer must equal a fresh
    # one as the clock moves through the second works' start and the first's end.
    rt, monitor = make()
    monitor.add_maintenance(Maintenance(1, "agg", NOW - 60, NOW + 600, "замена"), "noc")
    monitor.add_maintenance(Maintenance(2, "sw-1", NOW + 300, NOW + 1200, "замена"), "noc")
    match = rt.directory.account("101")  # ул. Ленина, д. 5, behind sw-1
    heard = [
        (NOW, "maintenance", NOW + 1200),  # agg's works alone, sw-1's booked to follow on
        (NOW + 400, "maintenance", NOW + 1200),  # both: sw-1's run on after agg's end
        (NOW + 900, "maintenance", NOW + 1200),
        (NOW + 1300, "ok", None),
    ]
    for at, status, eta in heard:
        body = answer(rt, match, at)
        assert body == afresh(rt, match, at)
        said = orjson.loads(body)
        assert said["status"] == status, (at - NOW, said)
        assert said["eta"] == (iso(eta) if eta is not None else ""), (at - NOW, said)
        assert (said["eta"] != "") == (status == "maintenance")


@pytest.mark.parametrize("second_on", ["sw-1", "agg"])
def test_works_booked_to_follow_on_say_the_chains_end_from_the_start(second_on: str) -> None:
    # sw-1 15:40-17:00, then 16:50-18:00 on sw-1 again (or on agg above it): service
    # returns at 18:00, so that is the eta before the second works begin too.
    rt, monitor = make()
    monitor.add_maintenance(Maintenance(1, "sw-1", NOW - 60, NOW + 600, "замена"), "noc")
    monitor.add_maintenance(Maintenance(2, second_on, NOW + 540, NOW + 1200, "ещё"), "noc")
    match = rt.directory.account("101")  # behind sw-1
    for at in (NOW, NOW + 550, NOW + 700):
        body = answer(rt, match, at)
        assert body == afresh(rt, match, at)
        said = orjson.loads(body)
        assert (said["status"], said["eta"]) == ("maintenance", iso(NOW + 1200)), at - NOW
    assert orjson.loads(answer(rt, match, NOW + 1200))["status"] == "ok"


def test_works_after_a_gap_do_not_carry_the_eta_on() -> None:
    rt, monitor = make()
    monitor.add_maintenance(Maintenance(1, "sw-1", NOW - 60, NOW + 600, "замена"), "noc")
    monitor.add_maintenance(Maintenance(2, "sw-1", NOW + 660, NOW + 1200, "ещё"), "noc")
    match = rt.directory.account("101")
    said = orjson.loads(answer(rt, match, NOW))
    assert (said["status"], said["eta"]) == ("maintenance", iso(NOW + 600))
    assert orjson.loads(answer(rt, match, NOW + 630))["status"] == "ok"


def test_restored_runs_out_by_the_clock_alone() -> None:
    rt, monitor = make()
    resolved = Incident(1, "sw-2", Kind.OUTAGE, False, NOW - 900, ["sw-2"],
                        state=IncidentState.RESOLVED, resolved_at=NOW - 60)  # fmt: skip
    monitor.recent["sw-2"] = resolved
    match = rt.directory.account("100")
    assert orjson.loads(answer(rt, match, NOW))["status"] == "restored"
    assert orjson.loads(answer(rt, match, NOW - 60 + 3600 + 1))["status"] == "ok"


def test_an_estimate_set_is_heard_by_the_next_caller() -> None:
    rt, monitor = make("en")
    cut = ["agg", "sw-1"]  # the nodes an incident at agg cuts off
    monitor.correlator.restore([Incident(1, "agg", Kind.OUTAGE, False, NOW - 600, cut)], 2)
    match = rt.directory.account("101")  # behind sw-1, under agg
    assert "work continues" in orjson.loads(answer(rt, match, NOW))["message"].lower()
    monitor.set_eta(1, NOW + 3600, "", "noc")
    said = orjson.loads(answer(rt, match, NOW))
    assert said["eta"] and "should be back" in said["message"], said["message"]
    # ...and once that time has passed, nobody is promised it.
    later = orjson.loads(answer(rt, match, NOW + 3700))
    assert "work continues" in later["message"].lower()


def test_a_router_state_is_never_remembered() -> None:
    rt, monitor = make()
    text = SUBSCRIBERS.replace('"12",\n', '"12",127.0.9.9\n', 1)
    topo = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("t.yaml"))
    subs, _ = directory.parse_csv(text, Path("s.csv"), topo)
    rt.directory = Directory(directory.with_cpes(topo, subs), subs)
    monitor.directory = rt.directory
    (sub,) = [s for s in subs if s.ip]
    match = rt.directory.account(sub.account)
    monitor.correlator.states[sub.node] = NodeState(state=State.UP, changed_at=NOW)
    assert orjson.loads(answer(rt, match, NOW))["status"] == "ok"  # now remembered
    monitor.correlator.states[sub.node] = NodeState(state=State.DOWN, changed_at=NOW)
    assert orjson.loads(answer(rt, match, NOW))["status"] == "cpe_down"


def test_a_reloaded_topology_changes_the_answers_at_once() -> None:
    rt, monitor = make()
    monitor.correlator.restore([Incident(1, "agg", Kind.OUTAGE, False, NOW - 600, ["agg"])], 2)
    match = rt.directory.account("100")  # ул. Ленина, д. 7: sw-2 hangs off the core
    assert orjson.loads(answer(rt, match, NOW))["status"] == "ok"
    moved = TOPOLOGY.replace("ip: 127.0.0.5, parents: [core]", "ip: 127.0.0.5, parents: [agg]")
    topo = topology.parse_text(textwrap.dedent(moved), Path("t.yaml"))
    subs, _ = directory.parse_csv(SUBSCRIBERS, Path("s.csv"), topo)
    rt.directory = Directory(directory.with_cpes(topo, subs), subs)
    monitor.set_directory(rt.directory)
    monitor.correlator.tick(NOW)  # the next decision (a tenth of a second later) cuts sw-2 off
    match = rt.directory.account("100")
    said = orjson.loads(answer(rt, match, NOW))
    assert (said["status"], said["root_node"]) == ("outage", "agg")


def test_a_remembered_answer_is_said_anew_after_midnight() -> None:
    rt, monitor = make()
    midnight = messages.next_local_day(NOW)
    opened = midnight - 3600  # 23:00 the evening before
    monitor.correlator.restore([Incident(1, "sw-2", Kind.OUTAGE, False, opened, ["sw-2"])], 2)
    match = rt.directory.account("100")
    before = orjson.loads(answer(rt, match, midnight - 60))["message"]
    after = orjson.loads(answer(rt, match, midnight + 60))["message"]
    assert "в 23:00" in before and "вчера" not in before
    assert "вчера в 23:00" in after
    assert answer(rt, match, midnight + 60) == afresh(rt, match, midnight + 60)
