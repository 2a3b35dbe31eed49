"""Defects found by the seventh new user's trial (an integrator's view), each pinned."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import structlog

from outagemon import reloading
from outagemon.db import store
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.sim import demo
from tests.test_daemon import Proc
from tests.test_daemon_reliability import daemon, reload_cli  # noqa: F401
from tests.test_writer import run_until_idle
from tests.world import READ, WRITE, world


async def test_a_split_building_asked_without_a_flat_names_its_parts(fresh_db: str) -> None:
    # Мира 10 is served by two entrances (flats 1-40 and 41-80); one is cut off. Asked
    # without a flat, the answer is ambiguous, and `candidates` (the contract's "the
    # possible addresses") says which parts the menu can offer, never "".
    async with world(fresh_db) as w:
        w.net.fail("seg-mira-1")
        w.run(60)
        a = await w.check(address="Мира 10")
        assert a["status"] == "ambiguous"
        assert a["candidates"] == "пр-т Мира, д. 10, кв. 1-40;пр-т Мира, д. 10, кв. 41-80"
        again = await w.check(address="пр-т Мира, д. 10")  # a remembered answer says it too
        assert again["candidates"] == a["candidates"]
        one = await w.check(address="Мира 10", flat="50")
        assert one["status"] == "ok" and one["candidates"] == ""


async def test_the_page_lists_every_recently_resolved_incident(fresh_db: str) -> None:
    # An entrance's incident resolved, then one of its aggregation (which cut the same
    # entrance off) resolved too: "Recently resolved" showed the second only, since the
    # monitor remembers one incident a node for callers' "restored".
    async with world(fresh_db) as w:
        w.net.fail("seg-mira-1")
        w.run(60)
        (first,) = w.monitor.correlator.incidents
        w.net.repair("seg-mira-1")
        w.run(120)  # resolve_hold is 60 s
        w.net.fail("agg-n")
        w.run(60)
        (second,) = w.monitor.correlator.incidents
        w.net.repair("agg-n")
        w.run(120)
        assert not w.monitor.correlator.incidents and first != second
        async with w.session.get(w.url("/")) as r:
            page = await r.text()
        resolved = page.split("<h2>Recently resolved</h2>", 1)[1].split("<h2>", 1)[0]
        assert f'href="/incidents/{first}"' in resolved, resolved
        assert f'href="/incidents/{second}"' in resolved, resolved
        assert resolved.index(f"/incidents/{second}") < resolved.index(f"/incidents/{first}")


def test_a_reload_names_the_subscriber_rows_it_left_out(daemon: Proc) -> None:  # noqa: F811
    # A CRM export with a row for a building no node serves: the reload applies (the other
    # rows are loaded), and `outagemon reload` (systemctl reload) said only "reloaded.":
    # the row was named in the daemon's log alone.
    subscribers = daemon.state / "subscribers.csv"
    good = subscribers.read_text()
    subscribers.write_text(good + 'X-NEW,+79990000001,"ул. Нигдешняя, д. 99",1,\n')
    result = reload_cli(daemon)
    assert result.returncode == reloading.APPLIED, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "reloaded.", result.stdout
    assert lines[1] == "1 subscriber row(s) left out (the others are loaded):", result.stdout
    assert "'ул. Нигдешняя, д. 99' flat 1 is served by no node in the topology" in lines[2]
    subscribers.write_text(good)
    result = reload_cli(daemon)
    assert result.returncode == 0 and result.stdout.strip() == "reloaded.", result.stdout


def test_every_document_the_readme_names_is_installed_with_it() -> None:
    # The installed README (the unit's Documentation=) sends the reader to docs/alerting.md,
    # docs/integrations.md...: only docs/CONTRACT.md was installed beside it.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    named = set(re.findall(r"\bdocs/[\w.-]+\.(?:md|toml|json)\b", readme))
    steps = dict(re.findall(r"^install -D -m 0644 (\S+) (\S+)$", readme, re.M))
    assert named and named <= set(steps), sorted(named - set(steps))
    for source in named:
        assert steps[source] == f"/usr/share/doc/outagemon/{source}"


async def test_the_page_shows_planned_works_under_way_and_to_come(fresh_db: str) -> None:
    # Works on a switch that is still up: its callers hear "maintenance", yet the page
    # showed nothing of them (no incident), and the API has no list: an engineer could not
    # see why callers were told of works.
    now = datetime.now(UTC)
    async with world(fresh_db) as w:
        for node, start, end, reason in (
            ("agg-s", now, now + timedelta(hours=2), "замена коммутатора"),
            ("sw-lenina-5", now + timedelta(hours=3), now + timedelta(hours=4), ""),
        ):
            async with w.session.post(
                w.url("/api/v1/maintenance"), headers=w.auth(WRITE),
                json={"node": node, "starts_at": start.isoformat(),
                      "ends_at": end.isoformat(), "reason": reason},
            ) as r:  # fmt: skip
                assert r.status == 201, await r.text()
        assert (await w.check(account="1007"))["status"] == "maintenance"
        async with w.session.get(w.url("/")) as r:
            page = await r.text()
        works = page.split("<h2>Planned works</h2>", 1)[1].split("<h2>", 1)[0]
        running, coming = re.findall(r'<div class="card maintenance works".*?</div>', works, re.S)
        assert "under way at <strong>agg-s</strong>" in running and "замена коммутатора" in running
        assert "planned at <strong>sw-lenina-5</strong>" in coming
        # Numbered apart from the incidents (works 3 and incident 3 on one node, both "#3",
        # side by side on the page; the thirteenth new user's screenshot).
        assert re.search(r'<a href="/maintenance/\d+">Works #\d+</a> under way', running)
        local = (now + timedelta(hours=3)).astimezone()
        assert f"{local:%d.%m %H:%M}" in coming


async def test_the_first_connection_to_the_database_is_not_logged_as_available_again(
    fresh_db: str,
) -> None:
    # Every start of the daemon logged "db.available_again", as if the database had been
    # lost: the line the README promises once per outage, after a "db.unavailable".
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=1)
    try:
        writer = Writer(None, 100, Registry())  # the daemon connects in the background

        async def op(conn: store.Conn) -> None:
            await conn.execute("select 1")

        writer.submit("probe", op)
        with structlog.testing.capture_logs() as logs:
            writer.attach(pool)
            await run_until_idle(writer)
        events = [e["event"] for e in logs if e["event"].startswith("db.")]
        assert events == ["db.available"], events
    finally:
        await pool.close()


class _Quiet:
    """A demo script with no steps."""

    def apply(self, net: object, monitor: object, now: float) -> list[str]:
        return []


async def test_the_demo_page_says_how_fast_the_simulated_network_is_probed(
    fresh_db: str,
) -> None:
    # The demo's page said "probing 0 probes/s, 445 targets": only the ICMP source measured
    # its rate, so a new user's first look suggested that nothing was probed.
    async with world(fresh_db) as w:
        source = demo.SimulatedSource(_Quiet())  # type: ignore[arg-type]
        task = asyncio.create_task(source.start(w.monitor, w.runtime, {})["simulate"])
        try:
            await asyncio.sleep(3.5)  # the rate is measured every 2 s
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert w.runtime.probe_rate > 0
        async with w.session.get(w.url("/")) as r:
            page = await r.text()
        said = re.search(r"probing ([\d,]+) probes/s", page)
        assert said is not None and said.group(1) != "0", page


def test_a_commands_unknown_argument_points_to_that_commands_help() -> None:
    # `outagemon report downtime ... --format json` said "See 'outagemon --help'", whose
    # page lists commands, not the options of the one that was mistyped.
    result = subprocess.run(
        [sys.executable, "-m", "outagemon", "report", "downtime", "-c", "x.toml",
         "--from", "2026-11-01", "--to", "2026-12-01", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "outagemon: unrecognized arguments: --format json. "
        "See 'outagemon report downtime --help'.\n"
    )


async def test_the_timeline_says_an_estimate_as_the_page_header_does(fresh_db: str) -> None:
    # The incident page's header said "ETA 30.11.2026 18:00" and its timeline, for the
    # same estimate, "ETA 2026-11-30T18:00:00+00:00": the API's text, not a person's.
    async with world(fresh_db) as w:
        w.net.fail("sw-lenina-5")
        w.run(60)
        (iid,) = w.monitor.correlator.incidents
        eta = (datetime.now(UTC) + timedelta(hours=2)).replace(second=0, microsecond=0)
        async with w.session.post(w.url(f"/api/v1/incidents/{iid}"), headers=w.auth(WRITE),
                                  json={"eta": eta.isoformat()}) as r:  # fmt: skip
            assert r.status == 200, await r.text()
        await w.flushed()
        async with w.session.get(w.url(f"/incidents/{iid}")) as r:
            page = await r.text()
        shown = f"{eta.astimezone():%d.%m.%Y %H:%M}"
        timeline = page.split("<h2>Timeline</h2>", 1)[1]
        assert f"<td>ETA {shown} — noc</td>" in timeline, timeline


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("acct,phone,address\n1,2,3\n", "the header lacks column(s) account, phones, flat, ip"),
        ("", "the header lacks column(s) account, phones, address, flat, ip"),
        # A header and no row, no problem in it (the thirteenth new user's trial: applied,
        # "reloaded.", every caller "not_found"; the README said "an export cut off to
        # nothing" was refused).
        ("account,phones,address,flat,ip\n", "it holds its header and no row, where "),
    ],
)
def test_a_reload_that_would_load_no_subscriber_at_all_is_refused(
    daemon: Proc,  # noqa: F811
    text: str,
    said: str,
) -> None:
    # A CRM export with a wrong header (or cut off to nothing) was applied: every
    # subscriber dropped, every caller "not_found" until the next reload, and `outagemon
    # reload` said "reloaded.". Refused now, as a broken topology is; the running
    # subscribers answer on.
    subscribers = daemon.state / "subscribers.csv"
    good = subscribers.read_text()
    account = good.splitlines()[1].split(",")[0]
    subscribers.write_text(text)
    result = reload_cli(daemon)
    assert result.returncode == reloading.REFUSED, result.stdout + result.stderr
    assert "refused; the running configuration is kept" in result.stderr
    assert said in result.stderr and "no subscriber could be loaded" in result.stderr
    status, body = daemon.get(f"/api/v1/check?account={account}")
    assert status == 200 and body["status"] != "not_found", body
    subscribers.write_text(good)
    assert reload_cli(daemon).returncode == reloading.APPLIED


async def test_a_token_sent_without_bearer_is_told_what_the_header_must_be(
    fresh_db: str,
) -> None:
    # `Authorization: Basic ...` or the bare token (a helpdesk tool's usual mistakes) was
    # answered "the token is not valid.", as if the token were wrong.
    async with world(fresh_db) as w:
        for header in ("Basic cmVhZDp4", READ, "Bearer"):
            async with w.session.get(w.url("/api/v1/incidents"),
                                     headers={"Authorization": header}) as r:  # fmt: skip
                assert r.status == 401
                said = (await r.json())["error"]
            assert said == "the Authorization header must be Bearer TOKEN.", (header, said)
        async with w.session.get(w.url("/api/v1/incidents"),
                                 headers={"Authorization": "Bearer not-a-token"}) as r:  # fmt: skip
            assert r.status == 401 and (await r.json())["error"] == "the token is not valid."


async def test_an_empty_note_and_a_node_that_is_no_string_are_told_so(fresh_db: str) -> None:
    # `{"note": ""}` answered 200 and changed nothing; `{"node": 5}` was told "node 5 is
    # not in the topology", as if 5 were a node's name.
    async with world(fresh_db) as w:
        for note in ("", "   "):
            async with w.session.post(w.url("/api/v1/incidents/1"), headers=w.auth(WRITE),
                                      json={"note": note}) as r:  # fmt: skip
                assert r.status == 400
                assert (await r.json())["error"] == "note is empty: give its text, or an eta."
        starts = datetime.now(UTC).isoformat()
        ends = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        for node, said in ((5, "5"), (None, "null"), (["sw-1"], '["sw-1"]')):
            works = {"node": node, "starts_at": starts, "ends_at": ends}
            async with w.session.post(w.url("/api/v1/maintenance"), headers=w.auth(WRITE),
                                      json=works) as r:  # fmt: skip
                assert r.status == 400
                assert (await r.json())["error"] == (
                    f"node must be a string, a node's id in the topology, not {said}."
                )


def test_check_config_counts_one_row_as_one_row(tmp_path: Path) -> None:
    # "1 rows with problems".
    from tests.test_config import ROOT, run_cli

    for name in ("outagemon.toml", "topology.yaml", "subscribers.csv"):
        (tmp_path / name).write_text((ROOT / "config" / name).read_text())
    with (tmp_path / "subscribers.csv").open("a") as f:
        f.write("9999,12345,nowhere 1,1,\n")
    result = run_cli("check-config", "-c", str(tmp_path / "outagemon.toml"))
    assert result.returncode == 2
    assert ", 1 row with problems" in result.stdout, (result.stdout, result.stderr)
