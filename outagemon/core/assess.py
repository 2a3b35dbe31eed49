"""What a caller hears: the status of a place in the network (the core of /check).

`assess()` reads the correlator's view (incidents, node states, planned works, recently
resolved incidents, estimates) and says one `Status` for the place a caller was matched
to. Answers are remembered per serving node in an `AnswerMemory` (the HTTP runtime owns
it) until anything they depend on changes: the correlator's `version`, or the clock
reaching a moment that changes them (planned works starting or ending, `restored`
running out). During a surge, the callers of one building ask the same question.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from outagemon.core.addresses import Address
from outagemon.core.directory import Directory, Match, cpe_id, flat_key
from outagemon.core.health import State
from outagemon.core.incidents import Incident, Kind, Maintenance
from outagemon.core.messages import Texts
from outagemon.core.topology import Topology


class Status(enum.StrEnum):
    """The answer to "is this caller inside a known outage?"; values as /check says them."""

    OUTAGE = "outage"
    MAINTENANCE = "maintenance"
    CPE_DOWN = "cpe_down"  # the subscriber's own router does not answer
    RESTORED = "restored"  # an incident on the path recovered lately
    OK = "ok"
    UNKNOWN = "unknown"  # not seen yet, or the monitor is blind
    AMBIGUOUS = "ambiguous"  # the question names more than one place
    NOT_FOUND = "not_found"


class NodeSeen(Protocol):
    """What assess() reads of a node's state (a NodeState, or a replica's copy)."""

    @property
    def state(self) -> State: ...
    @property
    def down_at(self) -> float: ...


class View(Protocol):
    """What assess() reads of the correlator: its own, or a replica of the leader's."""

    @property
    def blind(self) -> bool: ...
    @property
    def version(self) -> int: ...
    @property
    def states(self) -> Mapping[str, NodeSeen]: ...
    def incident_for(self, node: str) -> Incident | None: ...


class Raised(Protocol):
    """What assess() reads of an incident raised by calls (a Suspicion, or a replica's)."""

    @property
    def incident(self) -> Incident: ...
    @property
    def confirmed(self) -> bool: ...


class CallsSeen(Protocol):
    """What assess() reads of the calls' detector: its own, or a replica of the leader's."""

    def covering(self, node: str) -> Raised | None: ...


class Situation(Protocol):
    """What assess() reads: the monitor's view of the network, in memory (or a replica
    of the leader's, in a process that does not decide: cluster/replica.py)."""

    @property
    def correlator(self) -> View: ...
    @property
    def eta(self) -> dict[int, float]: ...  # incident id -> expected repair time
    @property
    def maintenance(self) -> list[Maintenance]: ...
    @property
    def recent(self) -> dict[str, Incident]: ...  # node -> recently resolved incident
    @property
    def first_round_done(self) -> bool: ...
    @property
    def watch(self) -> CallsSeen: ...  # incidents raised by calls


class KeptBody(NamedTuple):
    """An answer's JSON for one building, with the caller's flat left out (the HTTP side
    writes it; see `http.api.remembered_body`)."""

    address: Address  # held, so that the id in the key stays this address's
    texts: Texts  # the wording it was written with (a reload brings new texts)
    until: float  # the local day's end, or the estimate in it passing
    pieces: tuple[bytes, ...]  # the body around each place the flat appears


# (id of the address, how the caller was matched, whether a flat was given)
BodyKey = tuple[int, str, bool]


@dataclass
class Answer:
    status: Status
    incident: Incident | None = None
    node: str = ""
    since: float | None = None
    eta: float | None = None
    until: float | None = None
    resolved: float | None = None
    # A suspected incident (raised by calls, not confirmed) above the caller: never said
    # as an outage; callers hear `[callers] sentence` when one is configured. Also a
    # confirmed one, in the answer for a caller whose own router answers (see
    # `_assess_node`), and behind `cpe_down`.
    suspected: Incident | None = None
    kept: bool = False  # remembered for its serving node (see AnswerMemory), not made anew
    # Its JSON for the buildings behind that node, with the flat left out.
    bodies: dict[BodyKey, KeptBody] | None = None


class Remembered(NamedTuple):
    """One serving node's answers, true while the correlator's version is `version` and
    the clock is before `expires`."""

    version: int
    expires: float
    before: Answer | None  # an incident or planned works on the path
    after: Answer  # what to say when the router's own state does not decide


class AnswerMemory:
    """The answers remembered per serving node (see the module's docstring). Emptied when
    it holds LIMIT nodes: a city has far fewer serving nodes than that."""

    LIMIT = 200_000
    ROUTERS_LIMIT = 250_000  # flats held in `routers` (~12 MiB) before it is emptied
    __slots__ = ("entries", "routers", "routers_held", "routers_of")

    def __init__(self) -> None:
        self.entries: dict[str, Remembered] = {}
        # A serving node's routers by the flat they serve (see _routers_by_flat), for
        # callers asking by address and flat (the household's own routers), made
        # once per directory; their states are read on every call. The directory they
        # were made from is held weakly: a reload's old one is not kept alive by them.
        self.routers: dict[str, dict[str, str]] = {}
        self.routers_held = 0
        self.routers_of: weakref.ref[Directory] | None = None

    def __len__(self) -> int:
        return len(self.entries)


def assess(situation: Situation | None, directory: Directory, match: Match, now: float,
           restored_for: float, memory: AnswerMemory) -> Answer:  # fmt: skip
    """The status for a place in the network (the core of /check, without HTTP).

    Unknown until the first probe round is done; a place split between nodes (a house
    with several entrances, asked about without a flat) is ambiguous unless every node
    says the same."""
    if not match.found:
        return Answer(Status.AMBIGUOUS if match.ambiguous else Status.NOT_FOUND)
    if situation is None or not situation.first_round_done:
        return Answer(Status.UNKNOWN, node=match.nodes[0])
    first = _assess_node(situation, directory, match.nodes[0], match, now, restored_for, memory)
    if len(match.nodes) == 1:
        return first
    others = [_assess_node(situation, directory, n, match, now, restored_for, memory)
              for n in match.nodes[1:]]  # fmt: skip
    # A house split between entrances, and the caller gave no flat: they are behind one of
    # them, which is not known; the node said is the one the parts share (it was the
    # first part, naming an entrance the caller may not be behind).
    shared = directory.topology.lowest_shared(match.nodes) or ""
    same = all(a.status == first.status and a.incident is first.incident for a in others)
    if not same:
        return Answer(Status.AMBIGUOUS, node=shared)
    # A copy: `first` is remembered for its own node (its JSON made anew, not kept).
    return dataclasses.replace(first, node=shared, kept=False, bodies=None)


def _assess_node(situation: Situation, directory: Directory, node: str, match: Match,
                 now: float, restored_for: float, memory: AnswerMemory) -> Answer:  # fmt: skip
    """One node's answer: an incident or works on its path first, then the subscriber's
    own router (read on every call, never remembered), then what the path says.

    An outage raised by calls (confirmed by an engineer, not seen by the probes) is not
    said to a caller whose own probed router answers: the probes see the way to them
    working, and the probes' word decides over the calls' (an incident of the probes is
    said because they see the way cut). They hear what the path says otherwise, as they
    did before the confirmation."""
    c = situation.correlator
    sub = match.subscriber
    serving = sub.serving if sub is not None else node
    if c.blind:
        return Answer(Status.UNKNOWN, node=serving)
    before, after = _assess_path(situation, directory, serving, now, restored_for, memory)
    # The caller's own router (a subscriber's, or the router asked about by its node),
    # its state read now, never remembered.
    if sub is not None:
        own = bool(sub.ip)
    else:
        own = match.address is None and _is_router(directory.topology, node)
    if before is not None:
        if before.incident is not None and before.incident.raised_by == "calls":
            if own:
                ns = c.states.get(node)
                if ns is not None and ns.state is State.UP:
                    return after
            elif sub is None and match.flat:
                seen = _household(c.states, directory, node, match, memory)
                if any(ns is not None and ns.state is State.UP for ns in seen):
                    return after  # asked by the address and flat of the same household
        return before
    if own:
        ns = c.states.get(node)
        if ns is not None and ns.state is State.DOWN:
            topo = directory.topology
            above = topo.nodes[node].parents if node in topo else ()
            if any(_way_in_doubt(c.states, topo, p, ns.down_at, now) for p in above):
                return Answer(Status.UNKNOWN, node=serving, suspected=after.suspected)
            # Inside a suspicion, the configured sentence is said (the router may be down
            # because of what its neighbours call about: "restart your router" is no
            # answer then).
            return Answer(Status.CPE_DOWN, node=serving, since=ns.down_at,
                          suspected=after.suspected)  # fmt: skip
    elif sub is None and match.flat:
        # Asked by address and flat: the household's routers. "Your router does not
        # answer" only when none of them answers (two accounts of one flat are one
        # caller, who may be either's); since when that is so.
        seen = _household(c.states, directory, node, match, memory)
        if seen and all(ns is not None and ns.state is State.DOWN for ns in seen):
            since = max(ns.down_at for ns in seen if ns is not None)
            if _way_in_doubt(c.states, directory.topology, node, since, now):
                return Answer(Status.UNKNOWN, node=serving, suspected=after.suspected)
            return Answer(Status.CPE_DOWN, node=serving, since=since,
                          suspected=after.suspected)  # fmt: skip
    return after


# A router down while the way to it is in doubt: its switch down with no incident yet, or
# its entrance (no address) losing DOUBT_ROUTERS routers within DOUBT_TOGETHER seconds of
# one another. The correlator is then deciding whether the entrance or the switch failed
# (it infers and settles within its `window`, 30 s by default, and a probe round): a caller
# heard "your router does not answer, switch it off and on" in the seconds before their
# entrance's outage opened. For DOUBT_FOR seconds after the router went down they hear
# `unknown` (stay on the line) instead; after that, what the correlator decided.
DOUBT_FOR = 90.0
DOUBT_TOGETHER = 30.0
DOUBT_ROUTERS = 3


def _way_in_doubt(states: Mapping[str, NodeSeen], topo: Topology, above: str, down_at: float,
                  now: float) -> bool:  # fmt: skip
    """Whether the node a router (down since `down_at`) hangs from may be what failed,
    not yet decided (see DOUBT_FOR)."""
    if now - down_at >= DOUBT_FOR:
        return False
    node = topo.nodes.get(above)
    if node is None:
        return False
    if node.probed:
        ns = states.get(above)
        return ns is not None and ns.state is State.DOWN
    together = 0
    for child in node.children:
        ns = states.get(child)
        if (
            ns is not None
            and ns.state is State.DOWN
            and abs(ns.down_at - down_at) <= DOUBT_TOGETHER
        ):
            together += 1  # the router itself among them
            if together >= DOUBT_ROUTERS:
                return True
    # No address: the switch above it (down, the routers below it cut off).
    return any(_way_in_doubt(states, topo, p, down_at, now) for p in node.parents)


def _household(states: Mapping[str, NodeSeen], directory: Directory, node: str, match: Match,
               memory: AnswerMemory) -> list[NodeSeen | None]:  # fmt: skip
    """The states of the probed routers of the subscribers living at the flat asked about
    by address (the household asked by account), looked for among the serving node's
    routers (None: a router not seen yet)."""
    building = match.address
    if building is None:
        return []
    if memory.routers_of is None or memory.routers_of() is not directory:
        memory.routers.clear()
        memory.routers_held = 0
        memory.routers_of = weakref.ref(directory)
    kept = memory.routers.get(node)
    if kept is None:
        kept = _routers_by_flat(directory, node)
        if memory.routers_held + len(kept) > AnswerMemory.ROUTERS_LIMIT:
            memory.routers.clear()
            memory.routers_held = 0
        memory.routers[node] = kept
        memory.routers_held += len(kept)
    found = kept.get(flat_key(match.flat))
    if found is None:
        return []
    roster, prefix = directory.subscribers, len(cpe_id(""))
    seen: list[NodeSeen | None] = []
    for router in found.split("\n") if "\n" in found else (found,):
        i = roster.by_account(router[prefix:])
        if i is None:
            continue
        # The node may serve other buildings: the same flat there is another home.
        there = roster.places[roster.place[i]][1]
        if there is building or there.key == building.key:
            seen.append(states.get(router))
    return seen


def _routers_by_flat(directory: Directory, node: str) -> dict[str, str]:
    """A serving node's subscribers' routers by flat (flat_key -> router ids joined by a
    line break: mostly one, the topology's own string), whatever their building (checked
    when asked): about 50 bytes a flat, made in about 4 µs a router."""
    serving = directory.topology.nodes.get(node)
    roster, prefix = directory.subscribers, cpe_id("")
    flats = roster.flats
    found: dict[str, str] = {}
    for child in serving.children if serving is not None else ():
        i = roster.by_account(child.removeprefix(prefix)) if child.startswith(prefix) else None
        if i is not None:
            flat = sys.intern(flat_key(flats[i]))  # the same few numbers in every building
            had = found.get(flat)
            found[flat] = child if had is None else f"{had}\n{child}"
    return found


def _is_router(topology: Topology, node: str) -> bool:
    """Whether a node asked about is a subscriber's probed router (`?node=cpe:…`)."""
    found = topology.nodes.get(node)
    return found is not None and found.kind == "cpe" and found.probed


def _assess_path(situation: Situation, directory: Directory, node: str, now: float,
                 restored_for: float,
                 memory: AnswerMemory) -> tuple[Answer | None, Answer]:  # fmt: skip
    """(an incident or planned works on the path, else None; what to say otherwise),
    remembered per serving node (see AnswerMemory)."""
    entries = memory.entries
    version = situation.correlator.version
    kept = entries.get(node)
    if kept is not None and kept.version == version and now < kept.expires:
        return kept.before, kept.after
    before, after, expires = _walk_path(situation, directory, node, now, restored_for)
    after.kept = True
    if before is not None:
        before.kept = True
    if len(entries) > AnswerMemory.LIMIT:
        entries.clear()
    entries[node] = Remembered(version, expires, before, after)
    return before, after


def _walk_path(situation: Situation, directory: Directory, node: str, now: float,
               restored_for: float) -> tuple[Answer | None, Answer, float]:  # fmt: skip
    """What _assess_path says, and until when the clock alone leaves it true.

    The caller's incident is the one that cuts off the node serving them (the
    correlator's own rule: every path from it to a root broken), never merely one on an
    uplink: a building with a second uplink alive is not in that outage. Planned works
    cover it by the same rule."""
    c = situation.correlator
    topo = directory.topology
    inc = c.incident_for(node)
    if inc is not None:
        if inc.recovering_since is not None:
            found = Answer(Status.RESTORED, inc, node, inc.heard_since,
                           resolved=inc.recovering_since)  # fmt: skip
            return found, found, math.inf
        expires = math.inf
        if inc.kind is Kind.MAINTENANCE:
            end = works_end(inc, situation.maintenance, topo, now)
            eta = later(end, situation.eta.get(inc.id))
            # Heard since the works that cover it began, as before its root failed (not
            # from the incident's opening, seconds later, for the same works).
            # Works that overran (ended, the root still down, not yet an outage): since
            # the start of the works they were told of, not the root's failure inside them.
            since = inc.since
            windows = _works_on(situation, topo, node)[1]
            covered = works_cover(topo, node, windows, now)
            if covered is not None:
                since, expires = min(since, covered[0]), covered[1]
            else:
                overran = overrun_works(inc, topo, node, windows, now)
                if overran is not None:
                    since = min(since, overran[0])
            found = Answer(Status.MAINTENANCE, inc, node, since, eta, until=eta)
        else:
            found = Answer(Status.OUTAGE, inc, node, inc.heard_since, situation.eta.get(inc.id))
        return found, found, expires
    path, windows = _works_on(situation, topo, node)
    covered = works_cover(topo, node, windows, now)
    if covered is not None:
        since, ends = covered
        found = Answer(Status.MAINTENANCE, node=node, since=since, eta=ends, until=ends)
        return found, found, min(ends, _next_start(windows, now))
    expires = _next_start(windows, now)  # only works starting can cover it from here
    raised = situation.watch.covering(node)
    suspected = raised.incident if raised is not None else None
    said, until = _after(situation, topo, path, node, now, restored_for, expires)
    # Behind a suspicion (and, for callers whose router answers, a confirmed one).
    said.suspected = suspected
    if raised is not None and raised.confirmed:  # an engineer confirmed what callers said
        found = Answer(Status.OUTAGE, raised.incident, node, raised.incident.opened_at,
                       situation.eta.get(raised.incident.id))  # fmt: skip
        return found, said, until
    return None, said, until


def _works_on(situation: Situation, topo: Topology,
              node: str) -> tuple[list[str], list[Maintenance]]:  # fmt: skip
    """A node's path up (itself first) and the planned works booked on it."""
    path = [node, *topo.ancestors(node)] if node in topo else [node]
    on_path = set(path)
    return path, [w for w in situation.maintenance if w.node in on_path]


def _after(situation: Situation, topo: Topology, path: list[str], node: str, now: float,
           restored_for: float, expires: float) -> tuple[Answer, float]:  # fmt: skip
    """What to say when nothing on the path decides: a recent repair, else what the
    probes on the path say."""
    c = situation.correlator
    recent = situation.recent.get(node)
    if recent is not None and recent.resolved_at and now - recent.resolved_at <= restored_for:
        # Repaired when its root answered (as callers heard while it recovered, and as
        # the history ends it), not `resolve_hold` later when it was declared resolved:
        # one caller was told "fixed at 14:05", the next "at 14:06".
        repaired = recent.resolved_at if recent.recovering_since is None \
            else recent.recovering_since  # fmt: skip
        said = Answer(Status.RESTORED, recent, node, recent.heard_since, resolved=repaired)
        return said, min(expires, recent.resolved_at + restored_for)
    # Nothing on the path has been seen yet (a new node, or just after blindness).
    nodes, states = topo.nodes, c.states
    seen_any = False
    for n in path:
        here = nodes.get(n)
        if here is not None and here.probed:
            seen_any = True
            ns = states.get(n)
            if ns is not None and ns.state is not State.UNKNOWN and ns.state is not State.RECHECK:
                return Answer(Status.OK, node=node), expires
    return Answer(Status.UNKNOWN if seen_any else Status.OK, node=node), expires


def _next_start(windows: list[Maintenance], now: float) -> float:
    return min((w.starts_at for w in windows if w.starts_at > now), default=math.inf)


def later(a: float | None, b: float | None) -> float | None:
    """The later of two times, either of which may be unknown."""
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)


def cut_off_by(topology: Topology, node: str, taken_out: set[str]) -> bool:
    """Whether every path from `node` up to a root runs through a node taken out (the node
    itself included): the rule by which the correlator groups a failure's victims."""
    if node in taken_out:
        return True
    if node not in topology:
        return False
    nodes = topology.nodes
    seen = {node}
    queue = [node]
    while queue:
        here = nodes[queue.pop()]
        if not here.parents:
            return False  # a root reached around everything taken out
        for p in here.parents:
            if p not in seen and p not in taken_out:
                seen.add(p)
                queue.append(p)
    return True


def works_cover(topology: Topology, node: str, windows: list[Maintenance],
                now: float) -> tuple[float, float] | None:  # fmt: skip
    """(since, until) when planned works running now cut this node off, else None.

    `until` is the first moment the works running then no longer cut it off: with works
    on both uplinks of a building, the first of them ending; on a switch and the
    aggregation above, the last; works booked to overlap or follow on (16:50-18:00 after
    15:40-17:00) carry it on to the end of that chain, when service returns."""
    running = [w for w in windows if w.starts_at <= now < w.ends_at]
    if not running or not cut_off_by(topology, node, {w.node for w in running}):
        return None
    until = works_until(topology, node, windows, now)
    lasting = [w for w in running if w.ends_at >= until] or running
    return min(w.starts_at for w in lasting), until


def works_until(topology: Topology, node: str, windows: list[Maintenance],
                now: float) -> float:  # fmt: skip
    """The first moment after `now` at which the works running then leave `node` a path
    (the set of running works changes only where works start or end)."""
    moments = sorted({t for w in windows if w.ends_at > now for t in (w.starts_at, w.ends_at)
                      if t > now})  # fmt: skip
    for t in moments:
        if not cut_off_by(topology, node, {w.node for w in windows
                                           if w.starts_at <= t < w.ends_at}):  # fmt: skip
            return t
    return math.inf  # not reached: nothing runs after the last end


def overrun_works(inc: Incident, topology: Topology, node: str, windows: list[Maintenance],
                  now: float) -> tuple[float, float] | None:  # fmt: skip
    """(start, end) of the planned works behind a maintenance incident whose works have
    ended (they overran: its root is still down), as they cut `node` off at their end;
    None if no such works. Their end: as the incident was opened with them, else (taken
    up after a restart, or in a worker's replica) the last end, since it opened, of works
    on the path that cut `node` off until then."""
    if inc.maintenance_until is not None and inc.maintenance_until <= now:
        ends = [inc.maintenance_until]
    else:
        ends = sorted({w.ends_at for w in windows if inc.opened_at < w.ends_at <= now},
                      reverse=True)  # fmt: skip
    for end in ends:
        covered = works_cover(topology, node, windows, math.nextafter(end, -math.inf))
        if covered is not None:
            return covered[0], end
    return None


def works_end(inc: Incident, windows: list[Maintenance], topology: Topology,
              now: float) -> float | None:  # fmt: skip
    """When the planned works behind a maintenance incident end: as the incident was
    opened with them, else (restored after a restart) by the works covering its root."""
    if inc.maintenance_until is not None:
        return inc.maintenance_until
    covered = works_cover(topology, inc.root, windows, now)
    return covered[1] if covered is not None else None
