"""What every caller should hear, from the true network and the documented rules alone.

Written from the contract (/check statuses, incidents) and the rules of /check
(README, check-rules), sharing no code with the correlator or /check: it replays a world's
script on its own model of the network (which devices are broken, whether the monitor's
uplink is up, which planned works run) and says, once the documented delays have passed,
what each subscriber should hear and which incidents should be open, with which root.

The rules it applies, in order, for a subscriber served by node S (see check-rules.md):
  unknown      the monitor is blind (every anchor silent);
  outage       S is cut off behind a fault the monitor can see (a probed node that does
               not answer, or a node, with an address or without, whose children fail together);
               the incident's root is the highest such fault, `maintenance` if it failed
               under planned works that are still running;
  maintenance  planned works run on a node S depends on alone (every path to a root
               passes through nodes under works); `eta` is the works' end (of the
               chain of works that overlap or follow on and keep S cut off, as booked
               and changed by then: works booked later are not known yet, and works
               withdrawn, cut short or extended end when they were last told to);
  cpe_down     the subscriber's own router does not answer;
  restored     S was cut off behind a fault whose incident resolved within restored_for;
  ok           otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from outagemon.sim.worlds import Action, World, flap_lookback

# An incident opened (or moved) at t must name a node that was down, and a root, at some
# moment of the last EXPLAIN seconds: detection and settling take at most this long.
EXPLAIN = 120.0


@dataclass(frozen=True, slots=True)
class Expected:
    """What one subscriber should hear: acceptable statuses, each with its roots."""

    statuses: frozenset[str]
    roots: dict[str, str] = field(default_factory=dict)  # acceptable root -> its status
    etas: frozenset[float] = frozenset()  # for maintenance: the works' end(s)


@dataclass(slots=True)
class Verdict:
    settled: bool
    blind: bool = False
    answers: dict[str, Expected] = field(default_factory=dict)  # account -> expected
    roots: dict[str, str] = field(default_factory=dict)  # expected incident root -> kind
    cut: set[str] = field(default_factory=set)  # nodes behind the expected roots
    down: set[str] = field(default_factory=set)  # nodes truly down (broken or cut off)
    ever_down: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Moment:
    at: float
    down: frozenset[str]
    roots: frozenset[str]
    blind: bool
    seen: frozenset[str] = frozenset()
    under_works: frozenset[str] = frozenset()  # roots that failed under planned works


class Oracle:
    def __init__(self, world: World) -> None:
        self.world = world
        self.parents: dict[str, tuple[str, ...]] = {}
        self.probed: dict[str, bool] = {}
        self.kind: dict[str, str] = {}
        for d in world.devices:
            self.parents[d.id] = d.parents
            self.probed[d.id] = d.probed
            self.kind[d.id] = d.kind
        for c in world.customers:
            if c.router:
                self.parents[c.router_id] = (c.serving,)
                self.probed[c.router_id] = True
                self.kind[c.router_id] = "cpe"
        self.children: dict[str, list[str]] = {n: [] for n in self.parents}
        for n, ps in self.parents.items():
            for p in ps:
                self.children[p].append(n)
        self.tops = [n for n, ps in self.parents.items() if not ps]
        # Children before parents, for inference from below.
        self.order = self._bottom_up()
        self.settle = (15 * world.timeout + 3 * world.interval + world.window
                       + world.resolve_hold
                       + (world.restored_for if world.restored_for < 1000 else 0.0)
                       + 30)  # fmt: skip
        # A node back for less than this may have answered no probe (its own, or its
        # children's, with the correlator's ticks between).
        self.unseen = world.interval + 2 * world.timeout + 0.5
        self._replay()

    # -- the network's graph ---------------------------------------------------------

    def _bottom_up(self) -> list[str]:
        depth: dict[str, int] = {}

        def d(n: str) -> int:
            if n not in depth:
                depth[n] = 1 + max((d(p) for p in self.parents[n]), default=-1)
            return depth[n]

        return sorted(self.parents, key=lambda n: -d(n))

    def unreachable(self, broken: Iterable[str]) -> set[str]:
        """Nodes with no working path up to a working top node."""
        broken = set(broken)
        alive = {t for t in self.tops if t not in broken}
        stack = list(alive)
        while stack:
            for c in self.children[stack.pop()]:
                if c not in alive and c not in broken:
                    alive.add(c)
                    stack.append(c)
        return set(self.parents) - alive

    def behind(self, failed: set[str]) -> set[str]:
        """The failed nodes and every node all of whose uplinks lead into them."""
        out = set(failed)
        for n in reversed(self.order):  # parents first
            ps = self.parents[n]
            if n not in out and ps and all(p in out for p in ps):
                out.add(n)
        return out

    def ancestors(self, n: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.parents[n])
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(self.parents[p])
        return seen

    # -- what the monitor can see ------------------------------------------------------

    def visible(self, down: set[str], since: dict[str, float],
                kept: frozenset[str] = frozenset(),
                failed_at: dict[str, float] | None = None) -> set[str]:  # fmt: skip
        """Nodes the monitor can know are down: probed ones, and nodes without an
        address whose children failed together (within `window` of the last of them to
        fail), at least infer_min_children of them and infer_ratio of those that were up
        (a child down since long before counts neither way). Once inferred (`kept`), a
        node stays so while it is down: its children do not answer again. A probed node
        that answers is inferred down too when its children fail together (README: a node
        whose children fail together is inferred down; a switch that answers while its
        ports are dead), judged by when they truly failed (`failed_at`: the monitor saw
        each as it happened, its blindness aside)."""
        seen: set[str] = set()
        for n in self.order:
            if n not in down:
                if self.probed[n] and self._together(n, seen, failed_at or since):
                    seen.add(n)
                continue
            if self.probed[n] or n in kept or self._together(n, seen, since):
                seen.add(n)
        return seen

    def _together(self, n: str, seen: set[str], since: dict[str, float]) -> bool:
        """Whether enough of n's children failed together to infer n down. A child with
        an address inferred down while it answers counts as up (it answers)."""
        w = self.world
        kids = self.children[n]
        down = [c for c in kids if c in seen and c in since]
        latest = max((since[c] for c in down), default=0.0)
        failed = sum(1 for c in down if since[c] >= latest - w.window)
        base = failed + sum(1 for c in kids if c not in down)
        return base >= w.infer_min_children and failed / base >= w.infer_ratio

    def roots_of(self, seen: set[str]) -> tuple[set[str], set[str]]:
        """(roots, cut): the highest visible faults, and everything behind them."""
        cut = self.behind(seen)
        roots = {n for n in seen if self.kind[n] != "cpe" and not self._all_up_in(n, cut)}
        return roots, cut

    def _all_up_in(self, n: str, nodes: set[str]) -> bool:
        """Whether n has uplinks and every one of them is among `nodes`."""
        ps = self.parents[n]
        return bool(ps) and all(p in nodes for p in ps)

    def blind_for(self, down: set[str], uplink_down: bool) -> bool:
        if uplink_down:
            return True
        if self.world.external_anchor:
            return False
        anchors = [t for t in self.tops if self.probed[t]]
        return bool(anchors) and all(a in down for a in anchors)

    # -- the script, replayed ----------------------------------------------------------

    def _replay(self) -> None:
        w = self.world
        broken: set[str] = set()
        uplink = False
        since: dict[str, float] = {}
        failed_at: dict[str, float] = {}  # as `since`, but kept across the monitor's blindness
        self.works: list[tuple[str, float, float, float]] = []  # node, start, end, booked at
        # (when, node, start, new end): works cut short, extended or withdrawn (end = when)
        self.amends: list[tuple[float, str, float, float]] = []
        self.moments: list[_Moment] = []
        self.changes: dict[str, list[float]] = {n: [] for n in self.parents}
        self.last_change: list[float] = []
        self.cover_start: dict[str, float] = {}
        # node -> (from, to, behind several roots) of each time it was cut off
        self.covers: dict[str, list[tuple[float, float, bool]]] = {}
        self.cover_shared: set[str] = set()
        self.entry_kind: dict[str, tuple[float, bool]] = {}  # root -> (since, under works)
        down: set[str] = set()
        cut: set[str] = set()
        events: list[tuple[float, int, Action, str]] = []
        for i, s in enumerate(w.steps):
            events.append((s.at, i, s.action, s.node))
            if s.action is Action.WORKS:
                self.works.append((s.node, s.value, s.until, s.at))
                events.append((s.value, i, Action.CHECK, "works-start"))
                events.append((s.until, i, Action.CHECK, "works-end"))
            elif s.action is Action.AMEND:
                end = max(s.until, s.at)  # withdrawn: they end now
                self.amends.append((s.at, s.node, s.value, end))
                events.append((s.at, i, Action.CHECK, "works-amend"))
                events.append((end, i, Action.CHECK, "works-end"))
        events.sort(key=lambda e: (e[0], e[1]))
        self.amends.sort()
        self.ever_down: set[str] = set()
        for at, _, action, node in events:
            if action is Action.CHECK and not node:
                continue
            self.last_change.append(at)
            if action is Action.FAIL and node in self.parents:
                broken.add(node)
            elif action is Action.REPAIR:
                broken.discard(node)
            elif action is Action.BLIND:
                uplink = True
            elif action is Action.SEE:
                uplink = False
            now_down = self.unreachable(broken)
            for n in now_down - down:
                since[n] = failed_at[n] = at
                self.changes[n].append(at)
            for n in down - now_down:
                since.pop(n, None)
                failed_at.pop(n, None)
                self.changes[n].append(at)
            if action is Action.SEE:
                # The monitor looks again: what it saw before is not evidence any more.
                for n in now_down:
                    since[n] = at
            elif action is Action.RESTART:
                # The new run looks again at every node but the roots of the open incidents
                # it takes up: those it knows down since they failed (the stored incident's
                # start), so one long gone still neither makes a cable cut nor hides one.
                last = self.moments[-1] if self.moments else None
                taken_up = last.roots if last is not None and not last.blind else frozenset()
                for n in now_down - taken_up:
                    since[n] = failed_at[n] = at
            down = now_down
            self.ever_down |= down
            blind = self.blind_for(down, uplink)
            kept = (
                frozenset() if action is Action.SEE or not self.moments else self.moments[-1].seen
            )
            seen = set() if blind else self.visible(down, since, kept, failed_at)
            roots, new_cut = self.roots_of(seen)
            if not blind:
                for n in new_cut - cut:
                    self.cover_start.setdefault(n, at)
                for n in cut - new_cut:
                    start = self.cover_start.pop(n, at)
                    shared = n in self.cover_shared
                    self.cover_shared.discard(n)
                    self.covers.setdefault(n, []).append((start, at, shared))
                cut = new_cut
                reached: set[str] = set()
                for r in roots:
                    behind = self._reach(r, cut, roots)
                    self.cover_shared |= behind & reached
                    reached |= behind
                for r in roots:
                    if r not in self.entry_kind or self.entry_kind[r][0] < 0:
                        self.entry_kind[r] = (at, bool(self.works_cover(at, {r})))
                for r in list(self.entry_kind):
                    if r not in roots:
                        del self.entry_kind[r]
            for r, (entered, inside) in list(self.entry_kind.items()):
                # A root that failed inside works is maintenance while works cover it
                # without a break (a chain); once they leave it, an outage for good:
                # works booked later did not find it working (it failed before them).
                if inside and r not in self.works_cover(at, {r}):
                    self.entry_kind[r] = (entered, False)
            under = frozenset(r for r, (_, u) in self.entry_kind.items() if u)
            self.moments.append(
                _Moment(at, frozenset(down), frozenset(roots), blind, frozenset(seen), under)
            )

    def works_at(self, t: float) -> list[tuple[str, float, float]]:
        """The works as booked at t: each (node, start, end) with the end the engineers'
        last change at or before t gave it (works changed to end before they begin are
        gone, as they never run). Works booked after t are not known at t: callers cannot
        hear of a chain of works that no one has booked yet."""
        out = []
        for n, s, e, booked in self.works:
            if booked > t:
                continue
            for at, node, start, end in self.amends:
                if at <= t and (node, start) == (n, s):
                    e = end
            if e > s:
                out.append((n, s, e))
        return out

    def works_cover(self, t: float, nodes: set[str]) -> dict[str, float]:
        """Nodes among `nodes` that planned works running at t cover, each with the time
        it stops being covered: a node depends on the works when all its uplinks lead into
        them, and stops at the first moment (works starting or ending) when the works
        running then leave it a path: works that overlap or follow on carry it on."""
        booked = [(n, s, e) for n, s, e in self.works_at(t) if e > t and n in self.parents]
        covered = self.behind({n for n, s, _ in booked if s <= t})
        moments = sorted({x for _, s, e in booked for x in (s, e) if x > t})
        out: dict[str, float] = {}
        for n in nodes & covered:
            for m in moments:
                if n not in self.behind({w for w, s, e in booked if s <= m < e}):
                    out[n] = m
                    break
        return out

    def moment(self, t: float) -> _Moment:
        found = _Moment(-math.inf, frozenset(), frozenset(), False)  # before the script
        for m in self.moments:
            if m.at > t:
                break
            found = m
        return found

    def moments_within(self, start: float, end: float) -> list[_Moment]:
        """The moments in force at some time of [start, end]."""
        out = [m for m in self.moments if start < m.at <= end]
        return [self.moment(start), *out]

    # -- the verdict at a check point ------------------------------------------------

    def settled(self, t: float) -> bool:
        last = max((c for c in self.last_change if c <= t), default=-math.inf)
        if t - last < self.settle:
            return False
        for times in self.changes.values():
            past = [c for c in times if c <= t]
            flapped = (
                len([c for c in past if c >= past[-1] - flap_lookback(self.world)]) >= 3
                if past
                else False
            )
            if flapped and t - past[-1] < flap_lookback(self.world) + self.settle:
                return False
            if len(past) % 2 == 1 and len(past) >= 3 and past[-1] - past[-2] < self.unseen:
                # Down again after being back too briefly for a probe of its own or of a
                # child surely to answer: the monitor may not have seen it come back (an
                # inference kept, a streak unbroken) or may have: either, till it changes.
                return False
        return True

    def verdict(self, t: float) -> Verdict:
        if not self.settled(t):
            return Verdict(settled=False)
        m = self.moment(t)
        v = Verdict(settled=True, blind=m.blind, down=set(m.down), ever_down=set(self.ever_down))
        if m.blind:
            for c in self.world.customers:
                v.answers[c.account] = Expected(frozenset({"unknown"}))
            return v
        # Recompute what is visible now from the replay's state at t.
        roots = set(m.roots)
        cut = self.behind(set(m.seen))
        v.cut = cut
        ends: dict[str, float] = {}
        for r in roots:
            works_now = self.works_cover(t, {r})
            v.roots[r] = "maintenance" if r in m.under_works and r in works_now else "outage"
            if v.roots[r] == "maintenance":
                ends[r] = works_now[r]
        reach = {r: self._reach(r, cut, roots) for r in roots}
        for c in self.world.customers:
            s = c.serving
            if s in cut:
                ok = {r: v.roots[r] for r in roots if s in reach[r]}
                etas = frozenset(ends[r] for r in ok if r in ends)
                v.answers[c.account] = Expected(frozenset(ok.values()), ok, etas)
                continue
            works = self.works_cover(t, {s})
            if s in works:
                v.answers[c.account] = Expected(
                    frozenset({"maintenance"}), etas=frozenset({works[s]})
                )
                continue
            if c.router and c.router_id in m.down:
                v.answers[c.account] = Expected(frozenset({"cpe_down"}))
                continue
            v.answers[c.account] = Expected(self._restored(s, t))
        return v

    def _reach(self, root: str, cut: set[str], roots: set[str]) -> set[str]:
        out = {root}
        stack = [root]
        while stack:
            for c in self.children[stack.pop()]:
                if c in cut and c not in out and c not in roots:
                    out.add(c)
                    stack.append(c)
        return out

    def _restored(self, s: str, t: float) -> frozenset[str]:
        w = self.world
        said: set[str] = set()
        covers = [c for c in self.covers.get(s, []) if c[1] <= t]
        for start, end, shared in covers:
            if t - end > w.restored_for:
                continue
            if shared:
                # Behind two faults, a caller is counted in one incident (the older), and
                # hears `restored` only when that one resolves.
                said.update(("restored", "ok"))
                continue
            # Long enough for a due probe, the longest streak and settling: surely seen;
            # too short for down_after losses: surely missed; in between, either.
            length = end - start
            if length >= w.interval + 15 * w.timeout + w.window:
                said.add("restored")
            elif length > (w.down_after - 1) * w.timeout:
                said.update(("restored", "ok"))
        if "restored" in said and t - max(c[1] for c in covers) > w.restored_for - 60:
            said.add("ok")  # near the end of restored_for: either
        return frozenset(said or {"ok"})
