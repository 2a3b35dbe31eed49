"""Two real `outagemon run` nodes on one real PostgreSQL, in the network lab (as
tests/test_cluster_e2e.py): what the standby answers reaches the leader. Callers split
across the two hosts raise a suspicion as they would on one host; check answers given by
the standby are counted in the incident and in the calls a minute once, never lost or
doubled, also when the leader changes; the blind flag is each leader's own after a
take-over; a deposed leader's alert cursor write is fenced off.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from outagemon import config
from outagemon.cluster.relay import CallRelay, RelayFenced
from outagemon.core import directory, topology
from outagemon.core.directory import Directory
from outagemon.core.health import NodeState, State
from outagemon.db import migrate, store
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.alert_receivers import Receiver
from tests.cluster import INTERVAL, LEASE, Node, fetch, running_pair, socket_dsn

MIN_CALLERS = 5
__all__ = ["socket_dsn"]  # the fixture, used by name


def wait(what: str, condition: Any, within: float, *nodes: Node) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    logs = "\n".join(n.log() for n in nodes)
    raise AssertionError(f"{what}: not within {within} s\n{logs}")


@pytest.fixture
def callers_pair(lab: Lab, socket_dsn: str) -> Iterator[tuple[Node, Node]]:
    """A city whose subscribers have no probed routers (callers are the only sensors
    below the access switches), suspicions from MIN_CALLERS distinct callers."""
    city = citygen.generate(aggregations=2, access_per_aggregation=2,
                            subscribers_per_access=8, entrances=1, cpe_share=0.0)  # fmt: skip
    # The window's count alone (evidence = 0: no sequential test, which may raise on two
    # or three quick callers of a quiet place): "three are not enough, five are" is exact.
    extra = f"[callers]\nmin_callers = {MIN_CALLERS}\nevidence = 0\n"
    with running_pair(lab, socket_dsn, city, extra) as pair:
        yield pair


def _place(d: directory.Directory) -> tuple[str, list[str]]:
    """A serving node with at least MIN_CALLERS subscribers, and their accounts."""
    by_node: dict[str, list[str]] = {}
    for s in d.subscribers:
        by_node.setdefault(s.serving, []).append(s.account)
    return next((n, a) for n, a in sorted(by_node.items()) if len(a) >= MIN_CALLERS)


def raised(dsn: str) -> list[dict[str, Any]]:
    return fetch(dsn, "select id, kind, root_node, state, calls from incident"
                      " where raised_by = 'calls' order by id")  # fmt: skip


def per_minute(dsn: str, iid: str) -> int:
    """The incident's calls a minute, summed (the history's chart)."""
    found = fetch(dsn, f"select sum(calls)::int as n from call_minute where incident_id = {iid}")
    return int(found[0]["n"] or 0)


def test_callers_split_across_leader_and_standby_raise_one_suspicion_and_count_once(
    callers_pair: tuple[Node, Node], fresh_db: str
) -> None:
    """Three callers ask the leader and two the standby: none is enough alone, five are;
    the leader's detector raises the suspicion with all five. Once confirmed, answers that
    name it on either host are counted in the incident and in its calls a minute exactly
    once; and answers the standby gives while the leader is gone are counted by the new
    leader, once."""
    a, b = callers_pair
    node, accounts = _place(a.d)

    def both_ok() -> bool:
        return all(n.check(node=node)["status"] == "ok" for n in (a, b))

    wait("both hosts say ok for the place", both_ok, 20, a, b)
    for account in accounts[:3]:
        assert a.check(account=account)["status"] == "ok"
    time.sleep(3.5)  # the detector looks every second: three callers are not enough
    assert raised(fresh_db) == [], "raised by fewer than min_callers"
    for account in accounts[3:5]:
        assert b.check(account=account)["status"] == "ok"
    (sus,) = wait("the leader raises a suspicion", lambda: raised(fresh_db), 15, a, b)
    assert (sus["kind"], sus["root_node"], sus["state"]) == ("suspected", node, "open"), sus
    listed = a.get(f"/api/v1/incidents/{sus['id']}")[1]
    assert listed["callers"] == MIN_CALLERS, listed
    m = b.metrics()
    assert m['outagemon_cluster_calls_relayed_total{what="records"}'] == 2, m
    assert a.metrics()['outagemon_cluster_calls_taken_total{what="records"}'] == 2

    # Confirmed: an outage with the same id, which answers now name (and count).
    status, body = a.request("POST", f"/api/v1/incidents/{sus['id']}", {"confirm": True})
    assert status == 200, body
    iid = str(sus["id"])
    assert raised(fresh_db)[0]["calls"] == 0, "a suspicion is not named to callers"
    named = 0

    def b_names_it() -> bool:
        nonlocal named
        if b.check(account=accounts[0]).get("incident_id") == iid:
            named += 1
            return True
        return False

    wait("b names the confirmed incident", b_names_it, 10, a, b)
    for account in accounts[:4]:
        assert b.check(account=account)["incident_id"] == iid
    for account in accounts[:3]:
        assert a.check(account=account)["incident_id"] == iid
    want = named + 7
    wait("the leader counts both hosts' answers",
         lambda: raised(fresh_db)[0]["calls"] == want, 10, a, b)  # fmt: skip
    time.sleep(2.5)  # a few relays and saves later: not counted twice
    assert raised(fresh_db)[0]["calls"] == want
    minutes = fetch(
        fresh_db, f"select sum(calls)::int as n from call_minute where incident_id = {iid}"
    )
    assert minutes[0]["n"] == want, minutes
    assert a.get(f"/api/v1/incidents/{iid}")[1]["calls"] == want

    # The leader dies: what b answers meanwhile (as a standby, then taking over) is
    # counted once, by b when it leads.
    assert a.process is not None
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    for account in accounts[:5]:
        assert b.check(account=account)["incident_id"] == iid
    wait("b leads", lambda: b.role() == "leader", LEASE + INTERVAL + 5, b)
    want += 5
    wait("b counts what it answered as a standby",
         lambda: raised(fresh_db)[0]["calls"] == want, 10, b)  # fmt: skip
    time.sleep(2.5)
    assert raised(fresh_db)[0]["calls"] == want
    minutes = fetch(
        fresh_db, f"select sum(calls)::int as n from call_minute where incident_id = {iid}"
    )
    assert minutes[0]["n"] == want, minutes
    left = fetch(fresh_db, "select (select count(*) from cluster_call_count)::int as counts,"
                 " (select count(*) from cluster_call_record)::int as records")  # fmt: skip
    assert left == [{"counts": 0, "records": 0}], left


# Each node's own uplink, as its anchor: an address only it relies on (every 127.x
# answers in the lab), so one node can go blind while the other sees.
ANCHOR = {"a": "127.250.0.1", "b": "127.250.0.2"}


@pytest.fixture
def vantage_pair(lab: Lab, socket_dsn: str) -> Iterator[tuple[Node, Node]]:
    city = citygen.generate(aggregations=2, access_per_aggregation=2,
                            subscribers_per_access=4, entrances=1)  # fmt: skip
    extra = {n: f'[vantage]\nanchors = ["{ip}"]\n' for n, ip in ANCHOR.items()}
    with running_pair(lab, socket_dsn, city, extra) as pair:
        yield pair


def view(dsn: str) -> dict[str, Any]:
    """What replicas read of blindness, and the outage history's periods and runs."""
    blind = fetch(dsn, "select blind from monitor_view")[0]["blind"]
    periods = fetch(dsn, "select reason, started_at, ended_at from blind_period order by id")
    runs = fetch(dsn, "select node, epoch, started_at, seen_at, stopped_at from monitor_run"
                      " order by id")  # fmt: skip
    return {"blind": blind, "periods": periods, "runs": runs}


def test_blindness_is_each_leaders_own_and_the_standby_shows_the_leaders(
    vantage_pair: tuple[Node, Node], lab: Lab, fresh_db: str
) -> None:
    """The leader goes blind (its own anchor silent): the standby's replica says so to
    its callers. The blind leader dies: the new leader, which sees, is not blind, and says
    so to the database at once (the blind flag off, the blind period ended), so the old
    one, restarted as a standby with its anchor still silent, tells callers what the
    leader sees (its own metric says it is blind). The seeing leader stops cleanly: the
    blind node takes over blind at once. And monitor_run holds one row per leader's term
    (node, epoch): no gap for a standby's start, one for the time nobody decided."""
    a, b = vantage_pair
    account = a.account_under("agg-1")
    assert a.check(account=account)["status"] == "ok"
    wait("b says ok", lambda: b.check(account=account)["status"] == "ok", 10, a, b)
    assert view(fresh_db)["runs"][0]["node"] == "a" and len(view(fresh_db)["runs"]) == 1
    assert view(fresh_db)["periods"] == [], "b's start as a standby is no gap"

    lab.down(ANCHOR["a"])
    wait("a is blind", lambda: a.check(account=account)["status"] == "unknown", 20, a, b)
    wait("b's replica shows the leader's blindness",
         lambda: b.check(account=account)["status"] == "unknown", 5, a, b)  # fmt: skip
    assert b.get("/readyz")[0] == 503
    assert b.metrics()["outagemon_blind"] == 0, "b's own view: it sees"
    assert [p["reason"] for p in view(fresh_db)["periods"]] == ["blind"]

    assert a.process is not None
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    wait("b leads", lambda: b.role() == "leader", LEASE + INTERVAL + 5, b)
    wait("b, seeing, answers ok", lambda: b.check(account=account)["status"] == "ok", 5, b)
    v = wait("b writes that it sees", lambda: (v := view(fresh_db)) and not v["blind"] and v,
             5, b)  # fmt: skip
    assert all(p["ended_at"] is not None for p in v["periods"]), v["periods"]
    assert b.metrics()["outagemon_blind"] == 0

    a.start()  # a standby again, its own anchor still silent
    a.wait("a answers from its replica", lambda: a.answering_from() == "replica", within=20)
    assert a.role() == "standby"
    assert a.check(account=account)["status"] == "ok", "a standby says what the leader sees"
    assert a.get("/readyz") == (200, {"status": "ready", "role": "standby", "leader": "b"})
    a.wait("a's own view: blind", lambda: a.metrics()["outagemon_blind"] == 1, within=10)

    assert b.stop() == 0  # gives the lease up: a takes over at its next try
    a.wait("a leads", lambda: a.role() == "leader", within=LEASE + 5)
    wait("a, blind, answers unknown at once",
         lambda: a.check(account=account)["status"] == "unknown", 3, a)  # fmt: skip
    v = wait("a writes that it is blind", lambda: (v := view(fresh_db)) and v["blind"] and v,
             5, a)  # fmt: skip
    assert [p["ended_at"] is None for p in v["periods"] if p["reason"] == "blind"][-1:] == [True]
    runs = v["runs"]
    assert [(r["node"], r["epoch"]) for r in runs] == [("a", 1), ("b", 2), ("a", 3)], runs
    assert runs[1]["stopped_at"] is not None, "b's clean stop ends its term"
    for before, after in itertools.pairwise(runs):
        assert before["seen_at"] <= after["started_at"], runs
    stopped = [p for p in v["periods"] if p["reason"] == "stopped"]
    # Unverified: from a's last sign of life to b's term (a was killed), and from b's
    # stop to a's term; never a standby's start.
    assert len(stopped) <= 2 and stopped, v["periods"]
    assert stopped[0]["started_at"] == runs[0]["seen_at"]
    assert stopped[0]["ended_at"] == runs[1]["started_at"]
    assert (stopped[0]["ended_at"] - stopped[0]["started_at"]).total_seconds() <= 2 * LEASE + 3


class PausingReceiver(Receiver):
    """A webhook receiver that pauses a node (SIGSTOP) when the first notification
    arrives, before answering it: the node is caught in the middle of a delivery (the
    answer waits in its socket until it runs again)."""

    def __init__(self, lab: Lab) -> None:
        self.victim: int | None = None
        self.paused_at: float | None = None
        super().__init__(lab)

    async def _handle(self, request: web.Request) -> web.Response:
        if self.victim is not None and self.paused_at is None:
            os.kill(self.victim, signal.SIGSTOP)
            self.paused_at = time.monotonic()
        return await super()._handle(request)


def cursor(dsn: str) -> list[tuple[int, Any]]:
    """Each target's cursor, and when it was last written."""
    return [(int(r["last_id"]), r["updated_at"])
            for r in fetch(dsn, "select last_id, updated_at from alert_target")]  # fmt: skip


def test_a_leader_deposed_during_a_delivery_does_not_move_the_new_leaders_cursor(
    lab: Lab, socket_dsn: str, fresh_db: str
) -> None:
    """The leader is paused while a webhook is being told of an incident; the standby
    takes over, tells it again (same key) and writes its cursor; the old leader runs
    again, its delivery ends, and its cursor write is fenced off: dropped, counted, and
    the new leader's cursor stays as the new leader wrote it."""
    hook = PausingReceiver(lab)
    city = citygen.generate(aggregations=2, access_per_aggregation=2,
                            subscribers_per_access=4, entrances=1)  # fmt: skip
    extra = (f'[notify]\nexternal_url = "https://noc.example"\n[[notify.webhooks]]\n'
             f'url = "{hook.url}/hook"\nsecret = "{"s" * 32}"\n')  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.callback(hook.close)  # after the pair's stop
        a, b = stack.enter_context(running_pair(lab, socket_dsn, city, extra, warm_up=3.0))
        hook.victim = a.pid()
        lab.down(*a.ips_behind("agg-1"))
        wait("a's delivery begins", lambda: hook.paused_at is not None, 40, a)
        assert hook.paused_at is not None
        b.wait("b leads", lambda: b.role() == "leader", within=LEASE + INTERVAL + LEASE / 3 + 4)
        # b tells the receiver again (same key) and writes its cursor past the opening.
        ours = wait("b's cursor is past the opening", lambda: (c := cursor(fresh_db))
                    and c[0][0] >= 1 and c, 5, b)  # fmt: skip
        # Within the 10 s a request may take: a reads its answer and writes its cursor.
        assert time.monotonic() - hook.paused_at < 9.5, "paused too long for the test"
        os.kill(a.pid(), signal.SIGCONT)
        a.wait("a stands by", lambda: a.role() == "standby", within=10)
        time.sleep(2.0)  # its delivery has ended: its cursor write came and went
        assert cursor(fresh_db) == ours, "a wrote its cursor after b took over"
        m = a.metrics()
        target = f'target="webhook 1 (127.0.0.1:{hook.port})"'
        assert m[f"outagemon_alerts_cursor_fenced_total{{{target}}}"] == 1, m
        assert m['outagemon_cluster_fenced_writes_total{how="refused"}'] >= 1, m
        opened = [r for r in hook.received("/hook") if r.json()["outagemon"]["event"] == "opened"]
        keys = {r.json()["outagemon"]["idempotency_key"] for r in opened}
        assert len(opened) == 2 and len(keys) == 1, "told again by b, with the same key"


# -- the relay's two sides on a real PostgreSQL, without the lab ----------------------------


async def test_the_relay_takes_each_count_once_and_only_under_a_holding_epoch(
    fresh_db: str,
) -> None:
    """A standby's counts and records wait in the database; a take under an epoch that
    does not hold takes nothing; the leader's take adds the counts to the incident and its
    calls a minute once, and leaves out its own records (its detector had them)."""
    dsn = fresh_db
    await migrate.migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, command_timeout=5.0)
    assert pool is not None
    try:
        await pool.execute("insert into node (id, kind) values ('sw-1', 'switch')")
        await pool.execute("insert into incident (id, root_node, kind, opened_at, state)"
                           " values (7, 'sw-1', 'outage', now(), 'open')")  # fmt: skip
        a = CallRelay("a", Registry())
        b = CallRelay("b", Registry())
        async with pool.acquire() as conn:
            epoch = await store.take_lease(conn, "a", 10.0)
            salt = await store.call_salt(conn)
        assert epoch is not None
        b.count({7: 3})
        b.record("seg-1", "b-1", "k1", "ivr", "ok", "")
        a.record("seg-1", "b-1", "k0", "ivr", "ok", "")  # a's own, as a standby once
        await b.send(pool)
        await a.send(pool)
        assert (b.counts, b.records) == ({}, [])
        # Taken under an epoch that no longer holds: nothing is taken, all waits.
        with pytest.raises(RelayFenced):
            await a.take(pool, epoch + 1, "a")
        with pytest.raises(RelayFenced):
            await b.take(pool, epoch, "b")
        assert await pool.fetchval("select count(*) from cluster_call_count") == 1
        assert await pool.fetchval("select count(*) from cluster_call_record") == 2
        taken = await a.take(pool, epoch, "a")
        assert taken.counts == {7: 3}
        assert [rec for _, rec in taken.records] == [("seg-1", "b-1", "k1", "ivr", "ok", "")]
        assert all(0 <= age < 5 for age, _ in taken.records)
        assert await pool.fetchval("select calls from incident where id = 7") == 3
        assert await pool.fetchval("select sum(calls) from call_minute where incident_id = 7") == 3
        again = await a.take(pool, epoch, "a")  # taken once: nothing left
        assert (again.counts, again.records) == ({}, [])
        assert await pool.fetchval("select calls from incident where id = 7") == 3
        async with pool.acquire() as conn:
            assert len(salt) == 16 and salt == await store.call_salt(conn)
    finally:
        await pool.close()


# -- a new leader's own view, as it is queued (no database needed) ---------------------------

OWN_VIEW_TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: sw-1, kind: access, ip: 127.0.0.4, parents: [core]}
  - {id: sw-2, kind: access, ip: 127.0.0.5, parents: [core]}
  - {id: sw-3, kind: access, ip: 127.0.0.6, parents: [core]}
"""


def test_a_new_leader_writes_the_states_it_sees_that_differ_and_its_blindness() -> None:
    """What a node sees itself replaces what the previous leader wrote: states that
    differ (never a recheck, which node_state cannot hold: it is written once decided),
    whether it is blind, and the start or end of a blind period; nothing it agrees with."""
    topo = topology.parse_text(OWN_VIEW_TOPOLOGY, Path("t.yaml"))
    d = Directory(topo, [])
    cfg = config.parse("", Path("outagemon.toml"))
    writer = Writer(None, 1000, Registry())
    monitor = Monitor(cfg, d, Registry(), writer)
    monitor.journal.clustered = True
    monitor.journal.epoch = 5
    states = monitor.correlator.states
    states["core"] = NodeState(state=State.UP, changed_at=1.0)
    states["sw-1"] = NodeState(state=State.UP, changed_at=1.0)  # the previous leader: down
    states["sw-2"] = NodeState(state=State.RECHECK, changed_at=1.0)
    states["sw-3"] = NodeState(state=State.DOWN, changed_at=1.0)
    monitor.correlator.blind = True
    monitor._own_view({"core": "up", "sw-1": "down", "sw-2": "down", "sw-3": "up"})
    queued = {name: values for name, (_, values, _, _) in writer._latest.items()}
    # The states as the write reads them (each batch's rows, made when it is written).
    states_queued = {node: state for rows, _, _ in queued["node_states"]
                     for node, state, _, _ in rows()}  # fmt: skip
    assert states_queued == {"sw-1": "up", "sw-3": "down"}
    assert queued["blind"] is True
    assert len(writer) == 3  # the states, the flag, and the blind period's start
