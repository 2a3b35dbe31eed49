"""The figures' arithmetic (pure: no database, no clock) and the topology's labels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from outagemon.core import figures, topology
from outagemon.core.figures import Cut, Stored
from outagemon.errors import TopologyError


def test_intervals_merge_subtract_and_intersect() -> None:
    assert figures.merged([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9)]) == [(0, 4), (5, 7)]
    assert figures.length([(0, 10), (5, 15), (20, 21)]) == 16
    assert figures.without([(0, 10)], [(2, 3), (5, 20)]) == [(0, 2), (3, 5)]
    assert figures.within([(0, 10), (12, 14)], [(5, 13)]) == [(5, 10), (12, 13)]


def test_a_place_is_out_once_however_many_incidents_cut_it_off() -> None:
    cuts = [Cut(1, "a", 0, 600, False), Cut(2, "a", 300, 900, False),
            Cut(3, "a", 900, 1200, True), Cut(4, "b", -100, None, False)]  # fmt: skip
    rows = figures.availability(cuts, 0, 3600, 1800, lambda n: (n, "all"), [(500, 1000)])
    by_key = {r["key"]: r for r in rows}
    # a: out 0..900 (15 min), planned 900..1200 (5), blind 500..1000 over both (8.33).
    assert by_key["a"] == {"key": "a", "outage_minutes": 15, "planned_minutes": 5,
                           "unverified_minutes": 8.33, "availability_pct": 75.0,
                           "incidents": 3}  # fmt: skip
    # b: still out at `now` (1800): 0..1800 within the period.
    assert by_key["b"]["outage_minutes"] == 30 and by_key["b"]["availability_pct"] == 50
    # all: 0..1800 out, the planned works inside an outage are not counted again.
    assert by_key["all"]["outage_minutes"] == 30 and by_key["all"]["planned_minutes"] == 0
    assert [r["key"] for r in rows] == ["all", "b", "a"]


def test_response_figures_of_an_open_incident_count_up_to_now() -> None:
    inc = Stored(7, "open", "outage", "sw", opened_at=1000, resolved_at=None, merged_into=None,
                 subscribers=120, calls=3, nodes=("sw",), detected_at=1030,
                 first_eta_at=1600, first_eta=9000)  # fmt: skip
    assert figures.response(inc, now=4600) == {
        "detect_seconds": 30, "first_eta_seconds": 600, "repair_seconds": None,
        "eta_error_seconds": None, "subscriber_hours": 120.0,
    }  # fmt: skip


def test_calls_are_spread_over_an_incidents_life_without_minutes() -> None:
    inc = Stored(1, "resolved", "outage", "sw", 600, 1800, None, 1, 40, ("sw",))
    series = figures.calls_per_minute([inc], 0, 3600, 1200, now=5000)
    # 40 calls over 20 minutes: 2 a minute, half of it in each of the first two buckets.
    assert series == [(0, 1.0, 1), (1200, 1.0, 1), (2400, 0.0, 0)]
    counted = figures.calls_per_minute([inc], 0, 3600, 1200, 5000, [(60, 12), (1300, 6)])
    assert [c for _, c, _ in counted] == [0.6, 0.3, 0.0]


TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2, labels: {region: west}}
  - {id: agg, kind: aggregation, ip: 127.0.0.3, parents: [core], labels: {district: north}}
  - {id: sw, kind: access, ip: 127.0.0.4, parents: [agg], labels: {district: 7}}
  - {id: seg, kind: segment, parents: [sw]}
"""


def test_labels_are_inherited_down_the_tree() -> None:
    topo = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("t.yaml"))
    # Only what the file says: not the YAML loader's mark of the line a mapping is on.
    assert dict(topo.nodes["agg"].labels) == {"district": "north"}
    assert topology.inherited_label(topo, "seg", "district") == "7"  # its switch's
    assert topology.inherited_label(topo, "agg", "district") == "north"
    assert topology.inherited_label(topo, "seg", "region") == "west"
    assert topology.inherited_label(topo, "core", "district") is None
    assert topology.inherited_label(topo, "nowhere", "district") is None


@pytest.mark.parametrize(("labels", "problem"), [
    ("[north]", "labels must be a mapping"),
    ("{1st: north}", "label name '1st' must be letters, digits and _"),
    ("{district: [a, b]}", "label district must be a text or a number"),
    ("{district: true}", "label district must be a text or a number"),
])  # fmt: skip
def test_a_bad_label_is_named_with_its_line(labels: str, problem: str) -> None:
    text = f"nodes:\n  - {{id: core, kind: core, labels: {labels}}}\n"
    with pytest.raises(TopologyError) as e:
        topology.parse_text(text, Path("t.yaml"))
    assert any(problem in p and "line 2" in p for p in e.value.problems), e.value.problems
