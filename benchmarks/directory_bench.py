"""Load a generated city and time the phone menu's lookups.

    .venv/bin/python -m benchmarks.directory_bench [--access 5000] [--subscribers 1000000]

The city is synthetic (outagemon.citygen): 50 aggregation switches, 100 access switches
each, every building split into entrances, subscribers with CPE addresses. Load time and
resident memory are measured in a fresh child process so nothing else is counted.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from outagemon.core import addresses
from outagemon.sim import citygen


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def child(topology: Path, subscribers: Path, lookups: int) -> None:
    """Runs in a fresh interpreter: load, then time lookups; prints one JSON line."""
    from outagemon.core import directory

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loaded = directory.load(topology, subscribers)
    load_s = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = loaded.directory
    rng = random.Random(7)
    subs = d.subscribers
    sample = [subs[rng.randrange(len(subs))] for _ in range(lookups)]
    rows = {}
    with subscribers.open(encoding="utf-8") as f:
        next(f)
        wanted = {s.row for s in sample}
        for number, line in enumerate(f, start=2):
            if number in wanted:
                rows[number] = line
    import csv

    written_phone = {n: next(csv.reader([line]))[1].split(";")[0] for n, line in rows.items()}
    written_address = {n: next(csv.reader([line]))[2] for n, line in rows.items()}

    def timed(fn: object, args: Sequence[tuple[str, ...]], expect: list[str]) -> list[float]:
        out = []
        for a, node in zip(args, expect, strict=True):
            t0 = time.perf_counter_ns()
            result = fn(*a)  # type: ignore[operator]
            out.append((time.perf_counter_ns() - t0) / 1000)
            # every lookup must find the subscriber's place, or the timing means nothing
            assert node in result.nodes or result.ambiguous, (a, node, result)
        return out

    def misspell(text: str) -> str:
        # one letter of the street's longest word doubled: "Ленина" -> "Ленинна"
        parsed = addresses.parse(text)
        assert parsed is not None
        word = max(parsed.street.split(), key=len)
        at = text.lower().replace("ё", "е").find(word)
        assert at >= 0, (text, word)
        i = at + rng.randrange(1, len(word))
        wrong = text[:i] + text[i - 1] + text[i:]
        assert addresses.key(wrong) != addresses.key(text)
        return wrong

    nodes = [s.node for s in sample]
    serving = [s.serving for s in sample]
    phone = timed(d.phone, [(written_phone[s.row],) for s in sample], nodes)
    account = timed(d.account, [(s.account,) for s in sample], nodes)
    address = timed(d.address, [(written_address[s.row], s.flat) for s in sample], serving)
    fuzzy_n = max(1, lookups // 10)
    fuzzy_args = [(misspell(written_address[s.row]), s.flat) for s in sample[:fuzzy_n]]
    fuzzy = timed(d.address, fuzzy_args, serving[:fuzzy_n])
    print(
        json.dumps(
            {
                "nodes": len(d.topology),
                "subscribers": len(subs),
                "skipped": len(loaded.problems),
                "load_s": load_s,
                "rss_mib": rss_after / 1024,
                "rss_growth_mib": (rss_after - rss_before) / 1024,
                "phone": phone,
                "account": account,
                "address": address,
                "fuzzy": fuzzy,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--access", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.lookups)
        return
    started = time.perf_counter()
    city = citygen.sized(args.access, args.subscribers)
    with tempfile.TemporaryDirectory() as tmp:
        topo, subs = city.write(Path(tmp))
        gen_s = time.perf_counter() - started
        size = subs.stat().st_size / 2**20
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.directory_bench", "--lookups", str(args.lookups),
             "--child", str(topo), str(subs)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    print(f"city (synthetic): {r['nodes']:,} nodes, {r['subscribers']:,} subscribers "
          f"({r['skipped']} rows skipped); subscribers.csv {size:.0f} MiB, "
          f"generated in {gen_s:.1f} s")  # fmt: skip
    print(f"load: {r['load_s']:.1f} s (target < 30 s); resident memory {r['rss_mib']:.0f} MiB "
          f"(target < 2048 MiB)")  # fmt: skip
    for name, target in (("phone", 20), ("account", 20), ("address", 2000), ("fuzzy", 2000)):
        values = r[name]
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"{name:8} lookups: {len(values):,}  p50 {p50:8.1f} us  p99 {p99:8.1f} us  "
              f"(target p99 < {target} us)")  # fmt: skip
    print("reproduce: .venv/bin/python -m benchmarks.directory_bench --access "
          f"{args.access} --subscribers {args.subscribers} --lookups {args.lookups}")  # fmt: skip


if __name__ == "__main__":
    main()
