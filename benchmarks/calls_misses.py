"""Why the calls' detector misses the invisible faults it misses, fault by fault.

    .venv/bin/python -m benchmarks.calls_misses [--seeds 1-40] [--share 0.25] [--window S]
        [--chance P] [--evidence H] [--burst S] [--burst-evidence H]
        [--scan-chance P] [--wake-evidence H]

The month, the faults and the scoring are `benchmarks.calls_bench`'s (the same seeds give
the same faults and the same recall); the detector is the tree's, with its defaults or
the settings given (as calls_bench takes them).
For each seed it prints recall and false suspicions, then each fault heard (at least one
caller) and not found, with its subscribers, distinct callers, the most of them within
one `window`, the gaps between their first calls, and a class:

- `one caller`: no detector can tell one call from the usual calls;
- `pair apart`: two callers further apart than the window;
- `pair`: two callers within the window, the sequential test short of `evidence`;
- `spread`: three callers or more, never three within one window (a night's fault,
  noticed over the hour from 07:00, or the delays' long tail);
- `three`: three or more within the window and not raised (a busy place's threshold);
- `other`: none of these (a defect to look at: calls joined to another suspicion,
  raised at a wrong place, ...), with the suspicions' events near it.

With `--price`, each missed fault also gets what finding it would cost: its callers' best
value under each of the detector's tests as the detector looked at them (the burst's and
the waking hour's log-likelihood ratios, the scan's chance), and how many clusters of the
usual calls in the same month, looked at and not raised (keyed by their oldest caller; no
fault's place while it lasted), weigh as much or more: a threshold that raised the fault
would raise those too (at most that many false suspicions more a month: clusters of one
place may share a suspicion). A fault priced at dozens a month cannot be told from the
usual calls by the evidence the simulation holds (every call is `ivr` and answered `ok`,
callers are independent): a better detector needs evidence it does not model.

Then, per seed, the faults with three callers within one window (what a detector that
waits for three can find at most) and how many of them were found; suspicions raised at a
found fault's place after its first ("extra": one fault, several suspicions); and the
building faults found, and how many of them were (or came to be) suspected at the
building itself rather than only at its entrances.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter

from benchmarks.calls_bench import Fault, build_city, clock, generate, seeds_of
from outagemon.core.calls import DAY, Call, CallWatch, Settings
from outagemon.core.topology import Topology


def firsts_of(calls: list[Call], fault: Fault, place: set[str]) -> dict[str, tuple[float, str]]:
    """Each caller of a fault (answered ok, during it): their first call, and where."""
    firsts: dict[str, tuple[float, str]] = {}
    for c in calls:
        if (c.status == "ok" and c.caller in fault.callers and c.node in place
                and fault.start <= c.at <= fault.end):  # fmt: skip
            firsts.setdefault(c.caller, (c.at, c.node))
    return firsts


def most_within(times: list[float], span: float) -> int:
    return max((sum(1 for u in times if t <= u < t + span) for t in times), default=0)


Look = tuple[str, float, float, float, float, float]


class Looked(CallWatch):
    """The detector, noting each place it looked at and did not raise: (node, when, its
    oldest caller's first call, the burst's ratio, the waking hour's, the scan's chance)."""

    def __init__(self, topology: Topology, subscribers: dict[str, int], settings: Settings,
                 started: float) -> None:  # fmt: skip
        super().__init__(topology, subscribers, settings, started)
        self.looks: list[Look] = []

    def strong(self, node: str, firsts: list[float], now: float) -> bool:
        raised = super().strong(node, firsts, now)
        if not raised and firsts:
            waking = self.waking(firsts, now)
            wake = (self.score(node, waking, now, burst=0.0)
                    if len(waking) >= self._least() else -math.inf)  # fmt: skip
            self.looks.append((node, now, firsts[0], self.score(node, firsts, now), wake,
                               self.scan(node, firsts, now)))  # fmt: skip
        return raised


def usual_clusters(looks: list[Look], invisible: list[Fault], place: list[set[str]],
                   window: float) -> list[list[float]]:  # fmt: skip
    """The clusters of the usual calls looked at and not raised (no fault's place while it
    lasted), keyed by their oldest caller: each one's best burst, wake and -scan."""
    usual: dict[float, list[float]] = {}
    for node, at, oldest, burst, wake, scan in looks:
        if any(node in place[j] and f.start <= at <= f.end + window
               for j, f in enumerate(invisible)):  # fmt: skip
            continue
        best = usual.setdefault(oldest, [-math.inf, -math.inf, -math.inf])
        best[0], best[1], best[2] = max(best[0], burst), max(best[1], wake), max(best[2], -scan)
    return list(usual.values())


def price(looks: list[Look], usual: list[list[float]], invisible: list[Fault],
          place: list[set[str]], k: int, window: float) -> str:  # fmt: skip
    """A missed fault's best values under each test, and how many clusters of the usual
    calls that month (not raised) reach each."""
    mine = [x for x in looks if x[0] in place[k]
            and invisible[k].start <= x[1] <= invisible[k].end + window]  # fmt: skip
    if not mine:
        return "never looked at"
    parts = []
    bests = (max(x[3] for x in mine), max(x[4] for x in mine), max(-x[5] for x in mine))
    for i, (name, value) in enumerate(zip(("burst", "wake", "scan"), bests, strict=True)):
        if value == -math.inf or (i == 2 and value <= -1.0):
            parts.append(f"{name} -")
            continue
        many = sum(1 for b in usual if b[i] >= value)
        shown = f"{-value:.1g}" if i == 2 else f"{value:.1f}"
        parts.append(f"{name} {shown} ({many} usual)")
    return "price: " + ", ".join(parts)


def run(topo: Topology, behind: dict[str, list[str]], seed: int, share: float,
        settings: Settings, priced: bool = False) -> tuple[list[str], Counter[str]]:  # fmt: skip
    calls, faults = generate(topo, behind, 30, share, seed)
    counts = {seg: len(a) for seg, a in behind.items()}
    looked = Looked(topo, counts, settings, started=0.0) if priced else None
    watch = looked or CallWatch(topo, counts, settings, started=0.0)
    next_id = iter(range(1, 10**9)).__next__
    invisible = [f for f in faults if not f.visible]
    place = [{f.node, *topo.descendants(f.node)} for f in invisible]
    events: list[tuple[float, str, int | None, str]] = []
    joined: dict[int, set[int]] = {}  # fault -> suspicions its callers' calls joined
    end, i, now = 30 * DAY, 0, 0.0
    while now < end:  # the ticks as calls_bench makes them
        nxt = calls[i].at if i < len(calls) else end
        now = min(math.floor(now) + 60, max(math.ceil(nxt), now + 1))
        j = i
        while j < len(calls) and calls[j].at <= now:
            j += 1
        for c in calls[i:j]:
            for k, f in enumerate(invisible):
                if (c.status == "ok" and c.node in place[k] and c.caller in f.callers
                        and f.start <= c.at <= f.end):  # fmt: skip
                    sus = watch.covering(c.node)
                    if sus is not None:
                        joined.setdefault(k, set()).add(sus.incident.id)
        watch.tick(now, calls[i:j], lambda _n: False, next_id)
        i = j
        events += [(now, e.kind.value, e.incident, e.root or "") for e in watch.take_events()]
    found: dict[int, list[str]] = {}
    false = 0
    for at, kind, _sid, root in events:
        if kind != "opened":
            continue
        for k, f in enumerate(invisible):  # calls_bench's scoring
            near = root in place[k] or f.node in topo.ancestors(root) or root == f.node
            if near and f.start <= at <= f.end + settings.window:
                found.setdefault(k, []).append(root)
                break
        else:
            false += 1
    lines: list[str] = []
    tally: Counter[str] = Counter()
    usual: list[list[float]] | None = None
    heard = three = three_found = 0
    for k, f in enumerate(invisible):
        if f.first_call == math.inf:
            continue
        heard += 1
        firsts = firsts_of(calls, f, place[k])
        times = sorted(at for at, _node in firsts.values())
        most = most_within(times, settings.window)
        if most >= settings.min_callers:
            three += 1
            three_found += k in found
        if k in found:
            continue
        if len(times) == 1:
            why = "one caller"
        elif len(times) == 2:
            why = "pair" if most == 2 else "pair apart"
        elif most < settings.min_callers:
            why = "spread"
        elif not joined.get(k):
            why = "three"
        else:
            why = "other"
        tally[why] += 1
        gaps = ", ".join(f"{(b - a) / 60:.1f}" for a, b in itertools.pairwise(times))
        kind = "entrance" if f.node in behind else "building"
        night = " (night)" if f.start % DAY < 7 * 3600 else ""
        line = (f"  {seed:>3} {f.node:<13} {kind:<8} {watch.below.get(f.node, 0):>4} subs "
                f"{len(times)} callers, {most} in a window; from {clock(f.start)}{night}, "
                f"first call {clock(f.first_call)}, gaps [{gaps}] min; "
                f"{len({n for _at, n in firsts.values()})} entrance(s): {why}")  # fmt: skip
        if why == "other":
            seen = [f"{clock(t)} {kd} #{sid} {r}" for t, kd, sid, r in events
                    if f.start - 4 * 3600 <= t <= f.end + settings.window
                    and (r in place[k] or r in topo.ancestors(f.node))]  # fmt: skip
            line += f"; joined {sorted(joined.get(k, ()))}; " + "; ".join(seen[:6])
        if looked is not None:
            if usual is None:
                usual = usual_clusters(looked.looks, invisible, place, settings.window)
            line += "; " + price(looked.looks, usual, invisible, place, k, settings.window)
        lines.append(line)
    extra = sum(len(roots) - 1 for roots in found.values())
    buildings = [k for k in found if invisible[k].node not in behind]
    at_building = sum(
        1 for k in buildings
        if any(r == invisible[k].node and kd in ("opened", "root_moved")
               and invisible[k].start <= t <= invisible[k].end + settings.window
               for t, kd, _sid, r in events)
    )  # fmt: skip
    head = (f"seed {seed}: recall {len(found)}/{heard} = {len(found) / max(1, heard):.0%}, "
            f"false {false / 30:.2f} a day; three callers within a window: {three} faults, "
            f"{three_found} found; extra suspicions at found faults {extra}; building "
            f"faults found {len(buildings)}, at the building {at_building}")  # fmt: skip
    tally["heard"] += heard
    tally["found"] += len(found)
    tally["three within a window"] += three
    tally["of those found"] += three_found
    tally["extra suspicions"] += extra
    tally["building faults found"] += len(buildings)
    tally["at the building"] += at_building
    return [head, *lines], tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1-40", help="e.g. 3, 1-10 or 1,4,7")
    parser.add_argument("--share", type=float, default=0.25)
    default = Settings()
    parser.add_argument("--window", type=float, default=default.window)
    parser.add_argument("--chance", type=float, default=default.chance)
    parser.add_argument("--evidence", type=float, default=default.evidence)
    parser.add_argument("--burst", type=float, default=default.burst)
    parser.add_argument("--burst-evidence", type=float, default=default.burst_evidence)
    parser.add_argument("--scan-chance", type=float, default=default.scan_chance)
    parser.add_argument("--wake-evidence", type=float, default=default.wake_evidence)
    parser.add_argument(
        "--price",
        action="store_true",
        help="each missed fault's best value under each test, and how many clusters of the "
        "usual calls that month reach it (what finding it would cost)",
    )
    args = parser.parse_args()
    chosen = Settings(window=args.window, chance=args.chance, evidence=args.evidence,
                      burst=args.burst, burst_evidence=args.burst_evidence,
                      scan_chance=args.scan_chance, wake_evidence=args.wake_evidence)  # fmt: skip
    topo, behind = build_city()
    total: Counter[str] = Counter()
    for seed in seeds_of(args.seeds):
        lines, tally = run(topo, behind, seed, args.share, chosen, args.price)
        total.update(tally)
        print("\n".join(lines), flush=True)
    print("in all: " + ", ".join(f"{k} {v}" for k, v in total.items()))


if __name__ == "__main__":
    main()
