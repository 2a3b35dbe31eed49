"""Planned works that overran (their end passed, the place still cut off): what `since`
says while they are still works, and where the history splits planned works from the
outage; through the real HTTP interface (and a worker's replica) on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import aiohttp
from aiohttp.test_utils import TestServer

from outagemon.cluster.replica import Replica
from outagemon.core.incidents import Maintenance
from outagemon.http.app import make_app
from outagemon.http.runtime import Runtime
from outagemon.metrics import Registry
from tests.world import world


def _at(said: dict[str, str]) -> float:
    return datetime.fromisoformat(said["since"]).timestamp()


async def test_overrunning_works_say_since_their_start_until_they_are_an_outage(
    fresh_db: str,
) -> None:
    """sw-sad-5 fails 30 s into planned works: its callers hear of works since the works'
    start; once the works' end passed with the switch still down, `since` jumped to the
    switch's failure (a helpdesk tool saw the works start later than they did), and so
    did the workers' replica. It stays the works' start until the incident becomes an
    outage, then it is the works' end."""
    async with world(fresh_db) as w:
        began, ended = w.net.now, time.time() - 20  # the works' end: 20 s ago by /check's clock
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", began, ended, "замена"), "noc")
        w.monitor.next_maintenance = 2
        w.run(30)
        w.net.fail("sw-sad-5")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        assert inc.since - began >= 30  # the switch failed inside the works
        w.run(time.time() - 5 - w.net.now)  # past the works' end, within resolve_hold
        over = await w.check(account="1007")
        assert over["status"] == "maintenance" and over["eta"] == "", over
        assert abs(_at(over) - began) < 1, over  # as before their end: the works' start
        await w.flushed()
        # A worker answers from the leader's writes (as the leader after a restart, its
        # incident without the works' end it was opened with).
        replica = Replica(w.monitor.directory, Registry(), restored_for=3600)
        task = asyncio.create_task(replica.run(fresh_db))
        rt = Runtime(config=w.runtime.config, directory=w.monitor.directory,
                     texts=w.runtime.texts)  # fmt: skip
        rt.monitor, rt.not_ready = replica, None
        server = TestServer(make_app(rt), host="127.0.0.1")
        await server.start_server()
        try:
            deadline = time.monotonic() + 10
            while not replica.first_round_done:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            async with (
                aiohttp.ClientSession(headers=w.auth()) as http,
                http.get(server.make_url("/api/v1/check"), params={"account": "1007"}) as r,
            ):
                worker: dict[str, str] = await r.json()
        finally:
            await server.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert worker["status"] == "maintenance", worker
        assert abs(_at(worker) - began) < 1, worker
        w.run(90)  # past resolve_hold: an outage, heard since the works' end
        outage = await w.check(account="1007")
        assert outage["status"] == "outage", outage
        assert abs(_at(outage) - ended) < 1, outage
