"""Records of writes, through the journal file and back: what a restart without the
database continues from."""

from __future__ import annotations

from pathlib import Path

from outagemon.core.incidents import Event, EventKind, Incident, Kind, Maintenance
from outagemon.db import durable
from outagemon.db.spool import Spool


def test_records_read_back_into_open_incidents_estimates_works_and_ids(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    a = Incident(7, "agg-1", Kind.OUTAGE, False, 1000.0, ["agg-1", "sw-1"])
    b = Incident(8, "sw-9", Kind.OUTAGE, False, 1010.0, ["sw-9"])
    for e, inc in (
        (Event(EventKind.OPENED, 1000.0, 7, "agg-1", (), {}), a),
        (Event(EventKind.OPENED, 1010.0, 8, "sw-9", (), {}), b),
        (Event(EventKind.RESOLVED, 1100.0, 8, "sw-9", ("sw-9",), {}), None),
    ):
        kind = e.kind.value
        spool.append(kind, durable.event_record(e, inc, 12, 0.0), kind in durable.PRECIOUS)
    spool.append("eta", durable.eta_record(7, 5000.0, "noc", 1020.0), True)
    spool.append("note", durable.note_record(7, "бригада выехала", "noc", 1020.0), True)
    works = Maintenance(3, "sw-2", 2000.0, 3000.0, "замена", by="noc")  # read back with who
    spool.append("maintenance", durable.maintenance_record(works, "noc", 0.0), True)
    spool.mark("incident", 9)  # handed out, never written (the process died)
    spool.sync()
    spool.close()

    again = Spool(tmp_path)
    replayed = again.open()
    found = durable.pending(replayed.records, replayed.marks)
    assert list(found.incidents) == [7]
    assert found.incidents[7].nodes == ["agg-1", "sw-1"]
    assert found.closed == {8}
    assert found.eta == {7: 5000.0}
    assert found.maintenance == {3: works}
    assert (found.max_incident, found.max_maintenance) == (9, 3)
    event = durable.event_of("resolved", replayed.records[2].data)
    assert event.kind is EventKind.RESOLVED and event.incident == 8 and event.nodes == ("sw-9",)
    again.close()


def test_a_clock_step_is_added_to_the_stored_times() -> None:
    inc = Incident(1, "sw", Kind.OUTAGE, False, 500.0, ["sw"])
    record = durable.event_record(Event(EventKind.OPENED, 500.0, 1, "sw"), inc, 0, -3600.0)
    assert record["at"] == 500.0 - 3600.0 and record["snap"]["opened_at"] == 500.0 - 3600.0
