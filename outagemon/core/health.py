"""Each node's health from its probe results: hysteresis, loss history, flapping.

`Health` takes in probe results (`observe()`) and keeps every node's state with
hysteresis: `down_after` losses, adapted to the target's loss history so random loss
does not invent failures, and `up_after` answers. It asks for urgent probes of a node
losing probes and of its ancestors. What a change of state means for the failed set is
`Failures`' (core/failures.py), which extends this class and overrides the hooks at the
end; the decisions into incidents are `Correlator`'s, which extends that.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from itertools import islice

from outagemon.core.topology import Topology

# Chance per probe that random loss alone produces a false `down`: the streak of losses
# needed is chosen so that p ** streak stays below this (p: the target's loss estimate).
FALSE_DOWN_BOUND = 1e-7
MAX_STREAK = 15  # at most this many consecutive losses are ever required
HISTORY = 500.0  # probes the long loss estimate remembers (exponential decay)
SHORT_HISTORY = 20.0  # probes the degraded estimate remembers
DEGRADED_LOSS = 0.2  # short-term loss above this, while not down, is "degraded"
# Flapping, measured as Nagios and Icinga do (a weighted percent state change: 20 possible
# changes over the last 21 checks, newer ones weigh 1.2, the oldest 0.8), over the time
# of FLAP_CHECKS probe intervals (urgent re-probes make checks irregular): the look-back,
# `Settings.flap_period`. It starts above 30 % (six changes) and stops below 25 %; a root
# stable for the whole look-back is not flapping, and its incident resolves.
FLAP_CHECKS = 21
FLAP_HIGH = 30.0
FLAP_LOW = 25.0
# Random loss seen across the whole network (losses that turned out isolated), decaying
# over this many seconds: when loss starts everywhere at once, every target's history is
# still clean, and this is what stops a thousand coin flips from making one false outage.
NETWORK_LOSS_SECONDS = 10.0
# An answer arrives at most this long after its probe was sent (for ordering evidence).
RTT_BOUND = 0.2
# A node losing probes under an ancestor without an address that has at most this many
# children asks for them to be probed too: they are the evidence about that ancestor.
SIBLINGS_ASKED = 64
# A node losing probes asks for this many of the children behind it alone to be probed
# too (of its first SIBLINGS_ASKED): one answering shows it forwards (`_forwarded`).
CHILDREN_ASKED = 3


class State(enum.Enum):
    UNKNOWN = "unknown"  # no result yet
    UP = "up"
    DOWN = "down"
    RECHECK = "recheck"  # was down; waits for a fresh probe (after a recovery or blindness)


@dataclass(frozen=True, slots=True)
class Settings:
    down_after: int = 3
    up_after: int = 2
    window: float = 30.0
    infer_min_children: int = 3
    infer_ratio: float = 0.8
    resolve_hold: float = 60.0
    timeout: float = 1.0  # the probe timeout: a loss seen at t was sent at t - timeout
    interval: float = 10.0  # seconds between scheduled probes of one target

    @property
    def flap_period(self) -> float:
        """The flap detector's look-back in seconds: FLAP_CHECKS probe intervals."""
        return FLAP_CHECKS * self.interval


@dataclass(slots=True)
class NodeState:
    state: State = State.UNKNOWN
    losses: int = 0  # consecutive
    answers: int = 0  # consecutive
    n: float = 0.0  # decayed count of results (long history)
    lost: float = 0.0  # decayed count of losses, excluding the current streak
    short_n: float = 0.0
    short_lost: float = 0.0
    changed_at: float = 0.0
    down_at: float = 0.0
    last_at: float = -math.inf  # time of the last result
    changes: tuple[float, ...] | None = None  # times of the last 21 state changes, flapping
    flapping: bool = False
    degraded: bool = False
    asked: bool = False  # ancestors were asked to be probed for this streak
    streak_at: float = 0.0  # when the current streak of losses began
    # Losses of probes sent before this time say nothing (they were in flight when a
    # parent came back, or the monitor regained its sight).
    stale_before: float = -math.inf
    # When it first went down since it last answered: looked at afresh (after blindness,
    # or below a node that came back) and found down again, it has been down since then.
    down_first: float | None = None
    # Its last silence that ended in an answer: from its last answer before it to the
    # answer that ended it (losses that never made it down included).
    silent_from: float = -math.inf
    silent_to: float = -math.inf
    answered_at: float = -math.inf  # its last answer
    # The last look at every node (as the monitor went blind, or sees again) this state
    # has had: `Health._epoch` when it is up to date.
    epoch: int = 0

    def loss_estimate(self) -> float:
        """Pessimistic (upper) estimate of this target's random loss rate.

        Half a loss is assumed before any history, and one standard error added, so a new
        target needs a long streak (15) and a clean one with a few hundred answers needs
        `down_after`; one with 10 % loss needs about 8.
        """
        p = (self.lost + 0.5) / (self.n + 1)
        return min(0.95, p + math.sqrt(p * (1 - p) / (self.n + 1)))

    def record(self, lost: bool, times: int = 1) -> None:
        """Add results to the decayed loss history."""
        d = 1 - 1 / HISTORY
        for _ in range(times):
            self.n = self.n * d + 1
            self.lost = self.lost * d + lost


def needed_losses(ns: NodeState, down_after: int, network_loss: float = 0.0) -> int:
    """Consecutive losses that make this target `down`: more for a lossy or new one, and
    for every target while the network as a whole is losing packets at random."""
    p = max(ns.loss_estimate(), min(network_loss, 0.95))
    k = math.ceil(math.log(FALSE_DOWN_BOUND) / math.log(p))
    return max(down_after, min(k, MAX_STREAK))


def flap_percent(changes: Iterable[float], now: float, period: float) -> float:
    """Weighted percent state change over the last `period` seconds (see FLAP_CHECKS)."""
    total = 0.0
    for at in changes:
        age = now - at
        if 0 <= age <= period:
            total += 1.2 - 0.4 * age / period
    return min(100.0, total / 20 * 100)


def update_flapping(ns: NodeState, now: float, period: float) -> bool:
    """Whether the node flaps now: it starts above FLAP_HIGH and stops below FLAP_LOW."""
    if ns.changes is None:
        return False
    percent = flap_percent(ns.changes, now, period)
    if ns.flapping and percent < FLAP_LOW:
        ns.flapping = False
    elif not ns.flapping and percent > FLAP_HIGH:
        ns.flapping = True
    return ns.flapping


class Health:
    """Every node's state from its probe results, and the urgent probes it asks for.

    Invariants: `states` holds a node once a result (or a restart) names it; a node is in
    state DOWN only after a streak of losses `needed_losses()` long (from RECHECK too: a
    node looked at afresh must fail afresh), none of them older than an answer of a child
    that has it as its only uplink; `version` moves on every change a caller's answer
    could depend on (not a router's own state, which /check reads directly)."""

    def __init__(self, topology: Topology, settings: Settings, anchors: Iterable[str]) -> None:
        self.topology = topology
        self.settings = settings
        # Only anchors that are probed can vouch for our view; with none, it is trusted.
        self.anchors: list[str] = list(anchors) or [
            r for r in topology.roots if topology.nodes[r].probed
        ]
        self.states: dict[str, NodeState] = {}
        # Nodes to probe now, each once, in the order first asked (a dict: a mass outage
        # asks for the same few ancestors 100,000 times over).
        self._requests: dict[str, None] = {}
        # A subscriber's router's parent -> the probed nodes above the router, nearest
        # first (the parent too if probed), for the topology they were found in.
        self._asked_above: dict[str, tuple[str, ...]] = {}
        self._asked_of: Topology | None = None
        # Bumped by every change a caller's answer could depend on (states of network
        # nodes, incidents, planned works, blindness; not routers' states, which /check
        # reads directly), so answers may be remembered until it moves.
        self.version = 0
        # (node, state, time) of each up/down change, kept only when someone stores them
        # (the daemon does, and empties the list every tick).
        self.record_transitions = False
        self.transitions: list[tuple[str, str, float]] = []
        self._net_results = 0.0
        self._net_lost = 0.0
        self._net_at = -math.inf
        # A look at every node under way, each node looked at when next met (`_settle`) if
        # the walk has not reached it: `_epoch` counts those looks, and a node's state is
        # up to date once its own `epoch` is the same.
        self._epoch = 0
        self._lazy = False
        # The nodes a reload removed whose states are not all taken out yet (`take_out`,
        # a slice a step of the event loop: 3,333 at once, at a 1 % change of a million,
        # were 4-5 ms of the swap's step, each a look-up in a table of a million): each
        # counts as gone already (no result reaches its state), and whatever reads every
        # state takes out the rest first. With the nodes still to look at, the anchors
        # at the reload (theirs are kept) and the list the states go to, to be freed.
        self._leaving: frozenset[str] = frozenset()
        self._leave: Iterator[str] = iter(())
        self._kept: Set[str] = frozenset()
        self._taken: list[NodeState] = []

    def take_out(self, count: int | None = None) -> bool:
        """Take out the states of the next `count` (None: all) of the nodes the last
        reload removed, into the list it handed back to be freed; returns whether any
        are left to take out."""
        if not self._leaving:
            return False
        pop, kept, taken = self.states.pop, self._kept, self._taken
        looked = 0
        for node in islice(self._leave, count):
            looked += 1
            if node not in kept and (ns := pop(node, None)) is not None:
                taken.append(ns)
        if count is not None and looked == count:
            return True
        self._leaving, self._leave, self._kept, self._taken = frozenset(), iter(()), frozenset(), []
        return False

    def observe(self, node: str, ok: bool, now: float) -> None:
        """One probe result for a node (or an anchor): the hysteresis step.

        An answer ends a streak of losses (which joins the loss history as random loss if
        the node was not down) and brings a node up after `up_after` answers; a loss in a
        streak `needed_losses()` long takes it down, and a shorter streak asks for urgent
        probes of the node and its ancestors. A loss of a probe sent before `stale_before`
        is no evidence."""
        ns = self.states.get(node)
        if ns is None:
            if node not in self.topology and node not in self.anchors:
                return  # a result for a node a reload removed
            ns = self.states[node] = NodeState(changed_at=now, epoch=self._epoch)
        elif self._leaving and node in self._leaving and node not in self._kept:
            return  # removed by a reload, its state not taken out yet (`take_out`)
        elif self._lazy:
            self._settle(node, ns)
        if not ok and now - self.settings.timeout < ns.stale_before:
            return  # lost before the network changed under it: no evidence either way
        ns.last_at = now
        short = 1 - 1 / SHORT_HISTORY
        ns.short_n = ns.short_n * short + 1
        ns.short_lost = ns.short_lost * short + (0 if ok else 1)
        self._network(now, ns.losses if ok and ns.state is not State.DOWN else 0)
        if ok:
            if ns.losses or ns.state in (State.DOWN, State.RECHECK):
                ns.silent_from, ns.silent_to = ns.answered_at, now
            ns.answered_at = now
            ns.down_first = None
            self._forwarded(node, now)
            if ns.losses and ns.state is not State.DOWN and node in self.anchors:
                self._doubt(node, ns.streak_at - self.settings.timeout, now)
            if ns.state is not State.DOWN:
                # The streak that just ended was random loss after all: it joins the history.
                ns.record(True, ns.losses)
                if ns.losses and self.topology.nodes.get(node) is not None:
                    # It answers again: its children's changes, skipped while it was
                    # losing probes, may now make it inferred.
                    self._answers_again(node)
            ns.record(False)
            ns.losses = 0
            ns.answers += 1
            ns.asked = False
            if ns.state in (State.UNKNOWN, State.RECHECK) or (
                ns.state is State.DOWN and ns.answers >= self.settings.up_after
            ):
                self._set(node, ns, State.UP, now)
        else:
            ns.losses += 1
            ns.answers = 0
            if ns.losses == 1:
                ns.streak_at = now
            if ns.state is not State.DOWN:
                down_after = self.settings.down_after
                # needed_losses() is never below down_after: a shorter streak needs no
                # estimate (two of a mass outage's three losses a node).
                if ns.losses >= down_after and ns.losses >= needed_losses(
                    ns, down_after, self.network_loss
                ):
                    self._set(node, ns, State.DOWN, now)
                else:
                    # Confirm quickly: probe it again, and its ancestors, now.
                    self._requests[node] = None
                    if not ns.asked:
                        ns.asked = True
                        self._ask_ancestors(node)
                        self._ask_children(node)
        ns.degraded = (
            ns.state is not State.DOWN
            and ns.short_n >= 10
            and ns.short_lost / ns.short_n >= DEGRADED_LOSS
        )

    def _forwarded(self, node: str, now: float) -> None:
        """A node behind a single uplink answered: that uplink forwarded the probe, so its
        own probes lost before this one was sent were random loss, not a failure."""
        here = self.topology.nodes.get(node)
        if here is None or len(here.parents) != 1:
            return
        parent = here.parents[0]
        ps = self.states.get(parent)
        if ps is None:
            return
        if self._lazy:
            self._settle(parent, ps)
        if not ps.losses:
            return
        sent = ps.streak_at - self.settings.timeout
        if ps.state is State.DOWN:
            # Silent itself, yet it carried this probe: it is up (a router that drops
            # ICMP to itself by a rate limit or a busy control plane forwards on), as an
            # inferred node is. Its losses are no random loss: it may have been repaired.
            if now - RTT_BOUND >= sent:
                ps.losses = 0
                ps.asked = False
                self._set(parent, ps, State.UP, now)
            return
        if now - RTT_BOUND >= sent:
            ps.record(True, ps.losses)
            self._network(now, ps.losses)
            ps.losses = 0
            ps.asked = False
            if parent in self.anchors:  # an anchor's streak ends here as by its own answer
                self._doubt(parent, sent, now)

    def _doubt(self, anchor: str, sent: float, now: float) -> None:
        """An anchor lost probes from `sent` on and answers again: our own uplink may have
        failed for that while (too briefly to be called blind). The streaks that began
        with it are no evidence: those nodes are looked at afresh, as after blindness."""
        begun = sent - 2 * self.settings.timeout  # a node's loss may be seen a little early
        self.take_out()  # every state is read: none of a node a reload removed
        for node, ns in self.states.items():
            if self._lazy:
                self._settle(node, ns)
            if node != anchor and self._void_streak(node, ns, begun, now):
                self.version += 1
                self._requests[node] = None
                self._rechecked(node)

    def _void_streak(self, node: str, ns: NodeState, begun: float, at: float) -> bool:
        """A node's streak of losses that began with our uplink's (sent from `begun` on)
        is no evidence: it is looked at afresh, counting losses of probes sent from `at`
        on. Returns whether it was down (it leaves the failed set)."""
        if not (ns.losses or ns.state is State.DOWN):
            return False
        if ns.streak_at - self.settings.timeout < begun:
            return False  # its trouble began before ours: real evidence
        ns.stale_before = at
        ns.losses = 0
        ns.asked = False
        if ns.state is not State.DOWN:
            return False
        if ns.changes and ns.changes[-1] == ns.down_at:
            ns.changes = ns.changes[:-1]  # not a change of its own: no flapping
        ns.state = State.RECHECK
        self._unfail(node)
        return True

    def _network(self, now: float, random_losses: int) -> None:
        """Count a result, and the losses it shows were random, in the network's loss."""
        if now != self._net_at:
            # Never grow: a clock stepped back would overflow exp() or, in smaller steps,
            # make the estimate inf/inf = nan for the life of the process.
            decay = math.exp(-max(0.0, now - self._net_at) / NETWORK_LOSS_SECONDS)
            self._net_results *= decay
            self._net_lost *= decay
            self._net_at = now
        self._net_results += 1 + random_losses
        self._net_lost += random_losses

    @property
    def network_loss(self) -> float:
        """The share of probes lost at random across the network lately (0 when none)."""
        if self._net_lost < 1:
            return 0.0
        return self._net_lost / self._net_results

    def _set(self, node: str, ns: NodeState, state: State, now: float) -> None:
        """A node changes state: flapping is measured on every change to or from DOWN,
        and what lies below a node that comes back is probed again (`_recheck_below`)."""
        here = self.topology.nodes.get(node)  # None for an anchor outside the topology
        if here is None or here.kind != "cpe":  # a router's state is read, never cached
            self.version += 1
        if self.record_transitions:
            self.transitions.append((node, state.value, now))
        was_down = ns.state is State.DOWN
        if state is State.UP and ns.state is not State.UNKNOWN:
            # Back from down or cut off, by its own answers or a child's (`_forwarded`):
            # the probes it lost then were the fault, not a lossy link, so "degraded"
            # starts afresh, as the loss history did.
            ns.short_lost = 0.0
        if was_down or state is State.DOWN:
            # A tuple of floats, made anew each change: the collector stops tracking it at
            # the first young collection it meets, so the 100,000 made as a core failure
            # takes a city down never reach the full collection that may land in the
            # middle of it. (An array is tracked on 3.11: 100,000 were 8-13 ms of one
            # step of results at load 1-5, the step's worst, 21.5 ms at load.)
            kept = ns.changes[1 - FLAP_CHECKS :] if ns.changes else ()
            ns.changes = (*kept, now)
            update_flapping(ns, now, self.settings.flap_period)
        if state is State.DOWN:
            ns.down_at = now
            if ns.down_first is None:
                ns.down_first = now
            self._fail(node)
        else:
            self._unfail(node)
        ns.state = state
        if was_down and state is State.UP:
            self._recheck_below(node, now)
        ns.changed_at = now
        self._changed_state(node, state)

    def _recheck_below(self, node: str, now: float) -> None:
        """A node came back: whatever below it looked down may only have been cut off.
        Each is probed again at once and counts as down only if a probe sent from now on
        is lost (a streak begun while cut off is forgotten), so a recovery raises no storm
        of child events, and a real second fault splits off."""
        if node not in self.topology:
            return
        for d in self.topology.descendants(node):
            self._above_came_back(d)
            ns = self.states.get(d)
            if ns is None:
                continue
            if self._lazy:
                self._settle(d, ns)
            ns.stale_before = now
            ns.losses = 0  # a streak begun while cut off is forgotten, DOWN ones' too
            ns.asked = False
            if ns.state is State.DOWN:
                ns.state = State.RECHECK
                self.version += 1
                self._unfail(d)
                self._requests[d] = None
                self._rechecked(d)

    def _ask_ancestors(self, node: str) -> None:
        """Urgent probes of a node's probed ancestors and the anchors, and (but for a
        router, never a root) the children of an ancestor without an address."""
        topology = self.topology
        requests = self._requests
        nodes, inner = topology.nodes, topology.inner  # every ancestor has children
        here = nodes.get(node)
        if here is not None and here.kind == "cpe" and len(here.parents) == 1:
            # A subscriber's router (most of a mass outage): what to ask for is its
            # parent's, the same for all its siblings, found once per topology.
            if self._asked_of is not topology:
                self._asked_of = topology
                self._asked_above = {}
            parent = here.parents[0]
            above = self._asked_above.get(parent)
            if above is None:
                above = self._asked_above[parent] = tuple(
                    a for a in (parent, *topology.ancestors(parent)) if inner[a].probed
                )
            for a in above:
                requests[a] = None
        elif here is not None:
            for a in topology.ancestors(node):
                if inner[a].probed:
                    requests[a] = None
                elif here.kind != "cpe" and len(inner[a].children) <= SIBLINGS_ASKED:
                    for c in inner[a].children:
                        if nodes[c].probed:
                            requests[c] = None
        # The anchors too: a loss might be our own uplink's, and they must say so first.
        for a in self.anchors:
            requests[a] = None

    def _ask_children(self, node: str) -> None:
        """Urgent probes of a few probed children behind this node alone: one that answers
        shows it forwards, so a node that drops only its own probes is not called down (an
        anchor that does would make the monitor blind: every caller hearing "unknown")."""
        here = self.topology.nodes.get(node)
        if here is None or not here.children:
            return
        nodes, asked = self.topology.nodes, 0
        for c in islice(here.children, SIBLINGS_ASKED):
            child = nodes[c]
            if child.probed and len(child.parents) == 1:
                self._requests[c] = None
                asked += 1
                if asked == CHILDREN_ASKED:
                    return

    def take_requests(self) -> list[str]:
        """Nodes to probe now, ahead of their schedule (each once)."""
        out = list(self._requests)
        self._requests.clear()
        return out

    def state_of(self, node: str) -> State:
        ns = self.states.get(node)
        return ns.state if ns is not None else State.UNKNOWN

    # -- what the failed set hears (Failures overrides these) ------------------------

    def _fail(self, node: str) -> None:
        """The node went DOWN by its own probes."""

    def _unfail(self, node: str) -> None:
        """The node is no longer DOWN by its own probes (up, or waiting for a recheck)."""

    def _changed_state(self, node: str, state: State) -> None:
        """Called at the end of every change of a node's state."""

    def _rechecked(self, node: str) -> None:
        """A node that was DOWN now waits for a fresh probe (below one that came back, or
        after a doubt about our own uplink)."""

    def _above_came_back(self, node: str) -> None:
        """Something above this node came back (it may only have been cut off)."""

    def _answers_again(self, node: str) -> None:
        """A topology node that was losing probes (not down) answers again."""

    def _settle(self, node: str, ns: NodeState) -> None:
        """While a look at every node is under way (`_lazy`): this node's state is about to
        be read or changed, and is looked at first if the walk has not reached it."""
