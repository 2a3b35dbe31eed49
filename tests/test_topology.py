"""The topology file: every problem reported with its line; graph queries the rest relies on."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from outagemon.core import addresses, topology
from outagemon.errors import TopologyError

PATH = Path("/etc/om/topology.yaml")


def parse(text: str) -> topology.Topology:
    return topology.parse_text(textwrap.dedent(text), PATH)


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse(text)
    return info.value.problems


NET = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: agg-a, kind: aggregation, ip: 127.0.0.3, parents: [core]}
  - {id: agg-b, kind: aggregation, ip: 127.0.0.4, parents: [core]}
  - {id: sw-1, kind: access, ip: 127.0.0.5, parents: [agg-a], serves: ["ул. Ленина, д. 5"]}
  - {id: sw-2, kind: access, ip: 127.0.0.6, parents: [agg-a, agg-b]}
  - id: seg-2-1
    kind: segment
    parents: [sw-2]
    serves: [{address: "пр-т Мира, д. 10", flats: "1-40"}]
  - id: seg-2-2
    kind: segment
    parents: [sw-2]
    serves: [{address: "пр-т Мира, д. 10", flats: "41-80, 90"}]
"""


def test_a_valid_file_builds_the_graph() -> None:
    t = parse(NET)
    assert len(t) == 7
    assert t.roots == ["core"]
    assert sorted(t.nodes["agg-a"].children) == ["sw-1", "sw-2"]
    assert t.by_ip["127.0.0.6"] == "sw-2"
    assert not t.nodes["seg-2-1"].probed


def test_ancestors_are_nearest_first_over_every_uplink() -> None:
    t = parse(NET)
    assert t.ancestors("seg-2-1") == ["sw-2", "agg-a", "agg-b", "core"]
    assert t.descendants("agg-a") == ["sw-1", "sw-2", "seg-2-1", "seg-2-2"]


def test_a_node_with_two_uplinks_is_cut_off_only_when_both_fail() -> None:
    t = parse(NET)
    assert t.cut_off({"agg-a"}) == {"agg-a", "sw-1"}
    assert t.cut_off({"agg-a", "agg-b"}) == {"agg-a", "agg-b", "sw-1", "sw-2", "seg-2-1", "seg-2-2"}
    assert t.cut_off({"core"}) == set(t.nodes)
    assert t.cut_off(set()) == set()


def test_the_most_specific_node_serves_an_address_and_flat() -> None:
    t = parse(NET)
    mira = addresses.parse("пр-т Мира 10")
    assert mira is not None
    assert t.serving(mira, 12) == ["seg-2-1"]
    assert t.serving(mira, 90) == ["seg-2-2"]
    assert t.serving(mira, 85) == []
    assert sorted(t.serving(mira)) == ["seg-2-1", "seg-2-2"]
    lenina = addresses.parse("ул. Ленина 5")
    assert lenina is not None
    assert t.serving(lenina, 3) == ["sw-1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "nodes:\n  - {id: a, kind: core}\n  - {id: a, kind: core}\n",
            "line 3: duplicate id 'a' (first at line 2).",
        ),
        (
            "nodes:\n  - {id: a, kind: core, parents: [ghost]}\n",
            "line 2: node 'a' has an unknown parent 'ghost'.",
        ),
        (
            "nodes:\n  - {id: a, kind: x, parents: [b]}\n  - {id: b, kind: x, parents: [a]}\n",
            "the parents form a cycle: a -> b -> a.",
        ),
        (
            "nodes:\n  - {id: a, kind: core, ip: 300.1.1.1}\n",
            "ip '300.1.1.1' is not an IP address.",
        ),
        (
            "nodes:\n  - {id: a, kind: core, ip: 127.0.0.2}\n"
            "  - {id: b, kind: core, ip: 127.0.0.2}\n",
            "line 3: node 'b' has ip 127.0.0.2, as does 'a' (line 2).",
        ),
        (
            'nodes:\n  - {id: a, kind: x, serves: ["Ленина ул., 5"]}\n'
            '  - {id: b, kind: x, serves: ["ул. Ленина, д. 5"]}\n',
            "the address 'ул. Ленина, д. 5' is served by both 'a' (line 2) and 'b'.",
        ),
        (
            'nodes:\n  - {id: a, kind: x, serves: [{address: "Мира 1", flats: "1-40"}]}\n'
            '  - {id: b, kind: x, serves: [{address: "Мира 1", flats: "30-60"}]}\n',
            "for flats 30-60 is served by both 'a' (line 2) and 'b'.",
        ),
        ("nodes:\n  - {id: 'a b', kind: x}\n", "id must be a string without spaces"),
        ("nodes:\n  - {id: a}\n", "kind is required"),
        ("nodes:\n  - {id: a, kind: x, colour: red}\n", "line 2: unknown key 'colour'."),
        ('nodes:\n  - {id: a, kind: x, serves: ["Ленина"]}\n', "cannot read the address 'Ленина'"),
        (
            'nodes:\n  - {id: a, kind: x, serves: [{address: "Мира 1", flats: "9-2"}]}\n',
            "the range '9-2' runs backwards",
        ),
        ("nodes: [\n", "not valid YAML"),
        ("hosts: []\n", "the file must hold a list under 'nodes:'."),
    ],
)
def test_each_problem_is_reported_with_its_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(f"{PATH}: ") for p in found)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        "nodes:\n"
        "  - {id: a, kind: core, ip: nope}\n"
        "  - {id: a, kind: core}\n"
        "  - {id: b, kind: x, parents: [ghost]}\n"
    )
    assert len(found) == 3


def test_a_written_address_matches_the_buildings_it_can_mean() -> None:
    t = parse(
        """
        nodes:
          - {id: a, kind: x, serves: ["ул. Ленина 5", "ул. Ленина 5к1", "ул. Ленина 5к2"]}
          - {id: b, kind: x, serves: ["пр-т Ленина 5"]}
        """
    )

    def keys(text: str) -> int:
        query = addresses.parse(text)
        assert query is not None
        return len(t.matching(query))

    assert keys("Ленина 5") == 4
    assert keys("ул. Ленина 5") == 3
    assert keys("ул. Ленина 5 корп. 2") == 1
    assert keys("пр-т Ленина 5") == 1
    assert keys("Ленина 7") == 0


def test_the_file_is_composed_event_by_event_without_a_graph_of_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload loads the topology in a thread beside the event loop: PyYAML's libyaml
    load composes the whole graph of nodes in one call into C and frees it in another
    (70-110 ms at 25,000 nodes, the loop held throughout). Each call into C parses one
    event now: no node graph is made, and the graph is the same."""
    made = 0

    def counted(self: yaml.MappingNode, *args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += 1
        original(self, *args, **kwargs)

    original = yaml.MappingNode.__init__
    monkeypatch.setattr(yaml.MappingNode, "__init__", counted)
    topo = parse(NET)
    assert made == 0
    assert sorted(topo.nodes) == [
        "agg-a", "agg-b", "core", "seg-2-1", "seg-2-2", "sw-1", "sw-2"
    ]  # fmt: skip
    assert topo.nodes["sw-2"].parents == ("agg-a", "agg-b")
    assert topo.nodes["seg-2-2"].line == 12


@pytest.mark.parametrize(
    "text",
    [
        NET,
        "",
        "# a comment only\n",
        "nodes:\n- id: 7\n  kind: core\n  ip: 127.0.0.2\n  labels: {n: 1, __line__: 9}\n",
        "nodes:\n- {id: a, kind: core, name: yes, x: ~, y: 2001-12-14, z: 0x1F, w: .inf}\n",
        "nodes:\n- id: a\n  kind: core\n  name: |\n    two\n    lines\n- {id: b, kind: core}\n",
        "a: 1\na: 2\nb: {c: [1, {d: '2'}]}\n",
        # Left to PyYAML's own load: anchors and aliases, merge keys, explicit tags, a
        # list as a key, "=", several documents, a broken file.
        "nodes:\n- &n {id: a, kind: core}\n- *n\n",
        "base: &b {kind: core}\nnodes:\n- {<<: *b, id: a}\n",
        "nodes:\n- {id: !!str 1, kind: core}\n",
        "? [1]\n: 2\n",
        "=: 1\n",
        "nodes: []\n---\nnodes: []\n",
        "nodes:\n- {id: a, kind: core\n",
        "nodes:\n- id: a\n kind: core\n",
    ],
)
def test_the_data_read_is_what_pyyaml_reads(text: str) -> None:
    """The event composer gives the data (and the error) PyYAML's load gives."""

    def outcome(load: Callable[[], object]) -> tuple[str, str]:
        try:
            return "data", repr(load())
        except Exception as e:  # the same exception, with the same text
            return type(e).__name__, str(e)

    ours = outcome(lambda: topology._read_yaml(text)[0])
    # (read as a stream, as the composer reads it: a mark names its input, "<file>")
    assert ours == outcome(lambda: yaml.load(io.StringIO(text), Loader=topology._LineLoader))


def test_flats_and_addresses_read_once_a_file_still_answer_each_entry() -> None:
    """A file's repeated addresses and flats are read once (`_Read`): a refusal is told
    for every entry that repeats it, and `true` is not read as the flat 1."""
    text = (
        "nodes:\n- {id: a, kind: core}\n"
        "- {id: s1, kind: segment, parents: [a], serves: [{address: ул. Мира 1, flats: 1}]}\n"
        "- {id: s2, kind: segment, parents: [a], serves: [{address: ул. Мира 2, flats: true}]}\n"
        "- {id: s3, kind: segment, parents: [a], serves: [{address: ул. Мира 3, flats: x}]}\n"
        "- {id: s4, kind: segment, parents: [a], serves: [{address: ул. Мира 3, flats: x}]}\n"
        "- {id: s5, kind: segment, parents: [a], serves: [Мира]}\n"
        "- {id: s6, kind: segment, parents: [a], serves: [Мира]}\n"
    )
    with pytest.raises(TopologyError) as e:
        topology.parse_text(text, Path("t.yaml"))
    said = "\n".join(e.value.problems)
    assert "line 4: node 's2': flats of 'ул. Мира 2': 'True' is not a flat number" in said
    for line in (5, 6):
        assert f"line {line}: node 's{line - 2}': flats of 'ул. Мира 3': 'x' is not" in said
    for line in (7, 8):
        assert f"line {line}: node 's{line - 2}': cannot read the address 'Мира'" in said
    assert len(e.value.problems) == 5
