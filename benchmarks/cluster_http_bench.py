"""/check from HTTP workers (issue 16): throughput beside a bare handler, and p99 while the
leader works.

    .venv/bin/python -m benchmarks.cluster_http_bench [--seconds 8] [--rounds 3]
                                                      [--city DIR] [--big-city DIR]
                                                      [--paced-only] [--throughput-only]
                                                      [--skip-reload] [--port 18091]

The real daemon (`daemon.run`, with `[http] workers = 2`, on a real PostgreSQL database
made for the run) serves a generated city (synthetic: sim/citygen.py) of about 100,000
nodes (1,000 access switches, 96,000 subscribers with their routers); its probe results
come from a simulated network (sim/simnet.py; a city cannot exist on this machine, and
ICMP to it would be to addresses we may not use), the correlator, the writer, the
replica and the workers are the real ones. wrk asks `/check?phone=...` with a different
subscriber's phone on each request, with the token a phone menu sends.

1. Throughput: wrk at saturation against the workers, and against the bare single-process
   aiohttp handler of benchmarks/http_bench.py (a constant answer), both servers up for
   the whole run, rounds alternating between them (this VM's speed drifts). Each round's
   figures are printed with the load average at its start. `--throughput-only`: this
   part alone.
2. p99 at a steady 2,000 calls a second (wrk, each connection paced by a random delay()
   averaging 128 ms at 256 connections: wrk2 is not packaged here), three phases: quiet;
   while the leader decides a core failure cutting off every node of the city (the
   simulated core switch dies at the start of the run); while it reloads a
   1,000,000-subscriber city (SIGHUP after the files were replaced). Beside each phase's
   p99: what says whether a miss is our code or the machine, sampled every second — the
   workers' longest event-loop hold (a timer's lateness, `/metrics`) and how often one
   passed 5 ms, their CPU (share of one core) and the time they waited for a core (the
   kernel's run-queue delay, /proc/PID/schedstat), the daemon's process's CPU, and how
   busy the machine's two cores were (/proc/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.http_bench import TOKEN, cpu_seconds, wait_ready, wrk
from outagemon.sim import citygen

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "{dsn}"
[http]
listen = "127.0.0.1:{port}"
workers = 2
workers_nice = {nice}
[probe]
interval = 10
timeout = 1
down_after = 2
[vantage]
anchors = ["::1"]  # not the core: its failure cuts the city off, it does not blind us
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
# wrk's random phones at 10,000 a second are no model of callers: with the workers' call
# records reaching the daemon's detector, they raised ~1,700 suspicions city-wide in one
# run (benchmarks/calls_bench.py measures the detector); this measures /check.
[callers]
enabled = false
[[auth.tokens]]
name = "bench"
token = "{token}"
role = "read"
"""


# -- the daemon's side (a child process) ---------------------------------------------------


class BenchSource:
    """Probe results from a simulated network; the core switch dies when the file `fail`
    appears in the state directory."""

    follows_reload = False

    def __init__(self, state: Path) -> None:
        self.trigger = state / "fail"

    def start(self, monitor: Any, runtime: Any,
              targets: Mapping[str, str]) -> dict[str, Coroutine[Any, Any, None]]:  # fmt: skip
        from outagemon.sim.simnet import SimNet

        cfg = runtime.config
        now = time.time()
        net = SimNet(runtime.directory.topology, monitor.correlator, interval=cfg.probe.interval,
                     timeout=cfg.probe.timeout, start=now - 2 * cfg.probe.interval)  # fmt: skip
        net.on_event = monitor.handle
        net.run_until(now)
        monitor.first_round_done = True
        runtime.not_ready = None
        return {"simulate": self._simulate(net, monitor)}

    def plan(self, targets: Mapping[str, str], probe: Any) -> object:
        return None

    def retarget(self, targets: Mapping[str, str], probe: Any, plan: object = None) -> list[object]:
        return []

    def close(self) -> None:
        pass

    async def _simulate(self, net: Any, monitor: Any) -> None:
        from outagemon.probing.icmp import TICK

        failed = False
        while True:
            if not failed and self.trigger.exists():
                failed = True
                net.fail("core-1")
            net.run_until(time.time())
            for node in monitor.tick():
                net.probe(node)
            await asyncio.sleep(TICK)


def serve_daemon(config: str) -> None:
    from outagemon import daemon

    path = Path(config)
    sys.exit(daemon.run(path, BenchSource(path.parent)))


# -- the benchmark ---------------------------------------------------------------------


def phones_of(city: citygen.City, work: Path) -> Path:
    phones = [row[1].split(";")[0] for row in city.rows]
    random.Random(1).shuffle(phones)
    path = work / "phones.txt"
    path.write_text("\n".join(urllib.parse.quote(p) for p in phones) + "\n")
    return path


def city_dir(path: str | None, access: int, subscribers: int) -> Path:
    work = Path(path or tempfile.mkdtemp(prefix="om-cluster-bench-"))
    if not (work / "phones.txt").exists():
        work.mkdir(parents=True, exist_ok=True)
        city = citygen.sized(access, subscribers)
        city.write(work)
        phones_of(city, work)
    return work


def get(port: int, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body.startswith(b"{") else body.decode()


def wait_log(state: Path, event: str, within: float) -> float:
    """When (time.monotonic()) `event` was seen in the daemon's log, or nan."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if f'"event": "{event}"' in (state / "daemon.log").read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.5)
    return float("nan")


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread has waited for a core (run-queue delay)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class PhaseWatch:
    """Samples every second during a paced phase: per worker (pid) its CPU, run-queue
    wait, longest recent loop hold and holds over 5 ms (its last sample counts: a worker
    replaced during the phase keeps what it did); the daemon's CPU; the machine's."""

    def __init__(self, port: int, daemon: int, supervisor: int) -> None:
        self.port, self.daemon, self.supervisor = port, daemon, supervisor
        self.first: dict[int, tuple[float, float]] = {}  # pid -> (cpu, wait) at first sight
        self.last: dict[int, tuple[float, float]] = {}
        self.hold = 0.0
        self.holds: dict[str, float] = {}  # pid -> holds over 5 ms since it accepts
        self.holds_before: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> PhaseWatch:
        self.started = time.monotonic()
        self.daemon_cpu = cpu_seconds(self.daemon)
        self.busy = machine_busy()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.monotonic() - self.started
        self.daemon_cpu = cpu_seconds(self.daemon) - self.daemon_cpu
        busy, total = machine_busy()
        self.machine = (busy - self.busy[0]) / max(1, total - self.busy[1])

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._sample()
            except Exception as e:  # one sample lost, not the rest
                print(f"sample: {e!r}", file=sys.stderr)

    def _sample(self, first: bool = False) -> None:
        for pid in children(self.supervisor):
            try:
                now = (cpu_seconds(pid), run_queue_wait(pid))
            except (FileNotFoundError, ProcessLookupError):
                continue
            self.first.setdefault(pid, now if first else (0.0, 0.0))
            self.last[pid] = now
        try:
            text = get(self.port, "/metrics")
        except (OSError, ValueError) as e:
            print(f"sample: /metrics: {e!r}", file=sys.stderr)
            return
        for line in str(text).splitlines():
            if line.startswith("outagemon_worker_loop_hold_recent_seconds{"):
                self.hold = max(self.hold, float(line.rsplit(" ", 1)[1]))
            elif line.startswith("outagemon_worker_loop_holds_5ms_total{"):
                who = line.split('pid="', 1)[1].split('"', 1)[0]
                value = float(line.rsplit(" ", 1)[1])
                if first:
                    self.holds_before[who] = value
                self.holds[who] = value

    def summary(self) -> str:
        cpu = sum(self.last[p][0] - self.first[p][0] for p in self.last)
        wait = sum(self.last[p][1] - self.first[p][1] for p in self.last)
        holds = sum(v - self.holds_before.get(p, 0.0) for p, v in self.holds.items())
        return (f"workers: loop hold max {self.hold * 1000:.1f} ms, {holds:.0f} holds > 5 ms, "
                f"CPU {cpu / self.seconds:.2f} core, waited for a core {wait / self.seconds:.2f} "
                f"s/s ({len(self.last)} pids); daemon CPU {self.daemon_cpu / self.seconds:.2f} "
                f"core; machine {self.machine * 100:.0f}% busy")  # fmt: skip


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class _Done(Exception):
    """Part 1 is all that was asked for."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8, help="length of one saturation run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--paced-seconds", type=int, default=20, help="length of one paced run")
    ap.add_argument("--city", help="a directory with the 100,000-node city (kept)")
    ap.add_argument("--big-city", help="a directory with the 1,000,000-subscriber city (kept)")
    ap.add_argument("--skip-reload", action="store_true", help="leave out the 1M reload")
    ap.add_argument("--paced-only", action="store_true", help="leave out the throughput part")
    ap.add_argument("--phases", default="quiet,core,reload",
                    help="the paced phases to run, of quiet,core,reload")  # fmt: skip
    ap.add_argument("--reload-seconds", type=int, default=600,
                    help="the longest the 1M reload phase lasts (it ends 5 s after the "
                         "workers were replaced)")  # fmt: skip
    ap.add_argument("--port", type=int, default=18091, help="the workers' (the bare one's: +1)")
    ap.add_argument(
        "--workers-nice",
        type=int,
        default=-5,
        help="[http] workers_nice (0: the daemon's priority, as before it existed)",
    )
    ap.add_argument("--throughput-only", action="store_true",
                    help="part 1 only (throughput beside the bare handler)")  # fmt: skip
    ap.add_argument("--serve-daemon", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_daemon:
        serve_daemon(args.serve_daemon)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    started = time.monotonic()
    city = city_dir(args.city, 1000, 96_000)
    phases = set(args.phases.split(","))
    big = (
        None
        if args.skip_reload or args.throughput_only or "reload" not in phases
        else city_dir(args.big_city, 10_000, 1_000_000)
    )
    print(f"cities ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="om-cb-"))
    for name in ("topology.yaml", "subscribers.csv"):
        shutil.copy(city / name, state / name)
    db = f"om_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'create database "{db}"'))
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + db
    ports = {"workers=2": args.port, "bare": args.port + 1}
    (state / "outagemon.toml").write_text(
        CONFIG.format(
            state=state, dsn=dsn, port=ports["workers=2"], token=TOKEN, nice=args.workers_nice
        )
    )
    log = (state / "daemon.log").open("ab")
    servers = {
        "workers=2": subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cluster_http_bench", "--serve-daemon",
             str(state / "outagemon.toml")], stdout=log, stderr=subprocess.STDOUT),
        "bare": subprocess.Popen(
            [sys.executable, "-m", "benchmarks.http_bench", "--serve", str(city),
             str(ports["bare"]), "bare"]),
    }  # fmt: skip
    phones = city / "phones.txt"
    path = "/api/v1/check?phone="
    runs: dict[str, list[dict[str, float]]] = {}
    paced: dict[str, dict[str, float]] = {}
    watched: dict[str, PhaseWatch] = {}
    notes: list[str] = []
    try:
        for kind in servers:
            wait_ready(ports[kind], 300)
        # The workers answer at once, "unknown" until their replica has the leader's
        # node states: wait for the first "ok".
        first = (city / "phones.txt").open().readline().strip()
        deadline = time.monotonic() + 300
        while get(ports["workers=2"], path + first)["status"] != "ok":
            assert time.monotonic() < deadline, "the workers never said ok"
            time.sleep(1)
        for kind in servers:
            wrk(ports[kind], phones, path, args.seconds, paced=False)  # warm-up
        print(f"load average before: {load()}", file=sys.stderr)
        supervisor = int(next(json.loads(line) for line in (state / "daemon.log").open()
                              if '"workers.started"' in line)["supervisor"])  # fmt: skip
        serving = {"workers=2": children(supervisor), "bare": [servers["bare"].pid]}
        daemon_pid = servers["workers=2"].pid  # the daemon's own process
        for _ in range(0 if args.paced_only else args.rounds):
            for kind in servers:
                at_load = float(load().split()[0])
                before = sum(cpu_seconds(p) for p in serving[kind])
                r = wrk(ports[kind], phones, path, args.seconds, paced=False)
                used = sum(cpu_seconds(p) for p in serving[kind]) - before
                r["cpu_us"] = used / (r["rps"] * args.seconds) * 1e6
                r["cores"] = used / args.seconds
                r["wrk_us"] = r["wrk_cpu"] / (r["rps"] * args.seconds) * 1e6
                r["load"] = at_load
                runs.setdefault(kind, []).append(r)
        port = ports["workers=2"]
        servers["bare"].terminate()  # the paced runs are the workers' alone
        load_before = load()
        if args.throughput_only:
            raise _Done

        def phase(name: str, seconds: int, until: Callable[[], bool] | None = None) -> None:
            with PhaseWatch(port, daemon_pid, supervisor) as watch:
                paced[name] = wrk(port, phones, path, seconds, paced=True, until=until)
            watched[name] = watch
            print(f"{name}: {paced[name]} {watch.summary()}; load {load()}", file=sys.stderr)

        if "quiet" in phases:
            phase("quiet", args.paced_seconds)
        if "core" in phases:
            (state / "fail").touch()  # the core switch dies as the run starts
            # Long enough for the decision (two lost probes of each node, 10 s apart), even
            # when the simulation falls behind on a loaded machine.
            phase("core failure", max(args.paced_seconds, 60))
        incidents = get(port, "/api/v1/incidents?state=open")["incidents"]
        cut = max((len(i["nodes"]) for i in incidents), default=0)
        if "core" in phases:
            notes.append(f"core failure: {len(incidents)} open incident(s), the largest cutting "
                         f"off {cut:,} nodes, decided during the run")  # fmt: skip
        if big is not None:
            for name in ("topology.yaml", "subscribers.csv"):
                shutil.copy(big / name, state / name)
            os.kill(daemon_pid, signal.SIGHUP)
            hup = time.monotonic()
            replaced: list[float] = []

            def past_replacement() -> bool:
                """The workers were replaced (and the old ones' drain is over) 5 s ago."""
                text = (state / "daemon.log").read_text(errors="replace")
                if not replaced and '"event": "workers.reloaded"' in text:
                    replaced.append(time.monotonic())
                return bool(replaced) and time.monotonic() - replaced[0] > 5

            # Until the daemon's reload and the workers' replacement are over.
            phase("1M reload", args.reload_seconds, until=past_replacement)
            done = wait_log(state, "config.reload_done", 600) - hup
            workers = wait_log(state, "workers.reloaded", 600) - hup
            notes.append(f"1M reload: the daemon's reload took {done:.0f} s from SIGHUP, the "
                         f"workers' (loaded by their supervisor, replaced one by one) "
                         f"{workers:.0f} s")  # fmt: skip
        load_after = load()
    except _Done:
        load_after = load()
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
        log.close()
        asyncio.run(_admin(f'drop database if exists "{db}" with (force)'))
    print(f"machine: {os.cpu_count()} cores shared by wrk, the servers and PostgreSQL; "
          f"load average {load_before} before the paced runs, {load_after} after")  # fmt: skip
    if runs:
        throughput(runs, args.rounds, args.seconds)
    if args.throughput_only:
        print("reproduce: .venv/bin/python -m benchmarks.cluster_http_bench --throughput-only "
              f"--seconds {args.seconds} --rounds {args.rounds}")  # fmt: skip
        return
    print("2. /check at a steady 2,000 calls/s (wrk -c256, paced), workers=2")
    for phase_name, r in paced.items():
        print(f"  {phase_name:13} {r['rps']:>7,.0f} req/s  p50 {r['p50']:6.2f} ms  "
              f"p99 {r['p99']:6.2f} ms  errors {r['errors']:.0f}  (target p99 < 5 ms)")  # fmt: skip
        if r["errors"]:
            kinds = ("connect", "read", "write", "timeout", "non2xx")
            print(f"  {'':13} errors: " + ", ".join(f"{k} {r.get(k, 0):.0f}" for k in kinds))
        print(f"  {'':13} {watched[phase_name].summary()}")
    for note in notes:
        print(f"  {note}")
    print(f"daemon log: {state / 'daemon.log'}", file=sys.stderr)


def throughput(runs: dict[str, list[dict[str, float]]], rounds: int, seconds: int) -> None:
    print(f"1. /check throughput, wrk -t1 -c256, {rounds} alternating rounds of "
          f"{seconds} s (medians)")  # fmt: skip
    for kind, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")}
        print(f"  {kind:10} {med['rps']:>9,.0f} req/s  p50 {med['p50']:7.2f} ms  "
              f"p99 {med['p99']:7.2f} ms  CPU {med['cpu_us']:5.1f} µs/req  "
              f"errors {sum(r['errors'] for r in rs):.0f}")  # fmt: skip
    shares = [w["rps"] / b["rps"] for w, b in zip(runs["workers=2"], runs["bare"], strict=True)]
    print(f"  workers=2 / bare: {statistics.median(shares):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in shares)}; target >= 1.2x)")  # fmt: skip
    print("  each round (server CPU per request and cores it used; wrk's CPU per request,"
          " and its share of a core; the load average at the start):")  # fmt: skip
    for i, (w, b) in enumerate(zip(runs["workers=2"], runs["bare"], strict=True)):
        line = [f"{k} {r['rps']:,.0f} req/s {r['cpu_us']:.1f} µs ({r['cores']:.2f} cores), "
                f"wrk {r['wrk_us']:.1f} µs ({r['wrk_cpu'] / seconds:.2f}), "
                f"load {r['load']:.2f}" for k, r in (("workers=2", w), ("bare", b))]  # fmt: skip
        print(f"    {i + 1}: {w['rps'] / b['rps']:.2f}x  {line[0]}; {line[1]}")
    cpu = {k: statistics.median(r["cpu_us"] for r in rs) for k, rs in runs.items()}
    capacity = 2 * cpu["bare"] / cpu["workers=2"]
    print(f"  from CPU per request, what two cores give the workers against the one the bare "
          f"handler can use: {capacity:.2f}x (load-independent)")  # fmt: skip
    print(
        "  (CPU: the serving processes' own, per request; the workers' beside the daemon's "
        "process, which simulates 10,000 probe results a second)"
    )


if __name__ == "__main__":
    main()
