"""The incident book: incidents, the events that tell their story, planned works.

`IncidentBook` holds the open incidents and which incident covers each node (what callers
are answered from), the last resolved incident of each root (a root that fails again soon
reopens it), and the events since the last tick. The decision core (`Correlator`) says
which roots are down and what they cut off; the book opens, re-roots, merges, splits,
recovers and resolves incidents accordingly.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from outagemon.core.health import NodeState, State, update_flapping
from outagemon.core.topology import Topology

# A root that fails again this soon after its incident resolved reopens that incident.
REOPEN_WITHIN = 600.0


class Kind(enum.Enum):
    """What an incident is: a fault, planned works, or a place suspected from its callers
    (`core/calls.py`: never spoken as an outage until confirmed)."""

    OUTAGE = "outage"
    MAINTENANCE = "maintenance"
    SUSPECTED = "suspected"


class IncidentState(enum.StrEnum):
    """An incident's life: open (recovering included) until resolved, or merged into an
    incident whose root explains it. The values are those stored and served."""

    OPEN = "open"
    RESOLVED = "resolved"
    MERGED = "merged"


class EventKind(enum.StrEnum):
    """What happened: the kinds of `Event`; the values are those stored and logged."""

    OPENED = "opened"
    REOPENED = "reopened"
    NODES = "nodes"  # the nodes an incident cuts off changed
    ROOT_MOVED = "root_moved"  # a new higher root absorbed incidents below it
    MERGED = "merged"  # absorbed into another incident
    RECOVERING = "recovering"  # the root answers; resolves after resolve_hold
    REFAILED = "refailed"  # the root failed again while recovering
    RESOLVED = "resolved"
    KIND_CHANGED = "kind_changed"  # planned works ended and the node is still down
    SPLIT = "split"  # part stayed down after the root recovered: a new incident
    BLIND = "blind"  # every anchor is down: the monitor cannot see
    SEEING = "seeing"  # an anchor answers again


@dataclass(slots=True)
class Incident:
    id: int
    root: str
    kind: Kind
    inferred: bool
    opened_at: float
    nodes: list[str]  # root first
    state: IncidentState = IncidentState.OPEN
    resolved_at: float | None = None
    merged_into: int | None = None
    recovering_since: float | None = None
    maintenance_until: float | None = None
    raised_by: str = "probes"  # or "calls": a suspected incident, confirmed or not
    # When its root failed again after it resolved (it reopened; `opened_at` stays the
    # first fault's start, for the history) or while it was recovering (refailed), the
    # latest such time.
    reopened_at: float | None = None
    # When planned works it was opened under ended with its root still down (it became an
    # outage): its callers were told of works until then, so they hear the outage began
    # then (`heard_since`), not at the root's failure inside the works.
    works_ended: float | None = None
    # When its root failed, if the root moved up to a node that failed after the incident
    # began (`since` stays the first fault's: its first callers were cut off then).
    root_since: float | None = None

    @property
    def since(self) -> float:
        """When the outage its callers hear about began: the latest reopening, else the
        opening (a caller is never told the start of a fault that was repaired)."""
        return self.opened_at if self.reopened_at is None else self.reopened_at

    @property
    def heard_since(self) -> float:
        """When the outage its callers hear about began: `since`, or, for works that
        overran, their end if later."""
        since = self.since
        return since if self.works_ended is None else max(since, self.works_ended)

    @property
    def root_down(self) -> float:
        """When its root's own failure began: `since`, or, for a root that moved up, the
        later failure of that root (a refailure or reopening since is later still)."""
        since = self.since
        return since if self.root_since is None else max(since, self.root_since)


@dataclass(frozen=True, slots=True)
class Event:
    """Something to persist and show: `kind` names it, the rest is its detail."""

    kind: EventKind
    at: float
    incident: int | None = None
    root: str | None = None
    nodes: tuple[str, ...] = ()
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Maintenance:
    id: int
    node: str
    starts_at: float
    ends_at: float
    reason: str = ""
    by: str = ""  # who declared them


class Owners(Mapping[str, int]):
    """Node -> the open incident that covers it: what `/check` and the page read.

    Read as a dict, kept in three layers looked up in turn: `own`, an entry a node;
    `leaves`, uplink -> incident, for a node all of whose children an active incident
    took at once (each child without children of its own and with that one uplink, in
    `topology`, is in its uplink's incident: a mass outage's routers, most of its nodes,
    need no entry each); `recovering`, the nodes of recovering incidents (the first one
    listing a node), read only where no active incident covers it. `complete` holds the
    incidents each of whose nodes is covered already (by it, or by another)."""

    __slots__ = ("complete", "leaves", "own", "recovering", "topology")

    def __init__(
        self,
        own: dict[str, int] | None = None,
        leaves: dict[str, int] | None = None,
        topology: Topology | None = None,
        recovering: dict[str, int] | None = None,
        complete: Iterable[int] = (),
    ) -> None:
        self.own: dict[str, int] = {} if own is None else own
        self.leaves: dict[str, int] = {} if leaves is None else leaves
        self.topology = topology  # the one `leaves` was made with (a reload keeps it)
        self.recovering: dict[str, int] = {} if recovering is None else recovering
        self.complete: set[int] = set(complete)

    def _through(self, node: str) -> int | None:
        """The incident a leaf with one uplink is in through that uplink, if any."""
        if not self.leaves or self.topology is None:
            return None
        found = self.topology.nodes.get(node)
        if found is None or found.children or len(found.parents) != 1:
            return None
        return self.leaves.get(found.parents[0])

    def get(self, node: str, default: int | None = None) -> int | None:  # type: ignore[override]
        iid = self.own.get(node)
        if iid is not None:
            return iid
        iid = self._through(node)
        if iid is not None:
            return iid
        return self.recovering.get(node, default)

    def __getitem__(self, node: str) -> int:
        iid = self.get(node)
        if iid is None:
            raise KeyError(node)
        return iid

    def __contains__(self, node: object) -> bool:
        if node in self.own:
            return True
        return isinstance(node, str) and (
            self._through(node) is not None or node in self.recovering
        )

    def __iter__(self) -> Iterator[str]:
        own = self.own
        yield from own
        through: set[str] = set()
        if self.leaves and self.topology is not None:
            nodes = self.topology.nodes
            for parent in self.leaves:
                for child in nodes[parent].children:
                    node = nodes[child]
                    if child not in own and not node.children and len(node.parents) == 1:
                        through.add(child)
                        yield child
        for node_id in self.recovering:
            if node_id not in own and node_id not in through:
                yield node_id

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def claim(self, nodes: Iterable[str], iid: int) -> None:
        """These nodes are the incident's (a restored one's), whatever covered them."""
        self.own.update(dict.fromkeys(nodes, iid))
        self.complete.add(iid)

    def recall(self, inc: Incident) -> None:
        """A recovering incident's nodes that nothing else covers are its."""
        if inc.id in self.complete:
            return  # each is covered already: the setdefault of each would change nothing
        recovering = self.recovering
        for n in inc.nodes:
            if n not in self:
                recovering[n] = inc.id
        self.complete.add(inc.id)


class Cutoff(Protocol):
    """The nodes cut off by what fails, as the book asks of them (a set, or while the
    monitor is blind a cut whose part behind the anchors is found when asked)."""

    def __contains__(self, node: object, /) -> bool: ...

    def __and__(self, other: set[str], /) -> set[str]: ...


class IncidentBook:
    """Open incidents and the nodes they cover.

    Invariants: `incidents` holds the open ones (recovering included), by id;
    `node_incident` maps every node an active incident cuts off to it (the oldest, where
    two could claim it), and the nodes of recovering incidents to them unless an active
    one owns them; `resolved` holds each root's last resolved incident, so a root that
    fails again within REOPEN_WITHIN continues it; `events` are those since the last tick,
    in the order they happened."""

    def __init__(self, next_id: int = 1) -> None:
        self.incidents: dict[int, Incident] = {}  # open ones (and recovering)
        self.node_incident = Owners()  # node -> open incident that covers it
        # The recovering incidents (and their node lists) `node_incident.recovering` is of.
        self._recalled: list[tuple[int, list[str]]] | None = []
        self.resolved: dict[str, Incident] = {}  # root -> its last resolved incident
        self.next_id = next_id
        self.events: list[Event] = []

    def incident_for(self, node: str) -> Incident | None:
        iid = self.node_incident.get(node)
        return self.incidents.get(iid) if iid is not None else None

    def take_events(self) -> list[Event]:
        """The events since the last call, in order."""
        events, self.events = self.events, []
        return events

    def open(
        self,
        root: str,
        cut: Cutoff,
        by_root: dict[str, Incident],
        now: float,
        topology: Topology,
        inferred: bool,
        since: float,
        works_until: float | None,
    ) -> Incident:
        """The incident for a root that has settled: the same one again if this root's
        last incident resolved within REOPEN_WITHIN (callers keep the id they heard); else
        the oldest of the incidents below it, re-rooted, the others merged into it; else a
        new one (split from a recovering incident that had the root among its nodes).
        `by_root` (active incidents by root) loses the incidents absorbed; `works_until`:
        when the planned works covering the root leave it a path, if any cover it."""
        absorbed = self._below(root, cut, by_root, topology)
        kind = Kind.MAINTENANCE if works_until is not None else Kind.OUTAGE
        previous = self.resolved.pop(root, None)
        if (
            not absorbed
            and previous is not None
            and previous.kind is kind  # a failure under planned works is not the old fault
            and now - (previous.resolved_at or 0) <= REOPEN_WITHIN
        ):
            # The same fault again, soon: the same incident, so callers and tickets keep
            # the id they have (a flapping link is one incident, not one an hour).
            # Callers hear when this fault began; the estimate set for the last repair is
            # withdrawn by the monitor (it holds the estimates).
            previous.state = IncidentState.OPEN
            previous.resolved_at = None
            previous.recovering_since = None
            previous.reopened_at = since or now
            # Under planned works again: those now covering it (not the last fault's).
            previous.maintenance_until = works_until
            self.incidents[previous.id] = previous
            self.events.append(Event(EventKind.REOPENED, now, previous.id, root))
            return previous
        if absorbed:
            # The oldest incident below survives, re-rooted: callers keep the id they heard.
            inc = absorbed[0]
            old_root = inc.root
            del by_root[old_root]
            inc.root = root
            inc.inferred = inferred
            inc.root_since = since or now
            self.events.append(
                Event(EventKind.ROOT_MOVED, now, inc.id, root,
                      detail={"from": old_root, "absorbed": [i.id for i in absorbed[1:]]})
            )  # fmt: skip
            if inc.recovering_since is not None:
                # Its fault was over (callers heard "restored"): they are cut off again by
                # the new root's, or by the oldest still going below it.
                going = [i.since for i in absorbed[1:] if i.recovering_since is None]
                self.refailed(inc, now, min([since or now, *going]))
            if inc.kind is not kind:
                # What callers now hear about is the new root's failure: planned works
                # above an outage make it the works' incident, and the other way round.
                change: dict[str, object] = {"from": inc.kind.value, "to": kind.value}
                self.events.append(Event(EventKind.KIND_CHANGED, now, inc.id, root, detail=change))
                inc.kind = kind
            inc.maintenance_until = works_until
            for other in absorbed[1:]:
                self._merge(other, inc, now, by_root)
            return inc
        inc = Incident(
            id=self.next_id,
            root=root,
            kind=kind,
            inferred=inferred,
            opened_at=since or now,
            nodes=[root],
            maintenance_until=works_until,
        )
        self.next_id += 1
        self.incidents[inc.id] = inc
        recovering = [i for i in self.incidents.values() if i.recovering_since is not None]
        split_from = next((i.id for i in recovering if root in i.nodes), None)
        detail: dict[str, object] = {"inferred": inc.inferred, "kind": kind.value}
        if split_from is not None:
            detail["split_from"] = split_from
            self.events.append(
                Event(EventKind.SPLIT, now, split_from, root, detail={"new": inc.id})
            )
        self.events.append(Event(EventKind.OPENED, now, inc.id, root, detail=detail))
        return inc

    @staticmethod
    def _below(root: str, cut: Cutoff, by_root: dict[str, Incident],
               topology: Topology) -> list[Incident]:  # fmt: skip
        """The incidents (of `by_root`) whose roots this root now explains, oldest first:
        they are cut off, and it is above them; found through their ancestors, which are
        few, not its descendants. A root failed itself is in the cut too: one with an
        uplink that does not lead into the cut is still a root of its own, not explained
        by one above another uplink (seed 40711: its incident was taken in and the node
        left out of it)."""
        nodes = topology.nodes
        return sorted(
            (inc for r, inc in by_root.items()
             if r != root and r in cut and r in topology
             and root in topology.ancestors(r)
             and all(p in cut for p in nodes[r].parents)),
            key=lambda i: i.id,
        )  # fmt: skip

    def _merge(self, other: Incident, into: Incident, now: float,
               by_root: dict[str, Incident]) -> None:  # fmt: skip
        del by_root[other.root]
        other.state = IncidentState.MERGED
        other.merged_into = into.id
        other.resolved_at = now
        del self.incidents[other.id]
        self.events.append(Event(EventKind.MERGED, now, other.id, other.root,
                                 detail={"into": into.id}))  # fmt: skip

    def take_in(self, inc: Incident, cut: Cutoff, by_root: dict[str, Incident], now: float,
                topology: Topology) -> bool:  # fmt: skip
        """A root whose incident was recovering is down again: the incidents opened below
        it meanwhile (a node found down when looked at afresh, seed 60099) are its fault's
        now, merged into it, as a new root takes them in. Returns whether any was."""
        below = self._below(inc.root, cut, by_root, topology)
        for other in below:
            self._merge(other, inc, now, by_root)
        return bool(below)

    def refailed(self, inc: Incident, now: float, since: float) -> None:
        """A recovering incident's root is down again (since `since`): it is active once
        more, and its callers hear when this fault began, as after a reopening (the
        history counts the time between as service)."""
        inc.recovering_since = None
        inc.reopened_at = since
        self.events.append(Event(EventKind.REFAILED, now, inc.id, inc.root))

    def assign(
        self,
        active: list[Incident],
        cut: Cutoff,
        now: float,
        topology: Topology,
        grow: bool = True,
    ) -> None:
        """Every cut-off node joins the incident of the root above it (the oldest, if two);
        unless `grow`, only nodes it already had (they may leave it, none joins)."""
        nodes = topology.nodes
        inner_children = topology.inner_children  # the children that may have children
        owner: dict[str, int] = {}
        leaves: dict[str, int] = {}  # a node whose children were all taken -> the incident
        roots = {inc.root for inc in active}
        # Cut-off nodes join an incident once, roots never: one filter a parent (the test
        # in C) rather than a loop of Python a child, over the cut itself (no copy of a
        # 100,000-node set). A node with one uplink is reached only from it, and that is
        # walked once (a root, or a node reached once): only below a node that feeds one
        # with several uplinks, or a root, must what was taken be left out.
        taken = set(roots)
        guarded = topology.feeds_several | {p for r in roots if r in nodes
                                            for p in nodes[r].parents}  # fmt: skip
        inner, inner_of = topology.inner_nodes, topology.inner
        for inc in sorted(active, key=lambda i: i.id):
            owner.setdefault(inc.root, inc.id)
            members = [inc.root]
            named: list[str] = []  # the members with an entry of their own in the owners
            pool = cut if grow else cut & set(inc.nodes)  # else only nodes it already had
            takes = pool.__contains__
            queue = deque(members)
            while queue:
                parent = queue.popleft()
                # Walked are roots and inner nodes: looked up in the small dict of those.
                node = inner_of.get(parent)
                kids = (nodes[parent] if node is None else node).children
                if not kids:
                    continue
                new: Sequence[str]
                if parent in guarded:
                    new = [c for c in filter(takes, kids) if c not in taken]
                    taken.update(new)
                    queue += [c for c in new if c in inner]
                    named += new
                elif grow:
                    # The cut holds every node whose uplinks all lead into it, and this
                    # node is in it: each child, with this one uplink, is cut off too. The
                    # routers (most of a mass outage's nodes) are neither tested one by one
                    # nor walked, nor given an entry each: they are in through `leaves`.
                    new = kids
                    walked = inner_children.get(parent, ())
                    queue += walked
                    named += walked
                    leaves[parent] = inc.id
                else:
                    new = list(filter(takes, kids))
                    queue += filter(takes, inner_children.get(parent, ()))
                    named += new
                members += new
            # Who owns each: the named members (none owned yet: they were free) joined to
            # the owners so far, the smaller into the larger; an owner already set stays.
            joined = dict.fromkeys(named, inc.id)
            if len(joined) > len(owner):
                joined.update(owner)
                owner = joined
            else:
                for n, i in joined.items():
                    owner.setdefault(n, i)
            old = inc.nodes
            # The same list first (a walk of the same cut: in C, entries mostly the very
            # same strings); else lengths, and as sets only when they are equal.
            if members != old and (
                len(members) != len(old) or members[0] != old[0] or set(members) != set(old)
            ):
                inc.nodes = members  # root first, then nearest first
                # `nodes`, with the root, as the page and the API count what it cuts off.
                added = max(0, len(members) - len(old))
                said: dict[str, object] = {"added": added, "nodes": len(members)}
                self.events.append(Event(EventKind.NODES, now, inc.id, inc.root, tuple(members),
                                         detail=said))  # fmt: skip
        # Recovering incidents keep their nodes (for `restored` answers) but own none:
        # theirs are read where no active incident covers a node (made again only when
        # they, or their nodes, change: a recovering core failure's are 100,000).
        recalled = [(i.id, i.nodes) for i in self.incidents.values()
                    if i.recovering_since is not None]  # fmt: skip
        if self._recalled is None or not _same(recalled, self._recalled):
            recovering: dict[str, int] = {}
            for iid, inc_nodes in reversed(recalled):  # the first listing a node wins
                recovering.update(dict.fromkeys(inc_nodes, iid))
            self._recalled = recalled
        else:
            recovering = self.node_incident.recovering
        self.node_incident = Owners(owner, leaves, topology, recovering,
                                    (inc.id for inc in active))  # fmt: skip

    def recover(
        self,
        roots: set[str],
        cut: Cutoff,
        now: float,
        states: dict[str, NodeState],
        hold: float,
        flap_period: float,
    ) -> None:
        """Incidents whose root is no longer a failed root start recovering (callers behind
        them hear "restored"), and resolve after `hold` seconds unless the root flaps
        (changed state often within the last `flap_period` seconds) or has not answered
        since it was looked at afresh (RECHECK: after blindness, or below a node that came
        back; it goes down again or answers within a streak)."""
        for inc in list(self.incidents.values()):
            if inc.root in roots:
                continue
            if inc.root in cut:
                continue  # explained by a higher root that has not settled yet: wait
            ns = states.get(inc.root)
            if inc.recovering_since is None:
                inc.recovering_since = now
                # Callers behind it now hear "restored" (the layer of recovering
                # incidents is made anew at the next assignment).
                self.node_incident.recall(inc)
                self._recalled = None
                self.events.append(Event(EventKind.RECOVERING, now, inc.id, inc.root))
                continue
            if ns is not None and ns.state is State.RECHECK:
                # Its root has not answered since it was looked at afresh (after
                # blindness, or below a node that came back): no sign its fault ended.
                continue
            flapping = ns is not None and update_flapping(ns, now, flap_period)
            if now - inc.recovering_since >= hold and not flapping:
                inc.state = IncidentState.RESOLVED
                inc.resolved_at = now
                del self.incidents[inc.id]
                self.resolved[inc.root] = inc
                self.events.append(
                    Event(EventKind.RESOLVED, now, inc.id, inc.root, tuple(inc.nodes))
                )

    def end_works(self, now: float, scope: dict[str, float], hold: float) -> int:
        """Planned works that were extended (or cut short) move their incidents' end
        (`scope`: when the works covering each node leave it a path); works that ended
        `hold` seconds ago, or were withdrawn, with the root still down become an outage.
        Returns how many incidents changed without an event (callers' answers depend on
        them)."""
        extended = 0
        for inc in self.incidents.values():
            if inc.kind is Kind.MAINTENANCE and inc.maintenance_until is not None:
                until = scope.get(inc.root)
                if until is not None and until != inc.maintenance_until \
                        and now >= inc.maintenance_until:  # fmt: skip
                    # Works begun after its own ended (a chain would have carried its end
                    # on before): its fault outlived its works, whatever covers it now.
                    until = None
                if until is not None:
                    if inc.maintenance_until != until:  # works extended, added or cut
                        inc.maintenance_until = until
                        extended += 1
                elif inc.recovering_since is None and (
                    now >= inc.maintenance_until + hold or now < inc.maintenance_until
                ):  # ended `hold` ago, or withdrawn before their end: a fault now
                    inc.kind = Kind.OUTAGE
                    # Withdrawn works ended now, not at their planned end.
                    ended = min(now, inc.maintenance_until)
                    inc.works_ended = ended
                    self.events.append(
                        Event(EventKind.KIND_CHANGED, now, inc.id, inc.root,
                              detail={"from": "maintenance", "to": "outage",
                                      "works_ended": ended})
                    )  # fmt: skip
        return extended


def _same(a: list[tuple[int, list[str]]], b: list[tuple[int, list[str]]]) -> bool:
    """The same incidents with the very same node lists, in the same order."""
    return len(a) == len(b) and all(
        ia == ib and na is nb for (ia, na), (ib, nb) in zip(a, b, strict=True)
    )
