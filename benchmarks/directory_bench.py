"""Load a generated city, time the phone menu's lookups, and measure what a forked process
sharing the directory adds.

    .venv/bin/python -m benchmarks.directory_bench [--access 5000] [--subscribers 1000000]
        [--other-tree DIR] [--rounds 1]

The city is synthetic (outagemon.citygen): 50 aggregation switches, 100 access switches
each, every building split into entrances, subscribers with CPE addresses. Each load is
measured in a fresh child process so nothing else is counted: wall time, CPU time, the
resident memory at its peak (VmHWM) and after. Then the process freezes its objects for
the garbage collector (as the daemon does) and forks a second process (as HTTP workers
are forked), which makes the same lookups; that process's private dirty memory
(/proc/PID/smaps_rollup) is what it adds to the machine — the rest it shares.

With --other-tree (another checkout, e.g. `git worktree add /tmp/old main~N`) the same
child runs on that tree's outagemon too, in alternating rounds, side by side.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from outagemon.core import addresses
from outagemon.sim import citygen

TARGETS = {"phone": 20, "account": 20, "address": 50, "fuzzy": 2000}  # p99, µs


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def memory(pid: int | str = "self") -> dict[str, float]:
    """MiB: resident now and at peak (status), private dirty and shared (smaps_rollup)."""
    out: dict[str, float] = {}
    for name in ("status", "smaps_rollup"):
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Private_Dirty", "Shared_Clean", "Shared_Dirty",
                           "Pss"):  # fmt: skip
                    out[key] = int(rest.split()[0]) / 1024
    return out


def child(topology: Path, subscribers: Path, lookups: int) -> None:
    """Runs in a fresh interpreter: load, then time lookups; prints one JSON line."""
    from outagemon.core import directory

    started, cpu = time.perf_counter(), time.process_time()
    loaded = directory.load(topology, subscribers)
    load_s, load_cpu = time.perf_counter() - started, time.process_time() - cpu
    gc.collect()
    gc.freeze()  # as the daemon does after a load, before any fork
    after_load = memory()
    d = loaded.directory
    rng = random.Random(7)
    subs = d.subscribers
    sample = [subs[rng.randrange(len(subs))] for _ in range(lookups)]
    wanted = {s.row for s in sample}
    rows = {}
    with subscribers.open(encoding="utf-8") as f:
        next(f)
        for number, line in enumerate(f, start=2):
            if number in wanted:
                rows[number] = next(csv.reader([line]))

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

    fuzzy_n = max(1, lookups // 10)
    kinds: dict[str, tuple[Callable[..., Any], list[tuple[str, ...]], list[str]]] = {
        "phone": (d.phone, [(rows[s.row][1].split(";")[0],) for s in sample],
                  [s.node for s in sample]),
        "account": (d.account, [(s.account,) for s in sample], [s.node for s in sample]),
        "address": (d.address, [(rows[s.row][2], s.flat) for s in sample],
                    [s.serving for s in sample]),
        "fuzzy": (d.address, [(misspell(rows[s.row][2]), s.flat) for s in sample[:fuzzy_n]],
                  [s.serving for s in sample[:fuzzy_n]]),
    }  # fmt: skip
    del sample, rows

    def timed(fn: Callable[..., Any], args: Sequence[tuple[str, ...]],
              expect: list[str]) -> list[float]:  # fmt: skip
        out = []
        for a, node in zip(args, expect, strict=True):
            t0 = time.perf_counter_ns()
            result = fn(*a)
            out.append((time.perf_counter_ns() - t0) / 1000)
            # every lookup must find the subscriber's place, or the timing means nothing
            assert node in result.nodes or result.ambiguous, (a, node, result)
        return out

    # A second process, forked as the HTTP workers are, makes the same lookups: what it
    # writes into the shared pages (reference counts, the collector) becomes its own. An
    # idle one is the floor (its own stack, the interpreter's state).
    gc.freeze()

    def forked(work: Callable[[], object]) -> dict[str, float]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            work()
            os.write(write, json.dumps(memory()).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            found: dict[str, float] = json.loads(pipe.read() or "{}")
        os.waitpid(pid, 0)
        return found

    idle = forked(lambda: None)
    busy = forked(lambda: [timed(*kind) for kind in kinds.values()])
    # After a fork, this process's first write to each page takes a fault (the copy on
    # write is undone). The lookups' own arguments and expected answers are the
    # benchmark's, not the directory's: written once here (their reference counts), so
    # the faults timed below are those of the directory's pages only. Phone, timed first,
    # took ~25,000 of the benchmark's own (its strings scattered over ~10,000 pages).
    for _fn, args, expect in kinds.values():
        for a, node in zip(args, expect, strict=True):
            for text in (*a, node):
                del text
    timings = {name: timed(*kind) for name, kind in kinds.items()}
    print(json.dumps({
        "nodes": len(d.topology), "subscribers": len(subs), "skipped": len(loaded.problems),
        "load_s": load_s, "load_cpu_s": load_cpu, "memory": after_load, "forked": busy,
        "idle": idle,
        **timings,
    }))  # fmt: skip


def run(tree: Path | None, topo: Path, subs: Path, lookups: int) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:  # that tree's outagemon first on the path
        env["PYTHONPATH"] = str(tree)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--lookups", str(lookups),
         "--child", str(topo), str(subs)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def report(name: str, r: dict[str, Any]) -> None:
    m, f, idle = r["memory"], r["forked"], r["idle"]
    print(f"[{name}] load: {r['load_s']:.1f} s wall, {r['load_cpu_s']:.1f} s CPU (target "
          f"< 10 s); resident {m['VmRSS']:.0f} MiB, peak {m['VmHWM']:.0f} MiB (target "
          f"< 500 MiB)")  # fmt: skip
    print(f"[{name}] a forked process after the same lookups: private dirty "
          f"{f.get('Private_Dirty', 0):.1f} MiB (idle: {idle.get('Private_Dirty', 0):.1f} MiB), "
          "shared with the loader "
          f"{f.get('Shared_Clean', 0) + f.get('Shared_Dirty', 0):.0f} MiB of its "
          f"{f.get('VmRSS', 0):.0f} MiB resident")  # fmt: skip
    for kind, target in TARGETS.items():
        values = r[kind]
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"[{name}] {kind:8} lookups: {len(values):,}  p50 {p50:8.1f} µs  "
              f"p99 {p99:8.1f} µs  (target p99 < {target} µs)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--access", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--other-tree", type=Path)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.lookups)
        return
    started = time.perf_counter()
    city = citygen.sized(args.access, args.subscribers)
    trees: dict[str, Path | None] = {"this tree": None}
    if args.other_tree:
        trees["other tree"] = args.other_tree.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        topo, subs = city.write(Path(tmp))
        gen_s = time.perf_counter() - started
        size = subs.stat().st_size / 2**20
        results: list[tuple[str, dict[str, Any]]] = []
        for _ in range(args.rounds):
            for name, tree in trees.items():
                results.append((name, run(tree, topo, subs, args.lookups)))
    first = results[0][1]
    print(f"city (synthetic): {first['nodes']:,} nodes, {first['subscribers']:,} subscribers "
          f"({first['skipped']} rows skipped); subscribers.csv {size:.0f} MiB, "
          f"generated in {gen_s:.1f} s; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, r in results:
        report(name, r)
    other = f" --other-tree {args.other_tree}" if args.other_tree else ""
    print("reproduce: .venv/bin/python -m benchmarks.directory_bench --access "
          f"{args.access} --subscribers {args.subscribers} --lookups {args.lookups}"
          f" --rounds {args.rounds}{other}")  # fmt: skip


if __name__ == "__main__":
    main()
