"""outagemon's ICMP engine against fping and icmplib, on loopback, in one run.

    .venv/bin/python -m benchmarks.probe_bench [--sizes 10000 100000] [--paced-seconds 60]

Burst: every target pinged once, as fast as each tool goes (fping -c1 -i0; icmplib's
async_multiping with 50 concurrent tasks; our engine). Each runs in its own process and
its CPU time (user + system) is read from the kernel, so the kernel's share of loopback
ICMP counts for everyone alike. Paced: 100,000 targets probed every 10 s (10,000 probes/s)
through the daemon's scheduler; CPU share of one core, RTT percentiles and false loss
(every loopback target answers, so every loss is false).
Only 127.0.0.0/8 is addressed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from outagemon.sim import citygen


def targets(n: int) -> list[str]:
    return [citygen.ip_of(i) for i in range(n)]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- children: each prints one JSON line ---------------------------------------------


async def ours_burst(n: int) -> dict[str, Any]:
    from outagemon.probing.engine import Engine

    ok = 0
    got = 0
    done = asyncio.Event()

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        nonlocal ok, got
        got += 1
        ok += rtt is not None
        if got == n:
            done.set()

    engine = Engine(on_result, timeout=1.0)
    engine.open()
    c0, t0 = cpu(), time.perf_counter()
    for i, t in enumerate(targets(n)):
        engine.send(t)
        if i % 256 == 255:
            await asyncio.sleep(0)
    await done.wait()
    wall, used = time.perf_counter() - t0, cpu() - c0
    drops = engine.kernel_drops()
    engine.close()
    return {"wall": wall, "cpu": used, "answered": ok, "kernel_drops": drops}


async def icmplib_burst(n: int) -> dict[str, Any]:
    from icmplib import async_multiping

    c0, t0 = cpu(), time.perf_counter()
    hosts = await async_multiping(targets(n), count=1, interval=0, timeout=1,
                                  concurrent_tasks=50, privileged=True)  # fmt: skip
    wall, used = time.perf_counter() - t0, cpu() - c0
    return {"wall": wall, "cpu": used, "answered": sum(h.is_alive for h in hosts)}


async def ours_paced(n: int, interval: float, seconds: float) -> dict[str, Any]:
    from outagemon.probing.engine import Engine
    from outagemon.probing.scheduler import Outcome, Scheduler

    rtts: list[float] = []
    lost = 0

    def on_outcome(o: Outcome) -> None:
        nonlocal lost
        if o.ok:
            assert o.rtt is not None
            rtts.append(o.rtt)
        else:
            lost += 1

    engine = Engine(lambda *a: None, timeout=1.0)
    engine.open()
    sched = Scheduler(engine, on_outcome, interval=interval, max_rate=20_000)
    sched.set_targets(targets(n))
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(interval)  # one interval to fill the pipeline before measuring
    rtts.clear()
    lost = 0
    sent0 = engine.stats.sent
    c0, t0 = cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall, used = time.perf_counter() - t0, cpu() - c0
    sent = engine.stats.sent - sent0
    task.cancel()
    rtts.sort()
    return {
        "wall": wall,
        "cpu": used,
        "sent": sent,
        "answered": len(rtts),
        "lost": lost,
        "p50_ms": rtts[len(rtts) // 2] * 1000 if rtts else None,
        "p99_ms": rtts[int(len(rtts) * 0.99)] * 1000 if rtts else None,
        "kernel_drops": engine.kernel_drops(),
    }


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe_bench", "--child", *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


FPING_MAX = 50_000  # fping 5.1 refuses more than 65,535 hosts ("not enough sequence numbers")


def fping_burst(n: int) -> dict[str, Any] | None:
    """fping over the targets, in runs of at most FPING_MAX; walls and CPU times summed."""
    if shutil.which("fping") is None:
        return None
    all_targets = targets(n)
    wall = used = 0.0
    answered = 0
    for start in range(0, n, FPING_MAX):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("\n".join(all_targets[start : start + FPING_MAX]) + "\n")
            f.flush()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(["fping", "-c1", "-i0", "-q", "-f", f.name],
                                  capture_output=True, text=True)  # fmt: skip
            wall += time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        answered += sum(1 for line in proc.stderr.splitlines() if "/1/0%" in line)
    return {"wall": wall, "cpu": used, "answered": answered, "runs": -(-n // FPING_MAX)}


def row(name: str, n: int, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"  {name:22} not installed"
    wall, used, ok = float(r["wall"]), float(r["cpu"]), int(r["answered"])
    return (f"  {name:22} {n / wall:>10,.0f} pings/s  {used / n * 1e6:6.1f} us CPU/ping  "
            f"answered {ok:,}/{n:,}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--paced-targets", type=int, default=100_000)
    ap.add_argument("--paced-interval", type=float, default=10.0)
    ap.add_argument("--paced-seconds", type=float, default=60.0)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "ours":
            print(json.dumps(asyncio.run(ours_burst(int(rest[0])))))
        elif kind == "icmplib":
            print(json.dumps(asyncio.run(icmplib_burst(int(rest[0])))))
        else:
            n, interval, seconds = int(rest[0]), float(rest[1]), float(rest[2])
            print(json.dumps(asyncio.run(ours_paced(n, interval, seconds))))
        return
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; "
          "loopback only")  # fmt: skip
    for n in args.sizes:
        print(f"burst, {n:,} targets, one echo each:")
        print(row("outagemon engine", n, run_child("ours", str(n))))
        fp = fping_burst(n)
        runs = f" ({fp['runs']} runs)" if fp and fp["runs"] > 1 else ""
        print(row("fping -c1 -i0" + runs, n, fp))
        print(row("icmplib async_multiping", n, run_child("icmplib", str(n))))
    n, interval, seconds = args.paced_targets, args.paced_interval, args.paced_seconds
    r = run_child("paced", str(n), str(interval), str(seconds))
    share = float(r["cpu"]) / float(r["wall"]) * 100
    rate = int(r["sent"]) / float(r["wall"])
    print(f"paced, {n:,} targets every {interval:g} s for {seconds:g} s: {rate:,.0f} probes/s, "
          f"CPU {share:.1f}% of one core (target < 25%), RTT p50 {r['p50_ms']:.3f} ms "
          f"p99 {r['p99_ms']:.3f} ms, false loss {r['lost']} of {r['sent']:,} "
          f"(target 0), kernel drops {r['kernel_drops']}")  # fmt: skip
    print("reproduce: .venv/bin/python -m benchmarks.probe_bench --sizes "
          f"{' '.join(map(str, args.sizes))} --paced-seconds {seconds:g}")  # fmt: skip


if __name__ == "__main__":
    main()
