"""outagemon's ICMP engine against fping and icmplib, on loopback, in one run.

    .venv/bin/python -m benchmarks.probe_bench [--sizes 10000 100000] [--paced-seconds 60]
        [--whole 10000 60000] [--rounds 5] [--parts burst whole paced]

Burst: every target pinged once, as fast as each tool goes (fping -c1 -i0; icmplib's
async_multiping with 50 concurrent tasks; our engine). Each runs in its own process and
its CPU time (user + system) is read from the kernel, so the kernel's share of loopback
ICMP counts for everyone alike. Paced: 100,000 targets probed every 10 s (10,000 probes/s)
through the daemon's scheduler; CPU share of one core, RTT percentiles and false loss
(every loopback target answers, so every loss is false).
Whole process: the command a NOC engineer types, `outagemon probe -c 1 -t 2000 -f FILE`,
against `fping -c1 -i0 -t2000 -q -f FILE`, start-up and output included: wall time of
each process, the two alternating round by round (which goes first alternates too),
medians. As root it runs in a lab namespace (outagemon.lab), so no other program's raw
ICMP sockets share the packets, and once more with 10 % of the targets silent (nftables
drops their echo requests, so both wait the 2 s timeout for them). Our command runs
with its bytecode compiled, as an installed package's is, and each side has one
untimed warm-up run.
Only 127.0.0.0/8 is addressed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


# -- whole process: the probe command against fping ------------------------------------


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """Wall and CPU seconds of one process, with its stdout and stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, used, proc.stdout, proc.stderr


def ours_command() -> list[str]:
    """The installed `outagemon` script beside this Python (what one types), else -m."""
    script = os.path.join(os.path.dirname(sys.executable), "outagemon")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "outagemon"]


@contextlib.contextmanager
def namespace(silent: list[str]) -> Iterator[str]:
    """Children started inside run in a fresh lab namespace (as root); else here."""
    from outagemon.testing.lab import Lab, LabUnavailable

    try:
        lab = Lab()
        lab.open()
    except LabUnavailable as e:
        if silent:
            raise SystemExit(f"silent targets need the lab: {e}") from None
        yield f"this namespace ({e})"
        return
    try:
        if silent:
            lab.down(*silent)
        with lab.entered():  # fork copies this thread's namespace into each child
            yield f"lab namespace {lab.name}"
    finally:
        lab.close()


def whole(n: int, silent_percent: int, rounds: int) -> list[str]:
    """Interleaved rounds of both commands over n targets; lines to print."""
    all_targets = targets(n)
    silent = all_targets[:: 100 // silent_percent] if silent_percent else []
    expect = n - len(silent)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f, tempfile.TemporaryDirectory() as pyc:
        f.write("\n".join(all_targets) + "\n")
        f.flush()
        # As installed: bytecode compiled once (the untimed first run writes it here),
        # not at every start as PYTHONDONTWRITEBYTECODE would have it.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pyc
        ours_argv = [*ours_command(), "probe", "-c", "1", "-t", "2000", "-f", f.name]
        fping_argv = ["fping", "-c1", "-i0", "-t2000", "-q", "-f", f.name]
        walls: dict[str, list[float]] = {"ours": [], "fping": []}
        cpus: dict[str, list[float]] = {"ours": [], "fping": []}
        answered: dict[str, set[int]] = {"ours": set(), "fping": set()}
        with namespace(silent) as where:
            timed(ours_argv, env)  # warm-ups, untimed: bytecode and page cache
            timed(fping_argv, env)
            for r in range(rounds):
                order = ["ours", "fping"] if r % 2 == 0 else ["fping", "ours"]
                for side in order:
                    argv = ours_argv if side == "ours" else fping_argv
                    wall, used, out, err = timed(argv, env)
                    walls[side].append(wall)
                    cpus[side].append(used)
                    if side == "ours":
                        answered[side].add(out.count(" is alive ("))
                    else:  # -q: one summary line per target on stderr
                        answered[side].add(err.count("/1/0%"))
    ours, fping = statistics.median(walls["ours"]), statistics.median(walls["fping"])
    label = f"{n:,} targets" + (f", {silent_percent} % silent" if silent_percent else "")
    lines = [f"  {label} ({where}), {rounds} rounds, median wall (min-max) / median CPU:"]
    for side, name in (("ours", "outagemon probe"), ("fping", "fping")):
        w, c = walls[side], cpus[side]
        lines.append(f"    {name:16} {statistics.median(w):6.3f} s ({min(w):.3f}-{max(w):.3f}) "
                     f"CPU {statistics.median(c):.3f} s, answered "
                     f"{'/'.join(f'{a:,}' for a in sorted(answered[side]))} of {n:,} "
                     f"(expected {expect:,})")  # fmt: skip
    lines.append(f"    outagemon probe is {fping / ours:.2f}x fping (target >= 1.0, stretch 1.3)")
    return lines


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({model}), {os.uname().sysname} "
            f"{os.uname().release}, Python {platform.python_version()}, load average {load} "
            "at start; loopback only")  # fmt: skip


def row(name: str, n: int, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"  {name:22} not installed"
    wall, used, ok = float(r["wall"]), float(r["cpu"]), int(r["answered"])
    return (f"  {name:22} {n / wall:>10,.0f} pings/s  {used / n * 1e6:6.1f} us CPU/ping  "
            f"answered {ok:,}/{n:,}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--whole", type=int, nargs="+", default=[10_000, 60_000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--silent-percent", type=int, default=10)
    ap.add_argument("--parts", nargs="+", default=["burst", "whole", "paced"],
                    choices=["burst", "whole", "paced"])  # fmt: skip
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
    print(machine(), flush=True)
    if "burst" in args.parts:
        for n in args.sizes:
            print(f"burst, {n:,} targets, one echo each:")
            print(row("outagemon engine", n, run_child("ours", str(n))))
            fp = fping_burst(n)
            runs = f" ({fp['runs']} runs)" if fp and fp["runs"] > 1 else ""
            print(row("fping -c1 -i0" + runs, n, fp))
            print(row("icmplib async_multiping", n, run_child("icmplib", str(n))), flush=True)
    if "whole" in args.parts:
        if shutil.which("fping") is None:
            print("whole process: fping is not installed")
        else:
            print(f"whole process, `{' '.join(ours_command())} probe -c 1 -t 2000 -f FILE` "
                  "against `fping -c1 -i0 -t2000 -q -f FILE`:")  # fmt: skip
            cases = [(n, 0) for n in args.whole]
            if args.silent_percent:
                cases.append((max(args.whole), args.silent_percent))
            for n, silent in cases:
                print("\n".join(whole(n, silent, args.rounds)), flush=True)
    if "paced" in args.parts:
        n, interval, seconds = args.paced_targets, args.paced_interval, args.paced_seconds
        r = run_child("paced", str(n), str(interval), str(seconds))
        share = float(r["cpu"]) / float(r["wall"]) * 100
        rate = int(r["sent"]) / float(r["wall"])
        print(f"paced, {n:,} targets every {interval:g} s for {seconds:g} s: {rate:,.0f} "
              f"probes/s, CPU {share:.1f}% of one core (target < 25%), RTT p50 "
              f"{r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms, false loss {r['lost']} of "
              f"{r['sent']:,} (target 0), kernel drops {r['kernel_drops']}")  # fmt: skip
    print("reproduce: .venv/bin/python -m benchmarks.probe_bench --parts "
          f"{' '.join(args.parts)} --sizes {' '.join(map(str, args.sizes))} --whole "
          f"{' '.join(map(str, args.whole))} --rounds {args.rounds} --silent-percent "
          f"{args.silent_percent} --paced-seconds {args.paced_seconds:g}")  # fmt: skip


if __name__ == "__main__":
    main()
