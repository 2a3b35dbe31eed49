"""Finding 3 with the real daemon in the network lab: writes acknowledged while the
database is away survive SIGTERM and SIGKILL (the journal file in state_dir), and an
incident id spoken to callers is never handed to another incident after a restart.

The database is a PostgreSQL the test starts and stops itself (never the machine's
shared one): the daemon reaches it by its Unix socket, across the lab's namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

from outagemon.core import directory
from outagemon.db.embedded import EmbeddedPostgres
from outagemon.sim import citygen
from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir
from tests.lanes import selected, side_by_side
from tests.test_lab_e2e import CONFIG, STARTING, WRITE, LabDaemon


class Postgres:
    """A PostgreSQL of the test's own, to stop and start under the daemon."""

    def __init__(self) -> None:
        self.server = EmbeddedPostgres(short_tmp_dir())
        self.dsn = ""

    def start(self) -> None:
        self.dsn = asyncio.run(self.server.start())

    def stop(self) -> None:
        asyncio.run(self.server.stop())

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    pg = Postgres()
    with STARTING:  # its initdb: one start at a time, as in tests/test_lab_e2e.py
        pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@contextlib.contextmanager
def db_daemon(lab: Lab, postgres: Postgres) -> Iterator[LabDaemon]:
    state = short_tmp_dir()
    city = citygen.generate(aggregations=4, access_per_aggregation=4,
                            subscribers_per_access=5, entrances=2)  # fmt: skip
    topo, subs = city.write(state)
    port = free_port()
    text = CONFIG.format(state=state, port=port, write=WRITE)
    text += f'[database]\ndsn = "{postgres.dsn}"\n'
    (state / "outagemon.toml").write_text(text)
    daemon = LabDaemon(lab, state, port, city, directory.load(topo, subs).directory)
    try:
        with STARTING:
            daemon.start()
        daemon.warm_up(10)  # a clean history before the fault
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


def writes_while_the_database_is_away(d: LabDaemon, lab: Lab, pg: Postgres) -> dict[str, Any]:
    pg.stop()
    lab.down(*d.ips_behind("agg-2"))
    (inc,) = d.wait("an incident at agg-2", d.incidents)
    eta = time.time() + 5400
    status, body = d.request("POST", f"/api/v1/incidents/{inc['id']}",
                             {"eta": iso(eta), "note": "бригада выехала"})  # fmt: skip
    assert status == 200, body
    status, works = d.request("POST", "/api/v1/maintenance",
                              {"node": "sw-4-1", "starts_at": iso(time.time() + 600),
                               "ends_at": iso(time.time() + 4200),
                               "reason": "замена коммутатора"})  # fmt: skip
    assert status == 201, works
    return {"incident": inc, "eta": eta, "works": works}


def after_restart(d: LabDaemon, lab: Lab, pg: Postgres, done: dict[str, Any]) -> None:
    pg.start()
    d.start()
    inc, works = done["incident"], done["works"]
    iid = int(inc["id"])

    def stored() -> bool:
        rows = pg.fetch("select id, eta from incident where id = $1", iid)
        return bool(rows) and rows[0]["eta"] is not None

    d.wait("the incident and its ETA in the database", stored, within=30)
    (row,) = pg.fetch("select eta, root_node from incident where id = $1", iid)
    assert abs(row["eta"].timestamp() - done["eta"]) < 1 and row["root_node"] == "agg-2"
    notes = pg.fetch("select detail from incident_event where incident_id = $1 and kind = 'note'",
                     iid)  # fmt: skip
    assert len(notes) == 1 and "бригада выехала" in notes[0]["detail"]
    works_stored = "select 1 from maintenance where id = $1 and node_id = 'sw-4-1'"
    d.wait("the works in the database", lambda: pg.fetch(works_stored, int(works["id"])))
    # The incident goes on under its id (its root is still down), with its ETA.
    (again,) = d.wait("the incident after the restart", d.incidents, within=30)
    assert again["id"] == inc["id"] and again["eta"] is not None
    # A new fault: a new incident, a new id.
    lab.down(*d.ips_behind("agg-3"))
    fresh = d.wait("a second incident", lambda: [
        i for i in d.incidents() if i["root_node"] == "agg-3"])  # fmt: skip
    assert int(fresh[0]["id"]) > iid
    assert d.stop() == 0


def sigterm_while_the_database_is_away(d: LabDaemon, lab: Lab, postgres: Postgres) -> None:
    done = writes_while_the_database_is_away(d, lab, postgres)
    assert d.stop() == 0
    after_restart(d, lab, postgres, done)


def sigkill_while_the_database_is_away(d: LabDaemon, lab: Lab, postgres: Postgres) -> None:
    done = writes_while_the_database_is_away(d, lab, postgres)
    assert d.process is not None
    d.process.kill()
    d.process.wait()
    after_restart(d, lab, postgres, done)


# -- the tests: both scenarios at once, each with its own PostgreSQL, daemon and namespace -
# Each waits minutes of real time (a server's initdb, the daemon's start and history, the
# restarts) with little work meanwhile: they run side by side from one module fixture (as
# in tests/test_lab_truth.py) and each test waits for its own.

Futures = dict[str, concurrent.futures.Future[None]]
SCENARIOS: dict[str, Callable[[LabDaemon, Lab, Postgres], None]] = {
    "test_acknowledged_writes_survive_a_sigterm_while_the_database_is_away":
        sigterm_while_the_database_is_away,
    "test_acknowledged_writes_survive_a_sigkill_while_the_database_is_away":
        sigkill_while_the_database_is_away,
}  # fmt: skip


def _run_in_lab(name: str) -> None:
    with Lab() as lab, postgres_server() as pg, db_daemon(lab, pg) as d:
        try:
            SCENARIOS[name](d, lab, pg)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon log ---\n{d.log()}") from None


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest) -> Iterator[Futures]:
    """The scenarios the selected tests need, all started at once."""
    with side_by_side(_run_in_lab, selected(request, SCENARIOS), len(SCENARIOS)) as futures:
        yield futures


def test_acknowledged_writes_survive_a_sigterm_while_the_database_is_away(
    scenarios: Futures,
) -> None:
    scenarios["test_acknowledged_writes_survive_a_sigterm_while_the_database_is_away"].result(
        timeout=900
    )


def test_acknowledged_writes_survive_a_sigkill_while_the_database_is_away(
    scenarios: Futures,
) -> None:
    scenarios["test_acknowledged_writes_survive_a_sigkill_while_the_database_is_away"].result(
        timeout=900
    )
