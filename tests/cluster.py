"""Two real `outagemon run` nodes on one real PostgreSQL, in the network lab: what
tests/test_cluster_e2e.py and tests/test_cluster_calls.py share (the config, a node, the
pair's start and stop, reading the database).

The daemons run inside the lab's namespace and reach PostgreSQL through its Unix socket
(the namespace has its own loopback). Lease 3 s, probes every second: bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir
from tests.test_lab_e2e import WRITE, LabDaemon

SOCKET_DIR = "/var/run/postgresql"
LEASE = 3.0
INTERVAL = 1.0
CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "{dsn}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = {interval}
timeout = 0.5
down_after = 3
up_after = 2
max_rate = 5000
[correlation]
window = 10
resolve_hold = 5
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "en"
restored_for = 600
[cluster]
node = "{node}"
lease = {lease}
[[auth.tokens]]
name = "lab"
token = "{write}"
role = "write"
"""


class Node(LabDaemon):
    """One cluster node: a lab daemon with its /metrics read as numbers."""

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with self.lab.entered(), urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                values[series] = float(value)
        return values

    def role(self) -> str:
        try:
            m = self.metrics()
        except OSError:
            return "unreachable"
        if m.get('outagemon_cluster_role{role="leader"}') == 1:
            return "leader"
        return "standby"

    def logged(self, event: str) -> float:
        """When the last log line of `event` was written (wall clock)."""
        lines = (self.state / "daemon.log").read_text(errors="replace").splitlines()
        found = [json.loads(line) for line in lines if f'"event": "{event}"' in line]
        assert found, f"no {event} in the log:\n{self.log()}"
        stamp = str(found[-1]["timestamp"]).replace("Z", "+00:00")
        return datetime.fromisoformat(stamp).timestamp()

    def answering_from(self) -> str:
        """What HTTP answers from, as last logged: "replica", "monitor" or ""."""
        lines = (self.state / "daemon.log").read_text(errors="replace").splitlines()
        found = [json.loads(x) for x in lines if '"event": "cluster.answering_from"' in x]
        return str(found[-1]["source"]) if found else ""

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@pytest.fixture
def socket_dsn(fresh_db: str) -> str:
    """The fresh database through PostgreSQL's Unix socket, reachable from the namespace."""
    if not os.path.exists(f"{SOCKET_DIR}/.s.PGSQL.5432") or "@127.0.0.1:5432/" not in fresh_db:
        pytest.skip(f"no PostgreSQL socket in {SOCKET_DIR} for the namespaced daemons")
    user = fresh_db.split("//", 1)[1].split("@", 1)[0]
    name = fresh_db.rsplit("/", 1)[1]
    return f"postgresql://{user}@/{name}?host={SOCKET_DIR}"


@contextlib.contextmanager
def running_pair(lab: Lab, dsn: str, city: citygen.City, extra: str | dict[str, str] = "",
                 warm_up: float = 6.0) -> Iterator[tuple[Node, Node]]:  # fmt: skip
    """Node a (started first: it leads) and node b (stands by, answering from its
    replica), then `warm_up` seconds of clean history; `extra` config sections are the
    same for both or given by node name. Both are killed and their state removed after,
    also when one of them did not start."""
    nodes = []
    try:
        for name in ("a", "b"):
            sections = extra if isinstance(extra, str) else extra[name]
            state = short_tmp_dir()
            topo, subs = city.write(state)
            port = free_port()
            text = CONFIG.format(state=state, dsn=dsn, port=port, interval=INTERVAL, node=name,
                                 lease=LEASE, write=WRITE)  # fmt: skip
            # Before [[auth.tokens]]: an array of tables ends the file's last section.
            text = text.replace("[[auth.tokens]]", sections + "[[auth.tokens]]")
            (state / "outagemon.toml").write_text(text)
            nodes.append(Node(lab, state, port, city, directory.load(topo, subs).directory))
        a, b = nodes
        a.start()
        a.wait("a leads", lambda: a.role() == "leader", within=20)
        b.start()
        b.wait("b answers from its replica", lambda: b.answering_from() == "replica", within=20)
        time.sleep(warm_up)
        yield a, b
    finally:
        stop_pair(nodes)


def stop_pair(nodes: Iterable[Node]) -> None:
    """Kill each node (a paused one too) and remove its state directory."""
    for n in nodes:
        if n.process is not None:
            if n.process.poll() is None:
                n.process.send_signal(signal.SIGCONT)
                n.process.kill()
            n.process.wait()
        shutil.rmtree(n.state, ignore_errors=True)


async def fetch_rows(dsn: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def fetch(dsn: str, sql: str) -> list[dict[str, Any]]:
    return asyncio.run(fetch_rows(dsn, sql))
