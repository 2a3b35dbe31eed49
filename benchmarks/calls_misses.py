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


def run(topo: Topology, behind: dict[str, list[str]], seed: int, share: float,
        settings: Settings) -> tuple[list[str], Counter[str]]:  # fmt: skip
    calls, faults = generate(topo, behind, 30, share, seed)
    watch = CallWatch(topo, {seg: len(a) for seg, a in behind.items()}, settings, started=0.0)
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
    args = parser.parse_args()
    chosen = Settings(window=args.window, chance=args.chance, evidence=args.evidence,
                      burst=args.burst, burst_evidence=args.burst_evidence,
                      scan_chance=args.scan_chance, wake_evidence=args.wake_evidence)  # fmt: skip
    topo, behind = build_city()
    total: Counter[str] = Counter()
    for seed in seeds_of(args.seeds):
        lines, tally = run(topo, behind, seed, args.share, chosen)
        total.update(tally)
        print("\n".join(lines), flush=True)
    print("in all: " + ", ".join(f"{k} {v}" for k, v in total.items()))


if __name__ == "__main__":
    main()
