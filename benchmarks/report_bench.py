"""The outage history at a city's scale: per-subscriber lookups, the month's billing CSV,
and /check while the export streams.

    .venv/bin/python -m benchmarks.report_bench [--subscribers 1000000] [--incidents 20000]
                                                [--lookups 2000] [--keep]

A generated city (synthetic: outagemon/sim/citygen.py; 5,000 access switches, four
entrance segments each, 1,000,000 subscribers) and a generated year of history on it,
written straight into a fresh PostgreSQL database with COPY (not through the monitor: a
year of probing cannot be replayed here): 20,000 incidents (half on one entrance, a
third on an access switch, 3 % on an aggregation switch with 20,000 subscribers behind
it, planned works, a quarter of which overran into an outage, and two core failures,
one of them in the billed month), a dozen blind spells, and 5 % of subscribers joining
and 5 % leaving during the year. Incidents' durations are log-normal (median 45 min).

The real outagemon HTTP app serves it from a child process (the directory of the same
city in memory, as the daemon holds it, for /check), with the reports' own pool of two
connections. The parent measures, over real HTTP on loopback:

- per-subscriber lookups for the whole year (`/api/v1/subscribers/{account}/outages`),
  random accounts, one at a time: p50 and p99;
- the billed month's CSV (`/api/v1/reports/downtime`), read as it streams: seconds, rows,
  and the server's resident memory before and at its highest during the export
  (/proc/PID/status, sampled every 50 ms); the same month as JSON (server-side cursor);
  and `outagemon report downtime` writing the file, byte-compared with the API's CSV;
- `/check?phone=` at a steady 100 calls a second without an export, during the export,
  and without again (interleaved in the same run): p50 and p99 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg

from outagemon.db import migrate
from outagemon.sim import citygen

TOKEN = "bench-read-token-0123456789"
SERVER_DSN = os.environ.get("OUTAGEMON_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
YEAR0 = datetime(2025, 11, 1, tzinfo=UTC)
MONTH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
CHECK_RATE = 100  # /check calls a second, paced


# -- the generated history ---------------------------------------------------------------


def serving_of(city: citygen.City) -> dict[str, str]:
    """Address -> access switch id; a subscriber's serving node is its entrance segment."""
    return {str(n["name"]).removeprefix("Access switch, "): str(n["id"])
            for n in city.nodes if n["kind"] == "access"}  # fmt: skip


def generate_history(city: citygen.City, incidents: int, seed: int = 7) -> dict[str, list[Any]]:
    """Rows for node, incident, impact, blind_period and subscriber_period."""
    rng = random.Random(seed)
    year = timedelta(days=365)
    per_access = len(city.rows) // max(1, sum(1 for n in city.nodes if n["kind"] == "access"))
    per_entrance = -(-per_access // 4) + 10  # as citygen.sized makes them
    access = serving_of(city)
    nodes = [(str(n["id"]), str(n["kind"]), list(cast(list[str], n.get("parents") or [])))
             for n in city.nodes]  # fmt: skip
    children: dict[str, list[str]] = {}
    for node_id, _, parents in nodes:
        for p in parents:
            children.setdefault(p, []).append(node_id)

    def below(root: str) -> list[str]:
        out, queue = [root], [root]
        while queue:
            for c in children.get(queue.pop(), []):
                out.append(c)
                queue.append(c)
        return out

    by_kind: dict[str, list[str]] = {}
    for node_id, kind, _ in nodes:
        by_kind.setdefault(kind, []).append(node_id)
    subs: list[tuple[str, str, str, str, list[str], datetime, datetime | None]] = []
    for account, _, address, flat, _ in city.rows:
        sw = access[address]
        seg = f"{sw.replace('sw-', 'seg-', 1)}-{(int(flat) - 1) // per_entrance + 1}"
        start = YEAR0 - timedelta(days=400)
        end = None
        roll = rng.random()
        if roll < 0.05:
            start = YEAR0 + year * rng.random()  # joined during the year
        elif roll < 0.10:
            end = YEAR0 + year * rng.random()  # left during the year
        subs.append((account, seg, address, flat, [], start, end))
    incident_rows, impact_rows = [], []

    def incident(iid: int, root: str, kind: str, start: datetime, minutes: float,
                 overrun: float = 0.0) -> None:  # fmt: skip
        end = start + timedelta(minutes=minutes)
        incident_rows.append((iid, "resolved", "outage" if overrun else kind, root, start,
                              end + timedelta(minutes=overrun)))  # fmt: skip
        late = rng.random() < 0.2  # the children noticed a minute after the root
        for i, n in enumerate(below(root)):
            begin = min(end, start + timedelta(minutes=1)) if late and i else start
            if overrun:
                impact_rows.append((iid, n, "maintenance", begin, end))
                impact_rows.append((iid, n, "outage", end, end + timedelta(minutes=overrun)))
            else:
                impact_rows.append((iid, n, kind, begin, end))

    for iid in range(1, incidents + 1):
        start = YEAR0 + year * rng.random()
        minutes = min(24 * 60, math.exp(rng.gauss(math.log(45), 1.0)))
        roll = rng.random()
        if roll < 0.50:
            incident(iid, rng.choice(by_kind["segment"]), "outage", start, minutes)
        elif roll < 0.85:
            incident(iid, rng.choice(by_kind["access"]), "outage", start, minutes)
        elif roll < 0.88:
            incident(iid, rng.choice(by_kind["aggregation"]), "outage", start, minutes)
        else:
            root = rng.choice(by_kind["access"] if roll < 0.99 else by_kind["aggregation"])
            works = rng.uniform(120, 360)
            overrun = rng.uniform(10, 120) if rng.random() < 0.25 else 0.0
            incident(iid, root, "maintenance", start, works, overrun)
    core = by_kind["core"][0]
    incident(incidents + 1, core, "outage", MONTH[0] + timedelta(days=12, hours=3), 95)
    incident(incidents + 2, core, "outage", YEAR0 + timedelta(days=40), 30)
    blind = []
    for _ in range(12):
        start = YEAR0 + year * rng.random()
        blind.append(("blind", start, start + timedelta(minutes=rng.uniform(3, 30))))
    return {
        "node": [(n, k, p) for n, k, p in nodes],
        "incident": incident_rows,
        "impact": impact_rows,
        "blind_period": blind,
        "subscriber_period": subs,
    }


COLUMNS = {
    "node": ["id", "kind", "parents"],
    "incident": ["id", "state", "kind", "root_node", "opened_at", "resolved_at"],
    "impact": ["incident_id", "node_id", "cause", "started_at", "ended_at"],
    "blind_period": ["reason", "started_at", "ended_at"],
    "subscriber_period": ["account", "node_id", "address", "flat", "phones", "valid_from",
                          "valid_to"],
}  # fmt: skip


async def load_history(dsn: str, rows: dict[str, list[Any]]) -> dict[str, float]:
    """COPY every table's rows in, then ANALYZE; seconds per table."""
    conn = await asyncpg.connect(dsn)
    took = {}
    try:
        for table, columns in COLUMNS.items():
            started = time.monotonic()
            await conn.copy_records_to_table(table, records=rows[table], columns=columns)
            took[table] = time.monotonic() - started
        await conn.execute("analyze")
    finally:
        await conn.close()
    return took


# -- the server (a child process) ----------------------------------------------------------


def serve_main(city_dir: str, dsn: str, port: int) -> None:
    """The outagemon app on `port` with the city's directory and the history's database."""
    from aiohttp import web

    from outagemon import config, logs
    from outagemon.core import directory, messages
    from outagemon.core.health import NodeState, State
    from outagemon.db import store
    from outagemon.http.app import make_app
    from outagemon.http.runtime import Runtime
    from outagemon.metrics import Registry
    from outagemon.monitor import Monitor

    logs.setup(level="warning", stream=sys.stderr)
    root = Path(city_dir)
    cfg = config.parse(
        f'[messages]\ntimezone = "UTC"\n[history]\nconnections = 2\n'
        f'[[auth.tokens]]\nname = "bench"\ntoken = "{TOKEN}"\nrole = "read"\n',
        root / "outagemon.toml",
    )
    d = directory.load(root / "topology.yaml", root / "subscribers.csv").directory
    rt = Runtime(config=cfg, directory=d, texts=messages.load("ru", timezone="UTC"))
    monitor = Monitor(cfg, d, Registry())
    now = time.time()
    for node in d.topology.nodes.values():  # the network has been watched for a while
        if node.probed:
            monitor.correlator.states[node.id] = NodeState(state=State.UP, changed_at=now)
    monitor.correlator.tick(now)
    monitor.first_round_done = True
    rt.monitor = monitor
    rt.not_ready = None
    import gc

    gc.collect()
    gc.freeze()

    async def pools(app: web.Application) -> Any:
        rt.pool = await store.connect(dsn, min_size=1, max_size=3)
        rt.reports = await store.connect(dsn, min_size=1, max_size=cfg.history.connections,
                                         statement_timeout=cfg.history.timeout)  # fmt: skip
        print("ready", file=sys.stderr, flush=True)
        yield
        await rt.reports.close()
        await rt.pool.close()

    app = make_app(rt)
    app.cleanup_ctx.append(pools)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- the measurements ------------------------------------------------------------------------


async def lookups(base: str, accounts: list[str], n: int) -> list[float]:
    rng = random.Random(3)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    params = {"from": YEAR0.isoformat(), "to": (YEAR0 + timedelta(days=365)).isoformat()}
    took = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            account = rng.choice(accounts)
            started = time.perf_counter()
            async with s.get(f"{base}/api/v1/subscribers/{account}/outages", params=params,
                             headers=headers) as r:  # fmt: skip
                await r.read()
                assert r.status == 200, await r.text()
            took.append((time.perf_counter() - started) * 1000)
    return took


async def checks(base: str, phones: list[str], stop: asyncio.Event) -> list[float]:
    """/check at CHECK_RATE a second until `stop`: each call's milliseconds."""
    rng = random.Random(5)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    took: list[float] = []
    async with aiohttp.ClientSession() as s:
        next_at = time.perf_counter()
        while not stop.is_set():
            started = time.perf_counter()
            async with s.get(f"{base}/api/v1/check", params={"phone": rng.choice(phones)},
                             headers=headers) as r:  # fmt: skip
                await r.read()
                assert r.status == 200
            took.append((time.perf_counter() - started) * 1000)
            next_at += 1 / CHECK_RATE
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return took


async def export(base: str, pid: int, fmt: str) -> dict[str, Any]:
    """The month's report read as it streams; the server's RSS sampled meanwhile."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    params = {"from": MONTH[0].isoformat(), "to": MONTH[1].isoformat(), "format": fmt}
    before = rss_mib(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    digest = hashlib.sha256()
    size = lines = 0
    first_byte = None
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=600)
    url = f"{base}/api/v1/reports/downtime"
    session = aiohttp.ClientSession(timeout=timeout)
    async with session as s, s.get(url, params=params, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    done.set()
    await sampler
    return {"seconds": seconds, "first_byte": first_byte, "bytes": size, "lines": lines,
            "rss_before": before, "rss_peak": peak, "sha256": digest.hexdigest()}  # fmt: skip


async def with_checks(base: str, phones: list[str], work: Any) -> tuple[Any, list[float]]:
    stop = asyncio.Event()
    task = asyncio.create_task(checks(base, phones, stop))
    try:
        result = await work
    finally:
        stop.set()
    return result, await task


async def idle_checks(base: str, phones: list[str], seconds: float) -> list[float]:
    async def wait() -> None:
        await asyncio.sleep(seconds)

    _, took = await with_checks(base, phones, wait())
    return took


def cli_export(dsn: str, out: Path) -> tuple[float, str]:
    cfg = out.with_suffix(".toml")
    cfg.write_text(f'[database]\ndsn = "{dsn}"\n[messages]\ntimezone = "UTC"\n')
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "outagemon", "report", "downtime", "-c", str(cfg), "--from",
         MONTH[0].isoformat(), "--to", MONTH[1].isoformat(), "--output", str(out)],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, hashlib.sha256(out.read_bytes()).hexdigest()


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} ms, p99 {pct(values, 99):.2f} ms (n={len(values)})"


async def measure(args: argparse.Namespace, dsn: str, city: citygen.City, work: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    child = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, "-m", "benchmarks.report_bench", "--serve", str(work), dsn, str(port)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError("the server did not start")
        accounts = [r[0] for r in city.rows]
        phones = [r[1].split(";")[0] for r in city.rows]
        print(f"load average before: {os.getloadavg()}")
        took = await lookups(base, accounts, args.lookups)
        print(f"per-subscriber lookup, a year each, {ms(took)}  (target p99 < 50 ms)")
        idle1 = await idle_checks(base, phones, 15)
        result, during = await with_checks(base, phones, export(base, child.pid, "csv"))
        idle2 = await idle_checks(base, phones, 15)
        print(f"billing CSV for {MONTH[0]:%Y-%m}: {result['seconds']:.1f} s "
              f"(first byte after {result['first_byte']:.1f} s), {result['lines'] - 1:,} rows, "
              f"{result['bytes'] / 2**20:.1f} MiB; server RSS {result['rss_before']:.0f} MiB "
              f"before, {result['rss_peak']:.0f} MiB at most: growth "
              f"{result['rss_peak'] - result['rss_before']:.1f} MiB  "
              "(targets < 30 s, < 200 MiB)")  # fmt: skip
        print(f"/check at {CHECK_RATE}/s without an export (before): {ms(idle1)}")
        print(f"/check at {CHECK_RATE}/s while the CSV export streams: {ms(during)}")
        print(f"/check at {CHECK_RATE}/s without an export (after):  {ms(idle2)}")
        as_json = await export(base, child.pid, "json")
        print(
            f"the same month as JSON (server-side cursor): {as_json['seconds']:.1f} s, "
            f"RSS growth {as_json['rss_peak'] - as_json['rss_before']:.1f} MiB"
        )
        seconds, digest = cli_export(dsn, work / "billing.csv")
        same = "identical to" if digest == result["sha256"] else "DIFFERENT from"
        print(f"outagemon report downtime --output FILE: {seconds:.1f} s, {same} the API's CSV")
        print(f"load average after: {os.getloadavg()}")
    finally:
        child.terminate()
        child.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def main_async(args: argparse.Namespace) -> None:
    name = f"om_bench_report_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(SERVER_DSN)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    dsn = SERVER_DSN.rsplit("/", 1)[0] + "/" + name
    work = Path(tempfile.mkdtemp(prefix="h17a-report-"))
    try:
        started = time.monotonic()
        city = citygen.sized(5000, args.subscribers)
        city.write(work)
        print(f"city: {len(city.nodes):,} nodes, {len(city.rows):,} subscribers "
              f"({time.monotonic() - started:.1f} s)")  # fmt: skip
        await migrate.migrate(dsn)
        started = time.monotonic()
        rows = generate_history(city, args.incidents)
        generated = time.monotonic() - started
        took = await load_history(dsn, rows)
        print(f"history: {len(rows['incident']):,} incidents, {len(rows['impact']):,} impact "
              f"rows, {len(rows['subscriber_period']):,} subscriber periods, "
              f"{len(rows['blind_period'])} blind spells; generated in {generated:.1f} s, "
              f"COPY {sum(took.values()):.1f} s")  # fmt: skip
        await measure(args, dsn, city, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            admin = await asyncpg.connect(SERVER_DSN)
            await admin.execute(f'drop database if exists "{name}" with (force)')
            await admin.close()
        else:
            print(f"kept: {dsn} and {work}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--incidents", type=int, default=20_000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")  # fmt: skip
    print(f"command: python -m benchmarks.report_bench --subscribers {args.subscribers} "
          f"--incidents {args.incidents} --lookups {args.lookups}")  # fmt: skip
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
