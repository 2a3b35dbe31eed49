"""The topology's big mappings (nodes, addresses) are held in shards: no hash table of a
city's million routers is built in one piece (a reload builds it beside the event loop),
and they answer as the dicts they replace did."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from outagemon import daemon
from outagemon.core import topology
from outagemon.core.topology import Node, Sharded, Topology
from outagemon.probing.scheduler import Scheduler

SMALL = 64  # entries a shard holds on average in these tests (a city's: 32,768)


@pytest.fixture(autouse=True)
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "SHARD_SIZE", SMALL)


def city(switches: int, routers: int, gone: int = 0, moved: int = 0) -> list[Node]:
    """A core, `switches` switches, and `routers` routers spread over them (the first
    `gone` left out, the next `moved` under another switch at another address)."""
    nodes = [Node("core", "core", "127.0.0.2")]
    nodes += [Node(f"sw-{s}", "access", f"127.1.0.{s}", ("core",)) for s in range(switches)]
    for r in range(gone, routers):
        s, ip = r % switches, f"127.2.{r >> 8}.{r & 255}"
        if r < gone + moved:
            s, ip = (s + 1) % switches, f"127.3.{r >> 8}.{r & 255}"
        nodes.append(Node(f"cpe:{r}", "cpe", ip, (f"sw-{s}",), f"cpe:{r}"))
    return nodes


def test_a_city_of_routers_is_held_in_shards_none_much_larger_than_the_shard_size() -> None:
    t = Topology(city(10, 1000))
    for mapping in (t.nodes, t.by_ip):
        assert len(mapping.shards) == 16  # the power of two that keeps 1,011 under 64 each
        assert sum(map(len, mapping.shards)) == len(mapping)
        assert max(map(len, mapping.shards)) <= 2 * SMALL
    assert set(t.inner) == {"core", *(f"sw-{s}" for s in range(10))}  # no router in it


def test_the_sharded_mappings_answer_as_the_dicts_they_replace() -> None:
    nodes = city(7, 500)
    # An id and an address given twice (refused in a file; possible in code): a dict's
    # answer is the last one, in the place of the first.
    nodes.insert(3, Node("cpe:9", "cpe", "127.9.9.9", ("sw-1",)))
    nodes.append(Node("cpe:42", "cpe", "127.2.0.7", ("sw-2",)))
    t = Topology(nodes)
    by_id: dict[str, Node] = {}
    by_ip: dict[str, str] = {}
    for n in nodes:  # the oracle: the dicts, built as Topology built them before
        by_id[n.id] = n
    for n in by_id.values():
        if n.ip:
            by_ip[n.ip] = n.id
    for mapping, oracle in ((t.nodes, by_id), (t.by_ip, by_ip)):
        assert len(mapping) == len(oracle)
        assert list(mapping) == list(oracle)
        assert list(mapping.keys()) == list(oracle.keys())
        assert list(mapping.values()) == list(oracle.values())
        assert list(mapping.items()) == list(oracle.items())
        assert mapping == oracle and oracle == mapping
        for key in [*oracle, "nothing", "127.0.0.1"]:
            assert (key in mapping) == (key in oracle)
            assert mapping.get(key) == oracle.get(key)
            assert mapping.get(key, "x") == oracle.get(key, "x")
        with pytest.raises(KeyError):
            mapping["nothing"]
    assert t.nodes["cpe:9"].ip == "127.2.0.9" and t.by_ip["127.2.0.7"] == "cpe:42"
    assert list(t.nodes).index("cpe:9") == 3
    assert t.roots == ["core"] and len(t) == len(by_id)
    assert ("cpe:3" in t) and ("nothing" not in t)


def test_a_sharded_mapping_is_rebuilt_when_unpickled() -> None:
    t = Topology(city(5, 300))
    nodes, by_ip = pickle.loads(pickle.dumps((t.nodes, t.by_ip)))
    assert list(nodes) == list(t.nodes) and [n.ip for n in nodes.values()] == [
        n.ip for n in t.nodes.values()
    ]
    assert list(by_ip.items()) == list(t.by_ip.items())


def test_a_change_is_found_across_topologies_cut_in_different_shards() -> None:
    before = city(10, 100)
    old = Topology(before)  # 2 shards
    for after in (city(10, 400, gone=5, moved=7), city(10, 100, gone=5, moved=7)):
        new = Topology(after)  # 8 shards, then 2
        was = {n.id: n for n in before}
        expected = {n.id for n in after if n.id not in was
                    or (was[n.id].parents, was[n.id].ip, list(was[n.id].children))
                    != (n.parents, n.ip, list(n.children))}  # fmt: skip
        found = topology.change(old, new)
        assert found.gone == {f"cpe:{r}" for r in range(5)}
        assert {f"cpe:{r}" for r in range(5, 12)} <= found.changed  # moved
        assert found.changed == expected


def test_sharded_targets_are_kept_as_the_probed_set_not_copied() -> None:
    class Engine:
        on_result: object = None

    t = Topology(city(3, 200))
    targets = t.by_ip.with_entries({"127.0.0.1": "anchor:127.0.0.1"})
    assert isinstance(targets, Sharded) and len(targets) == len(t.by_ip) + 1
    assert targets["127.0.0.1"] == "anchor:127.0.0.1" and targets["127.2.0.5"] == "cpe:5"
    assert "127.0.0.1" not in t.by_ip  # the topology's own is left as it was
    s = Scheduler(Engine(), lambda o: None, 10.0, 1000.0, clock=lambda: 1000.0)  # type: ignore[arg-type]
    plan = s.plan(targets)
    assert plan.wanted is targets and sorted(plan.new) == sorted(targets)


async def test_what_a_reload_replaced_is_freed_shard_by_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon, "RELEASE_GRACE", 0.0)
    t = Topology(city(3, 300))
    targets = t.by_ip.with_entries({"127.0.0.1": "anchor:127.0.0.1"})
    shards = [*t.nodes.shards, *targets.shards]
    await asyncio.wait_for(daemon._release([targets, t.nodes]), 5)
    assert not any(shards)


def _shape(t: Topology) -> dict[str, object]:
    """Everything a Topology works out from its nodes, as plain values."""
    return {
        "nodes": [(n.id, n.kind, n.ip, n.parents, list(n.children)) for n in t.nodes.values()],
        "by_ip": list(t.by_ip.items()),
        "inner": list(t.inner),
        "inner_children": t.inner_children,
        "unprobed": t.unprobed,
        "several_uplinks": t.several_uplinks,
        "feeds_several": t.feeds_several,
        "roots": t.roots,
        "served": t.served,
        "by_house": t.by_house,
    }


def _routers(count: int, first: int = 0) -> list[Node]:
    return [Node(f"cpe:{r}", "cpe", f"127.5.{r >> 8}.{r & 255}", (f"sw-{r % 3}",), f"cpe:{r}")
            for r in range(first, first + count)]  # fmt: skip


@pytest.mark.parametrize("case", ["plain", "id twice", "a leaf is a parent", "none"])
def test_leaves_given_apart_make_the_same_topology_as_given_with_the_nodes(case: str) -> None:
    # directory.with_cpes gives a city's routers as leaves: the passes that could find
    # nothing in them skip them, and the topology is the same as with every node given
    # in one list; where a leaf is not what it was promised to be, every node is looked at.
    def base() -> list[Node]:
        nodes = city(3, 40)
        if case == "id twice":  # a leaf's id already a node's: the leaf wins, in its place
            nodes.append(Node("cpe:205", "cpe", "127.8.0.1", ("sw-0",)))
        if case == "a leaf is a parent":
            nodes.append(Node("behind", "cpe", "127.8.0.2", ("cpe:210",)))
        return nodes

    leaves = [] if case == "none" else _routers(20, first=200)
    apart = Topology(base(), iter(_routers(20, first=200) if leaves else []))
    together = Topology(base() + leaves)
    assert _shape(apart) == _shape(together)
    if case == "a leaf is a parent":
        assert "cpe:210" in apart.inner and list(apart.nodes["cpe:210"].children) == ["behind"]
