"""Take-over time after kill -9 of the leader: two real daemons, one PostgreSQL (issue 16).

    sudo .venv/bin/python -m benchmarks.takeover_bench [--runs 10] [--lease 3] [--interval 1]

In the network lab (a namespace where nftables silences loopback addresses; root), two
`outagemon run` processes with a [cluster] section watch a generated city (synthetic)
and share a database made for the run on the machine's PostgreSQL (through its Unix
socket; dropped at the end). An aggregation switch is down, so an incident is open. Each
run kills the leader with SIGKILL and measures, on the survivor, polled every 20 ms:
  - lead:     until its /metrics says it leads (it holds the lease);
  - continue: until its /check answers with the same incident id (it has read the open
              incidents back from the database and decides again).
The killed node is then started again, as the standby, for the next run. Printed: p50 and
max over the runs against the target, lease + one probe interval.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab

SERVER = "postgresql://postgres@127.0.0.1:5432/test"
SOCKET_DIR = "/var/run/postgresql"
CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "postgresql://postgres@/{db}?host={socket}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = {interval}
timeout = 0.5
[correlation]
window = 10
resolve_hold = 5
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "en"
[cluster]
node = "{node}"
lease = {lease}
"""


@dataclass
class Node:
    name: str
    lab: Lab
    state: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.state / "daemon.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.lab.command(sys.executable, "-m", "outagemon", "run", "-c",
                                 str(self.state / "outagemon.toml")),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        until(f"{self.name} is ready", lambda: self.get("/readyz").startswith("{"), 90)

    def get(self, path: str) -> str:
        try:
            with (
                self.lab.entered(),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r,
            ):
                return str(r.read().decode())
        except OSError:
            return ""

    def ready(self) -> bool:
        return self.get("/readyz") != ""

    def leads(self) -> bool:
        return 'outagemon_cluster_role{role="leader"} 1' in self.get("/metrics")

    def incident_of(self, account: str) -> str:
        text = self.get("/api/v1/check?" + urllib.parse.urlencode({"account": account}))
        marker = '"incident_id":"'
        return text.split(marker, 1)[1].split('"', 1)[0] if marker in text else ""

    def kill(self) -> float:
        """SIGKILL; returns when it was sent (monotonic)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        sent = time.monotonic()
        self.process.wait()
        return sent


def until(what: str, condition: Callable[[], object], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"takeover_bench: {what}: not within {within} s")
        time.sleep(0.1)


def measure(survivor: Node, account: str, incident: str, killed: float,
            within: float) -> tuple[float, float]:  # fmt: skip
    """Seconds from the kill until the survivor leads, and until it continues the incident."""
    lead = cont = 0.0
    while not (lead and cont):
        now = time.monotonic() - killed
        if now > within:
            raise SystemExit(f"takeover_bench: no take-over within {within} s")
        if not lead and survivor.leads():
            lead = time.monotonic() - killed
        if lead and not cont and survivor.incident_of(account) == incident:
            cont = time.monotonic() - killed
        time.sleep(0.02)
    return lead, cont


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    if not os.path.exists(f"{SOCKET_DIR}/.s.PGSQL.5432"):
        raise SystemExit(f"takeover_bench: no PostgreSQL socket in {SOCKET_DIR}")
    db = f"om_bench_takeover_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'create database "{db}"'))
    city = citygen.generate(aggregations=3, access_per_aggregation=4,
                            subscribers_per_access=5, entrances=2)  # fmt: skip
    dirs: list[Path] = []
    lab = Lab(f"om-lab-h16a-{uuid.uuid4().hex[:6]}")
    lab.open()
    nodes: list[Node] = []
    try:
        for name in ("a", "b"):
            state = Path(tempfile.mkdtemp(prefix="om-h16a-takeover-"))
            state.chmod(0o755)
            dirs.append(state)
            city.write(state)
            port = _free_port()
            (state / "outagemon.toml").write_text(CONFIG.format(
                state=state, db=db, socket=SOCKET_DIR, port=port, interval=args.interval,
                node=name, lease=args.lease))  # fmt: skip
            nodes.append(Node(name, lab, state, port))
        d = directory.load(state / "topology.yaml", state / "subscribers.csv").directory
        below = {"agg-1", *d.topology.descendants("agg-1")}
        account = next(s.account for s in d.subscribers if s.serving in below)
        ips = [ip for n in below if (ip := d.topology.nodes[n].ip) is not None]
        leader, standby = nodes
        leader.start()
        until("a leads", leader.leads, 20)
        standby.start()
        time.sleep(5)  # clean history before the fault
        lab.down(*ips)
        until("an incident opens", lambda: leader.incident_of(account) != "", 60)
        incident = leader.incident_of(account)
        target = args.lease + args.interval
        leads: list[float] = []
        continues: list[float] = []
        for run in range(args.runs):
            until(f"{standby.name} stands by, ready", standby.ready, 30)
            # At a random point of the leader's renewal cycle.
            time.sleep(1.0 + random.uniform(0, args.lease / 3))
            killed = leader.kill()
            lead, cont = measure(standby, account, incident, killed, target + 30)
            leads.append(lead)
            continues.append(cont)
            print(f"run {run + 1}: {standby.name} leads after {lead:.2f} s, "
                  f"continues incident {incident} after {cont:.2f} s", flush=True)  # fmt: skip
            leader.start()  # back, as the standby
            leader, standby = standby, leader
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"\ntake-over after kill -9, {args.runs} runs, lease {args.lease:g} s, "
            f"probe interval {args.interval:g} s (target {target:g} s); load average {load}"
        )
        for what, values in (("leads", leads), ("continues the incident", continues)):
            print(
                f"  {what}: p50 {statistics.median(values):.2f} s, max {max(values):.2f} s"
                f" ({'within' if max(values) <= target else 'OVER'} the target)"
            )
        print(
            f"command: sudo .venv/bin/python -m benchmarks.takeover_bench --runs {args.runs}"
            f" --lease {args.lease:g} --interval {args.interval:g}"
        )
    finally:
        for n in nodes:
            if n.process is not None and n.process.poll() is None:
                n.kill()
        lab.close()
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
        asyncio.run(_admin(f'drop database if exists "{db}" with (force)'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
