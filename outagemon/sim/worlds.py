"""Random worlds for the truth harness: a network, its subscribers and a script of faults.

A world is plain data (no correlator, no oracle in it), so the same world can be run on
the real code, judged by the oracle, printed, and shrunk. Networks are trees or DAGs
(1-3 uplinks per node) with passive segments and unaddressed routers; scripts fail and
repair nodes at any level, spread a fault upward and heal it downward, flap links, lose
packets at random, blind the monitor, run planned works and restart the daemon; with
`overlap`, planned works overlap failures and are withdrawn, cut short or extended; with
`nested`, a node behind a fault dies while it is down and the fault is repaired first;
with `uplinks`, the uplinks of a node with several fail at different moments.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field, replace


class Action(enum.Enum):
    FAIL = "fail"  # the node (device, or the cable of a passive node) stops
    REPAIR = "repair"
    LOSS = "loss"  # every target loses `value` of its probes at random (0 ends it)
    BLIND = "blind"  # the monitor's own uplink goes silent: nothing answers
    SEE = "see"  # the uplink is back
    WORKS = "works"  # planned works on `node` from `value` to `until` (script seconds)
    AMEND = "amend"  # the works on `node` that start at `value` now end at `until` (at once:
    # withdrawn) as an engineer's POST /api/v1/maintenance/{id} says
    RESTART = "restart"  # the daemon restarts from its stored state
    RELOAD = "reload"  # the daemon reloads its files, unchanged (SIGHUP, systemctl reload)
    CHECK = "check"  # compare every caller's answer and the incidents with the oracle


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    kind: str
    probed: bool
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Customer:
    account: str
    phones: tuple[str, ...]
    serving: str  # the node that serves their address
    router: bool  # a probed router of their own (node cpe:ACCOUNT)

    @property
    def router_id(self) -> str:
        return f"cpe:{self.account}"


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # seconds after the script starts
    action: Action
    node: str = ""
    value: float = 0.0
    until: float = 0.0

    def __str__(self) -> str:
        extra = ""
        if self.action is Action.LOSS:
            extra = f" {self.value:.0%}"
        elif self.action is Action.WORKS:
            extra = f" from {self.value:g} to {self.until:g}"
        elif self.action is Action.AMEND:
            to = "withdrawn" if self.until <= self.at else f"now to {self.until:g}"
            extra = f" (works from {self.value:g}) {to}"
        return f"{self.at:8.1f} {self.action.value} {self.node}{extra}".rstrip()


@dataclass(frozen=True, slots=True)
class World:
    seed: int
    devices: tuple[Device, ...]
    customers: tuple[Customer, ...]
    steps: tuple[Step, ...]
    interval: float = 5.0
    timeout: float = 1.0
    down_after: int = 3
    up_after: int = 2
    window: float = 30.0
    infer_min_children: int = 3
    infer_ratio: float = 0.8
    resolve_hold: float = 30.0
    restored_for: float = 20.0
    external_anchor: bool = True  # else the topology's probed roots are the anchors
    notes: tuple[str, ...] = field(default=())

    def size(self) -> tuple[int, int, int]:
        return (len(self.steps), len(self.devices), len(self.customers))

    def describe(self) -> str:
        """The world as text a person can rebuild it from."""
        lines = [
            f"world seed={self.seed} interval={self.interval:g} timeout={self.timeout:g} "
            f"resolve_hold={self.resolve_hold:g} restored_for={self.restored_for:g} "
            f"anchor={'external' if self.external_anchor else 'topology roots'}"
        ]
        for d in self.devices:
            up = f" <- {', '.join(d.parents)}" if d.parents else ""
            lines.append(f"  {d.id} ({d.kind}{'' if d.probed else ', no ip'}){up}")
        for c in self.customers:
            router = f", router {c.router_id}" if c.router else ""
            lines.append(f"  subscriber {c.account} at {c.serving}{router}")
        lines.extend(f"  {s}" for s in self.steps)
        return "\n".join(lines)


def generate(rng: random.Random, seed: int = 0, overlap: bool = False,
             reload: bool = False, nested: bool = False,
             uplinks: bool = False) -> World:  # fmt: skip
    """A random world; smaller draws of `rng` give smaller worlds (for shrinking).
    `overlap`: scripts may also hold planned works overlapping a failure (see `script`);
    `reload`: the daemon also reloads its unchanged files in the middle of episodes
    (`reloads`); `nested`, `uplinks`: episodes of `_nested` and `_uplinks`. Without them,
    every seed's world is the one it always was."""
    devices: list[Device] = []
    roots = ["core"] if rng.random() < 0.85 else ["core", "core-b"]
    for r in roots:
        devices.append(Device(r, "core", True))
    levels: list[list[str]] = [roots]
    plan = [("agg", "aggregation", 0.9), ("sw", "access", 0.85), ("seg", "segment", 0.15)]
    depth = 1 + rng.randrange(3)
    for name, kind, p_ip in plan[:depth]:
        above = levels[-1]
        here: list[str] = []
        for a in range(len(above)):
            for i in range(1 + rng.randrange(3)):
                node = f"{name}{len(levels)}-{a}-{i}"
                parents = _parents(rng, above, above[a])
                devices.append(Device(node, kind, rng.random() < p_ip, parents))
                here.append(node)
        levels.append(here)
    serving = [d.id for d in devices if d.kind != "core"] or roots
    customers: list[Customer] = []
    for node in serving:
        for _ in range(rng.randrange(4)):
            n = len(customers) + 1
            phones = tuple(f"+7921{n:03d}{k:04d}" for k in range(1 + rng.randrange(3)))
            customers.append(Customer(str(1000 + n), phones, node, rng.random() < 0.6))
    fast = rng.random() < 0.2  # the lab's timing: 1 s probes, a short hold
    world = World(
        seed=seed,
        devices=tuple(devices),
        customers=tuple(customers),
        steps=(),
        interval=1.0 if fast else 5.0,
        timeout=0.5 if fast else 1.0,
        resolve_hold=rng.choice([3.0, 10.0]) if fast else rng.choice([10.0, 30.0, 60.0]),
        # Short, or as long as the config allows (a week: longer than any world's script).
        restored_for=rng.choice([20.0, 604800.0]),
        external_anchor=rng.random() < 0.7,
    )
    steps = script(rng, world, overlap, nested, uplinks)
    return replace(world, steps=tuple(reloads(rng, steps) if reload else steps))


def _parents(rng: random.Random, above: list[str], own: str) -> tuple[str, ...]:
    roll = rng.random()
    count = 1 if roll < 0.65 else 2 if roll < 0.9 else 3
    others = [a for a in above if a != own]
    rng.shuffle(others)
    return (own, *others[: count - 1])


# How long the script waits after an episode before it asks: longer than any documented
# delay (detection, settling, resolve_hold, restored_for) for the world's settings; the
# oracle, not this, decides whether a check point is settled.
def quiet(world: World) -> float:
    restored = world.restored_for if world.restored_for < 1000 else 0.0
    return (
        15 * world.timeout + 3 * world.interval + world.window + world.resolve_hold + restored + 60
    )


FLAP_CHECKS = 21  # the flap detector looks back this many probe intervals (check-rules.md)


def flap_lookback(world: World) -> float:
    return FLAP_CHECKS * world.interval


def script(rng: random.Random, world: World, overlap: bool = False, nested: bool = False,
           uplinks: bool = False) -> list[Step]:  # fmt: skip
    """A script of 1-8 episodes, each followed by a quiet period and a check. With
    `overlap`, a quarter of the episodes are planned works overlapping a failure
    (`_overlapping`); with `nested` or `uplinks`, a quarter (of the rest) are `_nested`
    or `_uplinks` episodes; the other draws are as without them."""
    nodes = [d.id for d in world.devices]
    routers = [c.router_id for c in world.customers if c.router]
    parents = {d.id: d.parents for d in world.devices}
    non_roots = [d.id for d in world.devices if d.parents]
    steps: list[Step] = []
    broken: set[str] = set()
    t = 0.0
    works_id = 0
    gap = quiet(world)

    def pick(pool: list[str]) -> str:
        return pool[rng.randrange(len(pool))]

    for _ in range(1 + rng.randrange(8)):
        if overlap and rng.random() < 0.25:
            t = _overlapping(rng, world, steps, broken, t)
            steps.append(Step(t, Action.CHECK))
            t += 1
            continue
        if nested and rng.random() < 0.25:
            t = _nested(rng, world, steps, broken, t)
            steps.append(Step(t, Action.CHECK))
            t += 1
            continue
        if uplinks and rng.random() < 0.25:
            t = _uplinks(rng, world, steps, broken, t)
            steps.append(Step(t, Action.CHECK))
            t += 1
            continue
        roll = rng.random()
        if roll < 0.22 or (not broken and roll < 0.3):  # one node fails
            pool = non_roots + routers if rng.random() < 0.95 else nodes
            x = pick(pool or nodes)
            steps.append(Step(t, Action.FAIL, x))
            broken.add(x)
            t += gap
        elif roll < 0.3:  # something broken is repaired
            x = pick(sorted(broken))
            steps.append(Step(t, Action.REPAIR, x))
            broken.discard(x)
            t += gap
        elif roll < 0.4 and non_roots:  # a fault spreads upward, then heals downward
            chain = [pick(non_roots)]
            while len(chain) < 3 and parents[parents[chain[-1]][0]]:
                chain.append(parents[chain[-1]][0])  # up through first uplinks, below the core
            for x in chain:
                steps.append(Step(t, Action.FAIL, x))
                broken.add(x)
                t += 1 + rng.randrange(20)
            t += gap
            steps.append(Step(t, Action.CHECK))
            t += 1
            for x in reversed(chain):
                steps.append(Step(t, Action.REPAIR, x))
                broken.discard(x)
                t += 1 + rng.randrange(20)
            t += gap
        elif roll < 0.5 and non_roots:  # a link flaps, then stays up
            x = pick(non_roots)
            # Down long enough to be seen each time (a probe due, a streak, settling).
            down, up = 3 * world.interval, 2 * world.interval
            for _ in range(2 + rng.randrange(5)):
                steps.append(Step(t, Action.FAIL, x))
                t += down + rng.randrange(int(down) + 1)
                steps.append(Step(t, Action.REPAIR, x))
                t += up + rng.randrange(int(2 * up) + 1)
            broken.discard(x)
            t += flap_lookback(world) + gap
        elif roll < 0.62:  # random loss everywhere for a while
            steps.append(Step(t, Action.LOSS, value=round(0.01 + rng.random() * 0.14, 3)))
            t += 30 + rng.randrange(91)
            steps.append(Step(t, Action.LOSS, value=0.0))
            t += gap
        elif roll < 0.74:  # the monitor's own uplink goes silent, maybe then random loss
            steps.append(Step(t, Action.BLIND))
            t += 5 + rng.randrange(56)
            steps.append(Step(t, Action.SEE))
            t += 1 + rng.randrange(10)
            if rng.random() < 0.5:
                steps.append(Step(t, Action.LOSS, value=round(0.05 + rng.random() * 0.1, 3)))
                t += 30 + rng.randrange(91)
                steps.append(Step(t, Action.LOSS, value=0.0))
            t += gap
        elif roll < 0.9:  # planned works, the node off for some or all of them
            x = pick(non_roots or nodes)
            works_id += 1
            starts = t + rng.randrange(30)
            ends = starts + 60 + rng.randrange(600)
            steps.append(Step(t, Action.WORKS, x, value=starts, until=ends))
            variant = rng.random()
            if variant < 0.8 and x not in broken:
                off = starts + 1 + rng.randrange(20)
                steps.append(Step(off, Action.FAIL, x))
                t = off + gap
                if t < ends:
                    steps.append(Step(t, Action.CHECK))
                back = (
                    ends - 1 - rng.randrange(30) if variant < 0.6 else ends + 5 + rng.randrange(60)
                )
                back = max(back, t + 1)
                steps.append(Step(back, Action.REPAIR, x))
                t = back + gap
            else:
                t = max(t, ends) + gap
        else:  # the daemon restarts from what it stored
            steps.append(Step(t, Action.RESTART))
            t += gap
        steps.append(Step(t, Action.CHECK))
        t += 1
    return steps


def _overlapping(rng: random.Random, world: World, steps: list[Step], broken: set[str],
                 t: float) -> float:  # fmt: skip
    """Planned works on a node X overlapping a failure of X, of a node below X (inside the
    works' reach, or outside it through another uplink), of a node above X, or of one
    elsewhere; the failure begins inside the works or well before they start (a probe
    interval and more: the monitor cannot take it for one inside). While the node is
    down, an engineer withdraws the works, cuts them short or extends them (or leaves
    them), and the daemon may restart after; the node comes back before the works' end,
    after it, or not in the episode.
    Appends the steps from `t`; returns when the episode's last check is due."""
    parents, children = _links(world)
    non_roots = [n for n, ps in parents.items() if ps and not n.startswith("cpe:")]
    x = non_roots[rng.randrange(len(non_roots))] if non_roots else world.devices[0].id
    where = rng.random()
    pool = (
        [x]
        if where < 0.35
        else _reach(x, children)
        if where < 0.7
        else [a for a in _reach(x, parents) if parents[a]]
        if where < 0.85
        else sorted(set(parents) - {x})
    )
    y = pool[rng.randrange(len(pool))] if pool else x
    gap = quiet(world)
    before = rng.random() < 0.25
    lead = 2 * world.interval + world.timeout + 5  # a failure surely seen before the works
    starts = t + (lead + 1 + rng.randrange(60) if before else rng.randrange(30))
    ends = starts + gap + 60 + rng.randrange(600)
    steps.append(Step(t, Action.WORKS, x, value=starts, until=ends))
    fails = y not in broken
    off = (
        (t + rng.randrange(int(starts - lead - t) + 1))
        if before
        else starts + 1 + rng.randrange(20)
    )
    if fails:
        steps.append(Step(off, Action.FAIL, y))
    t = off + gap
    if t < ends:
        steps.append(Step(t, Action.CHECK))
    t += 1
    edit = rng.random()
    end = ends
    if t < ends and edit < 0.75:
        if edit < 0.25:  # withdrawn now
            end = t
        elif edit < 0.5:  # cut short
            end = t + 1 + rng.randrange(int(ends - t))
        else:  # extended
            end = ends + 60 + rng.randrange(600)
        steps.append(Step(t, Action.AMEND, x, value=starts, until=end))
        if rng.random() < 0.3:  # and the daemon restarts: the works as changed are stored
            steps.append(Step(t + 1 + rng.randrange(30), Action.RESTART))
        t += gap
        steps.append(Step(t, Action.CHECK))
        t += 1
    if fails:
        back = rng.random()
        if back < 0.4:  # back before the works' end (if they still run)
            at = max(end - 1 - rng.randrange(30), t)
        elif back < 0.8:  # after it: the works overran
            at = max(end + 5 + rng.randrange(60), t)
        else:  # later, as another episode may repair it
            broken.add(y)
            return max(t, end) + gap
        steps.append(Step(at, Action.REPAIR, y))
        t = at
    return max(t, end) + gap


def _links(world: World) -> tuple[dict[str, tuple[str, ...]], dict[str, list[str]]]:
    """(parents, children) of every node, the subscribers' routers included."""
    parents = {d.id: d.parents for d in world.devices}
    for c in world.customers:
        if c.router:
            parents[c.router_id] = (c.serving,)
    children: dict[str, list[str]] = {n: [] for n in parents}
    for n, ps in parents.items():
        for p in ps:
            children[p].append(n)
    return parents, children


def _reach(n: str, links: dict[str, tuple[str, ...]] | dict[str, list[str]]) -> list[str]:
    """Every node reached from n through `links` (parents or children), sorted."""
    out: list[str] = []
    stack = list(links[n])
    while stack:
        m = stack.pop()
        if m not in out:
            out.append(m)
            stack.extend(links[m])
    return sorted(out)


def _fail(steps: list[Step], broken: set[str], at: float, node: str) -> None:
    if node not in broken:
        steps.append(Step(at, Action.FAIL, node))
        broken.add(node)


def _repair(steps: list[Step], broken: set[str], at: float, node: str) -> None:
    steps.append(Step(at, Action.REPAIR, node))
    broken.discard(node)


def _nested(rng: random.Random, world: World, steps: list[Step], broken: set[str],
            t: float) -> float:  # fmt: skip
    """A second failure under a fault: node P fails, then a node C below it (a child, a
    router, further down; cut off by P or with another uplink) dies while P is down, at
    once (before P's incident opens) or once it is open; P is repaired first, C found
    down when looked at afresh, and repaired later, or left for another episode; P may
    fail again meanwhile. Appends the steps from `t`; returns when the episode's last
    check is due."""
    parents, children = _links(world)
    below = [n for n, ps in parents.items() if ps and children[n] and not n.startswith("cpe:")]
    if not below:
        return t
    p = below[rng.randrange(len(below))]
    pool = _reach(p, children)
    c = pool[rng.randrange(len(pool))]
    gap = quiet(world)
    _fail(steps, broken, t, p)
    when = rng.random()
    if when < 0.4:  # while P's fault is being detected
        t += rng.randrange(1 + int(3 * world.interval + 4 * world.timeout))
        _fail(steps, broken, t, c)
        t += gap
        steps.append(Step(t, Action.CHECK))
    else:  # once P's incident is open
        t += gap
        steps.append(Step(t, Action.CHECK))
        t += 1 + rng.randrange(60)
        _fail(steps, broken, t, c)
        t += gap
        steps.append(Step(t, Action.CHECK))
    t += 1 + rng.randrange(30)
    _repair(steps, broken, t, p)
    if rng.random() < 0.2:  # P fails again soon after, C still down
        t += 1 + rng.randrange(int(4 * world.interval))
        _fail(steps, broken, t, p)
        t += gap
        steps.append(Step(t, Action.CHECK))
        t += 1 + rng.randrange(30)
        _repair(steps, broken, t, p)
    t += rng.choice([1 + rng.randrange(int(3 * world.interval) + 1), gap])
    if t > steps[-1].at + gap - 1:
        steps.append(Step(t, Action.CHECK))
    if rng.random() < 0.8:
        t += 1
        _repair(steps, broken, t, c)
    return t + gap


def _uplinks(rng: random.Random, world: World, steps: list[Step], broken: set[str],
             t: float) -> float:  # fmt: skip
    """The uplinks of a node N with several fail at different moments: one (N still
    served by the others), then the rest, seconds later (inside the correlator's window)
    or once the first one's incident is open; repaired in either order, each time with a
    check, or one left for another episode. Appends the steps from `t`; returns when the
    episode's last check is due."""
    parents, _ = _links(world)
    several = sorted(n for n, ps in parents.items() if len(ps) > 1)
    if not several:
        return t
    n = several[rng.randrange(len(several))]
    ups = list(parents[n])
    rng.shuffle(ups)
    gap = quiet(world)
    soon = rng.random() < 0.4
    for i, u in enumerate(ups):
        _fail(steps, broken, t, u)
        if i + 1 < len(ups):
            if soon:
                t += 1 + rng.randrange(int(world.window))
            else:
                t += gap
                steps.append(Step(t, Action.CHECK))
                t += 1 + rng.randrange(30)
    t += gap
    steps.append(Step(t, Action.CHECK))
    t += 1
    rng.shuffle(ups)
    for i, u in enumerate(ups):
        if i + 1 == len(ups) and rng.random() < 0.2:
            break  # left down for another episode
        _repair(steps, broken, t, u)
        t += rng.choice([1 + rng.randrange(int(world.window)), gap])
        if t - steps[-1].at >= gap - 1:
            steps.append(Step(t, Action.CHECK))
            t += 1
    return t + gap


def reloads(rng: random.Random, steps: list[Step]) -> list[Step]:
    """The script with the daemon reloading its files, unchanged, after a third of the
    steps that change something (a failure, a repair, works booked or changed, the monitor
    going blind or seeing again, loss), 1-60 s after it: while a fault is being detected,
    while its incident is open, while works run. Nothing true changes: every caller's
    answer must stay what it was."""
    out = list(steps)
    changing = (Action.FAIL, Action.REPAIR, Action.WORKS, Action.AMEND, Action.BLIND,
                Action.SEE, Action.LOSS)  # fmt: skip
    for s in steps:
        if s.action in changing and rng.random() < 0.3:
            out.append(Step(s.at + 1 + rng.randrange(60), Action.RELOAD))
    return sorted(out, key=lambda s: s.at)
