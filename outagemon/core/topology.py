"""The network's shape: nodes, uplinks, who is cut off by a failure, who serves an address (pure).

Parsing takes the file's text and returns a Topology or raises TopologyError listing every
problem with its line; reading the file is the caller's business.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections import deque
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass
from itertools import chain, islice
from operator import attrgetter
from pathlib import Path
from typing import Any, Generic, TypeVar, cast, overload

import yaml

from outagemon.core import addresses
from outagemon.core.addresses import Address
from outagemon.core.text import bad_character
from outagemon.errors import TopologyError, read_text

FlatRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Served:
    """An address a node brings service to, optionally only some of its flats."""

    address: Address
    flats: FlatRanges | None = None  # None: the whole building

    def covers(self, flat: int | None) -> bool:
        if self.flats is None or flat is None:
            return True
        # A plain loop: twice as fast as any() over a generator, and loading calls it a
        # million times.
        for lo, hi in self.flats:  # noqa: SIM110
            if lo <= flat <= hi:
                return True
        return False

    def flats_text(self) -> str:
        if self.flats is None:
            return ""
        return ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in self.flats)


# The labels of a node that has none: one dict shared by all of them (a million routers).
NO_LABELS: dict[str, str] = {}


@dataclass(slots=True)
class Node:
    id: str
    kind: str
    ip: str | None = None
    parents: tuple[str, ...] = ()
    name: str = ""
    serves: tuple[Served, ...] = ()
    line: int = 0  # where it was declared, for messages
    # Filled by Topology; a node without children shares one empty tuple (a million
    # routers, no million empty lists).
    children: Sequence[str] = ()
    # The operator's own labels (a district, a region), inherited by the nodes below: they
    # route the alerts (outagemon/alerting). Nodes without any share one empty dict (never
    # changed after parsing).
    labels: dict[str, str] = dataclasses.field(default_factory=lambda: NO_LABELS)

    @property
    def probed(self) -> bool:
        return self.ip is not None


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

# A shard holds about this many entries at most (2**15 on average, the shard count a power
# of two): a dict grows by rehashing all it holds into a new table in one call into C,
# which holds the interpreter's lock throughout. A reload builds the topology in a thread
# beside the event loop, and a dict of a million (the routers) grew last in one call of
# 21-35 ms (CPU, loaded), writing ~30 MiB of fresh memory; a shard's last growth writes
# 1.5 MiB (shards of 2**16: each last growth 2.4-2.9 ms thread CPU at load 3.2-3.5, and
# the nodes' and addresses' 16 each; of 2**15, 1.3-1.5 ms).
SHARD_SIZE = 1 << 15
_ID = attrgetter("id")
_IP = attrgetter("ip")


class Sharded(Mapping[K, V], Generic[K, V]):
    """A read-only mapping held as a few dicts, the key's hash choosing one (see
    SHARD_SIZE); iterated shard by shard (`Nodes` and `Addresses`: in the nodes' order,
    as the dicts they replace were)."""

    __slots__ = ("_len", "mask", "shards")

    def __init__(self, size: int) -> None:
        """Empty, with shards for about `size` entries (filled by the builder only)."""
        count = 1
        while count * SHARD_SIZE < size:
            count *= 2
        self.shards: list[dict[K, V]] = [{} for _ in range(count)]
        self.mask = count - 1
        self._len = 0

    def __getitem__(self, key: K) -> V:
        return self.shards[hash(key) & self.mask][key]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V, /) -> V: ...
    @overload
    def get(self, key: K, default: T, /) -> V | T: ...
    def get(self, key: K, default: object = None, /) -> object:
        return self.shards[hash(key) & self.mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.shards[hash(key) & self.mask]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        return chain.from_iterable(self.shards)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def _values(self) -> Iterator[V]:
        return chain.from_iterable(s.values() for s in self.shards)

    def _items(self) -> Iterator[tuple[K, V]]:
        return chain.from_iterable(s.items() for s in self.shards)

    def parts(self) -> list[object]:
        """What holds the entries, for a caller that frees them a slice at a time."""
        return [*self.shards]

    def with_entries(self, extra: Mapping[K, V]) -> Sharded[K, V]:
        """A copy, shard by shard (no dict of them all), with more entries (theirs win);
        iterated shard by shard."""
        out: Sharded[K, V] = Sharded(len(self) + len(extra))
        if len(out.shards) == len(self.shards):
            out.shards = [dict(s) for s in self.shards]
            more: Iterable[tuple[K, V]] = extra.items()
        else:
            more = chain(self._items(), extra.items())
        for key, value in more:
            out.shards[hash(key) & out.mask][key] = value
        out._len = sum(map(len, out.shards))
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return len(self) == len(other) and all(
                k in other and other[k] == v for k, v in self._items()
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # The shards follow hash(), which differs between interpreters: rebuilt.
        return (_rebuilt, (type(self), list(self._items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} entries, {len(self.shards)} shards)"


def _rebuilt(kind: type[Sharded[Any, Any]], items: list[tuple[Any, Any]]) -> Sharded[Any, Any]:
    if kind is Nodes:
        return Nodes([v for _, v in items])
    out: Sharded[Any, Any] = Sharded(len(items))
    for key, value in items:
        out.shards[hash(key) & out.mask][key] = value
    out._len = sum(map(len, out.shards))
    return out


class _Values(ValuesView[V]):
    __slots__ = ()

    def __iter__(self) -> Iterator[V]:
        return cast("Sharded[Any, V]", self._mapping)._values()  # type: ignore[attr-defined]


class _Items(ItemsView[K, V]):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return cast("Sharded[K, V]", self._mapping)._items()  # type: ignore[attr-defined]


class Nodes(Sharded[str, "Node"]):
    """Node id -> node, sharded (a city's million routers), in the order given."""

    __slots__ = ("order",)

    def __init__(self, nodes: Iterable[Node]) -> None:
        order = nodes if isinstance(nodes, list) else list(nodes)
        super().__init__(len(order))
        shards, mask = self.shards, self.mask
        for node in order:
            shards[hash(node.id) & mask][node.id] = node
        self._len = sum(map(len, shards))
        if self._len != len(order):  # an id given twice: a dict's place, the last node
            firsts = dict.fromkeys(map(_ID, order))
            order = [self[n] for n in firsts]
        self.order: list[Node] = order

    def __iter__(self) -> Iterator[str]:
        return map(_ID, self.order)

    def _values(self) -> Iterator[Node]:
        return iter(self.order)

    def _items(self) -> Iterator[tuple[str, Node]]:
        return zip(map(_ID, self.order), self.order, strict=True)

    def parts(self) -> list[object]:
        return [*self.shards, self.order]


class Addresses(Sharded[str, str]):
    """Address -> the node probed there, sharded, in the nodes' order."""

    __slots__ = ("_keys", "_nodes", "repeated")

    def __init__(self, nodes: Nodes) -> None:
        super().__init__(len(nodes))
        shards, mask = self.shards, self.mask
        probed = 0
        # A loop of Python, not one call into C over the million (a list of the probed
        # nodes made by filter() held the event loop for 69 ms beside a reload).
        for node in nodes.order:
            ip = node.ip
            if ip:
                shards[hash(ip) & mask][ip] = node.id
                probed += 1
        self._len = sum(map(len, shards))
        # An address given twice (refused in a file; two subscribers' routers at one are
        # found here, see directory.load; possible when built in code): the keys in a
        # dict's order, made when first iterated, else the nodes' own.
        self.repeated = self._len != probed
        self._keys: list[str] | None = None
        self._nodes = nodes

    def __iter__(self) -> Iterator[str]:
        if self.repeated:
            if self._keys is None:
                self._keys = list(dict.fromkeys(n.ip for n in self._nodes.order if n.ip))
            return iter(self._keys)
        return map(_IP, filter(_IP, self._nodes.order))

    def _values(self) -> Iterator[str]:
        return map(self.__getitem__, self)

    def _items(self) -> Iterator[tuple[str, str]]:
        return ((k, self[k]) for k in self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Addresses, (self._nodes,))


class Topology:
    """The graph; built once per load, never mutated afterwards."""

    def __init__(self, nodes: Iterable[Node], leaves: Iterable[Node] = ()) -> None:
        """`leaves`: more nodes, after `nodes`, each promised a probed router under one
        uplink (kind cpe, an ip, one parent, serving nothing, no labels, children not set):
        a city's million subscribers' routers (`directory.with_cpes`). The passes that
        could find nothing in them (children of their own, several uplinks, roots, no
        address, buildings served) look only at `nodes`; should one of them be any
        node's parent, or share an id with another node, every node is looked at."""
        # Sharded, never one dict of a million (see SHARD_SIZE); `inner` the small dict
        # of the nodes that are not routers (a router: a cpe without children), for the
        # decisions' walks, which look only at those.
        given = nodes if isinstance(nodes, list) else list(nodes)
        # The leaves made as the list takes them in, by extend() (no count, pair or chain
        # a leaf: ~0.1 us each).
        every = [*given]
        every += leaves
        self.nodes: Nodes = Nodes(every)
        order = self.nodes.order
        head: Sequence[Node] = order
        if len(order) > len(given) and order is every:
            ids = {n.id for n in given}
            if all(p in ids for n in given for p in n.parents):  # no leaf is a parent
                head = given
        self._ancestors: dict[str, list[str]] = {}
        children: dict[str, list[str]] = {}
        # Nodes with more than one uplink: few, and the cut's walk asks about every node.
        self.several_uplinks: set[str] = set()
        for node in head:
            if len(node.parents) > 1:
                self.several_uplinks.add(node.id)
            for parent in node.parents:
                found = children.get(parent)
                if found is None:
                    children[parent] = [node.id]
                else:
                    found.append(node.id)
        # The children that are not leaves (only those can be inner nodes).
        own = children if head is order else {p: [*kids] for p, kids in children.items()}
        for node in islice(order, len(head), None):  # the leaves (if apart): one uplink
            parent = node.parents[0]
            found = children.get(parent)
            if found is None:
                children[parent] = [node.id]
            else:
                found.append(node.id)
        for node in head:
            node.children = children.get(node.id, ())
        # Every node but the routers without children (kind cpe): those are most of the
        # nodes and explain no failure; this is the small set of the others.
        self.inner: dict[str, Node] = {n.id: n for n in head if n.children or n.kind != "cpe"}
        self.inner_nodes: set[str] = set(self.inner)
        # The nodes without an address (few): whether a node is probed, asked of a
        # router, without looking the router up.
        self.unprobed: set[str] = {n.id for n in head if n.ip is None}
        # For the walks from a root down (an incident's members): the children of each
        # node that are inner nodes (only those are walked on), and the nodes with a child
        # that has several uplinks (only below those can a walk reach a node twice).
        inner = self.inner_nodes
        self.inner_children: dict[str, tuple[str, ...]] = {}
        for parent, kids in own.items():
            walked = tuple(filter(inner.__contains__, kids))
            if walked:
                self.inner_children[parent] = walked
        self.feeds_several: set[str] = {
            p for n in self.several_uplinks for p in self.nodes[n].parents
        }
        self.roots: list[str] = [n.id for n in head if not n.parents]
        self.by_ip: Addresses = Addresses(self.nodes)
        # building key -> what serves it; and street|house -> building keys, for callers
        # who leave out the building, letter or type.
        self.served: dict[str, list[tuple[Served, str]]] = {}
        self.by_house: dict[str, set[str]] = {}
        for node in head:
            for s in node.serves:
                self.served.setdefault(s.address.key, []).append((s, node.id))
                self.by_house.setdefault(s.address.house_key, set()).add(s.address.key)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        nodes = self.nodes  # Sharded.__contains__, inline: asked of every probe result
        return node_id in nodes.shards[hash(node_id) & nodes.mask]

    def ancestors(self, node_id: str) -> list[str]:
        """Every node above this one, nearest first (breadth-first over all uplinks).

        Remembered per node: the correlator asks for the same few often."""
        found = self._ancestors.get(node_id)
        if found is not None:
            return found
        node = self.nodes[node_id]
        if not node.children and len(node.parents) == 1:
            # A leaf (a subscriber's router): built from its parent's, and not remembered,
            # so a million routers cost no memory.
            return [node.parents[0], *self.ancestors(node.parents[0])]
        order = self._walk(node.parents, lambda n: n.parents)
        self._ancestors[node_id] = order
        return order

    def lowest_shared(self, node_ids: Iterable[str]) -> str | None:
        """The lowest node at or above every one of these (ties: the first by id), or None
        when they share none. A node not in the topology (a call recorded before a
        reload took it away) is at or above itself only."""
        common: set[str] | None = None
        for n in node_ids:
            chain = {n, *self.ancestors(n)} if n in self else {n}
            common = chain if common is None else common & chain
        if not common:
            return None
        if len(common) == 1:
            return next(iter(common))
        # The lowest: one with no other common node below it (the most ancestors).
        return min(common, key=lambda n: (-len(self.ancestors(n)), n))

    def descendants(self, node_id: str) -> list[str]:
        """Every node below this one, nearest first."""
        return self._walk(self.nodes[node_id].children, lambda n: n.children)

    def _walk(self, start: Iterable[str], step: Callable[[Node], Iterable[str]]) -> list[str]:
        """Breadth-first from `start`, each node once, in the order first reached."""
        seen: set[str] = set()
        order: list[str] = []
        queue = deque(start)
        while queue:
            current = queue.popleft()
            if current in seen:
                continue
            seen.add(current)
            order.append(current)
            queue.extend(step(self.nodes[current]))
        return order

    def cut_off(self, failed: set[str]) -> set[str]:
        """The failed nodes and every node whose every path to a root runs through one."""
        reached: set[str] = set()
        queue = deque(r for r in self.roots if r not in failed)
        reached.update(queue)
        while queue:
            for child in self.nodes[queue.popleft()].children:
                if child not in reached and child not in failed:
                    reached.add(child)
                    queue.append(child)
        return set(self.nodes) - reached

    def serving(self, address: Address, flat: int | None = None) -> list[str]:
        """The most specific nodes serving a building (and flat, when given)."""
        return self.serving_key(address.key, flat)

    def serving_key(self, key: str, flat: int | None = None) -> list[str]:
        """`serving`, for the building of this key."""
        entries = self.served.get(key, [])
        if flat is not None:
            exact = [n for s, n in entries if s.flats is not None and s.covers(flat)]
            if exact:
                return exact
            return [n for s, n in entries if s.flats is None]
        return [n for _, n in entries]

    def matching(self, query: Address) -> list[str]:
        """Keys of the served buildings a written address can mean.

        A part the writer gave must agree; a part they left out may be anything, which is
        what makes "Ленина 5" ambiguous between 5, 5к1 and 5к2.
        """
        out: list[str] = []
        for key in self.by_house.get(query.house_key, ()):
            c = self.served[key][0][0].address
            if query.street_type and c.street_type and query.street_type != c.street_type:
                continue
            if query.city and c.city and query.city != c.city:
                continue
            if (
                (query.building and query.building != c.building)
                or (query.letter and query.letter != c.letter)
                or (query.structure and query.structure != c.structure)
            ):
                continue
            out.append(key)
        return sorted(out)

    def buildings(self) -> Iterator[Address]:
        """Every served building, once."""
        for entries in self.served.values():
            yield entries[0][0].address


@dataclass(frozen=True, slots=True)
class Change:
    """What a reload changed between two topologies, as the correlator sees the graph:
    `changed` the nodes of `new` that are new or whose kind, address, uplinks or
    children differ in `old`; `gone` the nodes of `old` not in `new`."""

    old: Topology
    new: Topology
    changed: frozenset[str]
    gone: frozenset[str]
    # The changed nodes, and the parents (in `new`) that changed or gone nodes had in
    # `old`: what weighs its inference again. Made here, off the event loop (13,000
    # changes in a city took the loop 113 ms one by one).
    reconsider: frozenset[str]

    def __repr__(self) -> str:
        # Sizes, not the node ids (thousands at a changed reload; see Plan.__repr__).
        return f"Change({len(self.changed)} changed, {len(self.gone)} gone)"


def change(old: Topology, new: Topology) -> Change:
    """The difference of two topologies (a million nodes: made off the event loop, so
    that the correlator touches only what changed)."""
    # Shard by shard when both are cut alike (the same key is in the same shard of
    # each): each look-up a dict's own.
    pairs: Iterable[tuple[Mapping[str, Node], Mapping[str, Node]]]
    if len(old.nodes.shards) == len(new.nodes.shards):
        pairs = zip(old.nodes.shards, new.nodes.shards, strict=True)
    else:
        pairs = ((old.nodes, new.nodes),)
    changed: list[str] = []
    gone: list[str] = []
    for before, now in pairs:
        for node in now.values():
            was = before.get(node.id)
            if (
                was is None
                or was.parents != node.parents
                or was.ip != node.ip
                or was.kind != node.kind
                or len(was.children) != len(node.children)
                or (node.children and list(was.children) != list(node.children))
            ):
                changed.append(node.id)
        gone += [n for n in before if n not in now]
    nodes, before_all = new.nodes, old.nodes
    reconsider = set(changed)
    for n in changed:
        if (had := before_all.get(n)) is not None:
            reconsider.update(p for p in had.parents if p in nodes)
    for n in gone:
        reconsider.update(p for p in before_all[n].parents if p in nodes)
    return Change(old, new, frozenset(changed), frozenset(gone), frozenset(reconsider))


# -- loading ---------------------------------------------------------------------------


# libyaml's parser when PyYAML was built with it: a 5,000-switch file loads 10x faster.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """A safe loader that remembers the line of every mapping (as key "__line__")."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_NODE_KEYS = {"id", "kind", "ip", "parents", "name", "serves", "labels"}
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_flats(value: Any) -> FlatRanges:
    """ "1-36", "1-36, 40-72", 5 or [1, "3-4"] -> ((1, 36), ...); ValueError with the reason."""
    items = value if isinstance(value, list) else str(value).split(",")
    ranges: list[tuple[int, int]] = []
    for item in items:
        text = str(item).strip()
        lo_text, _, hi_text = text.partition("-")
        if not _number(lo_text) or (hi_text and not _number(hi_text)):
            raise ValueError(f"{text!r} is not a flat number or range like 1-36")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        if hi < lo:
            raise ValueError(f"the range {text!r} runs backwards")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError("no flats are given")
    return tuple(sorted(ranges))


def _overlap(a: FlatRanges | None, b: FlatRanges | None) -> bool:
    if a is None or b is None:
        return True
    return any(alo <= bhi and blo <= ahi for alo, ahi in a for blo, bhi in b)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_NOTHING: Any = object()


class _Unusual(Exception):
    """Something the event composer leaves to PyYAML's own (anchors, aliases, explicit
    tags, merge keys, a mapping or a list as a key, several documents)."""


def _compose(loader: _LineLoader) -> tuple[Any, bool]:
    """The document's data, built from libyaml's events one at a time, as the loader
    would build it (each mapping with its "__line__"); and whether any of its texts
    holds a character `bad_character` refuses (each text looked at once: the file
    repeats most of them, and a node's entry need not be walked again for it).

    `yaml.load` with libyaml composes the whole document into a graph of nodes in one
    call into C, then constructs the data from it, remembering every node in a dict,
    and frees the graph in one go: a reload loads the topology in a thread beside the
    event loop, and each of those single calls held the interpreter's lock, and the
    loop, for up to 70-110 ms at 25,000 nodes. Here each call into C parses one event,
    no node graph or dict of nodes is made, and the interpreter can switch between any
    two. Scalars are resolved and constructed by the loader's own resolver and
    constructors (remembered by text: a file repeats its kinds and parents)."""
    suspect = False
    events = yaml.events
    scalar_event, mapping_start, sequence_start = (
        events.ScalarEvent, events.MappingStartEvent, events.SequenceStartEvent)  # fmt: skip
    mapping_end, sequence_end = events.MappingEndEvent, events.SequenceEndEvent
    get_event, resolve, constructors = loader.get_event, loader.resolve, loader.yaml_constructors
    scalar_node = yaml.ScalarNode
    scalars: dict[tuple[str, Any], Any] = {}
    get_event()  # the stream's start
    if loader.check_event(events.StreamEndEvent):
        return None, suspect
    get_event()  # the document's start
    stack: list[list[Any]] = []  # [container, the key waiting for its value, line]
    while True:
        event = get_event()
        kind = type(event)
        if kind is scalar_event:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _Unusual
            key = (event.value, event.implicit)
            value = scalars.get(key, _NOTHING)
            if value is _NOTHING:
                tag = resolve(scalar_node, event.value, event.implicit)
                if tag in (_MERGE_TAG, _VALUE_TAG) or tag not in constructors:
                    raise _Unusual
                node = scalar_node(tag, event.value, event.start_mark, event.end_mark,
                                   event.style)  # fmt: skip
                value = scalars[key] = constructors[tag](loader, node)
                # Every text in the data, keys too, is a scalar's: its value as written.
                suspect = suspect or bad_character(event.value) is not None
        elif kind is mapping_start or kind is sequence_start:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _Unusual
            container: dict[Any, Any] | list[Any] = {} if kind is mapping_start else []
            stack.append([container, _NOTHING, event.start_mark.line + 1])
            continue
        elif kind is mapping_end:
            value, _, line = stack.pop()
            value["__line__"] = line
        elif kind is sequence_end:
            value = stack.pop()[0]
        else:  # an alias
            raise _Unusual
        if not stack:
            break
        top = stack[-1]
        container = top[0]
        if type(container) is list:
            container.append(value)
        elif top[1] is _NOTHING:
            if type(value) is dict or type(value) is list:
                raise _Unusual
            top[1] = value
        else:
            container[top[1]] = value
            top[1] = _NOTHING
    get_event()  # the document's end
    if not loader.check_event(events.StreamEndEvent):
        raise _Unusual
    return value, suspect


def _read_yaml(text: str) -> tuple[Any, bool]:
    """The file's data: event by event (`_compose`), or by PyYAML's own load when the
    file uses what the composer leaves to it (the same data either way); and False when
    no text in it holds a bad character (True: maybe, each entry to be searched)."""
    # Given a stream, not the str: the C parser reads it a block at a time, where a str
    # is encoded whole in one call into C (a million routers' file held a reload's event
    # loop 10 ms beside its thread; 1 ms a block). Marks and messages are the same.
    loader = _LineLoader(io.StringIO(text))  # a SafeLoader subclass: no arbitrary objects
    try:
        return _compose(loader)
    except _Unusual:
        pass
    finally:
        loader.dispose()
    return yaml.load(io.StringIO(text), Loader=_LineLoader), True


def parse_text(text: str, path: Path) -> Topology:
    """Parse a topology file's text; raise TopologyError listing every problem by line."""
    try:
        raw, suspect = _read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "the file"
        reason = getattr(e, "problem", None) or str(e)
        raise TopologyError([f"{path}: {where}: not valid YAML: {reason}."]) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list):
        raise TopologyError([f"{path}: the file must hold a list under 'nodes:'."])
    problems: list[str] = []
    nodes: list[Node] = []
    items = raw["nodes"]
    read = _Read()
    for i, item in enumerate(items):
        # Each entry dropped once read: the list's 25,000 mappings freed at once at the
        # end held the event loop beside a reload's thread for 35 ms.
        items[i] = None
        node = _parse_node(item, path, problems, suspect, read)
        if node is not None:
            nodes.append(node)
        del item
    nodes = _check_graph(nodes, path, problems)
    if not items and not problems:
        # Every caller would hear "not_found", and nothing would be probed.
        problems.append(f"{path}: 'nodes:' is empty: list the network's nodes under it.")
    if problems:
        raise TopologyError(_in_line_order(problems, path))
    return Topology(nodes)


_LINE = re.compile(r"line (\d+):")


def _in_line_order(problems: list[str], path: Path) -> list[str]:
    """The problems as the file reads, top to bottom (they are found check by check);
    those about the whole file first."""
    prefix = f"{path}: "

    def line(problem: str) -> int:
        found = _LINE.match(problem, len(prefix)) if problem.startswith(prefix) else None
        return int(found.group(1)) if found is not None else 0

    return sorted(problems, key=line)


def _parse_node(
    item: Any, path: Path, problems: list[str], suspect: bool = True, read: _Read | None = None
) -> Node | None:
    """The entry's node (None: refused, the problem told); `suspect`: some text in the
    file may hold a bad character (False: the composer found none, see `_compose`);
    `read`: what the file's earlier entries read."""
    if not isinstance(item, dict):
        problems.append(f"{path}: each entry under 'nodes:' must be a mapping, not {item!r}.")
        return None
    line = item.pop("__line__", 0)
    if isinstance(item.get("labels"), dict):
        item["labels"].pop("__line__", None)  # the loader's mark of a line, not a label
    where = f"{path}: line {line}"
    for key, text in _strings(item) if suspect else ():
        bad = bad_character(text)
        if bad is not None:
            problems.append(f"{where}: {key} holds {bad}.")
            return None
    for key in item:
        if key not in _NODE_KEYS:
            problems.append(f"{where}: unknown key {key!r}.")
    node_id = item.get("id")
    if node_id is None:
        problems.append(f"{where}: id is required (a string without spaces).")
        return None
    if not isinstance(node_id, str | int) or not str(node_id).strip() or " " in str(node_id):
        problems.append(f"{where}: id must be a string without spaces, not {node_id!r}.")
        return None
    node_id = str(node_id)
    where = f"{where}: node {node_id!r}"
    kind = item.get("kind")
    if not isinstance(kind, str) or not kind:
        if kind is None or kind == "":
            said = "kind is required"
        else:  # kind: 7, or a list
            said = f"kind must be a word, not {kind!r}"
        problems.append(f"{where}: {said} (core, aggregation, access, segment, ...).")
        kind = "unknown"
    ip = item.get("ip")
    if ip is not None:
        canonical = addresses.canonical_ip(str(ip))
        if canonical is None:
            problems.append(f"{where}: ip {ip!r} is not an IP address.")
        ip = canonical
    parents = item.get("parents", []) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str | int) for p in parents):
        problems.append(f"{where}: parents must be a list of node ids.")
        parents = []
    name = item.get("name", "") or ""
    serves: list[Served] = []
    raw_serves = item.get("serves", []) or []
    if not isinstance(raw_serves, list):
        problems.append(f"{where}: serves must be a list of addresses.")
        raw_serves = []
    for entry in raw_serves:
        served = _parse_served(entry, where, problems, read)
        if served is not None:
            serves.append(served)
    labels = _parse_labels(item.get("labels", {}) or {}, where, problems)
    return Node(
        id=node_id,
        kind=kind,
        ip=ip,
        parents=tuple(dict.fromkeys(str(p) for p in parents)),
        name=str(name),
        serves=tuple(serves),
        line=line,
        labels=labels or NO_LABELS,
    )


def _parse_labels(raw: Any, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append(f"{where}: labels must be a mapping of names to values "
                        f"(district: north), not {raw!r}.")  # fmt: skip
        return {}
    labels: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            problems.append(f"{where}: label name {name!r} must be letters, digits and _, "
                            "not starting with a digit.")  # fmt: skip
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(f"{where}: label {name} must be a text or a number, not {value!r}.")
        else:
            labels[name] = str(value)
    return labels


def inherited_label(topology: Topology, node_id: str, name: str) -> str | None:
    """A node's label, or the nearest one above it that has it."""
    if node_id not in topology:
        return None
    for n in (node_id, *topology.ancestors(node_id)):
        value = topology.nodes[n].labels.get(name)
        if value is not None:
            return value
    return None


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every text in a node's entry, with the key it is under."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k, str(k) if isinstance(k, str) else key)
            yield from _strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


class _Read:
    """What a file's parse has read already, by the text as written: a building's
    address, and its flats' ranges, are written again for each of its entrances."""

    __slots__ = ("addresses", "flats")

    def __init__(self) -> None:
        self.addresses: dict[str, Address | None] = {}
        # (type, value) -> the ranges, or the reason they are refused (True == 1 as keys)
        self.flats: dict[tuple[type, object], FlatRanges | str] = {}

    def address(self, text: str) -> Address | None:
        found = self.addresses.get(text, _NOTHING)
        if found is _NOTHING:
            found = self.addresses[text] = addresses.parse(text)
        return cast("Address | None", found)

    def flat_ranges(self, value: Any) -> FlatRanges:
        """parse_flats, remembered for a text or a number."""
        if not isinstance(value, str | int):
            return parse_flats(value)
        key = (type(value), value)
        found = self.flats.get(key)
        if found is None:
            try:
                found = parse_flats(value)
            except ValueError as e:
                found = str(e)
            self.flats[key] = found
        if isinstance(found, str):
            raise ValueError(found)
        return found


def _parse_served(
    entry: Any, where: str, problems: list[str], read: _Read | None = None
) -> Served | None:
    read = read or _Read()
    flats: FlatRanges | None = None
    if isinstance(entry, dict):
        entry.pop("__line__", None)
        extra = set(entry) - {"address", "flats"}
        if extra:
            problems.append(f"{where}: unknown key(s) in serves: {', '.join(sorted(extra))}.")
        text = entry.get("address")
        if "flats" in entry:
            try:
                flats = read.flat_ranges(entry["flats"])
            except ValueError as e:
                problems.append(f"{where}: flats of {text!r}: {e}.")
                return None
    else:
        text = entry
    if not isinstance(text, str):
        problems.append(f"{where}: an address in serves must be text, not {text!r}.")
        return None
    parsed = read.address(text)
    if parsed is None:
        problems.append(
            f"{where}: cannot read the address {text!r}: a street and a house number are needed."
        )
        return None
    if parsed.flat:
        flat = int(parsed.flat) if _number(parsed.flat) else None
        if flat is not None and flats is None:
            flats = ((flat, flat),)
        parsed = dataclasses.replace(parsed, flat="")
    return Served(parsed, flats)


def _check_graph(nodes: list[Node], path: Path, problems: list[str]) -> list[Node]:
    by_id: dict[str, Node] = {}
    for node in nodes:
        if node.id in by_id:
            first = by_id[node.id]
            problems.append(
                f"{path}: line {node.line}: duplicate id {node.id!r} (first at line {first.line})."
            )
            continue
        by_id[node.id] = node
    ips: dict[str, Node] = {}
    for node in by_id.values():
        for parent in node.parents:
            if parent not in by_id:
                problems.append(
                    f"{path}: line {node.line}: node {node.id!r} has an unknown parent {parent!r}."
                )
        if node.ip is not None:
            other = ips.get(node.ip)
            if other is not None:
                problems.append(
                    f"{path}: line {node.line}: node {node.id!r} has ip {node.ip}, "
                    f"as does {other.id!r} (line {other.line})."
                )
            else:
                ips[node.ip] = node
    for cycle in _cycles(by_id):
        first = by_id[cycle[0]]
        problems.append(
            f"{path}: line {first.line}: the parents form a cycle: {' -> '.join(cycle)}."
        )
    served: dict[str, list[tuple[Served, Node]]] = {}
    by_house: dict[str, list[str]] = {}  # street|house -> building keys, as callers look up
    for node in by_id.values():
        for s in node.serves:
            for other_s, other in served.get(s.address.key, []):
                if not _overlap(s.flats, other_s.flats):
                    continue
                flats = f" for flats {s.flats_text()}" if s.flats else ""
                if other is node:
                    overlap = (f" (flats {other_s.flats_text() or 'all'} and "
                               f"{s.flats_text() or 'all'} overlap)"
                               if s.flats != other_s.flats else "")  # fmt: skip
                    problems.append(
                        f"{path}: line {node.line}: node {node.id!r} lists the address "
                        f"{s.address.text()!r} twice in serves{overlap}: keep one entry."
                    )
                else:
                    problems.append(
                        f"{path}: line {node.line}: the address {s.address.text()!r}{flats} is "
                        f"served by both {other.id!r} (line {other.line}) and {node.id!r}."
                    )
            if s.address.key not in served:  # a building written for the first time
                for key in by_house.get(s.address.house_key, ()):
                    other_s, other = served[key][0]
                    if _same_to_callers(s.address, other_s.address):
                        problems.append(
                            f"{path}: line {node.line}: the address {s.address.text()!r} (node "
                            f"{node.id!r}) is written {other_s.address.text()!r} at line "
                            f"{other.line} (node {other.id!r}): a caller naming it matches both "
                            "and hears 'ambiguous'; write the street type in both or in neither."
                        )
                by_house.setdefault(s.address.house_key, []).append(s.address.key)
            served.setdefault(s.address.key, []).append((s, node))
    # Unknown parents are dropped so the rest can still be checked and reported.
    for node in by_id.values():
        node.parents = tuple(p for p in node.parents if p in by_id)
    return list(by_id.values())


def _same_to_callers(a: Address, b: Address) -> bool:
    """Two buildings written apart only by a street type one of them leaves out ("Ленина
    5", "ул. Ленина, д. 5"): every caller's address matches both (Topology.matching)."""
    return (
        a.street_type != b.street_type
        and not (a.street_type and b.street_type)
        and (a.city, a.building, a.letter, a.structure)
        == (b.city, b.building, b.letter, b.structure)
    )


def _cycles(by_id: dict[str, Node]) -> list[list[str]]:
    """Each cycle in the parent links, once, as a path that returns to its start."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(by_id, white)
    found: list[list[str]] = []
    for start in by_id:
        if colour[start] != white:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(by_id[start].parents))]
        colour[start] = grey
        path = [start]
        while stack:
            current, parents = stack[-1]
            advanced = False
            for parent in parents:
                if parent not in by_id:
                    continue
                if colour[parent] == grey:
                    found.append([*path[path.index(parent) :], parent])
                elif colour[parent] == white:
                    colour[parent] = grey
                    path.append(parent)
                    stack.append((parent, iter(by_id[parent].parents)))
                    advanced = True
                    break
            if not advanced:
                colour[current] = black
                path.pop()
                stack.pop()
    return found


def load(path: Path) -> Topology:
    """Read and parse a topology file."""
    return parse_text(read_text(path, TopologyError), path)


def _number(text: str) -> bool:
    """ASCII digits: "²" and "١" are digits to str.isdigit(), not to int()."""
    text = text.strip()
    return text.isascii() and text.isdigit()
