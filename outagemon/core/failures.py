"""The failed set: nodes down by their own probes, and nodes inferred down.

A node without an address (an entrance, a cable), or one that still answers while its
children fail together, is inferred down from them. `Failures` keeps the set of failed
nodes as the decisions need it: what joined it and whether anything left it since the
last decision, and the cut (everything whose every uplink leads into a failed node).
`Correlator` extends it with the decisions into incidents.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Container, Iterable, Iterator
from itertools import chain
from sys import getsizeof

from outagemon.core.health import Health, Settings, State
from outagemon.core.topology import Node, Topology

# `_infer` lists the parents of every failed node when they are fewer than this many
# times the parents it weighs (each of those else looked up with its children).
FAILING_LISTED = 10

# The parts of `Parted` (a power of two): a million nodes down are 64 tables of ~16,000.
PARTS = 64
# A part whose table is bigger than this many bytes a name (and 8) is copied into a table
# its size before it is walked: a set's table never shrinks as names leave it, and a walk
# reads every slot. (A set just grown holds 33-80 bytes a name; the 64 parts of a city
# that was all down are 32 MiB of empty slots as it sees again, 5 ms a walk under load.)
SPARSE_BYTES = 1024


class Parted:
    """A set of names kept as PARTS smaller sets, a name in the one its hash picks: as a
    city goes down one result at a time, no table grows in one go past 1/PARTS of it.

    (One set of a million grew by copying 157,000, 315,000, then 629,000 names into a
    table twice that size, each within one result: 7-31 ms of one step of results.)"""

    __slots__ = ("parts",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        # A name's part: parts[hash(name) & (PARTS - 1)] (`_fail` and `_unfail` test and
        # change it there, no call each: the look at a city's every node as it sees again).
        self.parts: list[set[str]] = [set() for _ in range(PARTS)]
        for n in names:
            self.add(n)

    def __contains__(self, name: object) -> bool:
        return name in self.parts[hash(name) & (PARTS - 1)]

    def add(self, name: str) -> None:
        self.parts[hash(name) & (PARTS - 1)].add(name)

    def discard(self, name: str) -> None:
        self.remove(name)

    def remove(self, name: str) -> bool:
        """Take a name out; whether it was in. A part whose last name leaves is a new
        empty table (see `compact`), the old one freed now."""
        i = hash(name) & (PARTS - 1)
        part = self.parts[i]
        if name not in part:
            return False
        part.discard(name)
        if not part:
            self.parts[i] = set()
        return True

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __iter__(self) -> Iterator[str]:
        self.compact()
        return chain.from_iterable(self.parts)

    def compact(self) -> None:
        """Parts that shed most of their names (most of a city that was down answers,
        the rest does not) copied into tables their size, so that a walk reads their
        names, not the empty slots they left. Called before every walk (64 sizes read).
        A part whose last name leaves is a new empty set at once (`discard`, and
        `Failures._unfail`): a city that was all down and sees again leaves nothing
        to copy, nor 32 MiB to free in one step."""
        parts = self.parts
        for i, part in enumerate(parts):
            if getsizeof(part) > SPARSE_BYTES * (len(part) + 8):
                parts[i] = set(part)

    def isdisjoint(self, names: Iterable[str]) -> bool:
        """No name of `names` in the set (stops at the first found)."""
        parts = self.parts
        for n in names:  # noqa: SIM110 (a loop, not a generator: _infer's hot path)
            if n in parts[hash(n) & (PARTS - 1)]:
                return False
        return True

    def within(self, names: Container[str]) -> Parted:
        """A new set of these names that are in `names`, part by part (a set each)."""
        self.compact()
        kept = Parted()
        kept.parts = [{n for n in part if n in names} for part in self.parts]
        return kept

    def with_keys(self, more: Iterable[str]) -> set[str]:
        """A new set of these names and `more`."""
        self.compact()
        found: set[str] = set(more)
        for part in self.parts:
            found |= part
        return found


class Cut:
    """The cut of a failed set whose part below `shadow` (failed nodes: the anchors while
    the monitor is blind) is found when asked, not listed: an anchor's cut is the whole
    city, a million nodes a set would take 100 ms to fill and as long to free.

    `base` holds the failed nodes but the shadow's and part of what they cut off (never a
    node that is not cut off); a node is in the cut if it is in `base` or `shadow`, or
    all its uplinks (it has some) are in the cut. Answers for nodes with children are
    kept until `base` grows."""

    __slots__ = ("_inner", "_memo", "_nodes", "base", "shadow")

    def __init__(self, base: set[str], shadow: frozenset[str], topology: Topology) -> None:
        self.base = base
        self.shadow = shadow
        self._nodes = topology.nodes
        self._inner = topology.inner
        self._memo: dict[str, bool] = {}

    def __contains__(self, node: object) -> bool:
        if node in self.base or node in self.shadow:
            return True
        if not isinstance(node, str):
            return False
        found = self._memo.get(node)
        if found is not None:
            return found
        here: Node | None = self._inner.get(node)
        if here is None:  # a router: its answer is its uplink's (kept), never kept itself
            here = self._nodes.get(node)
            if here is None or not here.parents:
                return False
            parents = here.parents
            return parents[0] in self if len(parents) == 1 else self.issuperset(parents)
        found = bool(here.parents) and self.issuperset(here.parents)
        self._memo[node] = found
        return found

    def issuperset(self, nodes: Iterable[str]) -> bool:
        return all(n in self for n in nodes)

    def __and__(self, other: set[str]) -> set[str]:
        found = self.base & other
        found.update(n for n in other - found if n in self)
        return found

    def grown(self) -> None:
        """`base` grew: an answer "not cut off" kept may be wrong now."""
        self._memo.clear()


class Failures(Health):
    """The failed set, kept up to date from the health of each node.

    Invariants: `_down` is exactly the topology nodes in state DOWN; `inferred` the nodes
    inferred down, with when (never one DOWN by its own probes); `_added` what joined
    either since the last decision, and `_removed` is set when anything left them (the
    next decision then starts afresh, unless each that left is in `_left` and still cut
    off by what fails: then the cut is the same); `_cut_cache` is the cut of the failed
    set as of the last decision (blind, a `Cut`: what the failed anchors cut off is
    found when asked), and `_dirty` is set when it may be stale; `_reconsider` holds
    the parents whose inference must be evaluated again, and `_changed` (after a reload)
    the nodes whose parents' inference must be; `_reloaded` a reload's own of both
    (`Change.reconsider`, `Change.changed`), kept as made until the next inference. The
    failed set changes only through _fail, _unfail, _infer_down and _infer_up."""

    def __init__(self, topology: Topology, settings: Settings, anchors: Iterable[str]) -> None:
        super().__init__(topology, settings, anchors)
        self.inferred: dict[str, float] = {}  # node -> when it was inferred down
        self.blind = False  # every anchor is down: nothing is inferred, nothing opens
        self._sight_at = -math.inf  # when the monitor last regained its sight
        self._dirty = True
        self._changed: set[str] = set()  # nodes whose parents to weigh again (a reload's)
        # Probed nodes in state DOWN: as a city goes down, in parts (no table of a
        # million grown in one result, see `Parted`).
        self._down = Parted()
        # A set, or while blind a `Cut` whose shadow is the anchors (see `_decide`).
        self._cut_cache: set[str] | Cut = set()
        self._reconsider: set[str] = set()  # parents whose inference to evaluate again
        # A reload's (reconsider, changed), made off the event loop: read as they are by
        # the next `_infer`, not copied into the two sets above at the swap (16,000 and
        # 21,000 nodes at a 1 % change of a million: 2-3.5 ms of the swap's step).
        self._reloaded: list[tuple[frozenset[str], frozenset[str]]] = []
        self._added: set[str] = set()  # failed since the last decision
        self._removed = True  # something stopped failing: the next decision starts afresh
        # What left the failed set since the last decision (None: unknown, as after a new
        # topology): when each is still cut off, the cut and its roots stay as they are.
        self._left: set[str] | None = None

    @property
    def nodes_down(self) -> int:
        """Topology nodes down by their own probes."""
        return len(self._down)

    # -- what health tells the failed set --------------------------------------------
    # The failed set (nodes down by their own probes, or inferred down) changes only
    # through _fail, _unfail, _infer_down and _infer_up, so that a decision knows what
    # was added since the last one.

    def _fail(self, node: str) -> None:
        """Down by its own probes: it joins the failed set (and what was added)."""
        if node in self.topology:
            down = self._down.parts[hash(node) & (PARTS - 1)]
            if node not in down:
                down.add(node)
                self._added.add(node)

    def _unfail(self, node: str) -> None:
        """No longer down by its own probes: the next decision starts afresh."""
        # A part's last name leaving frees its table now (as a city sees again, 64 of
        # 512 KiB each, freed at once by the next walk, 3 ms): `Parted.remove`.
        if self._down.remove(node):
            self._removed = True
            if self._left is not None:
                self._left.add(node)

    def _changed_state(self, node: str, state: State) -> None:
        """Any change of state: the parents' inference, and the decision, may be stale."""
        if self._parent_may_infer(node):
            # Its parents, found now: as a city sees again its routers change while
            # nothing is weighed; listed as routers, their parents were looked up in
            # the one step that weighs them (157,000 at a million nodes: 250 ms).
            self._reconsider.update(self.topology.nodes[node].parents)
        # A node already cut off by a failure above it changes nothing when it, too, is
        # found down: the cut-off set and the incidents stay as they are. (During a core
        # failure that is every one of 100,000 nodes: without this, each tick would redo
        # the whole grouping.)
        cut = self._cut_cache
        if not (state is State.DOWN and node in cut):
            self._dirty = True
        elif isinstance(cut, Cut) and node not in cut.base:
            # Cut off through the blind anchors (all its uplinks are): nothing for the
            # next decision to add (a million nodes found down while blind, else listed
            # at the first decision after).
            self._added.discard(node)

    def _rechecked(self, node: str) -> None:
        """It left the failed set to be probed afresh: the decision is stale."""
        self._dirty = True

    def _above_came_back(self, node: str) -> None:
        """Inferred while something above it was down: what its children did then says
        nothing now; it is inferred again only from fresh failures."""
        if node in self.inferred:
            self._infer_up(node)
            self._dirty = True

    def _answers_again(self, node: str) -> None:
        """Its children's changes, skipped while it lost probes, are weighed again."""
        self._reconsider.add(node)

    def _infer_down(self, node: str, since: float) -> None:
        """Inferred down from its children: it joins the failed set (and what was added)."""
        self.version += 1
        self.inferred[node] = since
        self._added.add(node)

    def _infer_up(self, node: str) -> None:
        """No longer inferred down: the next decision starts afresh."""
        self.version += 1
        if self.inferred.pop(node, None) is not None:
            self._removed = True
            if self._left is not None:
                self._left.add(node)

    def _parent_may_infer(self, node: str) -> bool:
        """Whether a change of this node can change an inference above it: only a parent
        without an address, or one that answers, or one already inferred, is inferred."""
        n = self.topology.nodes.get(node)
        if n is None:
            return False
        unprobed = self.topology.unprobed
        for p in n.parents:
            if p in unprobed or p in self.inferred:
                return True
            ps = self.states.get(p)
            if ps is not None and self._lazy:
                self._settle(p, ps)
            if ps is None or (ps.state is State.UP and ps.losses == 0):
                return True
        return False

    def _known(self, node: str, probed_parent: bool) -> tuple[State, float, float]:
        """A node's state for its parent's inference; since when, for whether children
        failed together; and since when it is down as last found (fresh evidence, for
        settling). A node found down again when looked at afresh (below a node that came
        back, or after blindness) has been down since it first went down without
        answering in between: that is no new failure. Under a parent without an address,
        what failed before the monitor regained its sight counts as failed then (the
        monitor saw none of it); a parent that answers is inferred only from failures
        seen as they happened."""
        ns = self.states.get(node)
        if node not in self.topology.unprobed:  # probed (asked of every router below)
            if ns is None:
                return State.UNKNOWN, 0.0, 0.0
            if ns.state is State.DOWN:
                first = ns.down_at if ns.down_first is None else ns.down_first
                if not probed_parent:
                    first = max(first, self._sight_at)
                return ns.state, first, ns.down_at
            return ns.state, ns.changed_at, ns.changed_at
        if node in self.inferred:
            return State.DOWN, self.inferred[node], self.inferred[node]
        return State.UP, 0.0, 0.0

    def _infer(self, now: float) -> None:
        """Infer nodes down (or up again) from their children failing together.

        A parent is inferred down when at least `infer_min_children` of its children are
        known and `infer_ratio` of them failed within `window` of the latest failure, while
        the parent itself answers (or has no address), is not cut off by failures above
        it, and the monitor can see; it is up
        again once half of those children answer. A change walks on to the grandparents."""
        s = self.settings
        nodes, inner = self.topology.nodes, self.topology.inner
        get = nodes.get
        down, inferred = self._down, self.inferred
        reconsider = self._reconsider
        # A reload's sets of what changed, kept as it made them (not copied at its swap).
        reloaded = self._reloaded
        # The parents of what fails, when they are fewer to list than the children of
        # what is weighed to look at (as a city sees again: few fail, 10,000 switches
        # of 100 routers each are weighed, 100 ms). More (never fewer) as nodes are
        # inferred down or up below.
        failing: set[str] | None = None
        if (not self._changed and not reloaded
                and len(down) + len(inferred) < FAILING_LISTED * len(reconsider)):  # fmt: skip
            failing = self._failing_parents()
            if reconsider.isdisjoint(failing) and reconsider.isdisjoint(inferred):
                # None of the queue is weighed: below, each would be passed by (not a
                # parent of what fails, not inferred), and passing one by changes
                # nothing the next is passed by for. As a city sees again its routers'
                # answers queue its 10,000 switches: each read from memory to be
                # passed by was 5 ms of the tick that sees again, under load.
                reconsider.clear()
                return
        queue = deque(dict.fromkeys(
            [*reconsider, *chain.from_iterable(r for r, _ in reloaded),
             *(p for n in chain(self._changed, *(ch for _, ch in reloaded))
               if (c := get(n)) is not None for p in c.parents)]
        ))  # fmt: skip
        self._changed.clear()
        self._reloaded = []
        reconsider.clear()
        if failing is None and len(down) + len(inferred) < FAILING_LISTED * len(queue):
            failing = self._failing_parents()
        seen: set[str] = set()
        while queue:
            parent = queue.popleft()
            if parent in seen:
                continue
            seen.add(parent)
            if failing is not None and parent not in failing and parent not in inferred:
                # No child fails and it is not inferred: nothing to weigh, found before
                # its own state is looked up (as a city sees again, the 10,000 switches
                # its routers' answers queue: 36 ms in one tick, the look's last).
                continue
            # Nearly always a node with children: the small dict of those, else a router.
            node = inner.get(parent)
            if node is None:
                node = get(parent)
                if node is None:
                    continue  # a parent a reload removed since its child changed
            own = self.states.get(parent) if node.probed else None
            if own is not None and own.state is State.DOWN:
                # Down by its own probes: that is the better evidence, nothing to infer.
                if parent in self.inferred:
                    self._infer_up(parent)
                    self._dirty = True
                continue
            # A probed parent is inferred down only while it really answers; one that is
            # losing probes itself is about to be decided by its own evidence.
            answering = own is None or (own.state is State.UP and own.losses == 0)
            was = parent in self.inferred
            if not answering and not was:
                continue
            kids = node.children
            if (not was and failing is None
                    and down.isdisjoint(kids) and inferred.keys().isdisjoint(kids)):  # fmt: skip
                # No child fails (DOWN is exactly `_down`; an unprobed one, inferred): it
                # is not inferred, found without a look at each child (a city seeing
                # again changes every child of 10,000 switches: 90 ms a tick). With the
                # parents of what fails listed, that was found above.
                continue
            uplinks = node.parents
            if not was and uplinks and all(p in self._cut_cache for p in uplinks):
                # Cut off by a failure above: its children's failures are that one's (one
                # fault, one incident; and it is rechecked when that one comes back).
                continue
            up = 0
            downs: list[tuple[float, float]] = []
            cut = self._cut_cache
            for child in kids:
                state, since, found = self._known(child, own is not None)
                if state is State.UP:
                    if was and not self._only_way(child, parent, cut):
                        # Answering through another uplink that works: no word about this
                        # node (seed 62152: two buildings of five back through their other
                        # uplink brought an inferred aggregation up; its three left split
                        # into incidents of their own).
                        continue
                    up += 1
                elif state is State.DOWN:
                    downs.append((since, found))
            # Only children that failed together count; one long gone does not make a
            # cable cut, nor hide one.
            latest = max((t for t, _ in downs), default=0.0)
            recent = [f for t, f in downs if t >= latest - s.window]
            base = up + len(recent)
            infer = (
                base >= s.infer_min_children
                and len(recent) / base >= s.infer_ratio
                and not self.blind
                and (answering or was)
            )
            if was and not infer:
                # Back up once most of the children that failed answer again.
                infer = base > 0 and len(recent) / base >= 0.5
            if was and infer and self._answered_through(parent):
                infer = False
            if infer and not was:
                self._infer_down(parent, max(recent))
                if failing is not None:
                    failing.update(uplinks)
            elif was and not infer:
                self._infer_up(parent)
                self._recheck_below(parent, now)
            if infer != was:
                self._dirty = True
                # Its parents are weighed again, also one weighed already in this pass
                # (before this child was inferred: a passive switch over a passive
                # segment and two routers was never inferred in one order of the queue).
                seen.difference_update(node.parents)
                queue.extend(node.parents)

    def _only_way(self, child: str, parent: str, cut: set[str] | Cut) -> bool:
        """Whether this parent is the child's only uplink not failed or cut off."""
        return all(p == parent or p in cut for p in self.topology.nodes[child].parents)

    def _failing_parents(self) -> set[str]:
        """The parents of every failed node (down by its own probes, or inferred)."""
        get = self.topology.nodes.get
        return {
            p for n in (*self._down, *self.inferred) if (c := get(n)) is not None for p in c.parents
        }

    def _answered_through(self, node: str) -> bool:
        """Whether a child whose only uplink is this node came back up since the node was
        inferred down: it answered through it, so the node forwards again (the children
        still down failed on their own, or are looked at afresh)."""
        nodes = self.topology.nodes
        since = self.inferred[node]
        for child in nodes[node].children:
            if len(nodes[child].parents) != 1 or not nodes[child].probed:
                continue
            cs = self.states.get(child)
            if cs is not None and cs.state is State.UP and cs.changed_at > since:
                return True
        return False

    def _still_cut(self) -> bool:
        """Whether every node that left the failed set since the last decision is still
        cut off: each has uplinks, all of them in the last decision's cut. Then the cut of
        the failed set is the same (each is still reached from what fails, by induction
        from the one nearest the top; what lies below it with it) and none was a root (a
        cut-off node never is): the decision need not start afresh. (Blind, with every
        anchor down, the anchor's cut is the whole city: afresh, a million nodes a tick
        as the nodes below come back before it does.)"""
        left = self._left
        if left is None:
            return False
        cut, nodes = self._cut_cache, self.topology.nodes
        for n in left:
            node = nodes.get(n)
            if node is None or not node.parents or not cut.issuperset(node.parents):
                return False
        return True

    def _failed(self) -> set[str]:
        """Nodes down by their own probes, and nodes inferred down."""
        return self._down.with_keys(self.inferred)

    def _cut(self, failed: set[str], cut: set[str] | None = None) -> set[str]:
        """The failed nodes and all nodes whose every uplink leads into them; given the cut
        of a smaller failed set, only what the new failures add is walked."""
        topology = self.topology
        nodes, inner, inner_children = topology.nodes, topology.inner, topology.inner_children
        several, feeds_several = topology.several_uplinks, topology.feeds_several
        # A node with children is in the small dict of inner nodes; the rest are leaves
        # (most of a mass outage's nodes are routers): they join the cut, and are never
        # queued to be expanded (2,000 a tick of a mass outage, each looked up for nothing).
        walked = inner.__contains__
        if cut is None:
            cut = set(failed)
        else:
            cut.update(failed)
        queue = deque(filter(walked, failed))  # each is expanded, even if already in the cut
        while queue:
            parent = queue.popleft()
            kids = inner[parent].children
            if not kids:
                continue
            if parent in feeds_several:
                # A child with several uplinks is cut off once all of them are.
                new = [c for c in kids if c not in cut
                       and (c not in several or cut.issuperset(nodes[c].parents))]  # fmt: skip
                if new:
                    cut.update(new)
                    queue.extend(filter(walked, new))
            else:
                # Every child has this one uplink: all are cut off, added in one call in C
                # (not tested one by one first); only the inner ones new to the cut are
                # walked on, and those are few.
                below = [c for c in inner_children.get(parent, ()) if c not in cut]
                cut.update(kids)
                queue.extend(below)
        return cut
