"""Notifications: the outbox is written with the incident change it tells of, and the
sender delivers it to real receivers (aiohttp servers in the test) and to a real
Alertmanager, retrying with backoff, never blocking one target on another."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from outagemon import clock, config
from outagemon.alerting import payload, sender, signing
from outagemon.alerting.sender import Sender
from outagemon.config import NotifyConfig, Webhook
from outagemon.core import topology as topology_mod
from outagemon.core.directory import Directory
from outagemon.core.incidents import Event, EventKind, Incident, Kind
from outagemon.db import journal as journal_mod
from outagemon.db import migrate
from outagemon.db.journal import Journal
from outagemon.db.writer import Writer
from outagemon.errors import ConfigError, TopologyError
from outagemon.metrics import Registry
from tests.alert_receivers import Receiver, alertmanagers, am_notifications

SECRET = "test-secret-0123456789abcdef"
TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.9.1, labels: {region: city}}
  - {id: agg-n, kind: aggregation, ip: 127.0.9.2, parents: [core], name: "North",
     labels: {district: north}}
  - {id: agg-s, kind: aggregation, ip: 127.0.9.3, parents: [core], labels: {district: south}}
  - {id: sw-1, kind: access, ip: 127.0.9.4, parents: [agg-n]}
  - {id: sw-2, kind: access, ip: 127.0.9.5, parents: [agg-s]}
"""


def topo() -> topology_mod.Topology:
    return topology_mod.parse_text(TOPOLOGY, Path("topology.yaml"))


# -- configuration -----------------------------------------------------------------------


def test_check_config_names_bad_urls_missing_secrets_and_unknown_events() -> None:
    text = """
[notify]
alertmanagers = ["http://127.0.0.1:9093", "127.0.0.1:9093"]
external_url = "noc.example"
[[notify.webhooks]]
url = "https://user:hunter2hunter2@hooks.example/x"
secret = "a-secret-that-must-not-show"
[[notify.webhooks]]
url = "https://hooks.example/y"
events = ["opened", "exploded"]
"""
    with pytest.raises(ConfigError) as e:
        config.parse(text, Path("/etc/outagemon/outagemon.toml"))
    problems = "\n".join(e.value.problems)
    assert "alertmanagers must be a list of Alertmanager base URLs ('127.0.0.1:9093'" in problems
    assert "external_url must be an http:// or https:// URL" in problems
    assert "number 1: url must not hold a user or password" in problems
    assert "number 2: secret is required" in problems
    assert "number 2: events must be a list of events ('exploded' must be one of" in problems
    assert "hunter2" not in problems and "a-secret-that-must-not-show" not in problems


def test_a_good_notify_section_is_read_and_its_secret_never_printed() -> None:
    cfg = config.parse(
        '[notify]\nalertmanagers = ["http://127.0.0.1:9093/"]\nlabels = ["district"]\n'
        '[[notify.webhooks]]\nurl = "https://hooks.example/x"\nsecret = "s3cr3t-s3cr3t"\n'
        'events = ["opened", "resolved"]\n',
        Path("/etc/outagemon/outagemon.toml"),
    )
    assert cfg.notify.alertmanagers == ("http://127.0.0.1:9093",)
    assert cfg.notify.webhooks[0].events == ("opened", "resolved")
    assert "s3cr3t" not in repr(cfg)


def test_a_bad_topology_label_is_named_with_its_line() -> None:
    bad = "nodes:\n  - {id: a, kind: core, labels: {1st: x, ok: [1]}}\n"
    with pytest.raises(TopologyError) as e:
        topology_mod.parse_text(bad, Path("t.yaml"))
    text = "\n".join(e.value.problems)
    assert "line 2" in text and "label name '1st'" in text and "label ok must be a text" in text


# -- payloads and signatures -------------------------------------------------------------


def incident(**kw: Any) -> dict[str, Any]:
    base = {
        "id": 7,
        "state": "open",
        "kind": "outage",
        "root_node": "sw-1",
        "inferred": False,
        "opened_at": "2026-11-30T05:00:00+00:00",
        "resolved_at": None,
        "eta": None,
        "merged_into": None,
        "subscribers": 120,
        "calls": 3,
        "nodes": 4,
        "note": "",
    }
    return {**base, **kw}


def test_an_alert_carries_identifying_labels_inherited_district_and_severity() -> None:
    cfg = NotifyConfig(labels=("district", "region"), external_url="https://noc.example",
                       critical_subscribers=500, major_subscribers=50)  # fmt: skip
    a = payload.alert(incident(eta="2026-11-30T07:30:00+00:00"), topo(), cfg, time.time())
    assert a["labels"] == {
        "alertname": "OutagemonIncident",
        "incident_id": "7",
        "kind": "outage",
        "severity": "major",
        "root_node": "sw-1",
        "node_kind": "access",
        "district": "north",
        "region": "city",
    }
    assert a["annotations"]["eta"] == "2026-11-30T07:30:00.000Z"
    assert "ETA 07:30 UTC" in a["annotations"]["summary"]
    assert a["generatorURL"] == "https://noc.example/incidents/7"
    works = payload.alert(incident(kind="maintenance", subscribers=5000), topo(), cfg, 0)
    assert works["labels"]["severity"] == "info"
    suspected = payload.alert(incident(kind="suspected", subscribers=900), topo(), cfg, 0)
    assert suspected["labels"]["severity"] == "info"
    assert suspected["labels"]["kind"] == "suspected"
    big = payload.alert(incident(subscribers=500), topo(), cfg, 0)
    assert big["labels"]["severity"] == "critical"
    absorbed = payload.alert(incident(state="merged", merged_into=3,
                                      resolved_at="2026-11-30T06:00:00+00:00"),
                             topo(), cfg, time.time())  # fmt: skip
    assert absorbed["endsAt"] == "2026-11-30T06:00:00.000Z"
    assert "absorbed into incident 3" in absorbed["annotations"]["summary"]
    ended = payload.alert(incident(state="resolved", resolved_at="2026-11-30T06:00:00+00:00"),
                          topo(), cfg, time.time())  # fmt: skip
    assert ended["endsAt"] == "2026-11-30T06:00:00.000Z"


def test_a_suspected_incident_reads_as_a_suspicion_awaiting_an_engineer() -> None:
    raised = {"kind": "suspected", "raised_by": "calls", "callers": 4, "first_call_ago": 370.2,
              "buildings": ["пр-т Мира, д. 10", "|пер|пушкина|1|||"]}  # fmt: skip
    sus = incident(kind="suspected", inferred=True, raised_by="calls", subscribers=1,
                   raised=raised)  # fmt: skip
    notes = payload.annotation_set(sus, topo())
    summary, description = notes["summary"], notes["description"]
    assert summary == ("Suspected outage at sw-1: 4 callers from пр-т Мира, д. 10; "
                       "пер. Пушкина, д. 1 in 7 minutes (not confirmed)"), summary  # fmt: skip
    assert "raised by calls" in description and "awaits an engineer" in description
    assert "inferred from its children" not in description
    assert "Outage at" not in summary and "cut off" not in summary
    # Once an engineer confirms it: an outage raised by calls, still no "children".
    confirmed = payload.annotation_set({**sus, "kind": "outage"}, topo())
    assert confirmed["summary"] == "Outage at sw-1: 1 subscriber cut off"
    assert "confirmed by an engineer" in confirmed["description"]
    assert "inferred from its children" not in confirmed["description"]
    # Said in the singular for one, in the plural for others.
    one = payload.annotation_set(incident(subscribers=1, calls=1), topo())
    assert "1 subscriber cut off" in one["summary"]
    assert ", 1 subscriber, 1 call to the phone menu." in one["description"]
    assert "120 subscribers cut off" in payload.annotation_set(incident(), topo())["summary"]
    # An old outbox row (no `raised`): still said as a suspicion.
    bare = payload.annotation_set(incident(kind="suspected", inferred=True), topo())
    assert bare["summary"] == "Suspected outage at sw-1 (not confirmed)"


def test_a_signature_verifies_and_a_changed_body_or_an_old_timestamp_is_refused() -> None:
    body = b'{"version":"4"}'
    now = time.time()
    h = signing.headers(SECRET, int(now), body, "7:1")
    # What a receiver computes, written from docs/alerting.md, not with our module.
    mac = hmac.new(SECRET.encode(), h["X-Outagemon-Timestamp"].encode() + b"." + body,
                   hashlib.sha256).hexdigest()  # fmt: skip
    assert h["X-Outagemon-Signature"] == f"sha256={mac}"
    assert signing.verify(SECRET, h["X-Outagemon-Timestamp"], h["X-Outagemon-Signature"],
                          body, now)  # fmt: skip
    assert not signing.verify(SECRET, h["X-Outagemon-Timestamp"], h["X-Outagemon-Signature"],
                              body + b" ", now)  # fmt: skip
    assert not signing.verify(SECRET, h["X-Outagemon-Timestamp"], h["X-Outagemon-Signature"],
                              body, now + 600)  # fmt: skip


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    waits = [sender.backoff(n, rng) for n in range(20)]
    for n, w in enumerate(waits[:8]):
        assert 0.25 * 2**n <= w <= 0.5 * 2**n
    assert max(waits) <= sender.BACKOFF_MAX and waits[-1] >= sender.BACKOFF_MAX / 2


# -- the outbox and the sender against a real PostgreSQL -----------------------------------


@dataclass
class World:
    pool: asyncpg.Pool
    writer: Writer
    journal: Journal
    metrics: Registry
    tasks: list[asyncio.Task[None]]
    topology: topology_mod.Topology
    blind: bool = False

    async def start(self, cfg: NotifyConfig, may_send: Callable[[], bool] = lambda: True) -> Sender:
        """A sender, once each of its targets has its place in the outbox (a target is
        told of what happens after it first starts, not of the past)."""
        s = Sender(cfg, lambda: self.pool, lambda: self.topology, self.metrics,
                   blind=lambda: self.blind, may_send=may_send)  # fmt: skip
        self.tasks.append(asyncio.create_task(s.run()))
        deadline = time.monotonic() + 10
        while await self.pool.fetchval("select count(*) from alert_target") < len(s.targets):
            assert time.monotonic() < deadline, "the targets never started"
            await asyncio.sleep(0.05)
        return s

    def open(self, iid: int, root: str, subscribers: int = 40) -> Incident:
        inc = Incident(iid, root, Kind.OUTAGE, False, clock.now(), [root])
        self.journal.event(Event(EventKind.OPENED, clock.now(), iid, root), inc, subscribers)
        return inc

    def resolve(self, inc: Incident) -> None:
        self.journal.event(Event(EventKind.RESOLVED, clock.now(), inc.id, inc.root), None, 0)

    def metric(self, name: str, target: str) -> float:
        return self.metrics.value(name, target=target)

    async def rows(self) -> list[asyncpg.Record]:
        return list(await self.pool.fetch("select * from alert_outbox order by id"))


@pytest.fixture
async def world(fresh_db: str) -> AsyncIterator[World]:
    await migrate.migrate(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=8)
    assert pool is not None
    metrics = Registry()
    writer = Writer(pool, 10_000, metrics)
    journal = Journal(writer)
    t = topo()
    journal.inventory(Directory(t, []))
    w = World(pool, writer, journal, metrics, [asyncio.create_task(writer.run())], t)
    yield w
    for task in w.tasks:
        task.cancel()
    await asyncio.gather(*w.tasks, return_exceptions=True)
    await pool.close()


async def until(what: str, condition: Callable[[], Any], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s")


async def test_each_change_writes_its_outbox_row_in_its_own_transaction_once(world: World) -> None:
    inc = world.open(1, "agg-n")
    world.journal.estimate(1, clock.now() + 3600, "crew on the way", "noc", clock.now())
    world.resolve(inc)
    # A root the database does not know: the incident write is refused, and with it the row.
    world.journal.event(
        Event(EventKind.OPENED, clock.now(), 2, "nowhere"),
        Incident(2, "nowhere", Kind.OUTAGE, False, clock.now(), ["nowhere"]),
        1,
    )
    assert await world.writer.drain(10)
    rows = await world.rows()
    assert [(r["incident_id"], r["revision"], r["event"]) for r in rows] == [
        (1, 1, "opened"), (1, 2, "eta"), (1, 3, "note"), (1, 4, "resolved")]  # fmt: skip
    note_row = json.loads(rows[2]["incident"])
    assert note_row["note"] == "crew on the way" and note_row["eta"] is not None
    assert json.loads(rows[3]["incident"])["state"] == "resolved"
    # The same writes again (a replay of the journal file after a crash) add nothing.
    records = [
        ("opened", {"at": rows[0]["at"].timestamp(), "incident": 1, "root": "agg-n",
                    "nodes": [], "detail": {}}),
        ("resolved", {"at": rows[3]["at"].timestamp(), "incident": 1, "root": "agg-n",
                      "nodes": [], "detail": {}}),
    ]  # fmt: skip
    for kind, record in records:
        world.writer.submit(kind, journal_mod.op_of(kind, record))
    assert await world.writer.drain(10)
    assert len(await world.rows()) == 4


def hook(receiver: Receiver, events: tuple[str, ...] = config.WEBHOOK_EVENTS) -> Webhook:
    return Webhook(url=receiver.url + "/hook", secret=SECRET, events=events)


def verified(receiver: Receiver) -> list[dict[str, Any]]:
    """The bodies the receiver got, each checked as docs/alerting.md tells a receiver to."""
    bodies = []
    for r in receiver.received("/hook"):
        stamp = r.headers["X-Outagemon-Timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + r.body, hashlib.sha256)
        assert hmac.compare_digest(r.headers["X-Outagemon-Signature"], "sha256=" + mac.hexdigest())
        assert abs(time.time() - int(stamp)) < 300
        body = r.json()
        assert r.headers["Idempotency-Key"] == body["outagemon"]["idempotency_key"]
        bodies.append(body)
    return bodies


def once_in_order(bodies: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Per incident, the events in the order first received; a repeat must be the same
    key (at-least-once) and never come back out of order."""
    seen: dict[str, dict[str, Any]] = {}
    order: dict[int, list[tuple[int, str]]] = {}
    for b in bodies:
        o = b["outagemon"]
        if o["idempotency_key"] in seen:
            assert seen[o["idempotency_key"]]["outagemon"]["event"] == o["event"]
            continue
        seen[o["idempotency_key"]] = b
        order.setdefault(o["incident_id"], []).append((o["revision"], o["event"]))
    for revisions in order.values():
        assert [r for r, _ in revisions] == sorted(r for r, _ in revisions)
    return {iid: [e for _, e in revs] for iid, revs in order.items()}


async def test_a_receiver_down_for_a_while_gets_everything_once_in_order_and_a_500_blocks_nobody(
    world: World,
) -> None:
    good, late, broken = Receiver(), Receiver(), Receiver(status=500)
    late.stop()  # down: connections refused
    try:
        cfg = NotifyConfig(webhooks=(hook(good), hook(late), hook(broken)), resend_interval=60)
        await world.start(cfg)
        a = world.open(1, "agg-n")
        b = world.open(2, "agg-s")
        world.journal.estimate(1, clock.now() + 1800, "", "noc", clock.now())
        world.resolve(b)
        world.resolve(a)
        expected = {1: ["opened", "eta", "resolved"], 2: ["opened", "resolved"]}
        await until("the good receiver has all", lambda: len(good.received()) >= 5)
        assert once_in_order(verified(good)) == expected
        names = [t.name for t in sender.targets_of(cfg)]
        await until("the dead one is retried, and the 500 one too", lambda: world.metric(
            "outagemon_alerts_failed_total", names[1]) >= 4 and world.metric(
            "outagemon_alerts_failed_total", names[2]) >= 4, 30)  # fmt: skip
        assert world.metric("outagemon_alerts_queued", names[1]) >= 1
        late.start()
        await until("the late receiver catches up", lambda: len(late.received()) >= 5, 30)
        assert once_in_order(verified(late)) == expected
        # The receiver that always answers 500: retried with growing waits, counted.
        failed = world.metric("outagemon_alerts_failed_total", names[2])
        assert failed >= 4 and world.metric("outagemon_alerts_delivered_total", names[2]) == 0
        times = [r.at for r in broken.received()]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Each wait at least the lower bound of its backoff (load only makes them longer).
        assert len(gaps) >= 3, gaps
        for k, gap in enumerate(gaps):
            assert gap >= 0.95 * sender.BACKOFF_FIRST * 2 ** min(k, 9) / 2, gaps
        assert {r.json()["outagemon"]["idempotency_key"] for r in broken.received()} == {"1:1"}
        assert world.metric("outagemon_alerts_delivered_total", names[0]) == 5
    finally:
        for r in (good, late, broken):
            r.close()


async def test_a_notification_older_than_give_up_after_is_dropped_and_counted(
    world: World,
) -> None:
    broken = Receiver(status=500)
    try:
        cfg = NotifyConfig(webhooks=(hook(broken, ("opened",)),), give_up_after=1.5)
        (target,) = sender.targets_of(cfg)
        await world.start(cfg)
        world.open(1, "agg-n")
        await until("given up", lambda: world.metric(
            "outagemon_alerts_given_up_total", target.name) == 1, 15)  # fmt: skip
        broken.status = 200
        world.open(2, "agg-s")
        await until("the next one goes", lambda: world.metric(
            "outagemon_alerts_delivered_total", target.name) == 1)  # fmt: skip
        assert broken.received()[-1].json()["outagemon"]["idempotency_key"] == "2:1"
    finally:
        broken.close()


async def test_nothing_is_sent_while_blind_or_by_a_follower(world: World) -> None:
    good = Receiver()
    leader = True
    try:
        await world.start(NotifyConfig(webhooks=(hook(good),)), may_send=lambda: leader)
        world.blind = True
        world.open(1, "agg-n")
        assert await world.writer.drain(10)
        await asyncio.sleep(1.0)
        assert good.received() == [], "nothing while blind"
        leader = False
        world.blind = False
        await asyncio.sleep(1.0)
        assert good.received() == [], "a follower sends nothing"
        leader = True
        await until("the leader sends", good.received)
    finally:
        good.close()


async def test_alertmanager_gets_one_alert_per_incident_then_its_eta_then_its_end(
    world: World,
) -> None:
    receiver = Receiver()
    try:
        with alertmanagers(receiver) as (am,):
            cfg = NotifyConfig(alertmanagers=(am.url,), labels=("district",), resend_interval=1.0,
                               external_url="https://noc.example")  # fmt: skip
            await world.start(cfg)
            inc = world.open(5, "agg-n", subscribers=60)
            first = await until("AM notifies", lambda: am_notifications(receiver), 30)
            alert = first[0]["alerts"][0]
            assert first[0]["status"] == "firing"
            assert alert["labels"] == {"alertname": "OutagemonIncident", "incident_id": "5",
                                       "kind": "outage", "severity": "major",
                                       "root_node": "agg-n", "node_kind": "aggregation",
                                       "district": "north"}  # fmt: skip
            assert alert["generatorURL"] == "https://noc.example/incidents/5"
            eta = clock.now() + 7200
            world.journal.estimate(5, eta, "fibre cut, crew on site", "noc", clock.now())
            await until("the ETA in a later notification", lambda: [
                n for n in am_notifications(receiver)
                if n["alerts"][0]["annotations"].get("eta")
                and "crew on site" in n["alerts"][0]["annotations"]["note"]], 30)  # fmt: skip
            world.resolve(inc)
            await until("resolved", lambda: [n for n in am_notifications(receiver)
                                             if n["status"] == "resolved"], 30)  # fmt: skip
            ids = {a["labels"]["incident_id"] for n in am_notifications(receiver)
                   for a in n["alerts"]}  # fmt: skip
            assert ids == {"5"}
    finally:
        receiver.close()


async def test_two_alertmanagers_in_a_cluster_each_get_every_alert(world: World) -> None:
    receiver = Receiver()
    try:
        with alertmanagers(receiver, n=2) as ams:
            await until(
                "peers",
                lambda: all(len(am.get("/api/v2/status")["cluster"]["peers"]) == 2 for am in ams),
                30,
            )
            cfg = NotifyConfig(alertmanagers=tuple(am.url for am in ams), resend_interval=1.0)
            await world.start(cfg)
            world.open(1, "agg-n")
            world.open(2, "agg-s")

            def ids(am: Any) -> set[str]:
                return {a["labels"]["incident_id"] for a in am.alerts()}

            for am in ams:
                await until("every alert", lambda am=am: ids(am) == {"1", "2"}, 30)  # type: ignore[misc]
            ams[0].close()  # one stops: the other still gets every new alert
            world.open(3, "sw-2")
            await until("the survivor has it", lambda: ids(ams[1]) == {"1", "2", "3"}, 30)
            await until("notified", lambda: {a["labels"]["incident_id"] for n in
                                             am_notifications(receiver) for a in n["alerts"]}
                        >= {"1", "2", "3"}, 30)  # fmt: skip
    finally:
        receiver.close()


def test_the_alertmanager_config_in_the_docs_is_valid(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "docs" / "alerting.md").read_text()
    (am,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("route:")]
    smtp = "global:\n  smtp_smarthost: 'mail.example.net:25'\n  smtp_from: 'om@example.net'\n"
    (tmp_path / "am.yml").write_text(smtp + am)
    done = subprocess.run(["amtool", "check-config", str(tmp_path / "am.yml")],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_lines_in_the_readme_connect_alertmanager_and_a_webhook(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Alerts") :]
    (block,) = re.findall(r"```toml\n(.*?)```", section, re.S)[:1]
    assert "[[notify.webhooks]]" in block and "webhooks = [" not in block
    (tmp_path / "webhook-secret").write_text("a-webhook-secret-of-some-length\n")
    cfg = config.parse(block, tmp_path / "outagemon.toml")
    (am, hook) = sender.targets_of(cfg.notify)
    assert am.kind == "alertmanager" and hook.kind == "webhook"
    assert hook.secret == "a-webhook-secret-of-some-length"
    assert cfg.notify.external_url == "https://outagemon.noc.example"


def test_check_config_counts_the_targets_and_warns_of_a_label_no_node_has(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).parent.parent / "config" / "topology.yaml", tmp_path)
    (tmp_path / "outagemon.toml").write_text(
        '[notify]\nalertmanagers = ["http://127.0.0.1:9093"]\nlabels = ["district", "borough"]\n'
        f'[[notify.webhooks]]\nurl = "http://127.0.0.1:9/h"\nsecret = "{SECRET}"\n'
    )
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c",
                           str(tmp_path / "outagemon.toml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "alerts: 1 Alertmanager(s), 1 webhook(s)" in done.stdout
    assert "labels names 'borough', which no node" in done.stderr
    assert "'district'" not in done.stderr and SECRET not in done.stdout + done.stderr


async def test_an_alert_whose_labels_change_ends_the_one_under_the_old_labels() -> None:
    receiver = Receiver()
    try:
        cfg = NotifyConfig(alertmanagers=(receiver.url,), major_subscribers=50)
        s = Sender(cfg, lambda: None, topo, Registry())
        (t,) = s.targets
        async with aiohttp.ClientSession() as session:
            s._session = session
            now = time.time()
            assert await s._post_alerts(t, [payload.alert(incident(subscribers=10), topo(), cfg,
                                                          now)], "7:1") is None  # fmt: skip
            assert await s._post_alerts(t, [payload.alert(incident(subscribers=80), topo(), cfg,
                                                          now)], "7:1") is None  # fmt: skip
        first, second = (r.json() for r in receiver.received("/api/v2/alerts"))
        assert [a["labels"]["severity"] for a in first] == ["warning"]
        assert [a["labels"]["severity"] for a in second] == ["major", "warning"]
        assert second[1]["endsAt"] <= payload.rfc3339(time.time())
        assert all(r.headers["Idempotency-Key"] == "7:1" for r in receiver.received())
    finally:
        receiver.close()
