"""A soak of the real daemon with faults: nothing lost, nothing silently dead (issue 13).

    sudo .venv/bin/python -m benchmarks.soak [--minutes 10]

In the network lab (a namespace where nftables silences loopback addresses; root), the
real `outagemon run` watches a generated city (synthetic) and writes to a PostgreSQL the
soak starts and stops itself (never the machine's shared one). Every minute: an
aggregation switch dies, an engineer sets an ETA and planned works, the switch comes back;
the database is paused (SIGSTOP, 8 s), the daemon reloaded (SIGHUP), the database stopped
and started again, and the daemon restarted, by SIGTERM and by SIGKILL in turn. All the
while 100 page clients load the incident page every 2 s and 4 clients ask /check without
pause. At the end it prints: incidents expected vs stored, ids reused, acknowledged writes
lost, 5xx answers, the worst per-minute /check p99 and the longest loop hold (the
daemon's `outagemon_loop_hold_max_seconds`, across restarts).

Page clients load `/` rather than holding `/events` streams: SSE streams are findings 5
and 6 of the issue, another engineer's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from outagemon.core import directory
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.sim import citygen
from outagemon.testing.lab import Lab

WRITE = "soak-write-token-0123456789"
CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "{dsn}"
timeout = 5
read_timeout = 1
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = 1.0
timeout = 0.5
[correlation]
window = 10
resolve_hold = 5
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[[auth.tokens]]
name = "soak"
token = "{write}"
role = "write"
"""


class Soak:
    def __init__(self, lab: Lab, state: Path, port: int) -> None:
        self.lab = lab
        self.state = state
        self.port = port
        self.pg = EmbeddedPostgres(state / "db")
        self.process: subprocess.Popen[bytes] | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.status: dict[str, int] = defaultdict(int)  # HTTP outcomes of the clients
        self.check_ms: dict[int, list[float]] = defaultdict(list)  # minute -> latencies
        self.seen: dict[int, set[str]] = defaultdict(set)  # incident id -> roots seen
        self.etas: dict[int, float] = {}  # acknowledged: incident id -> last ETA
        self.works: list[int] = []  # acknowledged planned works
        self.faults: list[str] = []  # roots failed
        self.loop_hold = 0.0
        self.started = time.monotonic()

    # -- the daemon and its database -------------------------------------------------

    def start_daemon(self) -> None:
        log = (self.state / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            self.lab.command(sys.executable, "-m", "outagemon", "run", "-c",
                             str(self.state / "outagemon.toml")),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the daemon did not start; see " + str(self.state / "daemon.log"))

    def restart(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.read_loop_hold()
        self.process.send_signal(sig)
        self.process.wait(timeout=30)
        self.start_daemon()

    def read_loop_hold(self) -> None:
        try:
            _, text = self.request("GET", "/metrics", raw=True)
        except OSError:
            return
        for line in str(text).splitlines():
            if line.startswith("outagemon_loop_hold_max_seconds "):
                self.loop_hold = max(self.loop_hold, float(line.split()[1]))

    def db_signal(self, sig: signal.Signals) -> None:
        """The postmaster and its backends (each backend leads a session of its own)."""
        assert self.pg._process is not None
        postmaster = self.pg._process.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if int(entry.name) == postmaster or ppid == postmaster:
                os.kill(int(entry.name), sig)

    # -- HTTP --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None,
                raw: bool = False) -> tuple[int, Any]:  # fmt: skip
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Authorization": f"Bearer {WRITE}",
                                              "Content-Type": "application/json"})  # fmt: skip
        with self.lab.entered():
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    payload = r.read()
                    return r.status, payload.decode() if raw else json.loads(payload)
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode(errors="replace")

    def client(self, path_of: Any, pause: float, timed: bool) -> None:
        with self.lab.entered():
            while not self.stop.is_set():
                started = time.monotonic()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{self.port}{path_of()}",
                    headers={"Authorization": f"Bearer {WRITE}"},
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        r.read()
                        code = r.status
                except urllib.error.HTTPError as e:
                    code = e.code
                except OSError:
                    code = 0  # refused or reset: the daemon is restarting
                took = time.monotonic() - started
                with self.lock:
                    self.status[f"{code // 100}xx" if code else "refused"] += 1
                    if timed and code == 200:
                        minute = int((time.monotonic() - self.started) // 60)
                        self.check_ms[minute].append(took * 1000)
                time.sleep(pause)

    def watch(self) -> None:
        """The open incidents, every second: which id was spoken for which root."""
        while not self.stop.is_set():
            try:
                status, body = self.request("GET", "/api/v1/incidents")
                if status == 200:
                    for i in body["incidents"]:
                        self.seen[int(i["id"])].add(i["root_node"])
            except OSError:
                pass
            time.sleep(1)


def ips_behind(d: directory.Directory, node: str) -> list[str]:
    topo = d.topology
    return [ip for n in (node, *topo.descendants(node)) if (ip := topo.nodes[n].ip)]


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


def run(minutes: float) -> None:
    from tests.conftest import free_port, short_tmp_dir  # the same helpers as the tests

    state = short_tmp_dir()
    city = citygen.generate(aggregations=4, access_per_aggregation=5,
                            subscribers_per_access=5, entrances=2)  # fmt: skip
    topo_file, subs_file = city.write(state)
    d = directory.load(topo_file, subs_file).directory
    accounts = [s.account for s in d.subscribers]
    aggregations = sorted(n for n in d.topology.nodes if n.startswith("agg-"))
    switches = sorted(n for n in d.topology.nodes if n.startswith("sw-"))
    lab = Lab()
    lab.open()
    soak = Soak(lab, state, free_port())
    try:
        dsn = asyncio.run(soak.pg.start())
        (state / "outagemon.toml").write_text(
            CONFIG.format(state=state, dsn=dsn, port=soak.port, write=WRITE)
        )
        soak.start_daemon()
        threads = [threading.Thread(target=soak.watch, daemon=True)]
        threads += [threading.Thread(target=soak.client, args=(lambda: "/", 2.0, False),
                                     daemon=True) for _ in range(100)]  # fmt: skip
        threads += [
            threading.Thread(target=soak.client, daemon=True, args=(
                lambda: f"/api/v1/check?account={random.choice(accounts)}", 0.0, True))
            for _ in range(4)
        ]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(15)  # a clean history before the first fault
        end = time.monotonic() + minutes * 60
        cycle = 0
        while time.monotonic() + 60 <= end:
            cycle_start = time.monotonic()

            def at(second: float, start: float = cycle_start) -> None:
                time.sleep(max(0.0, start + second - time.monotonic()))

            root = aggregations[cycle % len(aggregations)]
            lab.down(*ips_behind(d, root))
            soak.faults.append(root)
            at(12)
            incident = next((i for i, roots in soak.seen.items() if root in roots
                             and i not in soak.etas), None)  # fmt: skip
            if incident is not None:
                eta = time.time() + 3600 + cycle
                if soak.request("POST", f"/api/v1/incidents/{incident}",
                                {"eta": iso(eta), "note": f"cycle {cycle}"})[0] == 200:  # fmt: skip
                    soak.etas[incident] = eta
            status, works = soak.request("POST", "/api/v1/maintenance", {
                "node": switches[cycle % len(switches)], "starts_at": iso(time.time() + 600),
                "ends_at": iso(time.time() + 4200), "reason": f"cycle {cycle}"})  # fmt: skip
            if status == 201:
                soak.works.append(int(works["id"]))
            at(15)
            lab.up(*ips_behind(d, root))
            at(25)
            soak.db_signal(signal.SIGSTOP)
            at(33)
            soak.db_signal(signal.SIGCONT)
            at(36)
            assert soak.process is not None
            soak.process.send_signal(signal.SIGHUP)
            at(40)
            asyncio.run(soak.pg.stop())
            at(48)
            asyncio.run(soak.pg.start())
            at(52)
            soak.restart(signal.SIGTERM if cycle % 2 == 0 else signal.SIGKILL)
            at(60)
            cycle += 1
        time.sleep(20)  # the last writes reach the database
        soak.read_loop_hold()
        soak.stop.set()
        report(soak, asyncio.run(stored(dsn)), minutes, cycle)
    finally:
        soak.stop.set()
        if soak.process is not None and soak.process.poll() is None:
            soak.process.send_signal(signal.SIGTERM)
            soak.process.wait(timeout=30)
        asyncio.run(soak.pg.stop())
        lab.close()


async def stored(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "incidents": {r["id"]: (r["root_node"], r["eta"])
                          for r in await conn.fetch("select id, root_node, eta from incident")},
            "works": {r["id"] for r in await conn.fetch("select id from maintenance")},
        }  # fmt: skip
    finally:
        await conn.close()


def report(soak: Soak, db: dict[str, Any], minutes: float, cycles: int) -> None:
    incidents = db["incidents"]
    expected = len(soak.faults)
    stored_faults = sum(1 for root, _ in incidents.values() if root in set(soak.faults))
    reused = sum(
        1 for iid, roots in soak.seen.items()
        if len(roots) > 1 or (iid in incidents and incidents[iid][0] not in roots)
    )  # fmt: skip
    lost_etas = sum(
        1 for iid, eta in soak.etas.items()
        if iid not in incidents or incidents[iid][1] is None
        or abs(incidents[iid][1].timestamp() - eta) > 1
    )  # fmt: skip
    lost_works = sum(1 for w in soak.works if w not in db["works"])
    p99s = [statistics.quantiles(v, n=100)[98] for v in soak.check_ms.values() if len(v) >= 100]
    print(
        f"soak: {minutes:g} minutes, {cycles} cycles (fault, ETA, works, repair, database "
        f"paused 8 s, SIGHUP, database stopped 8 s, SIGTERM or SIGKILL restart)"
    )
    print(
        f"incidents expected {expected}, stored {stored_faults} "
        f"(with any child incidents: {len(incidents)})"
    )
    print(f"ids reused: {reused}")
    print(
        f"acknowledged writes lost: {lost_etas + lost_works} "
        f"(of {len(soak.etas)} ETAs and {len(soak.works)} planned works)"
    )
    print(f"answers: {dict(sorted(soak.status.items()))} (refused: during restarts)")
    print(f"5xx: {soak.status.get('5xx', 0)}")
    print(f"/check p99, worst minute: {max(p99s):.1f} ms" if p99s else "/check p99: no data")
    print(f"longest loop hold: {soak.loop_hold * 1000:.0f} ms")
    print("command: sudo .venv/bin/python -m benchmarks.soak --minutes " + f"{minutes:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    run(args.minutes)


if __name__ == "__main__":
    main()
