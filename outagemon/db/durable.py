"""Writes as records: plain JSON data, kept in the journal file (`db/spool.py`) until the
database has them, and read back after a restart.

A record holds everything its write needs, captured when it happened (wall-clock times,
for storage), so it can be written later, in another process. `pending()` reads the
records the database may not have into what the monitor keeps in memory (open
incidents, estimates, planned works, the highest ids handed out): after a restart
without the database, detection and /check go on from there, and ids are not reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from outagemon.core.incidents import Event, EventKind, Incident, Kind, Maintenance
from outagemon.db.spool import Record

# Writes that are never dropped, from memory or from the file: losing one would leave an
# incident open (or missing) in the database for good, or lose what an engineer was told
# was taken. Timeline-only and membership writes may be dropped under pressure.
PRECIOUS = frozenset({
    EventKind.OPENED, EventKind.REOPENED, EventKind.MERGED, EventKind.RESOLVED,
    EventKind.ROOT_MOVED, EventKind.KIND_CHANGED, "eta", "note", "maintenance",
    "maintenance_end",
    EventKind.BLIND, EventKind.SEEING,  # rare, and unverified time is billed differently
})  # fmt: skip


_EVENTS = frozenset(k.value for k in EventKind)


def event_record(e: Event, inc: Incident | None, subscribers: int,
                 wall: float) -> dict[str, Any]:  # fmt: skip
    """A correlator event with its incident as it is now (`wall`: the wall clock's step,
    added to the event's times for storage)."""
    record: dict[str, Any] = {
        "at": e.at + wall,
        "incident": e.incident,
        "root": e.root,
        "nodes": list(e.nodes),
        "detail": e.detail,
    }
    if (
        e.kind in (EventKind.REOPENED, EventKind.REFAILED)
        and inc is not None
        and inc.reopened_at is not None
    ):
        # When this fault began, in its timeline (a restart's callers hear it again).
        since = datetime.fromtimestamp(inc.reopened_at + wall, UTC).isoformat()
        record["detail"] = {**e.detail, "since": since}
    if e.kind is EventKind.ROOT_MOVED and inc is not None and inc.root_since is not None:
        # When the root it moved up to failed (a restart takes that root up as down since).
        since = datetime.fromtimestamp(inc.root_since + wall, UTC).isoformat()
        record["detail"] = {**e.detail, "since": since}
    ended = e.detail.get("works_ended")
    if isinstance(ended, int | float):
        # Works that overran: their end is a time of the monitor's clock, as `at` is.
        record["detail"] = {**record["detail"], "works_ended": ended + wall}
    if inc is not None:
        record["snap"] = {
            "id": inc.id,
            "kind": inc.kind.value,
            "root": inc.root,
            "inferred": inc.inferred,
            "opened_at": inc.opened_at + wall,
            "nodes": list(inc.nodes),
            "subscribers": subscribers,
            "raised_by": inc.raised_by,
            "reopened_at": inc.reopened_at + wall if inc.reopened_at is not None else None,
        }
        # Heard since then (a restart from the file too); and recovering, its root
        # answered then (callers hear it was fixed then).
        for key, t in (("works_ended", inc.works_ended),
                       ("recovering_since", inc.recovering_since),
                       ("root_since", inc.root_since)):  # fmt: skip
            if t is not None:
                record["snap"][key] = t + wall
    return record


def eta_record(incident: int, eta: float | None, who: str, at: float,
               withdrawn: str = "") -> dict[str, Any]:  # fmt: skip
    """An estimate set, or withdrawn (`eta` None; `withdrawn` says why)."""
    record: dict[str, Any] = {"incident": incident, "eta": eta, "by": who, "at": at}
    if eta is None:
        record["withdrawn"] = withdrawn or "api"
    return record


def note_record(incident: int, note: str, who: str, at: float) -> dict[str, Any]:
    return {"incident": incident, "note": note, "by": who, "at": at}


def maintenance_record(window: Maintenance, who: str, wall: float) -> dict[str, Any]:
    return {"id": window.id, "node": window.node, "starts_at": window.starts_at + wall,
            "ends_at": window.ends_at + wall, "reason": window.reason, "by": who}  # fmt: skip


def maintenance_end_record(window_id: int, ends_at: float, withdrawn: bool, who: str,
                           at: float) -> dict[str, Any]:  # fmt: skip
    """Planned works' end moved by an engineer (wall-clock times), or the works withdrawn."""
    return {"id": window_id, "ends_at": ends_at, "withdrawn": withdrawn, "by": who, "at": at}


def event_of(kind: str, data: dict[str, Any]) -> Event:
    """The event a record was made from (times as stored)."""
    return Event(EventKind(kind), float(data["at"]), data.get("incident"), data.get("root"),
                 tuple(data.get("nodes") or ()), dict(data.get("detail") or {}))  # fmt: skip


@dataclass
class Pending:
    """What the records say, over what the database said: open incidents (by id), those
    the records closed, estimates, planned works, and the highest ids seen. Times are
    wall-clock (as stored)."""

    incidents: dict[int, Incident] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    eta: dict[int, float | None] = field(default_factory=dict)  # None: withdrawn
    maintenance: dict[int, Maintenance] = field(default_factory=dict)
    works_ends: dict[int, float] = field(default_factory=dict)  # works' end moved: id -> end
    max_incident: int = 0
    max_maintenance: int = 0


def pending(records: list[Record], marks: dict[str, int] | None = None) -> Pending:
    """Read the records (in order) into what the monitor keeps in memory."""
    found = Pending(max_incident=(marks or {}).get("incident", 0),
                    max_maintenance=(marks or {}).get("maintenance", 0))  # fmt: skip
    for r in records:
        d = r.data
        if r.kind == "eta":
            found.eta[int(d["incident"])] = float(d["eta"]) if d["eta"] is not None else None
        elif r.kind == "maintenance":
            m = Maintenance(int(d["id"]), str(d["node"]), float(d["starts_at"]),
                            float(d["ends_at"]), str(d.get("reason", "")),
                            str(d.get("by", "")))  # fmt: skip
            found.maintenance[m.id] = m
            found.max_maintenance = max(found.max_maintenance, m.id)
        elif r.kind == "maintenance_end":
            found.works_ends[int(d["id"])] = float(d["ends_at"])
        elif r.kind in _EVENTS:
            _event(found, r.kind, d)
    return found


def _event(found: Pending, kind: str, d: dict[str, Any]) -> None:
    iid = d.get("incident")
    if iid is None:
        return
    iid = int(iid)
    found.max_incident = max(found.max_incident, iid)
    snap = d.get("snap")
    if kind in (EventKind.OPENED, EventKind.REOPENED) and snap is not None:
        found.closed.discard(iid)
        found.incidents[iid] = Incident(
            id=iid, root=str(snap["root"]), kind=Kind(snap["kind"]),
            inferred=bool(snap["inferred"]), opened_at=float(snap["opened_at"]),
            nodes=list(snap["nodes"]) or [str(snap["root"])],
            raised_by=str(snap.get("raised_by", "probes")),
            reopened_at=_float_or_none(snap.get("reopened_at")),
            works_ended=_float_or_none(snap.get("works_ended")),
            recovering_since=_float_or_none(snap.get("recovering_since")),
            root_since=_float_or_none(snap.get("root_since")),
        )  # fmt: skip
    elif kind in (EventKind.RESOLVED, EventKind.MERGED):
        found.incidents.pop(iid, None)
        found.closed.add(iid)
    elif iid in found.incidents and snap is not None:
        inc = found.incidents[iid]
        inc.nodes = list(snap["nodes"]) or inc.nodes
        inc.root = str(snap["root"])
        inc.inferred = bool(snap["inferred"])
        inc.kind = Kind(snap["kind"])
        inc.reopened_at = _float_or_none(snap.get("reopened_at"))
        inc.works_ended = _float_or_none(snap.get("works_ended"))
        inc.recovering_since = _float_or_none(snap.get("recovering_since"))
        inc.root_since = _float_or_none(snap.get("root_since"))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
