"""A connected database that goes away is shown at once: `outagemon_db_up` by the
daemon's own ping (no write needed), /readyz's body (still 200: /check answers from
memory, writes are queued), and one log line, not a traceback a second."""

from __future__ import annotations

import asyncio
import time

from outagemon.db.embedded import EmbeddedPostgres
from tests.conftest import short_tmp_dir
from tests.test_daemon_reliability import DB_CONFIG, launch, metric, server, stop, wait

__all__ = ["server"]  # the fixture


def test_a_lost_database_is_shown_without_a_write_and_quietly(server: EmbeddedPostgres) -> None:
    asyncio.run(server.start())
    state = short_tmp_dir()
    proc = launch(state, DB_CONFIG.replace("{state}", str(state)).replace("{dsn}", server.dsn))
    try:
        wait("ready", lambda: proc.get("/readyz")[0] == 200, within=60, proc=proc)
        wait("db up", lambda: metric(proc, "outagemon_db_up") == 1.0, within=30, proc=proc)
        proc.wait_for_log("inventory.saved")
        asyncio.run(server.stop())  # the database goes away; nothing is written meanwhile
        wait("the ping says the database is away",
             lambda: metric(proc, "outagemon_db_up") == 0.0, within=20, proc=proc)  # fmt: skip
        wait("/readyz says so in its body",
             lambda: "database" in proc.get("/readyz")[1], within=10, proc=proc)  # fmt: skip
        status, body = proc.get("/readyz")
        assert status == 200, body  # ready by the contract: /check still answers
        database = body["database"]
        assert isinstance(database, dict), body
        assert database["up"] is False, body
        assert "has not answered since" in database["reason"], body
        # A window of asyncpg retrying (about every second, then less often) and of pings
        # (every 3 s): the log is looked at over it, not at one moment.
        proc.wait_for_log("db.unavailable")
        time.sleep(8)
        log = proc.log.read_text()
        assert log.count("pool connection floor") <= 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert log.count("db.unavailable") == 1, log[-3000:]
        asyncio.run(server.start())
        wait("the database is back", lambda: metric(proc, "outagemon_db_up") == 1.0,
             within=30, proc=proc)  # fmt: skip
        plain = (200, {"status": "ready"})
        wait("/readyz's body is plain again", lambda: proc.get("/readyz") == plain, within=10,
             proc=proc)  # fmt: skip
        assert proc.process.poll() is None
    finally:
        stop(proc)
