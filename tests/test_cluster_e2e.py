"""Two real `outagemon run` processes on one real PostgreSQL, probing the network lab
(nftables faults in a namespace), each on its own HTTP port: one leads under the lease,
the other stands by; the leader is killed (-9) or paused (SIGSTOP) with an incident open.

The pair, its config and its start and stop are tests/cluster.py's (shared with
tests/test_cluster_calls.py). Lease 3 s, probes every second: bounded in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.cluster import INTERVAL, LEASE, Node, fetch, running_pair, socket_dsn

__all__ = ["socket_dsn"]  # the fixture, used by name

WARM_UP = 8.0  # seconds of clean history before a fault


@pytest.fixture
def pair(lab: Lab, socket_dsn: str) -> Iterator[tuple[Node, Node]]:
    """Node a (started first: it leads) and node b (stands by), warmed up."""
    city = citygen.generate(aggregations=3, access_per_aggregation=4,
                            subscribers_per_access=5, entrances=2)  # fmt: skip
    with running_pair(lab, socket_dsn, city, warm_up=WARM_UP) as nodes:
        yield nodes


def incidents(dsn: str) -> list[dict[str, Any]]:
    return fetch(dsn, "select id, root_node, state from incident order by id")


def events(dsn: str) -> dict[int, list[str]]:
    """Each incident's timeline, as the kinds of its events in order."""
    found: dict[int, list[str]] = {}
    for r in fetch(dsn, "select incident_id, kind from incident_event order by id"):
        found.setdefault(r["incident_id"], []).append(r["kind"])
    return found


Incidents = list[dict[str, Any]]


def wait_db(what: str, dsn: str, condition: Callable[[Incidents], bool], log: Callable[[], str],
            within: float = 40.0) -> Incidents:  # fmt: skip
    deadline = time.monotonic() + within
    while True:
        found = incidents(dsn)
        if condition(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s; incidents {found}\n{log()}")
        time.sleep(0.3)


def assert_clean_history(found: list[dict[str, Any]], timeline: dict[int, list[str]]) -> None:
    """No incident opened twice, none resolved twice, none left without its opening, and
    never two open at once for one root."""
    for inc in found:
        kinds = timeline.get(inc["id"], [])
        assert kinds.count("opened") == 1, (inc, kinds)
        assert kinds.count("resolved") <= 1, (inc, kinds)
        assert (kinds.count("resolved") == 1) == (inc["state"] == "resolved"), (inc, kinds)
    open_roots = [i["root_node"] for i in found if i["state"] == "open"]
    assert len(open_roots) == len(set(open_roots)), found


def test_kill_9_of_the_leader_the_standby_continues_the_same_incident(
    pair: tuple[Node, Node], lab: Lab, fresh_db: str
) -> None:
    a, b = pair
    assert b.role() == "standby"
    assert b.get("/readyz") == (200, {"status": "ready", "role": "standby", "leader": "a"})
    account = a.account_under("agg-1")
    b.wait("b answers from its replica", lambda: b.answering_from() == "replica", within=10)
    lab.down(*a.ips_behind("agg-1"))
    # The leader's /check and the standby's, asked in turn: the standby says the outage,
    # with the leader's incident id, within a second of the leader first saying it.
    said: dict[str, tuple[float, str]] = {}
    deadline = time.monotonic() + 40
    while len(said) < 2:
        for name, node in (("a", a), ("b", b)):
            if name not in said:
                answer = node.check(account=account)
                if answer["status"] == "outage":
                    said[name] = (time.monotonic(), answer["incident_id"])
        assert time.monotonic() < deadline, f"said {said}\n{a.log()}\n{b.log()}"
        time.sleep(0.02)
    assert said["b"][1] == said["a"][1], f"the standby names another incident: {said}"
    lag = said["b"][0] - said["a"][0]
    assert lag <= 1.0, f"the standby said the outage {lag:.2f} s after the leader"
    found = wait_db("a opens an incident at agg-1", fresh_db,
                    lambda f: any(i["root_node"] == "agg-1" for i in f), a.log)  # fmt: skip
    (inc,) = found
    assert said["a"][1] == str(inc["id"])
    assert a.check(account=account)["incident_id"] == str(inc["id"])
    # The standby's page shows the leader's incident (read from its replica).
    status, page = b.get_text("/")
    assert status == 200 and f'href="/incidents/{inc["id"]}"' in page, page
    assert b.metrics()["outagemon_db_writes_total"] == 0, "a standby writes nothing"

    assert a.process is not None
    a.process.send_signal(signal.SIGKILL)
    killed, killed_wall = time.monotonic(), time.time()
    answers: list[str] = []
    while b.role() != "leader":  # /check on the survivor answers throughout
        answers.append(b.check(account=account)["status"])
        assert time.monotonic() - killed < LEASE + INTERVAL + 5, b.log()
        time.sleep(0.05)
    # When b took the lease, by its own log line (the polling above adds its own delay).
    took = b.logged("cluster.leading") - killed_wall
    assert took <= LEASE + INTERVAL, f"b led {took:.2f} s after the kill"
    assert answers, "b was asked while it stood by"
    b.wait("b continues the incident", lambda: b.check(account=account).get("incident_id")
           == str(inc["id"]), within=10)  # fmt: skip
    assert b.metrics()["outagemon_cluster_epoch"] == 2

    lab.up(*a.ips_behind("agg-1"))
    found = wait_db("b resolves it", fresh_db, lambda f: f[0]["state"] == "resolved", b.log)
    assert [(i["id"], i["root_node"]) for i in found] == [(inc["id"], "agg-1")], "no duplicate"
    assert_clean_history(found, events(fresh_db))


def test_a_paused_leader_comes_back_fenced_and_steps_down(
    pair: tuple[Node, Node], lab: Lab, fresh_db: str
) -> None:
    a, b = pair
    lab.down(*a.ips_behind("agg-1"))
    (first,) = wait_db("a opens an incident at agg-1", fresh_db, lambda f: len(f) == 1, a.log)
    # a is idle (nothing changes): what it has written so far, before it is paused.
    written = a.wait("a's writes settle", lambda: _settled(a), within=20)
    # An engineer's note to a, caught in the middle of its write (the timeline is locked):
    # a is paused holding the lease row in that write's transaction, past its lease.
    with TableLock(fresh_db, "incident_event") as lock:
        status, _ = a.request("POST", f"/api/v1/incidents/{first['id']}",
                              {"note": "from the paused leader"})  # fmt: skip
        assert status == 200
        a.wait("the note is being written", lambda: a.metrics()["outagemon_db_queue"] >= 1)
        os.kill(a.pid(), signal.SIGSTOP)
        paused = time.monotonic()
        lock.release()
    # The database ends a's session idle in its transaction after a third of the lease.
    b.wait("b leads", lambda: b.role() == "leader", within=LEASE + INTERVAL + LEASE / 3 + 5)
    assert time.monotonic() - paused <= LEASE + INTERVAL + LEASE / 3 + 1
    # Meanwhile the network changes: agg-1 is repaired, agg-2 fails.
    lab.up(*a.ips_behind("agg-1"))
    lab.down(*a.ips_behind("agg-2"))
    found = wait_db(
        "b resolves agg-1 and opens agg-2", fresh_db,
        lambda f: {(i["root_node"], i["state"]) for i in f}
        == {("agg-1", "resolved"), ("agg-2", "open")}, b.log)  # fmt: skip
    assert time.monotonic() - paused > LEASE, "paused for longer than the lease"

    os.kill(a.pid(), signal.SIGCONT)
    a.wait("a stands by", lambda: a.role() == "standby", within=10)
    m = a.wait("a counts its fenced writes", lambda: _fenced(a), within=10)
    stepped = {k: v for k, v in m.items() if k.startswith("outagemon_cluster_stepdowns_total")}
    assert sum(stepped.values()) == 1, stepped
    assert m["outagemon_db_writes_total"] == written, "no write of the paused leader landed"
    a.wait("a sees b lead", lambda: a.get("/readyz")[1].get("leader") == "b", within=LEASE)
    status, body = a.request("POST", f"/api/v1/incidents/{found[1]['id']}", {"note": "x"})
    assert status == 409 and "b leads" in body["error"], body
    time.sleep(LEASE)  # a few renewals later: still b's, and the history untouched
    assert b.role() == "leader" and a.role() == "standby"
    assert incidents(fresh_db) == found
    assert first["id"] == found[0]["id"]
    timeline = events(fresh_db)
    assert "note" not in timeline[first["id"]], timeline
    assert_clean_history(found, timeline)


class TableLock:
    """A table locked by another session (psql) until released: writes to it wait."""

    def __init__(self, dsn: str, table: str) -> None:
        if shutil.which("psql") is None:
            pytest.skip("psql is not installed (Debian: postgresql-client)")
        self.psql = subprocess.Popen(["psql", "-X", "-q", dsn], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.send(f"begin;\nlock table {table} in exclusive mode;\n\\echo locked\n")
        assert self.psql.stdout is not None
        assert self.psql.stdout.readline().strip() == "locked"

    def send(self, text: str) -> None:
        assert self.psql.stdin is not None
        self.psql.stdin.write(text)
        self.psql.stdin.flush()

    def release(self) -> None:
        if self.psql.poll() is None:
            self.send("commit;\n\\q\n")
            self.psql.wait(timeout=10)

    def __enter__(self) -> TableLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _fenced(d: Node) -> dict[str, float] | None:
    m = d.metrics()
    fenced = sum(v for k, v in m.items() if k.startswith("outagemon_cluster_fenced_writes_total"))
    return m if fenced >= 1 else None


def _settled(d: Node) -> float | None:
    """The writes done, once nothing is queued and the count held for a second."""
    before = d.metrics()
    time.sleep(1.0)
    after = d.metrics()
    if (
        after["outagemon_db_queue"] == 0
        and after["outagemon_db_writes_total"] == before["outagemon_db_writes_total"]
    ):
        return after["outagemon_db_writes_total"]
    return None
