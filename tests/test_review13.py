"""The thirteenth session's review of the twelfth's changes: what a restart without the
database continues from (the journal file) for works that overran."""

from __future__ import annotations

import time
from pathlib import Path

from outagemon import config
from outagemon.core.assess import AnswerMemory, Status, assess
from outagemon.core.incidents import Event, EventKind, Incident, Kind, Maintenance
from outagemon.db import durable
from outagemon.db.spool import Spool
from outagemon.db.writer import Writer
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from tests.world import build_directory, driven

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


def test_works_that_overran_are_heard_since_their_end_after_a_restart_from_the_file(
    tmp_path: Path,
) -> None:
    """Works 0-400 s on sw-sad-5, down from their start: an outage from 460 s, heard since
    the works' end (400 s). The database away, the monitor restarts from its journal file:
    the incident it continued had lost the works' end (the file's kind change kept only
    the kind), so 1007 heard the outage began at the switch's failure inside the works;
    the database's copy, with the works' end, is not taken up over it later."""
    cfg = config.parse(CONFIG, Path("outagemon.toml"))
    d = build_directory()
    spool = Spool(tmp_path)
    spool.open()
    start = time.time() - 3600
    clock = {"now": start}
    writer = Writer(None, 10_000, Registry(), spool=spool)  # the database away
    m = Monitor(cfg, d, Registry(), writer, clock=lambda: clock["now"], spool=spool)
    net, run = driven(m, start, clock)
    run(600)
    m.first_round_done = True
    began = net.now
    m.add_maintenance(Maintenance(1, "sw-sad-5", began, began + 400, "замена"), "noc")
    net.fail("sw-sad-5")
    while net.now < began + 520:  # past the works' end and resolve_hold
        run(10)
    (inc,) = m.correlator.incidents.values()
    assert inc.kind is Kind.OUTAGE and inc.works_ended == began + 400, inc
    assert inc.since < began + 60  # the switch failed inside the works
    m.journal.sync()
    spool.close()

    again = Spool(tmp_path)
    replayed = again.open()
    try:
        pending = durable.pending(replayed.records, replayed.marks)
    finally:
        again.close()
    clock["now"] = net.now + 30
    after = Monitor(cfg, d, Registry(), clock=lambda: clock["now"])
    assert after.continue_from(pending) == 1
    after.first_round_done = True
    taken = after.correlator.incidents[inc.id]
    assert taken.kind is Kind.OUTAGE and taken.works_ended == began + 400, taken
    said = assess(after, d, d.account("1007"), clock["now"], 3600, AnswerMemory())
    assert said.status is Status.OUTAGE and said.since == began + 400, said
