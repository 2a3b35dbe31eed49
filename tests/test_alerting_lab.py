"""Notifications end to end in the network lab: the real `outagemon run` (ICMP in a
namespace, nftables faults, its embedded PostgreSQL), a real Alertmanager and webhook
receivers (aiohttp) inside the same namespace.

The city: a core, 2 aggregation switches (districts north and south), 100 access switches
behind each, one subscriber router behind each switch: a dead aggregation is a storm of
a hundred switches and a hundred routers, which must make one alert.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from outagemon.core import directory
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.alert_receivers import Alertmanager, Receiver, am_notifications, wait_for
from tests.conftest import free_port, short_tmp_dir
from tests.lanes import selected, side_by_side
from tests.test_lab_e2e import CONFIG, STARTING, WRITE, LabDaemon

SECRET = "lab-webhook-secret-0123456789abcdef"
DISTRICTS = {"agg-1": "north", "agg-2": "south"}


def notify_section(hook: Receiver, am: Alertmanager | None) -> str:
    ams = f'alertmanagers = ["{am.url}"]\n' if am is not None else ""
    return (
        f'[notify]\n{ams}external_url = "https://noc.example"\nlabels = ["district"]\n'
        f'resend_interval = 2\n[[notify.webhooks]]\nurl = "{hook.url}/hook"\n'
        f'secret = "{SECRET}"\n'
    )


def make_daemon(lab: Lab, hook: Receiver, am: Alertmanager | None) -> LabDaemon:
    state = short_tmp_dir()
    city = citygen.generate(aggregations=2, access_per_aggregation=100,
                            subscribers_per_access=1, entrances=1)  # fmt: skip
    topo, subs = city.write(state)
    tree = yaml.safe_load(topo.read_text())
    for node in tree["nodes"]:
        if node["id"] in DISTRICTS:
            node["labels"] = {"district": DISTRICTS[node["id"]]}
    topo.write_text(yaml.safe_dump(tree, allow_unicode=True))
    port = free_port()
    text = CONFIG.format(state=state, port=port, write=WRITE)
    # [notify] before [[auth.tokens]]: an array of tables ends the file's last section.
    text = text.replace("[[auth.tokens]]", notify_section(hook, am) + "[[auth.tokens]]")
    (state / "outagemon.toml").write_text(text)
    d = LabDaemon(lab, state, port, city, directory.load(topo, subs).directory)
    with STARTING:  # one start at a time, as in tests/test_lab_e2e.py
        d.start()
    return d


def signed(hook: Receiver) -> list[dict[str, Any]]:
    """The webhook bodies, each verified as docs/alerting.md tells a receiver to."""
    bodies = []
    for r in hook.received("/hook"):
        stamp = r.headers["X-Outagemon-Timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + r.body, hashlib.sha256)
        assert hmac.compare_digest(r.headers["X-Outagemon-Signature"], "sha256=" + mac.hexdigest())
        assert abs(r.wall - int(stamp)) < 300
        bodies.append(r.json())
    return bodies


def events(hook: Receiver) -> dict[int, list[str]]:
    """Per incident, each event once (a repeat must carry the same key), in revision order."""
    seen: dict[str, str] = {}
    per: dict[int, list[tuple[int, str]]] = {}
    for b in signed(hook):
        o = b["outagemon"]
        if o["idempotency_key"] in seen:
            assert seen[o["idempotency_key"]] == o["event"]
            continue
        seen[o["idempotency_key"]] = o["event"]
        per.setdefault(o["incident_id"], []).append((o["revision"], o["event"]))
    for revs in per.values():
        assert [r for r, _ in revs] == sorted(r for r, _ in revs), per
    return {iid: [e for _, e in revs] for iid, revs in per.items()}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))


def a_storm_in_the_lab(lab: Lab) -> str:
    """A dead aggregation: one alert with our labels, then its ETA, then resolved; says
    how long the alert took."""
    hook, am_sink = Receiver(lab), Receiver(lab)
    am = Alertmanager(am_sink, lab)
    d = None
    try:
        d = make_daemon(lab, hook, am)
        d.warm_up()
        fault = time.time()
        lab.down(*d.ips_behind("agg-2"))  # 100 switches and 100 routers behind it
        opened = wait_for("the webhook hears of it", lambda: [
            b for b in signed(hook) if b["outagemon"]["event"] == "opened"], 60, d.log)  # fmt: skip
        arrival = next(r.wall for r in hook.received("/hook"))
        decided = _decided(d)
        said = (f"\nfault -> webhook: {arrival - fault:.2f} s (detection "
                f"{decided - fault:.2f} s + delivery {arrival - decided:.3f} s); "
                f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
        assert arrival - decided < 1.0
        iid = opened[0]["outagemon"]["incident_id"]
        first = wait_for("Alertmanager notifies", lambda: am_notifications(am_sink), 30)
        labels = first[0]["alerts"][0]["labels"]
        assert labels == {"alertname": "OutagemonIncident", "incident_id": str(iid),
                          "kind": "outage", "severity": "major", "root_node": "agg-2",
                          "node_kind": "aggregation", "district": "south"}  # fmt: skip
        assert first[0]["alerts"][0]["generatorURL"] == f"https://noc.example/incidents/{iid}"
        said += (f"\nfault -> Alertmanager notification: "
                 f"{am_sink.received('/am')[0].wall - fault:.2f} s (group_wait 1 s)")  # fmt: skip
        status, body = d.request("POST", f"/api/v1/incidents/{iid}",
                                 {"eta": iso(time.time() + 7200), "note": "fibre cut"})  # fmt: skip
        assert status == 200, body
        wait_for("the webhook hears the ETA", lambda: "eta" in events(hook).get(iid, []), 30)
        wait_for("the next AM notification carries it", lambda: [
            n for n in am_notifications(am_sink) if n["alerts"][0]["annotations"].get("eta")
            and n["alerts"][0]["annotations"]["note"] == "fibre cut"], 30)  # fmt: skip
        lab.up(*d.ips_behind("agg-2"))
        wait_for("resolved on the webhook", lambda: "resolved" in events(hook).get(iid, []), 60)
        wait_for("resolved in Alertmanager", lambda: [
            n for n in am_notifications(am_sink) if n["status"] == "resolved"], 30)  # fmt: skip
        assert events(hook) == {iid: ["opened", "eta", "note", "resolved"]}
        ids = {a["labels"]["incident_id"] for n in am_notifications(am_sink) for a in n["alerts"]}
        assert ids == {str(iid)}, "a storm is one alert"
        assert d.stop() == 0
        return said
    finally:
        if d is not None and d.process is not None and d.process.poll() is None:
            d.process.kill()
            d.process.wait()
        am.close()
        hook.close()
        am_sink.close()


def _decided(d: LabDaemon) -> float:
    """When the daemon opened its first incident: its log line's time (the wall clock at
    the decision, to the microsecond)."""
    for line in (d.state / "daemon.log").read_text(errors="replace").splitlines():
        if line.startswith("{") and '"incident.opened"' in line:
            stamp = json.loads(line)["timestamp"]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError("no incident.opened line in the daemon's log")


def _log(d: LabDaemon | None) -> str:
    try:
        return d.log() if d is not None else ""
    except OSError as e:
        return f"(no log: {e})"


def _server_pids(state: Path) -> list[int]:
    """The embedded PostgreSQL's postmaster and its children (backends, workers)."""
    postmaster = int((state / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
    pids = [postmaster]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                pids.append(int(proc.name))
    return pids


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def a_receiver_down_a_paused_database_and_a_sigkill(lab: Lab) -> str:
    hook = Receiver(lab)
    d = None
    paused: list[int] = []
    try:
        d = make_daemon(lab, hook, None)
        d.warm_up()
        lab.down(*d.ips_behind("agg-1"))
        opened = wait_for("A opens", lambda: [
            b for b in signed(hook) if b["outagemon"]["event"] == "opened"], 60, d.log)  # fmt: skip
        a = opened[0]["outagemon"]["incident_id"]
        hook.stop()  # the receiver goes away for a while
        paused = _server_pids(d.state)
        _signal(paused, signal.SIGSTOP)  # and the database hangs
        status, body = d.request("POST", f"/api/v1/incidents/{a}",
                                 {"eta": iso(time.time() + 3600), "note": "crew sent"})  # fmt: skip
        assert status == 200, body
        lab.down(*d.ips_behind("agg-2"))
        (b,) = d.wait("B opens while the database hangs", lambda: [
            int(i["id"]) for i in d.incidents() if i["root_node"] == "agg-2"], 60)  # fmt: skip
        time.sleep(3)
        _signal(paused, signal.SIGCONT)
        paused = []
        lab.up(*d.ips_behind("agg-1"))
        d.wait("A resolves", lambda: a not in [int(i["id"]) for i in d.incidents()], 60)
        assert d.process is not None
        d.process.kill()  # SIGKILL in the middle of B
        d.process.wait()
        d.start()
        hook.start()
        lab.up(*d.ips_behind("agg-2"))
        wanted = {a: ["opened", "eta", "note", "resolved"], b: ["opened", "resolved"]}
        wait_for("every event delivered", lambda: events(hook) == wanted, 90,
                 lambda: f"{events(hook)}\n{_log(d)}")  # fmt: skip
        assert d.stop() == 0
        return ""
    finally:
        _signal(paused, signal.SIGCONT)
        if d is not None and d.process is not None and d.process.poll() is None:
            d.process.kill()
            d.process.wait()
        hook.close()


# -- the tests: both scenarios at once, each in its own namespace ------------------------
# Each waits a minute of real time (its daemon's start and clean history, the faults, the
# deliveries), with little work meanwhile: they run side by side from one module fixture
# (as in tests/test_lab_truth.py) and each test waits for its own.

Futures = dict[str, concurrent.futures.Future[str]]
SCENARIOS: dict[str, Callable[[Lab], str]] = {  # the longest first
    "test_a_receiver_down_a_paused_database_and_a_sigkill_lose_no_notification":
        a_receiver_down_a_paused_database_and_a_sigkill,
    "test_a_storm_in_the_lab_is_one_alert_with_our_labels_then_its_eta_then_resolved":
        a_storm_in_the_lab,
}  # fmt: skip


def _run_in_lab(name: str) -> str:
    with Lab(f"om-lab-h15-{uuid.uuid4().hex[:6]}") as lab:
        return SCENARIOS[name](lab)


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest) -> Iterator[Futures]:
    """The scenarios the selected tests need, all started at once."""
    with side_by_side(_run_in_lab, selected(request, SCENARIOS), len(SCENARIOS)) as futures:
        yield futures


def test_a_storm_in_the_lab_is_one_alert_with_our_labels_then_its_eta_then_resolved(
    scenarios: Futures,
) -> None:
    name = "test_a_storm_in_the_lab_is_one_alert_with_our_labels_then_its_eta_then_resolved"
    print(scenarios[name].result(timeout=900))


def test_a_receiver_down_a_paused_database_and_a_sigkill_lose_no_notification(
    scenarios: Futures,
) -> None:
    scenarios["test_a_receiver_down_a_paused_database_and_a_sigkill_lose_no_notification"].result(
        timeout=900
    )
