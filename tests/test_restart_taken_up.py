"""What a restart takes up (from the journal file, the database away; or from the
database) of works that overran and of an incident recovering: its callers hear what they
heard before it (found by the thirteenth session's review)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from outagemon import config
from outagemon.core.assess import Answer, AnswerMemory, Status, assess
from outagemon.core.incidents import Event, EventKind, Incident, Kind, Maintenance
from outagemon.db import durable
from outagemon.db.spool import Spool
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet
from tests.test_history import history_world
from tests.world import build_directory, driven, failed_then_repaired, restarted

CONFIG = "[correlation]\nresolve_hold = 60\n"


def test_a_clock_step_is_added_to_the_works_end_a_kind_change_records() -> None:
    """The works' end a kind change carries is a time of the monitor's clock, as the
    event's own: stored, both are wall time (it was stored as it was, off by the step)."""
    inc = Incident(1, "sw", Kind.OUTAGE, False, 500.0, ["sw"], works_ended=900.0)
    e = Event(EventKind.KIND_CHANGED, 960.0, 1, "sw",
              detail={"from": "maintenance", "to": "outage", "works_ended": 900.0})  # fmt: skip
    record = durable.event_record(e, inc, 0, -3600.0)
    assert record["at"] == 960.0 - 3600.0
    assert record["detail"]["works_ended"] == 900.0 - 3600.0, record
    assert record["snap"]["works_ended"] == 900.0 - 3600.0, record
    assert e.detail["works_ended"] == 900.0  # the event itself untouched


@dataclass
class Away:
    """A monitor writing to its journal file only (the database away), on a simulated
    network warmed up, its first round done."""

    monitor: Monitor
    net: SimNet
    run: Callable[[float], None]
    spool: Spool
    clock: dict[str, float]

    def restarted(self, after: float) -> Monitor:
        """Another monitor, `after` seconds later, continuing from the journal file."""
        self.monitor.journal.sync()
        self.spool.close()
        again = Spool(self.spool.path.parent)
        replayed = again.open()
        try:
            pending = durable.pending(replayed.records, replayed.marks)
        finally:
            again.close()
        clock = self.clock
        clock["now"] = self.net.now + after
        m = Monitor(self.monitor.config, self.monitor.directory, Registry(),
                    clock=lambda: clock["now"])  # fmt: skip
        m.continue_from(pending)
        m.first_round_done = True
        return m


def away(tmp_path: Path) -> Away:
    cfg = config.parse(CONFIG, Path("outagemon.toml"))
    spool = Spool(tmp_path)
    spool.open()
    start = time.time() - 3600
    clock = {"now": start}
    writer = Writer(None, 10_000, Registry(), spool=spool)  # the database away
    m = Monitor(cfg, build_directory(), Registry(), writer, clock=lambda: clock["now"],
                spool=spool)  # fmt: skip
    net, run = driven(m, start, clock)
    run(600)
    m.first_round_done = True
    return Away(m, net, run, spool, clock)


def works_overran(monitor: Monitor, net: SimNet, run: Callable[[float], None],
                  length: float) -> tuple[Incident, float]:  # fmt: skip
    """Works of `length` seconds on sw-sad-5, down from their start, run past their end
    and resolve_hold: its incident (an outage now, heard since the works' end), and when
    the works began."""
    began = net.now
    monitor.add_maintenance(Maintenance(1, "sw-sad-5", began, began + length, "замена"), "noc")
    net.fail("sw-sad-5")
    while net.now < began + length + 120:
        run(10)
    (inc,) = monitor.correlator.incidents.values()
    assert inc.kind is Kind.OUTAGE and inc.works_ended == began + length, inc
    return inc, began


def hears(m: Monitor, account: str) -> Answer:
    return assess(m, m.directory, m.directory.account(account), m.clock(), 3600, AnswerMemory())


def test_works_that_overran_are_heard_since_their_end_after_a_restart_from_the_file(
    tmp_path: Path,
) -> None:
    """Works 0-400 s on sw-sad-5, down from their start: an outage from 460 s, heard since
    the works' end (400 s). The database away, the monitor restarts from its journal file:
    the incident it continued had lost the works' end (the file's kind change kept only
    the kind), so 1007 heard the outage began at the switch's failure inside the works;
    the database's copy, with the works' end, is not taken up over it later."""
    w = away(tmp_path)
    inc, began = works_overran(w.monitor, w.net, w.run, 400)
    assert inc.since < began + 60  # the switch failed inside the works
    after = w.restarted(30)
    taken = after.correlator.incidents[inc.id]
    assert taken.kind is Kind.OUTAGE and taken.works_ended == began + 400, taken
    said = hears(after, "1007")
    assert said.status is Status.OUTAGE and said.since == began + 400, said


def test_an_incident_recovering_at_a_restart_from_the_file_is_still_heard_restored(
    tmp_path: Path,
) -> None:
    """As below, the database away: the journal file's incident had lost when its root
    answered (1007 heard "outage" after the restart). Failing again after, it is an
    outage again."""
    w = away(tmp_path)
    inc = failed_then_repaired(w.net, w.run, w.monitor, "sw-sad-5", 120, 15)
    fixed = inc.recovering_since
    assert fixed is not None and hears(w.monitor, "1007").status is Status.RESTORED
    after = w.restarted(2)
    said = hears(after, "1007")
    assert (said.status, said.resolved) == (Status.RESTORED, fixed), said
    net, run = driven(after, after.clock(), w.clock)
    net.fail("sw-sad-5")
    run(60)
    (taken,) = after.correlator.incidents.values()
    assert taken.id == inc.id and taken.recovering_since is None, taken
    assert hears(after, "1007").status is Status.OUTAGE


async def test_an_incident_recovering_at_a_restart_is_still_heard_restored(
    fresh_db: str,
) -> None:
    """sw-sad-5 failed, then answered again: its incident recovers (callers hear it was
    fixed at that moment) until resolve_hold passes. The monitor restarts meanwhile: the
    incident it took up had lost when its root answered, its root taken as down, so
    1007 heard "outage" again until the next probes, then "fixed" at a time after the
    restart. It stays restored, fixed when it was; it resolves as before."""
    async with history_world(fresh_db) as w:
        inc = failed_then_repaired(w.net, w.run, w.monitor, "sw-sad-5", 120, 15)
        fixed = inc.recovering_since
        assert fixed is not None, inc
        d = w.runtime.directory
        said = assess(w.monitor, d, d.account("1007"), w.net.now, 3600, AnswerMemory())
        assert said.status is Status.RESTORED and said.resolved == fixed, said
        await w.flushed()
        async with restarted(w, w.net.now + 2) as again:
            again.monitor.first_round_done = True
            (taken,) = again.monitor.correlator.incidents.values()
            # As stored (to the microsecond).
            assert taken.id == inc.id and abs((taken.recovering_since or 0) - fixed) < 1e-5, taken
            heard = []
            while again.net.now < fixed + 120:  # past resolve_hold
                memory = AnswerMemory()
                said = assess(again.monitor, d, d.account("1007"), again.net.now, 3600, memory)
                heard.append((said.status, round(said.resolved or 0, 3)))
                again.run(5)
            assert not again.monitor.correlator.incidents, "resolved"
        assert set(heard) == {(Status.RESTORED, round(fixed, 3))}, heard
