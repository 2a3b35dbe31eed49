"""What callers and billing hear after a restart, and in edge cases: each a wrong answer
left alone by earlier sessions, pinned on a real PostgreSQL through the daemon's own
restart path (the fourteenth session's review)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from outagemon.core.incidents import Kind, Maintenance
from outagemon.db.journal import Journal
from outagemon.db.spool import Spool
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from tests.test_api_callers import timeline
from tests.test_writer import run_until_idle
from tests.world import world


async def test_a_write_replayed_at_a_restart_adds_no_second_timeline_line(
    fresh_db: str, tmp_path: Path
) -> None:
    """Works on sw-sad-5 overran: "Planned works ended ... an outage now". The database
    had each write, but the journal file never had their acknowledgements (the daemon
    killed between the commit and the acknowledgement): the next start makes every one
    of them again, as it must, and the timeline said each line twice."""
    async with world(fresh_db) as w:
        spool = Spool(tmp_path)
        spool.open()
        w.monitor.journal.spool = spool  # kept in the file; the world's writer acknowledges none
        began = w.net.now
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", began, began + 300, "cable"), "noc")
        w.net.fail("sw-sad-5")
        while w.net.now < began + 420:  # past the works' end and resolve_hold
            w.run(10)
        (inc,) = w.monitor.correlator.incidents.values()
        assert inc.kind is Kind.OUTAGE and inc.works_ended is not None, inc
        w.monitor.journal.sync()
        before = [e["kind"] for e in await timeline(w, inc.id)]
        assert before.count("kind_changed") == 1, before
        spool.close()

        again = Spool(tmp_path)  # the next start
        replayed = again.open()
        kinds = Counter(r.kind for r in replayed.records)
        assert kinds["kind_changed"] == 1 and kinds["opened"] == 1, kinds
        writer = Writer(w.pool, 10_000, Registry(), spool=again)
        Journal(writer, again).replay(replayed.records)
        try:
            await run_until_idle(writer)
        finally:
            again.close()
        after = [e["kind"] for e in await timeline(w, inc.id)]
        assert after == before, (before, after)
        outbox = await w.pool.fetch("select event from alert_outbox where incident_id = $1"
                                    " order by revision", inc.id)  # fmt: skip
        assert [r["event"] for r in outbox].count("kind_changed") == 1, outbox
