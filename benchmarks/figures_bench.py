"""The reports' figures at a city's scale, and /check while they are made.

    .venv/bin/python -m benchmarks.figures_bench [--subscribers 1000000] [--incidents 20000]

The same generated city and year of history as benchmarks/report_bench.py (synthetic:
outagemon/sim/citygen.py and report_bench.generate_history, written with COPY), served by
the real outagemon HTTP app in a child process (report_bench's server, with the reports'
own pool). The parent measures over real HTTP on loopback:

- /api/v1/reports/availability for the billed month by building and by node, and for the
  whole year by building; /api/v1/reports/incidents and /calls for the month: seconds,
  rows and bytes of each (one at a time);
- /check?phone= at a steady 100 calls a second without a report, while year-long
  availability reports (by building, then by node) run back to back, while the by-node
  query alone runs back to back from another process (what the database's own work does
  to /check on this machine), each between runs without (interleaved in the same run):
  p50 and p99 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks import report_bench as rb
from outagemon.db import migrate, store
from outagemon.sim import citygen

YEAR = (rb.YEAR0, rb.YEAR0.replace(year=rb.YEAR0.year + 1))


async def timed(base: str, path: str, **params: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {rb.TOKEN}"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as s, s.get(base + path, params=params,
                                                   headers=headers) as r:  # fmt: skip
        body = await r.read()
        assert r.status == 200, body[:300]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": len(body), "json": body}


async def reports_until(base: str, stop: asyncio.Event, group: str) -> int:
    made = 0
    while not stop.is_set():
        await timed(base, "/api/v1/reports/availability", group=group,
                    **{"from": YEAR[0].isoformat(), "to": YEAR[1].isoformat()})  # fmt: skip
        made += 1
    return made


async def queries_until(dsn: str, stop: asyncio.Event) -> int:
    """The by-node year's SQL, run by this process on a connection of its own: what the
    database's work alone does to /check on this machine."""
    conn = await asyncpg.connect(dsn)
    made = 0
    try:
        while not stop.is_set():
            await store.places(conn, YEAR[0], YEAR[1], YEAR[1], "", "node", 1000, 600)
            made += 1
    finally:
        await conn.close()
    return made


async def during(base: str, phones: list[str], seconds: float,
                 work: Any) -> tuple[int, list[float]]:  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(work(stop))

    async def wait() -> None:
        await asyncio.sleep(seconds)

    _, took = await rb.with_checks(base, phones, wait())
    stop.set()
    return await task, took


async def measure(dsn: str, city: citygen.City, work: Path) -> None:
    import orjson

    port = rb._free_port()
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
        print(f"load average before: {os.getloadavg()}")
        month = {"from": rb.MONTH[0].isoformat(), "to": rb.MONTH[1].isoformat()}
        year = {"from": YEAR[0].isoformat(), "to": YEAR[1].isoformat()}
        cases = [
            ("availability, month, by building", "availability", {"group": "building", **month}),
            ("availability, month, by node", "availability", {"group": "node", **month}),
            ("availability, year, by building", "availability", {"group": "building", **year}),
            ("incidents, month", "incidents", month),
            ("calls, month", "calls", month),
        ]
        for label, kind, params in cases:
            got = await timed(base, f"/api/v1/reports/{kind}", **params)
            body = orjson.loads(got["json"])
            rows = body.get("places", len(body.get("incidents", body.get("buckets", []))))
            print(f"{label}: {got['seconds']:.2f} s, {rows:,} rows, "
                  f"{got['bytes'] / 2**20:.1f} MiB")  # fmt: skip
        phones = [r[1].split(";")[0] for r in city.rows]
        idle1 = await rb.idle_checks(base, phones, 15)
        made, by_building = await during(
            base, phones, 30, lambda stop: reports_until(base, stop, "building")
        )
        idle2 = await rb.idle_checks(base, phones, 15)
        made_node, by_node = await during(
            base, phones, 30, lambda stop: reports_until(base, stop, "node")
        )
        idle3 = await rb.idle_checks(base, phones, 15)
        made_sql, sql = await during(base, phones, 30, lambda stop: queries_until(dsn, stop))
        idle4 = await rb.idle_checks(base, phones, 15)
        rate = f"/check at {rb.CHECK_RATE}/s"
        print(f"{rate} without reports: {rb.ms(idle1)}")
        print(f"{rate} while {made} year-long availability reports by building ran back to "
              f"back: {rb.ms(by_building)}")  # fmt: skip
        print(f"{rate} without reports: {rb.ms(idle2)}")
        print(f"{rate} while {made_node} year-long reports by node (25,051 rows each) ran: "
              f"{rb.ms(by_node)}")  # fmt: skip
        print(f"{rate} without reports: {rb.ms(idle3)}")
        print(f"{rate} while the by-node year's SQL ran {made_sql} times from another "
              f"process (the database's work alone): {rb.ms(sql)}")  # fmt: skip
        print(f"{rate} without reports: {rb.ms(idle4)}")
        print(f"load average after: {os.getloadavg()}")
    finally:
        child.terminate()
        child.wait(10)


async def main_async(args: argparse.Namespace) -> None:
    name = f"om_bench_figures_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(rb.SERVER_DSN)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    dsn = rb.SERVER_DSN.rsplit("/", 1)[0] + "/" + name
    work = Path(tempfile.mkdtemp(prefix="h17b-figures-"))
    try:
        city = citygen.sized(5000, args.subscribers)
        city.write(work)
        await migrate.migrate(dsn)
        rows = rb.generate_history(city, args.incidents)
        await rb.load_history(dsn, rows)
        print(f"city: {len(city.nodes):,} nodes, {len(city.rows):,} subscribers; history: "
              f"{len(rows['incident']):,} incidents, "
              f"{len(rows['impact']):,} impact rows")  # fmt: skip
        await measure(dsn, city, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        admin = await asyncpg.connect(rb.SERVER_DSN)
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--incidents", type=int, default=20_000)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")  # fmt: skip
    print(f"command: python -m benchmarks.figures_bench --subscribers {args.subscribers} "
          f"--incidents {args.incidents}")  # fmt: skip
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
