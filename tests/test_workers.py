"""HTTP workers and the read replica they answer from (issue 16).

The real `outagemon run` with `[http] workers = 2` on a real PostgreSQL, asked over real
HTTP: each worker agrees with the leader (the daemon's own process, asked on the Unix
socket the workers forward to) within a second of a change; a worker killed with -9 is
replaced and answers never stop. And a replica whose backend is terminated connects
again and re-reads everything, a change it was never told about included.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import http.client
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from outagemon import config
from outagemon.cluster import replica as replica_mod
from outagemon.cluster.replica import Replica
from outagemon.core import directory, messages
from outagemon.core.health import State
from outagemon.db import migrate, store
from outagemon.http import page
from outagemon.http.app import make_app
from outagemon.http.runtime import Runtime
from outagemon.metrics import Registry
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from outagemon.workers import CALLS_BODY, call_batches
from tests.conftest import free_port, short_tmp_dir
from tests.test_secrets import self_signed

WRITE = "workers-write-token-0123456789"
CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "{dsn}"
[http]
listen = "127.0.0.1:{port}"
workers = 2
[probe]
interval = 2
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "en"
[[auth.tokens]]
name = "test"
token = "{write}"
role = "write"
"""
COMPARED = ("status", "incident_id", "root_node", "since", "eta", "message", "node")
T = TypeVar("T")


def wait(what: str, condition: Callable[[], T], within: float = 20.0, log: str = "") -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {within} s\n{log}")


@dataclass
class Cluster:
    state: Path
    port: int
    d: directory.Directory
    process: subprocess.Popen[bytes]
    socket_path: str = ""
    seen: dict[str, int] = field(default_factory=dict)  # worker index -> pid

    def log(self) -> str:
        return (self.state / "daemon.log").read_text(errors="replace")[-6000:]

    def records(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in (self.state / "daemon.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def ask(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        """Over the port, on a new connection: (status, JSON, the worker that answered)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Authorization": f"Bearer {WRITE}",
                                              "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                status, raw, worker = r.status, r.read(), r.headers.get("X-Outagemon-Worker", "")
        except urllib.error.HTTPError as e:
            status, raw, worker = e.code, e.read(), e.headers.get("X-Outagemon-Worker", "")
        index, _, pid = worker.partition("/")
        if index:
            self.seen[index] = int(pid)
        return status, json.loads(raw) if raw.startswith(b"{") else raw.decode(), index

    def leader(self, path: str) -> Any:
        """The daemon's own answer, on the socket the workers forward to."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.socket_path)
            request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Authorization: Bearer {WRITE}\r\nConnection: close\r\n\r\n")  # fmt: skip
            s.sendall(request.encode())
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        return json.loads(body)

    def check_each(self, query: str) -> dict[str, dict[str, Any]]:
        """One /check answer from each worker (new connections until both answered)."""
        answers: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 5
        while len(answers) < 2 and time.monotonic() < deadline:
            status, body, index = self.ask("GET", f"/api/v1/check?{query}")
            assert status == 200, body
            answers[index] = body
        assert len(answers) == 2, f"only workers {sorted(answers)} answered"
        return answers

    def metrics(self) -> dict[str, float]:
        status, text, _ = self.ask("GET", "/metrics")
        assert status == 200
        values = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


def unmanaged(subs: Path) -> None:
    """The first building's routers are not the provider's (no address to probe): its
    callers are the only sensors there (a caller whose own router answers is explained
    by the probes, see core/calls.py)."""
    with subs.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    first = body[0][header.index("address")]
    for row in body:
        if row[header.index("address")] == first:
            row[header.index("ip")] = ""
    with subs.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *body])


@pytest.fixture
def cluster(fresh_db: str) -> Iterator[Cluster]:
    state = short_tmp_dir()
    topo, subs = citygen.generate(aggregations=2, access_per_aggregation=3).write(state)
    unmanaged(subs)
    port = free_port()
    (state / "outagemon.toml").write_text(
        CONFIG.format(state=state, dsn=fresh_db, port=port, write=WRITE)
    )
    with (state / "daemon.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "outagemon", "run", "-c", str(state / "outagemon.toml")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    c = Cluster(state, port, directory.load(topo, subs).directory, process)
    try:

        def ready() -> bool:
            assert process.poll() is None, c.log()
            try:
                return c.ask("GET", "/readyz")[0] == 200 and len(c.records("replica.read_all")) >= 2
            except OSError:
                return False

        wait("the workers are ready", ready, 60, c.log())
        c.socket_path = c.records("workers.started")[0]["socket"]
        yield c
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _account_under(d: directory.Directory, node: str) -> str:
    below = {node, *d.topology.descendants(node)}
    return next(s.account for s in d.subscribers if s.serving in below)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in COMPARED)


def test_each_worker_agrees_with_the_leader_within_a_second(cluster: Cluster) -> None:
    c = cluster
    query = urllib.parse.urlencode({"account": _account_under(c.d, "agg-1")})
    before = c.leader(f"/api/v1/check?{query}")
    assert before["status"] != "maintenance"
    now = datetime.now(UTC)
    ends = now + timedelta(hours=2)
    works = {"node": "agg-1", "starts_at": now.isoformat(), "ends_at": ends.isoformat(),
             "reason": "fibre splice"}  # fmt: skip
    status, body, by = c.ask("POST", "/api/v1/maintenance", works)  # forwarded to the leader
    assert status == 201, body
    assert by in ("0", "1"), "a worker took the write and forwarded it"
    wait("the leader says maintenance",
         lambda: c.leader(f"/api/v1/check?{query}")["status"] == "maintenance")  # fmt: skip
    changed = time.monotonic()
    said = c.leader(f"/api/v1/check?{query}")
    late: dict[str, float] = {}
    while len(late) < 2 and time.monotonic() - changed < 3:
        for index, answer in c.check_each(query).items():
            if index not in late and _same(answer, said):
                late[index] = time.monotonic() - changed
    assert sorted(late) == ["0", "1"], f"workers agreeing: {late}; the leader said {said}"
    assert max(late.values()) < 1.0, late
    # The read API too, from each worker: the same open incidents as the leader's.
    for _ in range(6):
        status, listed, _ = c.ask("GET", "/api/v1/incidents?state=open")
        assert status == 200 and listed == c.leader("/api/v1/incidents?state=open")
    metrics = c.metrics()
    lags = [v for k, v in metrics.items() if k.startswith("outagemon_replica_lag_seconds{")]
    assert len(lags) == 2 and all(0 <= lag < 1.0 for lag in lags), lags
    assert metrics["outagemon_http_workers_alive"] == 2


def test_callers_asking_the_workers_reach_the_daemons_detector(cluster: Cluster) -> None:
    """Three callers of one place ask the workers (never the daemon's process): their
    records reach the daemon's calls detector, which raises a suspected incident; each
    worker then lists it from its replica, as the leader does, and refuses nothing it
    forwards (a decision is the leader's)."""
    c = cluster
    by_node: dict[str, list[str]] = {}
    for s in c.d.subscribers:
        if not s.ip:  # callers behind routers nobody probes
            by_node.setdefault(s.serving, []).append(s.account)
    node, accounts = next((n, a) for n, a in sorted(by_node.items()) if len(a) >= 3)

    # Only a caller told "ok" is one the probes do not explain (core/calls.py): first,
    # each worker's replica has the node's state (asked by node: not a caller's record).
    def all_ok() -> bool:
        return all(a["status"] == "ok" for a in c.check_each(f"node={node}").values())

    wait("each worker says ok", all_ok, 20, c.log())
    answered_by = set()
    for account in accounts[:3]:
        status, body, by = c.ask("GET", f"/api/v1/check?account={account}")
        assert status == 200 and body["node"] == node and body["status"] == "ok", body
        answered_by.add(by)
    assert answered_by <= {"0", "1"} and answered_by, "workers answered the checks"

    def raised() -> list[dict[str, Any]]:
        listed = c.leader("/api/v1/incidents?state=open")["incidents"]
        return [i for i in listed if i["raised_by"] == "calls"]

    (sus,) = wait("the daemon's detector raises a suspicion", raised, 20, c.log())
    assert (sus["kind"], sus["root_node"], sus["callers"]) == ("suspected", node, 3), sus
    assert c.metrics().get("outagemon_replica_call_records_dropped_total", 0) == 0
    for _ in range(6):  # each worker, from its replica
        wait("a worker lists it", lambda: any(
            i["id"] == sus["id"] and i["raised_by"] == "calls"
            for i in c.ask("GET", "/api/v1/incidents?state=open")[1]["incidents"]), 5)  # fmt: skip
    status, body, _ = c.ask("POST", f"/api/v1/incidents/{sus['id']}", {"dismiss": True})
    assert status == 200, body  # forwarded: the daemon's process decides
    wait("dismissed", lambda: not raised(), 10)


def test_a_killed_worker_is_replaced_and_answers_never_stop(cluster: Cluster) -> None:
    c = cluster
    query = urllib.parse.urlencode({"account": _account_under(c.d, "agg-2")})
    c.check_each(query)
    victim_index, victim = "1", c.seen["1"]
    answered: list[tuple[float, str]] = []
    failed: list[tuple[float, str]] = []
    stop = threading.Event()

    def callers() -> None:
        while not stop.is_set():
            try:
                status, _, index = c.ask("GET", f"/api/v1/check?{query}")
                (answered if status == 200 else failed).append((time.monotonic(), index))
            except OSError as e:  # a connection the dying worker had accepted
                failed.append((time.monotonic(), repr(e)))

    thread = threading.Thread(target=callers)
    thread.start()
    try:
        wait("answers flow", lambda: len(answered) > 20)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait("a new worker 1", lambda: c.seen.get(victim_index) not in (None, victim), 20,
             c.log())  # fmt: skip
        wait("more answers", lambda: len([a for a in answered if a[0] > killed]) > 50)
    finally:
        stop.set()
        thread.join()
    after = [t for t, _ in answered if t > killed]
    gaps = [b - a for a, b in zip([killed, *after], after, strict=False)]
    assert max(gaps) < 1.0, f"answers stopped for {max(gaps):.2f} s"
    assert len(failed) <= 2, failed  # at most what the killed worker held
    wait("the restart counted",
         lambda: c.metrics()["outagemon_http_worker_restarts_total"] == 1)  # fmt: skip
    assert c.metrics()["outagemon_http_workers_alive"] == 2
    died = c.records("workers.died")
    assert [(r["worker"], r["pid"], r["status"]) for r in died] == [(1, victim, "SIGKILL")]


def test_a_reload_reaches_every_worker_and_answers_never_stop(cluster: Cluster) -> None:
    c = cluster
    assert all(a["status"] == "not_found" for a in c.check_each("node=sw-1-4").values())
    old = dict(c.seen)
    citygen.generate(aggregations=2, access_per_aggregation=4).write(c.state)  # sw-1-4 is new
    answered: list[float] = []
    failed: list[str] = []
    stop = threading.Event()

    def callers() -> None:
        while not stop.is_set():
            try:
                status, _, _ = c.ask("GET", "/api/v1/check?node=sw-1-1")
                if status == 200:
                    answered.append(time.monotonic())
                else:
                    failed.append(str(status))
            except OSError as e:
                # A connection reset by a stopping worker arrives as ConnectionResetError,
                # RemoteDisconnected (one) or URLError wrapping one: named "Connection…".
                cause = e.reason if isinstance(e, urllib.error.URLError) else e
                reset = isinstance(cause, ConnectionError)
                failed.append(f"Connection reset: {e!r}" if reset else repr(e))

    thread = threading.Thread(target=callers)
    thread.start()
    try:
        c.process.send_signal(signal.SIGHUP)
        wait("the workers reloaded", lambda: c.records("workers.reloaded"), 30, c.log())
    finally:
        stop.set()
        thread.join()
    answers = c.check_each("node=sw-1-4")
    assert all(a["status"] != "not_found" for a in answers.values()), answers
    assert not set(c.seen.values()) & set(old.values()), "each worker was replaced"
    # No answer other than 200, and no connection reset: the workers share one listening
    # socket, so a retiring worker leaves what waits in its queue to the others.
    assert failed == [], failed
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert answered and max(gaps) < 1.0, f"answers stopped for {max(gaps):.2f} s"
    assert c.records("workers.died") == []


def test_a_reload_under_steady_load_fails_no_request(cluster: Cluster) -> None:
    """Callers keep asking through a reload, on keep-alive connections (as a phone
    menu's HTTP client, or wrk) and on a new connection each: every request is answered
    200, none is reset, none waits long; both workers were replaced."""
    c = cluster
    c.check_each("node=sw-1-1")
    old = set(c.seen.values())
    citygen.generate(aggregations=2, access_per_aggregation=4).write(c.state)
    answered: list[tuple[float, str]] = []  # (when, worker pid)
    failed: list[str] = []
    slowest = [0.0]
    stop = threading.Event()

    def keep_alive_caller(k: int) -> None:
        """One persistent connection, as wrk's or a phone menu's HTTP client keeps: a
        connection closed without "Connection: close" on the answer before is a failure
        (a request sent on it meanwhile is lost; wrk counts it as an error)."""
        request = (f"GET /api/v1/check?node=sw-1-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {WRITE}\r\n\r\n").encode()  # fmt: skip
        conn: socket.socket | None = None
        while not stop.is_set():
            asked = time.monotonic()
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", c.port), timeout=5)
                conn.sendall(request)
                status, headers, _ = _read_answer(conn)
                worker = headers.get("x-outagemon-worker", "/").partition("/")[2]
                if status == 200:
                    answered.append((time.monotonic(), worker))
                else:
                    failed.append(f"keep-alive: {status}")
                if headers.get("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError as e:
                failed.append(f"keep-alive: {e!r}")
                if conn is not None:
                    conn.close()
                conn = None
            slowest[0] = max(slowest[0], time.monotonic() - asked)
            time.sleep(0.01 * (k % 5))
        if conn is not None:
            conn.close()

    def new_connections() -> None:
        while not stop.is_set():
            try:
                status, _, _ = c.ask("GET", "/api/v1/check?node=sw-1-1")
                if status != 200:
                    failed.append(f"new connection: {status}")
            except OSError as e:
                failed.append(f"new connection: {e!r}")

    threads = [threading.Thread(target=keep_alive_caller, args=(k,)) for k in range(8)]
    threads += [threading.Thread(target=new_connections) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait("answers flow", lambda: len(answered) > 50)
        c.process.send_signal(signal.SIGHUP)
        wait("the workers reloaded", lambda: c.records("workers.reloaded"), 30, c.log())
        reloaded = time.monotonic()
        # Past the retiring workers' drain: their keep-alive connections were closed.
        wait("answers after the drain", lambda: answered[-1][0] > reloaded + 3, 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failed == [], failed[:10]
    assert slowest[0] < 5.0
    late = {pid for t, pid in answered if t > reloaded + 3}
    assert late and not late & {str(p) for p in old}, "the new workers answer"
    assert c.records("workers.died") == []


def _read_answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length: (status, headers by lower-case name,
    body). OSError when the connection ends before the answer does."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionAbortedError("closed before an answer")
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}  # fmt: skip
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionAbortedError("closed within an answer")
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_new_worker_answers_only_once_its_replica_is_read(cluster: Cluster,
                                                             fresh_db: str) -> None:  # fmt: skip
    """While a new worker's replica cannot read the incidents (the table is locked), the
    old workers answer every caller, ready; the new one answers once it has read."""
    c = cluster
    c.check_each("node=sw-1-1")
    old = set(c.seen.values())
    supervisor = int(c.records("workers.started")[0]["supervisor"])
    locked, release = threading.Event(), threading.Event()

    async def hold_lock() -> None:
        conn = await store.connection(fresh_db)
        try:
            async with conn.transaction():
                await conn.execute("lock table incident in access exclusive mode")
                locked.set()
                await asyncio.to_thread(release.wait, 60)
        finally:
            await conn.close()

    holder = threading.Thread(target=lambda: asyncio.run(hold_lock()))
    holder.start()
    try:
        wait("the lock", locked.is_set)
        c.process.send_signal(signal.SIGHUP)

        def children() -> list[str]:
            path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
            return path.read_text().split()

        wait("a new worker forked", lambda: len(children()) > 2, 30, c.log())
        forked = time.monotonic()
        while time.monotonic() - forked < 2.0:  # the new worker is reading, blocked
            for path in ("/readyz", "/api/v1/check?node=sw-1-1"):
                status, body, index = c.ask("GET", path)
                assert status == 200, body
                assert c.seen[index] in old, f"worker {index} answered before it was ready"
    finally:
        release.set()
        holder.join()
    wait("the workers reloaded", lambda: c.records("workers.reloaded"), 30, c.log())
    c.check_each("node=sw-1-1")
    assert not set(c.seen.values()) & old, "each worker was replaced"
    listening = [r for r in c.records("worker.listening") if r["pid"] not in old]
    assert len(listening) == 2 and all(r["ready"] for r in listening), listening


def test_the_daemon_sees_the_callers_address_not_one_a_caller_claims(cluster: Cluster) -> None:
    c = cluster
    req = urllib.request.Request(
        f"http://127.0.0.1:{c.port}/api/v1/maintenance", data=b"{}", method="POST",
        headers={"Authorization": "Bearer wrong-token-0123456789", "X-Forwarded-For": "6.6.6.6",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 401
    assert refused.value.headers.get("X-Outagemon-Worker"), "answered through a worker"
    # The write was forwarded: the daemon's process (no worker in its log line) refused it.
    (line,) = wait("the refusal logged", lambda: [
        r for r in c.records("auth.failed") if "worker" not in r])  # fmt: skip
    assert line["remote"] == "127.0.0.1", line
    status, body, _ = c.ask("GET", "/_workers/calls")
    assert status == 404, body  # the workers' own path is never forwarded for a caller


def test_the_workers_take_the_cpu_before_the_daemon(cluster: Cluster) -> None:
    """`[http] workers_nice` (default -5): a caller's answer does not wait for a core
    behind the correlator. Root may lower a nice value (so may LimitNICE= in the unit)."""
    if os.geteuid() != 0:
        pytest.skip("lowering a nice value needs root or RLIMIT_NICE here")
    c = cluster
    c.check_each("node=agg-1")
    assert len(c.seen) == 2
    for pid in c.seen.values():
        assert os.getpriority(os.PRIO_PROCESS, pid) == config.HttpConfig().workers_nice == -5
    assert os.getpriority(os.PRIO_PROCESS, c.process.pid) == 0  # the daemon keeps its own


def test_a_worker_not_allowed_a_higher_priority_keeps_its_own_and_says_so() -> None:
    """Without CAP_SYS_NICE or RLIMIT_NICE (the service's user by default) the worker
    runs at the daemon's priority, and the log says how to allow it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    code = ("import os, resource; from outagemon import workers; "
            "resource.setrlimit(resource.RLIMIT_NICE, (0, 0)); "
            "print(workers.first_in_line(-5), os.getpriority(os.PRIO_PROCESS, 0))")  # fmt: skip
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["False", "0"], done.stdout
    assert "workers.priority_kept" in done.stdout + done.stderr
    assert "LimitNICE=" in done.stdout + done.stderr


def test_the_workers_stop_with_the_daemon(cluster: Cluster) -> None:
    c = cluster
    c.check_each("node=agg-1")
    pids = list(c.seen.values())
    c.process.send_signal(signal.SIGTERM)
    assert c.process.wait(timeout=15) == 0
    for pid in pids:
        wait(f"worker {pid} gone", lambda pid=pid: not Path(f"/proc/{pid}").exists(), 5)  # type: ignore[misc]
    assert not Path(c.socket_path).exists()
    assert len(c.records("worker.stopping")) == 2


# -- the replica alone, on a real PostgreSQL -----------------------------------------------


async def test_a_replica_reconnects_and_reads_everything_again(fresh_db: str) -> None:
    await migrate.migrate(fresh_db)
    city = citygen.generate(aggregations=2, access_per_aggregation=2)
    state = short_tmp_dir()
    d = directory.load(*city.write(state)).directory
    conn = await store.connection(fresh_db)
    metrics = Registry()
    replica = Replica(d, metrics, restored_for=3600)
    task = asyncio.create_task(replica.run(fresh_db))
    try:
        nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
        async with conn.transaction():
            await store.save_nodes(conn, nodes)
        await _until(lambda: replica.first_round_done)
        opened = datetime.now(UTC)

        async def incident(iid: int, root: str, announce: bool) -> None:
            async with conn.transaction():
                await store.insert_incident(conn, iid, "outage", root, False, opened, 10)
                await store.set_incident_nodes(conn, iid, [root, *d.topology.descendants(root)])
                if announce:
                    await store.notify_replica(conn, "incident", [iid])

        await incident(1, "agg-1", announce=True)
        await _until(lambda: replica.correlator.incident_for("agg-1") is not None)
        assert replica.correlator.incidents[1].nodes[0] == "agg-1"
        assert metrics.gauge("outagemon_replica_lag_seconds", "").get() < 1.0
        # Written without a word to the replica (as while it was away): not seen...
        await incident(2, "agg-2", announce=False)
        await asyncio.sleep(0.3)  # a notification would have arrived by now (it has none)
        assert 2 not in replica.correlator.incidents
        # ...until its connection is cut and it reads everything again.
        reads = metrics.counter("outagemon_replica_full_reads_total", "").get()
        backends = await store.replica_backends(conn)
        assert len(backends) == 1
        await store.terminate_backends(conn, backends)
        await _until(lambda: 2 in replica.correlator.incidents, within=10)
        assert metrics.counter("outagemon_replica_full_reads_total", "").get() == reads + 1
        assert replica.correlator.incident_for("agg-2") is replica.correlator.incidents[2]
        assert (await store.replica_backends(conn)) not in ([], backends)
        # And it follows announcements again on the new connection: call counts alone...
        async with conn.transaction():
            await store.add_calls(conn, [(2, 5)])
            await store.notify_replica(conn, "calls", [2])
        await _until(lambda: replica.calls.get(2) == 5)
        # ...and an incident resolved.
        async with conn.transaction():
            await store.resolve_incident(conn, 1, datetime.now(UTC))
            await store.notify_replica(conn, "incident", [1])
        await _until(lambda: 1 not in replica.correlator.incidents)
        assert replica.recent["agg-1"].id == 1  # its callers hear "restored"
        # HTTP answers from the replica as from a monitor (a worker's, a standby's).
        rt = Runtime(config=config.parse("", state / "outagemon.toml"), directory=d,
                     texts=messages.load("en"))  # fmt: skip
        rt.monitor, rt.not_ready = replica, None
        server = TestServer(make_app(rt), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                under = next(iter(d.topology.descendants("agg-2")))
                async with http.get(f"{server.make_url('/api/v1/check')}?node={under}") as r:
                    answer = await r.json()
                assert (answer["status"], answer["incident_id"]) == ("outage", "2"), answer
                async with http.get(f"{server.make_url('/api/v1/check')}?node=agg-1") as r:
                    assert (await r.json())["status"] == "restored"
                async with http.get(str(server.make_url("/api/v1/incidents"))) as r:
                    assert [i["id"] for i in (await r.json())["incidents"]] == ["2"]
                async with http.get(str(server.make_url("/"))) as r:
                    page = await r.text()
                assert r.status == 200 and "agg-2" in page
        finally:
            await server.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()


async def test_a_replica_reads_an_incidents_nodes_only_when_the_set_changed(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most events of a core failure's incident rewrite its 100,000 nodes unchanged: the
    replica reads a node set (in pieces) only when its digest changed; the incident's other
    fields, a root moved within the set and a reconnect's full read take none."""
    monkeypatch.setattr(replica_mod, "NODES_READ_AT_ONCE", 2)  # several pieces a set
    pages: list[int] = []
    read_page = store.replica_incident_nodes

    async def counted(conn: Any, iid: int, after: str | None, limit: int) -> list[str]:
        pages.append(iid)
        return await read_page(conn, iid, after, limit)

    monkeypatch.setattr(store, "replica_incident_nodes", counted)
    await migrate.migrate(fresh_db)
    city = citygen.generate(aggregations=2, access_per_aggregation=3)
    d = directory.load(*city.write(short_tmp_dir())).directory
    conn = await store.connection(fresh_db)
    metrics = Registry()
    replica = Replica(d, metrics, restored_for=3600)
    sets = metrics.counter("outagemon_replica_node_sets_read_total", "")
    task = asyncio.create_task(replica.run(fresh_db))
    try:
        nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
        async with conn.transaction():
            await store.save_nodes(conn, nodes)
        await _until(lambda: replica.first_round_done)
        under = sorted(d.topology.descendants("agg-1"))
        assert len(under) >= 3

        async def change(*writes: Callable[[], Any]) -> None:
            async with conn.transaction():
                for write in writes:
                    await write()
                await store.notify_replica(conn, "incident", [1])

        async with conn.transaction():
            await store.insert_incident(conn, 1, "outage", "agg-1", False, datetime.now(UTC), 10)
        await change(lambda: store.set_incident_nodes(conn, 1, ["agg-1", *under]))
        await _until(lambda: 1 in replica.correlator.incidents)
        assert replica.correlator.incidents[1].nodes == ["agg-1", *under]
        assert (sets.get(), len(pages)) == (1, -(-(len(under) + 1) // 2))
        # The set written again, unchanged (as a "nodes" event does), with an estimate:
        # the index of who covers each node is the one made of that same list.
        index = replica.correlator.node_incident
        eta = datetime.now(UTC) + timedelta(hours=2)
        await change(lambda: store.set_incident_nodes(conn, 1, [*reversed(under), "agg-1"]),
                     lambda: store.set_incident_eta(conn, 1, eta))  # fmt: skip
        await _until(lambda: 1 in replica.eta)
        assert replica.correlator.incidents[1].nodes == ["agg-1", *under]
        assert sets.get() == 1 and replica.correlator.node_incident is index
        # The root moved within the same set: listed first, nothing read.
        await change(lambda: store.move_incident_root(conn, 1, under[1], True))
        await _until(lambda: replica.correlator.incidents[1].root == under[1])
        assert replica.correlator.incidents[1].nodes == [under[1], "agg-1", under[0], *under[2:]]
        assert sets.get() == 1
        # A node fewer: read again, and the index follows.
        await change(lambda: store.set_incident_nodes(conn, 1, ["agg-1", *under[1:]]))
        await _until(lambda: under[0] not in replica.correlator.incidents[1].nodes)
        assert replica.correlator.incidents[1].nodes == [under[1], "agg-1", *under[2:]]
        assert replica.correlator.incident_for(under[0]) is None
        assert replica.correlator.incident_for(under[2]) is replica.correlator.incidents[1]
        assert sets.get() == 2 and replica.correlator.node_incident is not index
        # After a reconnect everything is read again, but the unchanged set is kept.
        reads = metrics.counter("outagemon_replica_full_reads_total", "").get()
        await store.terminate_backends(conn, await store.replica_backends(conn))
        await _until(lambda: metrics.counter("outagemon_replica_full_reads_total", "").get()
                     == reads + 1, within=10)  # fmt: skip
        assert replica.correlator.incidents[1].nodes == [under[1], "agg-1", *under[2:]]
        assert sets.get() == 2
        # Node states outside it, as the page lists them from a replica.
        elsewhere = sorted(d.topology.descendants("agg-2"))
        now = datetime.now(UTC)
        async with conn.transaction():
            await store.save_node_states(conn, [(elsewhere[0], "down", now, 1.0),
                                                (elsewhere[1], "degraded", now, 0.25),
                                                (under[0], "down", now, 1.0)])  # fmt: skip
            await store.notify_replica(conn, "states", [])
        await _until(lambda: elsewhere[1] in replica.correlator.states)
        assert replica.correlator.states[elsewhere[0]].state is State.DOWN
        assert replica.correlator.states.get(elsewhere[1]) == replica.correlator.states[
            elsewhere[1]] and replica.correlator.states[elsewhere[1]].degraded  # fmt: skip
        rt = Runtime(config=config.parse("", short_tmp_dir() / "outagemon.toml"), directory=d,
                     texts=messages.load("en"))  # fmt: skip
        rt.monitor, rt.not_ready = replica, None
        listed = {p["id"]: p["state"] for p in page.live_context(rt)["problems"]}
        assert listed == {elsewhere[0]: "down", elsewhere[1]: "degraded", under[0]: "down"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()


async def _until(condition: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


# -- a real decision, in the network lab ----------------------------------------------------


class Relay:
    """A TCP relay from the lab's 127.0.0.1 to this host's PostgreSQL: the daemon probes
    inside the namespace, and the database it writes to is the machine's real one."""

    def __init__(self, lab: Lab, port: int) -> None:
        with lab.entered():
            self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return
            outside = socket.create_connection(("127.0.0.1", self.target))
            self.open += [inside, outside]
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for s in self.open:
            s.close()


def test_each_worker_agrees_with_the_leaders_decisions_in_the_lab(fresh_db: str, lab: Lab) -> None:
    state = short_tmp_dir()
    city = citygen.generate(aggregations=3, access_per_aggregation=4,
                            subscribers_per_access=5, entrances=2)  # fmt: skip
    topo, subs = city.write(state)
    d = directory.load(topo, subs).directory
    parsed = urllib.parse.urlsplit(fresh_db)
    relay = Relay(lab, parsed.port or 5432)
    dsn = f"postgresql://{parsed.username or 'postgres'}@127.0.0.1:{relay.port}{parsed.path}"
    port = free_port()
    (state / "outagemon.toml").write_text(
        LAB_CONFIG.format(state=state, dsn=dsn, port=port, write=WRITE)
    )
    with (state / "daemon.log").open("ab") as out:
        process = subprocess.Popen(
            lab.command(sys.executable, "-m", "outagemon", "run", "-c",
                        str(state / "outagemon.toml")),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    c = Cluster(state, port, d, process)

    def ask(query: str) -> dict[str, dict[str, Any]]:
        with lab.entered():
            return c.check_each(query)

    try:

        def ready() -> bool:
            assert process.poll() is None, c.log()
            try:
                with lab.entered():
                    return c.ask("GET", "/readyz")[0] == 200
            except OSError:
                return False

        wait("the workers are ready", ready, 90, c.log())
        c.socket_path = c.records("workers.started")[0]["socket"]
        time.sleep(8)  # clean history before the fault, as in steady operation
        query = urllib.parse.urlencode({"account": _account_under(d, "agg-2")})
        assert c.leader(f"/api/v1/check?{query}")["status"] == "ok"
        topology = d.topology
        lab.down(*[ip for n in ["agg-2", *topology.descendants("agg-2")]
                   if (ip := topology.nodes[n].ip) is not None])  # fmt: skip
        for expected in ("outage", "restored"):
            said = wait(
                f"the leader says {expected}",
                lambda e=expected: (
                    (  # type: ignore[misc]
                        a := c.leader(f"/api/v1/check?{query}")
                    )["status"]
                    == e
                    and a
                ),
                60,
                c.log(),
            )
            changed = time.monotonic()
            late: dict[str, float] = {}
            while len(late) < 2 and time.monotonic() - changed < 3:
                for index, answer in ask(query).items():
                    if index not in late and _same(answer, said):
                        late[index] = time.monotonic() - changed
            assert sorted(late) == ["0", "1"], f"{expected}: {late}; the leader said {said}"
            assert max(late.values()) < 1.0, (expected, late)
            if expected == "outage":  # the workers' answers are counted by the leader
                wait("calls counted", lambda: c.leader("/api/v1/incidents?state=open")
                     ["incidents"][0]["calls"] >= 2, 5)  # fmt: skip
            lab.clear()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        relay.close()


LAB_CONFIG = """
[daemon]
state_dir = "{state}"
[database]
dsn = "{dsn}"
[http]
listen = "127.0.0.1:{port}"
workers = 2
[probe]
interval = 1.0
timeout = 0.5
down_after = 3
up_after = 2
[correlation]
window = 5
resolve_hold = 3
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
[messages]
language = "en"
restored_for = 600
[[auth.tokens]]
name = "test"
token = "{write}"
role = "write"
"""


def test_a_taken_port_stops_the_start_with_a_sentence(fresh_db: str) -> None:
    state = short_tmp_dir()
    citygen.generate(aggregations=1, access_per_aggregation=2).write(state)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (state / "outagemon.toml").write_text(
            CONFIG.format(state=state, dsn=fresh_db, port=port, write=WRITE)
        )
        # Its own temporary directory: other tests (other pytest-xdist workers) make and
        # remove outagemon-http-* directories in the shared one meanwhile.
        tmp = state / "tmp"
        tmp.mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "outagemon", "run", "-c", str(state / "outagemon.toml")],
            capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert '"supervisor"' not in done.stdout, "nothing was forked"
    assert list(tmp.glob("outagemon-http-*")) == [], "nothing left"


def test_workers_serve_https_on_the_shared_socket(fresh_db: str) -> None:
    """With tls_cert and tls_key, each worker answers HTTPS on the one listening socket
    it inherited."""
    state = short_tmp_dir()
    citygen.generate(aggregations=1, access_per_aggregation=2).write(state)
    cert, _key = self_signed(state)
    port = free_port()
    text = CONFIG.format(state=state, dsn=fresh_db, port=port, write=WRITE)
    text = text.replace(
        "workers = 2\n", 'workers = 2\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
    )
    (state / "outagemon.toml").write_text(text)
    with (state / "daemon.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "outagemon", "run", "-c", str(state / "outagemon.toml")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    trusting = ssl.create_default_context(cafile=str(cert))
    workers: set[str] = set()

    def both_answer() -> bool:
        assert process.poll() is None, (state / "daemon.log").read_text()[-3000:]
        req = urllib.request.Request(f"https://127.0.0.1:{port}/api/v1/check?node=agg-1",
                                     headers={"Authorization": f"Bearer {WRITE}"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=2, context=trusting) as r:
                if r.status == 200:
                    workers.add(r.headers["X-Outagemon-Worker"].partition("/")[0])
        except (urllib.error.URLError, ConnectionError):
            pass
        return len(workers) == 2

    try:
        wait("both workers answer HTTPS", both_answer, 60)
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


# -- what the callers' feature reads, from a replica ---------------------------------------

REPLICA_CONFIG = """
[callers]
sentence = "Several neighbours called; we are checking."
[[auth.tokens]]
name = "test"
token = "{write}"
role = "write"
"""


async def test_a_replica_serves_incidents_raised_by_calls_and_refuses_decisions(
    fresh_db: str,
) -> None:
    """A suspected incident the leader wrote (raised by calls) is in the replica's book
    of them: /check behind it hears the callers' sentence, the read API lists it with the
    callers that raised it; a decision asked of the replica is refused with a sentence
    (409), never taken silently; and callers' records wait for the deciding process."""
    await migrate.migrate(fresh_db)
    city = citygen.generate(aggregations=2, access_per_aggregation=2)
    state = short_tmp_dir()
    d = directory.load(*city.write(state)).directory
    conn = await store.connection(fresh_db)
    metrics = Registry()
    replica = Replica(d, metrics, restored_for=3600)
    task = asyncio.create_task(replica.run(fresh_db))
    try:
        nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
        async with conn.transaction():
            await store.save_nodes(conn, nodes)
        await _until(lambda: replica.first_round_done)
        root = next(iter(d.topology.descendants("agg-1")))
        under = next(s for s in d.subscribers if s.serving == root or
                     s.serving in d.topology.descendants(root))  # fmt: skip
        opened = datetime.now(UTC)
        detail = {"kind": "suspected", "raised_by": "calls", "callers": 3,
                  "buildings": ["b-1"], "first_call_ago": 120.0}  # fmt: skip
        async with conn.transaction():
            await store.insert_incident(conn, 7, "suspected", root, True, opened, 0,
                                        raised_by="calls")  # fmt: skip
            await store.set_incident_nodes(conn, 7, [root])
            await store.add_incident_event(conn, 7, opened, "opened", json.dumps(detail))
            await store.notify_replica(conn, "incident", [7])
        await _until(lambda: 7 in replica.watch.open)
        copy = replica.watch.open[7]
        assert (copy.callers, copy.buildings, copy.confirmed) == (3, ["b-1"], False)
        assert 7 not in replica.correlator.incidents  # the probes' incidents only there
        assert replica.watch.covering(under.serving) is copy
        assert [i.id for i in replica.open_incidents()] == [7]
        assert replica.open_incident(7) is copy.incident

        cfg = config.parse(REPLICA_CONFIG.format(write=WRITE), state / "outagemon.toml")
        texts = dataclasses.replace(messages.load("en"), suspected=cfg.callers.sentence)
        rt = Runtime(config=cfg, directory=d, texts=texts)
        rt.monitor, rt.not_ready = replica, None
        server = TestServer(make_app(rt), host="127.0.0.1")
        await server.start_server()
        auth = {"Authorization": f"Bearer {WRITE}"}
        try:
            async with aiohttp.ClientSession() as http:
                url = server.make_url("/api/v1/check")
                async with http.get(f"{url}?account={under.account}", headers=auth) as r:
                    answer = await r.json()
                assert answer["status"] != "outage", answer  # suspected: never an outage
                assert answer["message"] == "Several neighbours called; we are checking."
                async with http.get(str(server.make_url("/api/v1/incidents")), headers=auth) as r:
                    (listed,) = (await r.json())["incidents"]
                assert (listed["id"], listed["kind"], listed["callers"]) == ("7", "suspected", 3)
                for decision in ({"confirm": True}, {"dismiss": True}, {"eta": None, "note": "x"}):
                    async with http.post(str(server.make_url("/api/v1/incidents/7")),
                                         json=decision, headers=auth) as r:  # fmt: skip
                        body = await r.json()
                        assert r.status == 409, (decision, body)
                    assert "leader" in body["error"], body
                assert 7 in replica.watch.open  # nothing taken
        finally:
            await server.close()
        # The check above was a caller's: its record waits for the deciding process.
        (record,) = replica.take_records()
        assert record[0] == under.serving  # the caller is their home (building and flat):
        assert record[2:4] == ("home", f"{record[1]}\x00{under.flat}"), record
        # Too many unsent: dropped and counted, never held without bound.
        for _ in range(50_001):
            replica.record_call(root, "", "account", "x", "ivr", "ok")
        assert len(replica.take_records()) == 50_000
        assert metrics.counter("outagemon_replica_call_records_dropped_total", "").get() == 1
        # A confirmed one (kind outage, raised by calls): /check says the outage.
        async with conn.transaction():
            await conn.execute("update incident set kind = 'outage' where id = 7")
            await store.notify_replica(conn, "incident", [7])
        await _until(lambda: replica.watch.open[7].confirmed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()


def test_call_batches_stay_under_what_the_daemon_takes() -> None:
    """A busy second's records (12,000, Cyrillic addresses among them) go in bodies the
    daemon's 64 KiB limit takes, the counts in the first, nothing lost or repeated."""
    records = [(f"acc-{i % 40}", f"Мира {i % 90}, кв. {i}", "address", f"Мира {i}\x00{i}",
                "ivr", "ok", f"cpe:acc-{i % 40}" if i % 3 else "")
               for i in range(12_000)]  # fmt: skip
    bodies = list(call_batches({3: 5, 9: 1}, records))
    assert len(bodies) > 1
    got: list[tuple[str, ...]] = []
    for n, (body, calls, taken) in enumerate(bodies):
        assert len(body) <= CALLS_BODY < 64 * 1024
        parsed = json.loads(body)
        assert parsed["counts"] == ({"3": 5, "9": 1} if n == 0 else {})
        assert (calls, taken) == (6 if n == 0 else 0, len(parsed["records"]))
        got += [tuple(r) for r in parsed["records"]]
    assert got == records
    assert list(call_batches({}, [])) == []
    ((body, calls, taken),) = call_batches({4: 2}, [])
    assert json.loads(body) == {"counts": {"4": 2}, "records": []} and (calls, taken) == (2, 0)
