"""Two real `outagemon run` nodes on one real PostgreSQL, in the network lab (as
tests/test_cluster_e2e.py): what the standby answers reaches the leader. Callers split
across the two hosts raise a suspicion as they would on one host; check answers given by
the standby are counted in the incident and in the calls a minute once, never lost or
doubled, also when the leader changes; the blind flag is each leader's own after a
take-over; a deposed leader's alert cursor write is fenced off.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir
from tests.test_cluster_e2e import CONFIG, INTERVAL, LEASE, Node, _fetch, socket_dsn
from tests.test_lab_e2e import WRITE

MIN_CALLERS = 5
__all__ = ["socket_dsn"]  # the fixture, used by name


def make_pair(lab: Lab, dsn: str, city: citygen.City, extra: str = "",
              warm_up: float = 6.0) -> tuple[Node, Node]:  # fmt: skip
    """Node a (started first: it leads) and node b (stands by, answering from its
    replica), with `extra` config sections."""
    nodes = []
    for name in ("a", "b"):
        state = short_tmp_dir()
        topo, subs = city.write(state)
        port = free_port()
        text = CONFIG.format(state=state, dsn=dsn, port=port, interval=INTERVAL, node=name,
                             lease=LEASE, write=WRITE)  # fmt: skip
        # Before [[auth.tokens]]: an array of tables ends the file's last section.
        (state / "outagemon.toml").write_text(text.replace("[[auth.tokens]]",
                                                           extra + "[[auth.tokens]]"))  # fmt: skip
        nodes.append(Node(lab, state, port, city, directory.load(topo, subs).directory))
    a, b = nodes
    a.start()
    a.wait("a leads", lambda: a.role() == "leader", within=20)
    b.start()
    b.wait("b answers from its replica", lambda: b.answering_from() == "replica", within=20)
    time.sleep(warm_up)
    return a, b


def stop_pair(nodes: tuple[Node, ...]) -> None:
    for n in nodes:
        if n.process is not None:
            if n.process.poll() is None:
                n.process.send_signal(signal.SIGCONT)
                n.process.kill()
            n.process.wait()
        shutil.rmtree(n.state, ignore_errors=True)


def fetch(dsn: str, sql: str) -> list[dict[str, Any]]:
    return asyncio.run(_fetch(dsn, sql))


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
    extra = f"[callers]\nmin_callers = {MIN_CALLERS}\n"
    pair: tuple[Node, ...] = ()
    try:
        pair = make_pair(lab, socket_dsn, city, extra)
        yield pair[0], pair[1]
    finally:
        stop_pair(pair)


def _place(d: directory.Directory) -> tuple[str, list[str]]:
    """A serving node with at least MIN_CALLERS subscribers, and their accounts."""
    by_node: dict[str, list[str]] = {}
    for s in d.subscribers:
        by_node.setdefault(s.serving, []).append(s.account)
    return next((n, a) for n, a in sorted(by_node.items()) if len(a) >= MIN_CALLERS)


def raised(dsn: str) -> list[dict[str, Any]]:
    return fetch(dsn, "select id, kind, root_node, state, calls from incident"
                      " where raised_by = 'calls' order by id")  # fmt: skip


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
    minutes = fetch(fresh_db, f"select sum(calls)::int as n from call_minute where incident_id = {iid}")
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
    minutes = fetch(fresh_db, f"select sum(calls)::int as n from call_minute where incident_id = {iid}")
    assert minutes[0]["n"] == want, minutes
    left = fetch(fresh_db, "select (select count(*) from cluster_call_count)::int as counts,"
                           " (select count(*) from cluster_call_record)::int as records")  # fmt: skip
    assert left == [{"counts": 0, "records": 0}], left
