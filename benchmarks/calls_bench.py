"""Callers as sensors over a simulated month in a 300,000-subscriber city.

    .venv/bin/python -m benchmarks.calls_bench [--days 30] [--seeds 1-10] [--window S]
        [--chance P] [--evidence H] [--burst S] [--burst-evidence H] [--flat]
        [--scan-chance P] [--wake-evidence H]
        [--shares 0.25,0.15] [--day cosine|lived] [--opened-only] [--no-surge] [--explain]

A city's month of calls cannot exist on this machine, so it is simulated, and said so:
the city is `sim/citygen.sized(3000, 300000)` (30 aggregations, 3,000 buildings with an
access switch each, four entrances to a building, 25 subscribers to an entrance); the
detector is the real one (`core/calls.py`) with its default settings, fed the calls in
time order as the monitor's tick would hand them over.

- Background: every entrance's subscribers call at 0.01 calls a subscriber a day on
  average, times a per-entrance factor (log-normal, sigma 0.5: some places call more),
  times a day curve (peak at 20:00 at 1.7x the mean, trough at 08:00 at 0.3x); a fifth
  of callers call again within minutes (the same caller counts once). All answered `ok`.
- Visible faults (the probes see them): 60 access switches fail; their callers are
  answered `outage` and must not count.
- Invisible faults (the probes cannot see them): 28 entrances (a crushed cable, a passive
  splitter) and 8 whole buildings whose switch is not probed, at random times, lasting
  1 to 6 hours. Each affected subscriber calls, with probability `share` (0.25; also run
  at 0.15), after an exponential delay of mean 10 minutes from noticing; a fault at night
  (00:00-07:00) is noticed from 07:00 (within the next hour), if it still lasts.

How fair the model is (read before trusting the figures): the background is what a
Poisson detector assumes, but at 0.01 calls a subscriber a day (3.6 a year) it is on the
busy side for an operator's contact rate, and the per-entrance factor and the day curve
are not told to the detector (it learns one rate per node, and the day's shape from the
calls themselves), so both make its job harder, not easier. One way the day curve is kind
to a detector that follows the hour: its trough (08:00) is when the night's faults are
noticed (from 07:00), so their callers come when the usual calls are fewest; a real
call centre's mornings rise instead. And one way it is unkind: it calls at the day's
average at 02:00 (more at midnight than at noon) while nobody notices a fault before
07:00, so the night's usual pairs are false suspicions no fault's calls there ever
justify. `--day lived` is a day as people live it instead (fewest calls at night,
rising from 07:00, most in the evening; `LIVED`). The callers' model is kind in two ways: by day
every affected subscriber notices at once (nobody is away), and a fault starting at 23:00
is noticed at once too; callers are independent (no neighbour phoning for the stairwell).
Durations of 1 to 6 hours suit a cut cable or splitter awaiting a crew; blips shorter than
an hour are absent (they would draw fewer callers). Scoring is strict where it matters: a
suspicion raised at a faulted entrance's building counts as false and the fault as missed;
a suspicion at one entrance of a faulted building counts as found (it sends the engineer
to the right building). A suspicion is placed where it opened and wherever it was moved
keeping its id (narrowed to an entrance, widened to a building): it finds a fault when
it is placed at the fault's place while it lasts (then, not when it opened), and it is
false only when it never was (`--opened-only`: by where it opened alone, as before; the
same figures on seeds 3, 23, 24 and 32).

Printed, one row per share and seed, with the medians over the seeds and the worst seed:
recall (invisible faults suspected at their place while they last) against three
denominators: the faults that drew at least one call (the reported figure: a fault over
before anyone noticed cannot be heard by any means, but one with one or two callers is
counted as missed even though, with `min_callers` 3, no detector could tell it from the
usual calls), those with `min_callers` callers or more (what the floor allows), and all;
false suspicions a day (raised where no fault was); the time from a fault's first call to
its suspicion (median and 90th percentile) beside its floor (for the same faults, the
median time from the first call to the `min_callers`-th caller: no detector that waits
for that many callers can be faster); whether each target held; the detector's CPU time.
With `--explain`, each invisible fault is listed (its place, when it began, its callers,
where and after how long it was suspected), with each of its callers' calls as the
detector saw them at the tick that took it (at the entrance and the building: distinct
callers in the window against the threshold, the calls a window usually has, the learned
history, whether the sequential test held) and the suspicions' events there; and each
false suspicion (where, when, on how many callers over how long).
Ticks come once a second while calls come, and a minute apart otherwise (a tick with no
new call changes nothing but expiry).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from outagemon.core.calls import DAY, Call, CallWatch, Settings
from outagemon.core.topology import Node, Topology
from outagemon.sim import citygen

NIGHT_END = 7 * 3600.0


@dataclass
class Fault:
    node: str
    start: float
    end: float
    visible: bool
    first_call: float = math.inf
    raised_at: float = math.inf
    root: str = ""
    callers: set[str] = field(default_factory=set)
    place: set[str] = field(default_factory=set)  # the node and those below it


def day_curve(t: float) -> float:
    hour = (t % DAY) / 3600
    return 1.0 + 0.7 * math.cos(2 * math.pi * (hour - 20) / 24)


# The calls of a day as people live it, by hour (mean 1): fewest at night, rising from
# 07:00, highest in the evening. The cosine above puts the day's average at 02:00, more
# at midnight than at noon, and its fewest calls at 08:00, while no fault is noticed
# between 00:00 and 07:00 (people asleep call about nothing, so they also call less).
_LIVED = (0.35, 0.2, 0.12, 0.1, 0.1, 0.12, 0.25, 0.5, 0.8, 1.0, 1.15, 1.2,
          1.2, 1.2, 1.2, 1.2, 1.25, 1.35, 1.5, 1.6, 1.65, 1.5, 1.1, 0.7)  # fmt: skip
LIVED = tuple(x * len(_LIVED) / sum(_LIVED) for x in _LIVED)


def lived_curve(t: float) -> float:
    return LIVED[int(t % DAY // 3600) % 24]


CURVES = {"cosine": (day_curve, 1.7), "lived": (lived_curve, max(LIVED))}


def build_city() -> tuple[Topology, dict[str, list[str]]]:
    """The topology (no routers: the detector needs serving nodes), and each entrance's
    subscribers (accounts)."""
    city = citygen.sized(3000, 300_000)
    nodes = []
    flats: dict[str, list[tuple[int, int, str]]] = {}
    for n in city.nodes:
        item: dict[str, Any] = n
        ip, parents = item.get("ip"), tuple(item.get("parents") or ())
        nodes.append(Node(str(item["id"]), str(item["kind"]), ip, parents))
        for served in item.get("serves") or ():
            lo, hi = (int(x) for x in served["flats"].split("-"))
            flats.setdefault(served["address"], []).append((lo, hi, str(n["id"])))
    behind: dict[str, list[str]] = {}
    for account, _phones, address, flat, _ip in city.rows:
        for lo, hi, seg in flats[address]:
            if lo <= int(flat) <= hi:
                behind.setdefault(seg, []).append(account)
                break
    return Topology(nodes), behind


def generate(topo: Topology, behind: dict[str, list[str]], days: int, share: float,
             seed: int, curve: str = "cosine") -> tuple[list[Call], list[Fault]]:  # fmt: skip
    """The month's calls in time order, and its faults (the same for any detector)."""
    rng = random.Random(seed)
    shape, top = CURVES[curve]
    end = days * DAY
    calls: list[Call] = []
    # Background, by thinning a Poisson process at the day curve's peak rate.
    for seg, accounts in behind.items():
        factor = rng.lognormvariate(-0.125, 0.5)  # mean 1
        peak = 0.01 * len(accounts) * factor * top / DAY
        t = rng.expovariate(peak)
        while t < end:
            if rng.random() < shape(t) / top:
                who = rng.choice(accounts)
                calls.append(Call(t, seg, "", who, "ivr", "ok"))
                if rng.random() < 0.2:
                    calls.append(Call(t + rng.uniform(30, 300), seg, "", who, "ivr", "ok"))
            t += rng.expovariate(peak)
    switches = [n for n in topo.nodes if n.startswith("sw-")]
    segments = sorted(behind)
    faults = [Fault(rng.choice(segments), 0, 0, False) for _ in range(28)]
    faults += [Fault(rng.choice(switches), 0, 0, False) for _ in range(8)]
    faults += [Fault(rng.choice(switches), 0, 0, True) for _ in range(60)]
    for f in faults:
        f.start = rng.uniform(DAY, end - 7 * 3600)
        f.end = f.start + rng.uniform(3600, 6 * 3600)
        order = [f.node, *topo.descendants(f.node)]
        f.place = set(order)
        for seg in order:
            for who in behind.get(seg, ()):
                if rng.random() >= share:
                    continue
                noticed = f.start
                if f.start % DAY < NIGHT_END:
                    noticed = f.start - f.start % DAY + NIGHT_END + rng.uniform(0, 3600)
                t = noticed + rng.expovariate(1 / 600)
                if t < f.end:
                    status = "outage" if f.visible else "ok"
                    calls.append(Call(t, seg, "", who, "ivr", status))
                    if not f.visible:
                        f.first_call = min(f.first_call, t)
                        f.callers.add(who)
    calls.sort(key=lambda c: c.at)
    return calls, faults


def simulate(topo: Topology, behind: dict[str, list[str]], days: int, share: float,
             seed: int, settings: Settings, explain: bool = False,
             moved: bool = True, curve: str = "cosine") -> dict[str, float]:  # fmt: skip
    calls, faults = generate(topo, behind, days, share, seed, curve)
    end = days * DAY
    counts = {seg: len(a) for seg, a in behind.items()}
    watch = CallWatch(topo, counts, settings, started=0.0)
    next_id = iter(range(1, 10**9)).__next__
    # --explain: what the detector saw at each faulted place (a diagnostic: it reads the
    # detector's state between ticks, and changes nothing the month's figures count).
    looks: dict[int, list[str]] = {}
    watched: dict[str, list[int]] = {}
    if explain:
        for k, f in enumerate(faults):
            if not f.visible:
                for n in {f.node, *topo.ancestors(f.node), *topo.descendants(f.node)}:
                    watched.setdefault(n, []).append(k)
    cpu = time.process_time()
    # Ticks: one a second while calls come (the monitor's), skipping seconds without a
    # call and with nothing to expire, where a tick changes nothing but the clock.
    i = 0
    now = 0.0
    opened: list[str] = []  # --explain: what each opening said
    # Where each suspicion was placed, and when: opened there, or moved there keeping its
    # id (narrowed to an entrance, widened to a building); by suspicion, in order.
    placed: dict[int, list[tuple[float, str]]] = {}
    while now < end:
        nxt = calls[i].at if i < len(calls) else end
        now = min(math.floor(now) + 60, max(math.ceil(nxt), now + 1))
        j = i
        while j < len(calls) and calls[j].at <= now:
            j += 1
        watch.tick(now, calls[i:j], lambda _n: False, next_id)
        if watched:
            for c in calls[i:j]:
                for k in watched.get(c.node, ()):
                    f = faults[k]
                    if c.status == "ok" and c.caller in f.callers and f.start <= c.at <= f.end:
                        looks.setdefault(k, []).append(look(watch, topo, c, now))
        i = j
        for e in watch.take_events():
            if e.kind.value == "opened" or (moved and e.kind.value == "root_moved"):
                placed.setdefault(e.incident or 0, []).append((now, e.root or ""))
            if e.kind.value == "opened":
                opened.append(f"{e.root} at {clock(now)} (day {int(now // DAY)}): "
                              f"{e.detail.get('callers')} callers over "
                              f"{e.detail.get('first_call_ago')} s")  # fmt: skip
            if watched and e.root in watched:
                for k in watched[e.root]:
                    if faults[k].start <= now <= faults[k].end + settings.window:
                        looks.setdefault(k, []).append(
                            f"      {now - faults[k].start:7.0f}s {e.kind.value} "
                            f"{e.root} {e.detail}"
                        )
    cpu = time.process_time() - cpu

    invisible = [f for f in faults if not f.visible]
    false = 0
    for which, places in enumerate(placed.values()):
        matched = False
        for at, root in places:
            for f in invisible:
                if root in f.place and f.start <= at <= f.end + settings.window:
                    matched = True
                    if at < f.raised_at:
                        f.raised_at, f.root = at, root
                    break
        if not matched:
            false += 1
            if explain:
                print(f"  false: {opened[which]}")
    # The earliest any detector with a floor of `min_callers` could raise: the time from
    # a fault's first call to its min_callers-th distinct caller (median over the faults
    # suspected, the same faults as the median delay).
    of_caller: dict[str, list[int]] = {}
    for k, f in enumerate(invisible):
        for who in f.callers:
            of_caller.setdefault(who, []).append(k)
    firsts: dict[int, dict[str, float]] = {}
    for c in calls:
        for k in of_caller.get(c.caller, ()) if c.status == "ok" else ():
            if invisible[k].start <= c.at <= invisible[k].end:
                firsts.setdefault(k, {}).setdefault(c.caller, c.at)
    gaps = sorted(
        sorted(at.values())[settings.min_callers - 1] - min(at.values())
        for k, at in firsts.items()
        if len(at) >= settings.min_callers and invisible[k].raised_at < math.inf
    )
    if explain:
        for k, f in enumerate(faults):
            if f.visible:
                continue
            kind = "entrance" if f.node in behind else "building"
            delay = f.raised_at - f.first_call
            print(f"  fault {f.node} ({kind}, {counts.get(f.node) or watch.below.get(f.node)} "
                  f"subscribers) from {clock(f.start)} (day {int(f.start // DAY)}) "
                  f"for {(f.end - f.start) / 60:.0f} min; {len(f.callers)} callers; first call "
                  f"+{(f.first_call - f.start) / 60:.1f} min; raised at {f.root or '-'} "
                  f"after {delay / 60:.1f} min")  # fmt: skip
            for line in looks.get(k, ()):
                print(line)
    found = [f for f in invisible if f.raised_at < math.inf]
    heard = [f for f in invisible if f.first_call < math.inf]
    delays = sorted(f.raised_at - f.first_call for f in found)
    silent = sum(1 for f in invisible if f.first_call == math.inf)
    return {
        "calls": len(calls),
        "faults": len(invisible),
        "silent": silent,
        "recall_all": len(found) / len(invisible),
        "recall": len(found) / max(1, len(heard)),
        "enough": sum(1 for f in invisible if len(f.callers) >= settings.min_callers),
        "recall_enough": sum(1 for f in found if len(f.callers) >= settings.min_callers)
        / max(1, sum(1 for f in invisible if len(f.callers) >= settings.min_callers)),
        "false_per_day": false / days,
        "false": false,
        "median": delays[len(delays) // 2] if delays else math.nan,
        "p90": delays[int(len(delays) * 0.9)] if delays else math.nan,
        "cpu": cpu,
        "at_root": sum(1 for f in found if f.root == f.node) / max(1, len(found)),
        "heard": len(heard),
        "found": len(found),
        "found_enough": sum(1 for f in found if len(f.callers) >= settings.min_callers),
        "floor": gaps[len(gaps) // 2] if gaps else math.nan,
    }


def clock(t: float) -> str:
    """A time of the simulated day, as hh:mm:ss."""
    s = int(t % DAY)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def look(watch: CallWatch, topo: Topology, call: Call, now: float) -> str:
    """One fault's call as the detector saw it at the tick that took it: at its entrance
    and its building, the distinct callers in the window, the threshold, the usual
    calls expected in a window and the learned (calls, days), and the sequential test."""
    parts = []
    for n in (call.node, *topo.ancestors(call.node))[:2]:
        firsts = watch._first_calls(n)  # a diagnostic: what the detector holds
        calls, seen = watch.history(n, now)
        parts.append(
            f"{n}: {len(firsts)}/{watch.threshold(n, now)} callers, usual "
            f"{watch.expected(n, now - watch.settings.window, now):.3f} "
            f"({calls:.1f} calls in {seen / DAY:.1f} d), "
            f"strong {'yes' if watch.strong(n, firsts, now) else 'no'} "
            f"(score {watch.score(n, firsts, now):.1f})"
        )
    return f"      {clock(call.at)} call at {call.node}; " + "; ".join(parts)


def surge(topo: Topology, behind: dict[str, list[str]], settings: Settings,
          calls: int = 20_000) -> str:  # fmt: skip
    """The detector's cost when the whole city calls: `calls` answered ok within ten
    minutes from random entrances, handed over once a second."""
    rng = random.Random(1)
    segments = sorted(behind)
    made = []
    for _ in range(calls):
        seg = rng.choice(segments)
        made.append(Call(rng.uniform(0, 600), seg, "", rng.choice(behind[seg]), "ivr", "ok"))
    made.sort(key=lambda c: c.at)
    watch = CallWatch(topo, {seg: len(a) for seg, a in behind.items()}, settings, 0.0)
    next_id = iter(range(1, 10**9)).__next__
    i, worst, total = 0, 0.0, 0.0
    for t in range(1, 601):
        j = i
        while j < len(made) and made[j].at <= t:
            j += 1
        started = time.process_time()
        watch.tick(float(t), made[i:j], lambda _n: False, next_id)
        spent = time.process_time() - started
        worst, total, i = max(worst, spent), total + spent, j
    return (f"surge: {calls:,} calls in 10 minutes from random entrances: "
            f"{len(watch.open):,} suspicions, worst look {worst * 1000:.0f} ms CPU, "
            f"{total:.2f} s CPU in all")  # fmt: skip


def seeds_of(text: str) -> list[int]:
    """`3` or `1-10` or `1,4,7`."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seeds", default="1", help="e.g. 3, 1-10 or 1,4,7")
    parser.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    parser.add_argument("--window", type=float, default=Settings().window)
    parser.add_argument("--chance", type=float, default=Settings().chance)
    parser.add_argument(
        "--evidence",
        type=float,
        default=Settings().evidence,
        help="the sequential test's log-likelihood ratio (0: off)",
    )
    parser.add_argument(
        "--burst",
        type=float,
        default=Settings().burst,
        help="the test's alternative: a fault's calls in a burst of this time constant, "
        "seconds (0: at a constant rate)",
    )
    parser.add_argument(
        "--burst-evidence",
        type=float,
        default=Settings().burst_evidence,
        help="with --burst: the constant test runs too (at --evidence) and the burst's at "
        "this; raised when either holds (0: the burst alone)",
    )
    parser.add_argument(
        "--scan-chance",
        type=float,
        default=Settings().scan_chance,
        help="the scan over the newest callers' spans: raised when the usual calls bring so "
        "many in so short a span no more often than this (0: off)",
    )
    parser.add_argument(
        "--wake-evidence",
        type=float,
        default=Settings().wake_evidence,
        help="the waking hour's constant test's log-likelihood ratio (0: off)",
    )
    parser.add_argument(
        "--flat", action="store_true", help="a usual rate without the hour of the day (by_hour off)"
    )
    parser.add_argument(
        "--opened-only",
        action="store_true",
        help="score a suspicion by where it opened only, not where it was moved keeping its "
        "id (the scoring before the ninth session)",
    )
    parser.add_argument(
        "--day",
        choices=sorted(CURVES),
        default="cosine",
        help="the usual calls' day: cosine (peak 20:00, fewest at 08:00) or lived (fewest "
        "at night, rising from 07:00, highest in the evening)",
    )
    parser.add_argument("--shares", default="0.25,0.15")
    parser.add_argument("--no-surge", action="store_true", help="skip the surge's cost")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="list each invisible fault: its callers' calls as the detector saw them",
    )
    args = parser.parse_args()
    try:
        seeds = [args.seed] if args.seed is not None else seeds_of(args.seeds)
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give seeds as 3, 1-10 or 1,4,7")
    started = time.process_time()
    topo, behind = build_city()
    subscribers = sum(len(a) for a in behind.values())
    built = time.process_time() - started
    chosen = Settings(window=args.window, chance=args.chance, evidence=args.evidence,
                      by_hour=not args.flat, burst=args.burst,
                      burst_evidence=args.burst_evidence,
                      scan_chance=args.scan_chance, wake_evidence=args.wake_evidence)  # fmt: skip
    k = chosen.min_callers
    print(" ".join(["python -m benchmarks.calls_bench", *sys.argv[1:]]))
    print(f"city: {subscribers:,} subscribers, {len(topo):,} nodes (built in {built:.1f} s "
          f"CPU); {args.days} days simulated; window {args.window:g} s, "
          f"chance {args.chance:g}, min_callers {k}, evidence {args.evidence:g}, "
          f"burst {args.burst:g} s (evidence {args.burst_evidence:g}), "
          f"scan chance {args.scan_chance:g}, wake evidence {args.wake_evidence:g}, "
          f"by_hour {not args.flat}; day {args.day}; load average "
          f"{os.getloadavg()[0]:.1f} at the start")  # fmt: skip
    print(f"recall: of the faults with >= 1 caller (the reported figure) | with >= {k} "
          f"callers | of all; floor: the median time from a fault's first call to its "
          f"caller number {k} (no detector needing {k} callers can be faster); targets: recall "
          f">= 90 %, <= 1 false a day, median <= 5 min")  # fmt: skip
    head = (f"{'share':>5} {'seed':>4} {'calls':>7} {'faults':>6} {'heard':>5} "
            f"{'>=' + str(k):>4} {'recall':>14} {'>=' + str(k) + ' callers':>14} "
            f"{'all':>12} {'false/d':>7} {'median':>6} {'p90':>5} {'floor':>5} "
            f"{'targets':>7} {'cpu s':>5}")  # fmt: skip
    for share in (float(x) for x in args.shares.split(",")):
        print(head)
        rows = []
        for seed in seeds:
            r = simulate(topo, behind, args.days, share, seed, chosen, args.explain,
                         moved=not args.opened_only, curve=args.day)  # fmt: skip
            rows.append(r)
            held = [r["recall"] >= 0.9, r["false_per_day"] <= 1, r["median"] <= 300]
            print(f"{share:>5.0%} {seed:>4} {r['calls']:>7,.0f} {r['faults']:>6.0f} "
                  f"{r['heard']:>5.0f} {r['enough']:>4.0f} "
                  f"{r['found']:>3.0f}/{r['heard']:<3.0f}{r['recall']:>6.0%} "
                  f"{r['found_enough']:>3.0f}/{r['enough']:<3.0f}{r['recall_enough']:>6.0%} "
                  f"{r['found']:>3.0f}/{r['faults']:<3.0f}{r['recall_all']:>4.0%} "
                  f"{r['false_per_day']:>7.2f} {r['median'] / 60:>6.1f} "
                  f"{r['p90'] / 60:>5.1f} {r['floor'] / 60:>5.1f} "
                  f"{''.join('+' if h else '-' for h in held):>7} {r['cpu']:>5.1f}")  # fmt: skip
        if len(rows) > 1:

            def med(key: str, rows: list[dict[str, float]] = rows) -> float:
                return median([r[key] for r in rows])

            print(f"{'':>5} {'med':>4} {med('calls'):>7,.0f} {med('faults'):>6.0f} "
                  f"{med('heard'):>5.0f} {med('enough'):>4.0f} {med('recall'):>14.0%} "
                  f"{med('recall_enough'):>14.0%} {med('recall_all'):>12.0%} "
                  f"{med('false_per_day'):>7.2f} {med('median') / 60:>6.1f} "
                  f"{med('p90') / 60:>5.1f} {med('floor') / 60:>5.1f} {'':>7} "
                  f"{med('cpu'):>5.1f}")  # fmt: skip
            worst = (min(r["recall"] for r in rows), max(r["false_per_day"] for r in rows),
                     max(r["median"] for r in rows) / 60)  # fmt: skip
            print(f"      worst of {len(rows)} seeds: recall {worst[0]:.0%}, "
                  f"{worst[1]:.2f} false a day, median {worst[2]:.1f} min")  # fmt: skip
    print("targets: + held / - missed, in order recall, false a day, median")
    if not args.no_surge:
        print(surge(topo, behind, chosen))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"peak memory {usage.ru_maxrss / 1024:.0f} MiB; load average "
          f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip


if __name__ == "__main__":
    main()
