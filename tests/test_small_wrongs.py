"""A new user's small wrongs (the fourteenth session's `small14`), each pinned: flats
that are no flats, and the rest named in each test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from outagemon.http import charts
from outagemon.probing.engine import RCVBUF_BYTES, rcvbuf_wanted
from outagemon.sim import citygen
from tests.conftest import free_port, short_tmp_dir
from tests.world import SUBSCRIBERS, World, world

# A house whose CRM names a home "Офис 1" (not split by flat: any name is a home there).
OFFICE = SUBSCRIBERS + '1041,+79210000041,"ул. Садовая, д. 5",Офис 1,\n'


async def asked(w: World, **params: str) -> tuple[int, dict[str, Any]]:
    async with w.session.get(w.url("/api/v1/check"), params=params, headers=w.auth()) as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


async def test_a_flat_that_is_no_flat_is_a_400_naming_it_unless_the_file_has_it(
    fresh_db: str,
) -> None:
    """`flat=abc` was spoken as "квартира abc"; flats with letters or parts ("12а",
    "12/1") are real flats and stay answered, and so is a home the subscribers' file
    names otherwise ("Офис 1")."""
    async with world(fresh_db, subscribers=OFFICE) as w:
        sadovaya = "ул. Садовая, д. 5"
        status, body = await asked(w, address=sadovaya, flat="abc")
        assert status == 400, body
        assert body["error"] == (
            "flat 'abc' is not a flat number (such as 12, 12а or 12/1), and no subscriber "
            "of ул. Садовая, д. 5 lives in a flat so named."
        )
        for flat in ("12а", "12 А", "12/1", "012", "9"):
            status, body = await asked(w, address=sadovaya, flat=flat)
            assert status == 200 and body["status"] == "ok", (flat, body)
        status, body = await asked(w, address=sadovaya, flat="офис 1")  # as the file has it
        assert status == 200 and body["status"] == "ok", body
        assert body["address"] == "ул. Садовая, д. 5, кв. офис 1", body
        # Another building has no such home.
        status, body = await asked(w, address="ул. Ленина, д. 5", flat="Офис 1")
        assert status == 400 and "no subscriber of ул. Ленина, д. 5" in body["error"], body
        # Written in the address itself, the same; a building not found: no such home.
        status, body = await asked(w, address="Ленина 5", flat="1234567")
        assert status == 400 and "flat '1234567' is not a flat number" in body["error"], body
        status, body = await asked(w, address="ул. Нет такой, д. 1", flat="abc")
        assert status == 400 and body["error"].endswith("no subscriber lives in a flat so named.")
        # Nothing was counted as a caller or an answer for the refused questions.
        metrics = w.runtime.metrics.render()
        assert 'outagemon_checks_total{channel="ivr",status="ok"} 6' in metrics, metrics


async def test_a_flat_with_a_letter_is_placed_by_its_number_in_a_building_split_by_flat(
    fresh_db: str,
) -> None:
    """пр-т Мира, д. 10 is split by flat (1-40, 41-80): "12а" was placed in neither part
    (answered for the building's switch, as if no flat were given, though the caller
    named it); now in flat 12's."""
    async with world(fresh_db) as w:
        mira = "пр-т Мира, д. 10"
        for flat, node in (("12а", "seg-mira-1"), ("12 А", "seg-mira-1"), ("50/1", "seg-mira-2")):
            status, body = await asked(w, address=mira, flat=flat)
            assert status == 200 and body["node"] == node, (flat, body)


# -- the daemon's start, as systemd runs it: only CAP_NET_RAW of root's capabilities ---


@dataclass
class Started:
    """A daemon started on its embedded database without CAP_NET_ADMIN, and what was
    seen the moment it told systemd READY=1."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int
    at_ready: dict[str, Any] = field(default_factory=dict)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]  # fmt: skip

    def wait_for(self, event: str, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e["event"] == event]
            if found:
                return found[0]
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in the log:\n{self.log.read_text()}")

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (to drop CAP_NET_ADMIN as the unit does)")
    state = short_tmp_dir()
    citygen.generate(aggregations=2, access_per_aggregation=3).write(state)
    port = free_port()
    (state / "outagemon.toml").write_text(
        f'[daemon]\nstate_dir = "{state}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        '[probe]\ninterval = 2\n[topology]\nfile = "topology.yaml"\n'
        'subscribers = "subscribers.csv"\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(state / "notify.sock"))
    log = state / "daemon.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["setpriv", "--bounding-set", "-net_admin", "--", sys.executable, "-m",
             "outagemon", "run", "-c", str(state / "outagemon.toml")],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(state / "notify.sock")},
        )  # fmt: skip
    proc = Started(process, log, port)
    try:
        notify.settimeout(90)  # the unit's TimeoutStartSec
        while "READY=1" not in notify.recv(4096).decode():
            pass
        proc.at_ready = {"events": [e["event"] for e in proc.events()],
                         "readyz": proc.get("/readyz")}  # fmt: skip
        proc.wait_for("daemon.first_round_done", within=60)
        yield proc
    finally:
        notify.close()
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(state, ignore_errors=True)


def test_systemd_hears_ready_once_the_embedded_database_is_taken_up(started: Started) -> None:
    """READY=1 came before the embedded PostgreSQL was initialised: now once /check
    answers with what the daemon knows (the database's incidents taken up)."""
    events = started.at_ready["events"]  # the log as READY=1 came
    assert "embedded.initialised" in events and "daemon.restored" in events, events
    _, body = started.at_ready["readyz"]
    assert "database" not in str(body.get("reason", "")), body
    ready = started.wait_for("daemon.ready", within=1)
    assert ready["database"] == "up"


def test_a_receive_queue_large_enough_for_the_targets_is_not_warned_about(
    started: Started,
) -> None:
    """`probe.rcvbuf_small` was logged at every start without CAP_NET_ADMIN (the kernel
    caps the queue at net.core.rmem_max, doubled), for a few targets too."""
    sockets = [e for e in started.events() if e["event"] == "probe.socket"]
    assert sockets and all(e["rcvbuf"] < RCVBUF_BYTES for e in sockets), "capped, as by systemd"
    targets = started.wait_for("daemon.first_round_done", within=1)["targets"]
    assert all(e["rcvbuf"] >= rcvbuf_wanted(targets) for e in sockets), (targets, sockets)
    assert [e for e in started.events() if e["event"] == "probe.rcvbuf_small"] == []


# -- /reports for a Russian reader --------------------------------------------------


def test_the_reports_charts_write_numbers_no_reader_misreads() -> None:
    """Written "1.447" is one thousand four hundred and forty-seven to a Russian reader, "1,447"
    to an English one: the page's figures have at most two decimals after a point and
    thousands apart by a narrow space, whatever `[messages] language` (the page's words
    are English); the data- attributes, read by programs, keep the API's figures."""
    place = {"key": "ул. Ленина, д. 5", "outage_minutes": 1234.5, "planned_minutes": 0.25,
             "incidents": 1, "availability_pct": 99.9785}  # fmt: skip
    drawn = str(charts.worst([place], "buildings"))
    g = charts.GROUP
    assert f"1{g}234.5 min out, 0.25 min planned works, 1 incident, 99.97 % available" in drawn
    assert f"1{g}234.5 min · 99.97 %" in drawn
    assert 'data-outage-minutes="1234.5"' in drawn and 'data-availability="99.9785"' in drawn
    bucket = {"at": "2026-12-01T00:30:00+00:00", "calls_per_minute": 1 / 3, "open_incidents": 1}
    drawn = str(charts.calls([bucket], 1764548100.0, 1764549900.0, 900.0))
    assert "0.33 calls a minute, 1 incident open" in drawn, drawn
    assert charts.percent(99.999) == "99.99" and charts.figure(12.0) == "12"


async def test_the_reports_page_of_a_russian_monitor_keeps_its_figures_unambiguous(
    fresh_db: str,
) -> None:
    from tests.test_reports import reports_totals_after, reports_world

    async with reports_world(fresh_db) as w:  # [messages] language = "ru"
        assert w.runtime.config.messages.language == "ru"
        # 89 subscribers for a minute: 1.4833 subscriber-hours.
        one = (2001, "outage", "resolved", "sw-lenina-5", ["sw-lenina-5"], 0, 1, None, 89, 0,
               0.75, None, None)  # fmt: skip
        page, totals = await reports_totals_after(w, one)
        assert " · 1.48 subscriber-hours lost · " in totals, totals
        assert '<html lang="en">' in page  # the page's words: English
        # The API (and the billing CSV) are read by programs: full figures, a point.
        start = (datetime.now().astimezone() - timedelta(hours=3)).isoformat()
        async with w.session.get(w.url("/api/v1/reports/incidents"), headers=w.auth(),
                                 params={"from": start, "to": datetime.now().astimezone()
                                         .isoformat()}) as r:  # fmt: skip
            body = await r.json()
        assert r.status == 200 and 1.48 < body["totals"]["subscriber_hours"] < 1.49, body
