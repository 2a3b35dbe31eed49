"""Defects a new user met trying outagemon from its README, each pinned by what it broke."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from outagemon import config
from outagemon.core import directory, downtime, messages
from outagemon.errors import ConfigError
from outagemon.sim import citygen
from tests.conftest import free_port, short_tmp_dir
from tests.test_workers import CONFIG, WRITE, Cluster, wait
from tests.world import world


async def test_a_reopened_incident_is_open_on_the_live_page_not_also_recently_resolved(
    fresh_db: str,
) -> None:
    """The page listed a reopened incident twice: open, and under "Recently resolved" with
    its first resolution (the monitor keeps that for callers' "restored"). It is open, and
    its card says when it reopened (callers hear "since" from then)."""
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        iid = inc.id
        w.net.repair("agg-s")
        w.run(30)
        w.run(90)  # resolve_hold is 60 s: resolved
        assert iid not in w.monitor.correlator.incidents
        w.run(120)  # within REOPEN_WITHIN of the resolution
        w.net.fail("agg-s")
        w.run(120)
        assert w.monitor.correlator.incidents[iid] is inc and inc.reopened_at is not None
        async with w.session.get(w.url("/")) as r:
            assert r.status == aiohttp.web.HTTPOk.status_code
            page = await r.text()
        live, resolved = page.split("<h2>Recently resolved</h2>", 1)
        resolved = resolved.split("<h2>", 1)[0]
        assert f'data-incident="{iid}"' in live
        assert not re.search(rf'href="/incidents/{iid}"', resolved), resolved
        card = live.split(f'data-incident="{iid}"', 1)[1].split("</div>\n</div>", 1)[0]
        assert '<span class="badge">reopened ' in card, card


def test_a_cluster_nodes_workers_say_its_role_and_leader_on_readyz(fresh_db: str) -> None:
    """With [cluster] and [http] workers = 2, /readyz (answered by the workers) said only
    {"status": "ready"}: no "role", no "leader", as the README promises for a node."""
    state = short_tmp_dir()
    topo, subs = citygen.generate(aggregations=1, access_per_aggregation=2).write(state)
    port = free_port()
    text = CONFIG.format(state=state, dsn=fresh_db, port=port, write=WRITE)
    (state / "outagemon.toml").write_text(text + '[cluster]\nnode = "noc-9"\nlease = 3\n')
    with (state / "daemon.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "outagemon", "run", "-c", str(state / "outagemon.toml")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    c = Cluster(state, port, directory.load(topo, subs).directory, process)
    try:

        def leading() -> Any:
            assert process.poll() is None, c.log()
            try:
                status, body, worker = c.ask("GET", "/readyz")
            except OSError:
                return None
            return (status, body, worker) if status == 200 and body.get("role") else None

        wait("the node leads", leading, 60, c.log())
        for _ in range(6):  # new connections: both workers answer in turn
            status, body, _worker = c.ask("GET", "/readyz")
            assert status == 200, body
            assert body["role"] == "leader" and body["leader"] == "noc-9", body
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_missing_secret_file_checked_by_hand_names_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's install checks the config by hand (no $CREDENTIALS_DIRECTORY), where a
    token_file kept for LoadCredential= is not next to the config: the sentence said only
    that the file does not exist there, not how to check it as the unit will."""
    monkeypatch.delenv(config.CREDENTIALS_ENV, raising=False)
    text = '[[auth.tokens]]\nname = "ivr"\ntoken_file = "ivr-token"\nrole = "read"\n'
    with pytest.raises(ConfigError) as info:
        config.parse(text, tmp_path / "om.toml")
    (problem,) = info.value.problems
    assert f"the file {tmp_path / 'ivr-token'} does not exist" in problem, problem
    assert f"set {config.CREDENTIALS_ENV} to its directory" in problem, problem
    # Under the unit (the variable set) the hint would be noise: the file is simply missing.
    monkeypatch.setenv(config.CREDENTIALS_ENV, str(tmp_path / "credentials"))
    with pytest.raises(ConfigError) as info:
        config.parse(text, tmp_path / "om.toml")
    (problem,) = info.value.problems
    assert problem.endswith(f"the file {tmp_path / 'credentials' / 'ivr-token'} does not exist."), (
        problem
    )


@pytest.mark.parametrize(
    ("key", "toml"), [("[probe]\ntimeout", "true"), ("[http]\nworkers", "false")]
)
def test_a_boolean_where_a_number_belongs_is_named_as_the_file_spells_it(
    key: str, toml: str
) -> None:
    """check-config said "[http] workers must be a whole number, not True": Python's
    spelling, which is not valid TOML and not what the operator wrote."""
    with pytest.raises(ConfigError) as info:
        config.parse(f"{key} = {toml}\n", Path("/etc/om.toml"))
    (problem,) = info.value.problems
    assert problem.endswith(f", not {toml}."), problem


def test_an_english_date_is_said_without_a_leading_zero() -> None:
    """A caller heard "on 01 December at 12:00" (a voice reads "zero one"), and the
    helpdesk's downtime message said "to 01 December 2026"; the Russian texts say "1"."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
    later = now + 5 * 86400  # 1 December, 12:00 UTC: the 1st in any zone within 12 h
    said = messages.load("en").when(later, now)
    assert said.startswith("on 1 December at "), said
    us = int(datetime(2026, 12, 1, 0, 0, tzinfo=UTC).timestamp() * 1e6)
    assert downtime._date(us, "en", UTC) == "1 December 2026 00:00"
    assert downtime._date(us, "ru", UTC) == "1 декабря 2026 г. 00:00"


def test_metrics_print_a_value_in_its_shortest_text() -> None:
    """The trial's `outagemon_open_subscriber_minutes 0.40000000000000002` (valid, untidy)."""
    from outagemon.metrics import Registry, number

    registry = Registry()
    registry.gauge("om_test_minutes", "A test gauge.").set(0.4, kind="outage")
    registry.counter("om_test_total", "A test counter.").inc(3)
    text = registry.render()
    assert 'om_test_minutes{kind="outage"} 0.4\n' in text
    assert "om_test_total 3\n" in text
    assert [number(v) for v in (0.1 + 0.2, float("inf"), float("nan"), 2.5e-7)] == [
        "0.30000000000000004", "+Inf", "NaN", "2.5e-07"]  # fmt: skip
