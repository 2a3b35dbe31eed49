"""Every caller hears the truth: random worlds run on the real correlator and /check,
judged by an independent oracle (outagemon/sim/oracle.py).

    .venv/bin/python -m benchmarks.truth_bench --worlds 10000

The networks are generated and simulated (outagemon/sim/worlds.py, outagemon/simnet.py,
simulated time); the monitor, the correlator and the function the HTTP handler calls for
/check are the real ones. Prints the disagreements by kind (occurrences and worlds), the
slowest detections, and each kind's first disagreement shrunk to the smallest world.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter

from outagemon import logs
from outagemon.sim import truth, worlds


def one(
    seed: int, overlap: bool = False, reload: bool = False, nested: bool = False,
    uplinks: bool = False,
) -> tuple[int, dict[str, int], list[tuple[float, str, float]], int, list[str]]:  # fmt: skip
    """(seed, counts by kind, detections, settled checks, one line per disagreement kind)."""
    world = worlds.generate(random.Random(seed), seed, overlap, reload, nested, uplinks)
    outcome = truth.run(world)
    counts = {k.value: n for k, n in outcome.counts().items()}
    first: dict[str, str] = {}
    for d in outcome.disagreements:
        first.setdefault(d.kind.value, str(d))
    return seed, counts, outcome.detections, outcome.checks, list(first.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.truth_bench")
    parser.add_argument("--worlds", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="the first world's seed")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--shrink",
        type=int,
        default=300,
        help="runs allowed to shrink each kind's first disagreement (0: none)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="worlds with planned works overlapping failures, changed or withdrawn mid-way "
        "(other worlds than the same seeds without it)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="the daemon also reloads its unchanged files mid-episode (other worlds too)",
    )
    parser.add_argument(
        "--nested",
        action="store_true",
        help="worlds where a node behind a fault dies while it is down, the fault repaired "
        "first (other worlds too)",
    )
    parser.add_argument(
        "--uplinks",
        action="store_true",
        help="worlds where the uplinks of a node with several fail at different moments "
        "(other worlds too)",
    )
    args = parser.parse_args(argv)
    kinds = {"overlap": args.overlap, "reload": args.reload, "nested": args.nested,
             "uplinks": args.uplinks}  # fmt: skip
    logs.setup("error", stream=sys.stderr)
    started = time.perf_counter()
    seeds = range(args.seed, args.seed + args.worlds)
    occurrences: Counter[str] = Counter()
    in_worlds: Counter[str] = Counter()
    first_seed: dict[str, tuple[int, str]] = {}
    detections: list[tuple[float, str, float, int]] = []
    checks = 0
    with multiprocessing.get_context("fork").Pool(
        args.jobs, initializer=logs.setup, initargs=("error", sys.stderr)
    ) as pool:
        for seed, counts, found, checked, lines in pool.imap_unordered(
            functools.partial(one, **kinds), seeds, chunksize=8
        ):
            checks += checked
            detections.extend((delay, root, at, seed) for delay, root, at in found)
            for kind, n in counts.items():
                occurrences[kind] += n
                in_worlds[kind] += 1
                line = next(x for x in lines if x.startswith(kind))
                if kind not in first_seed or seed < first_seed[kind][0]:
                    first_seed[kind] = (seed, line)
    took = time.perf_counter() - started
    print(
        f"truth_bench: {args.worlds} worlds (seeds {args.seed}..{args.seed + args.worlds - 1}), "
        f"{checks} settled check points, {took:.0f} s with {args.jobs} processes"
    )
    print(
        f"command: python -m benchmarks.truth_bench --worlds {args.worlds} --seed {args.seed}"
        + "".join(f" --{k}" for k, on in kinds.items() if on)
    )
    print("disagreements by kind (occurrences / worlds):")
    for each in truth.Kind:
        print(f"  {each.value:16} {occurrences[each.value]:6} / {in_worlds[each.value]}")
    if detections:
        delays = sorted(d for d, *_ in detections)
        print(
            f"detections: {len(delays)} faults, p50 {statistics.median(delays):.1f} s, "
            f"p95 {delays[int(len(delays) * 0.95)]:.1f} s, max {delays[-1]:.1f} s; slowest:"
        )
        for delay, root, at, seed in sorted(detections, reverse=True)[:5]:
            print(f"  {delay:6.1f} s  {root} (failed at {at:.1f} s, world seed {seed})")
    for kind, (seed, line) in sorted(first_seed.items()):
        print(f"\n{kind}: first in world seed {seed}: {line}")
        if not args.shrink:
            continue
        world = worlds.generate(random.Random(seed), seed, **kinds)
        wanted = truth.Kind(kind)

        def shows(o: truth.Outcome, wanted: truth.Kind = wanted) -> bool:
            return any(d.kind is wanted for d in o.disagreements)

        small = truth.shrink(world, shows, budget=args.shrink)
        shown = [str(d) for d in truth.run(small).disagreements if d.kind is wanted]
        print(
            f"smallest world found ({small.size()[0]} steps, {small.size()[1]} devices, "
            f"{small.size()[2]} subscribers):"
        )
        print(small.describe())
        for s in shown[:5]:
            print(f"  -> {s}")
    return 1 if occurrences else 0


if __name__ == "__main__":
    raise SystemExit(main())
