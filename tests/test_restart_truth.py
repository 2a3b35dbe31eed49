"""A restart keeps what callers hear (issue 11): found by the truth oracle, where callers of
an incident resolved shortly before a restart heard `ok` instead of `restored`.

Real PostgreSQL; the network is the simulated one of tests/world.py."""

from __future__ import annotations

from outagemon.core import assess as check
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from tests.world import failed_then_repaired, world


async def test_callers_of_an_incident_resolved_before_a_restart_still_hear_restored(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        inc = failed_then_repaired(w.net, w.run, w.monitor, "agg-n", 60, 200)
        assert w.monitor.correlator.incidents == {}
        await w.flushed()
        now = w.monitor.clock()
        again = Monitor(w.monitor.config, w.monitor.directory, Registry(), clock=w.monitor.clock)
        await again.restore(w.pool)
        again.first_round_done = True
        d = w.runtime.directory
        restored_for = w.monitor.config.messages.restored_for
        heard = check.assess(again, d, d.account("1001"), now, restored_for, check.AnswerMemory())
        assert heard.status is check.Status.RESTORED  # ул. Ленина, д. 5, behind agg-n
        assert heard.incident is not None and heard.incident.id == inc.id
        elsewhere = check.assess(again, d, d.account("1007"), now, restored_for,
                                 check.AnswerMemory())  # fmt: skip
        # ул. Садовая, д. 5, behind agg-s: not probed since the restart, and never restored
        assert elsewhere.status is check.Status.UNKNOWN


async def test_an_incident_resolved_longer_ago_than_restored_for_is_not_brought_back(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-n")
        w.run(60)
        w.net.repair("agg-n")
        w.run(200)
        await w.flushed()
        later = w.monitor.clock() + w.monitor.config.messages.restored_for + 1
        again = Monitor(w.monitor.config, w.monitor.directory, Registry(), clock=lambda: later)
        await again.restore(w.pool)
        assert again.recent == {}
