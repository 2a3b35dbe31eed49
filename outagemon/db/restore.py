"""After a restart: what the database remembers, as the correlator and the monitor use it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from outagemon.core.directory import cpe_id
from outagemon.core.incidents import Incident, IncidentState, Kind, Maintenance
from outagemon.core.topology import Topology
from outagemon.db import store


@dataclass
class Restored:
    """Open incidents (whose root is still in the topology), with their estimates and
    call counts; incidents resolved lately, oldest first (their callers still hear
    "restored"); planned works of the last day; each node's loss history."""

    incidents: list[Incident] = field(default_factory=list)
    next_id: int = 1
    eta: dict[int, float] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    maintenance: list[Maintenance] = field(default_factory=list)
    next_maintenance: int = 1
    histories: list[tuple[str, float, float]] = field(default_factory=list)  # node, n, lost
    resolved: list[Incident] = field(default_factory=list)
    # Open incidents raised by calls: what their opening said (first call, wall-clock;
    # distinct callers; buildings), so a restart keeps who raised them.
    raised: dict[int, tuple[float, int, list[str]]] = field(default_factory=dict)
    call_rates: list[tuple[str, str, float, float]] = field(default_factory=list)  # wall time
    # Open outages raised by calls and confirmed: their subscribers' routers stored as
    # answering since the outage counts or earlier (the history leaves out those that
    # answer on to its end: `Monitor._spared`).
    answered: dict[int, list[str]] = field(default_factory=dict)


async def load(pool: asyncpg.Pool, topology: Topology, resolved_after: float) -> Restored:
    """Read what a restart continues from (incidents resolved after `resolved_after`
    too); nodes the topology no longer has are left out."""
    async with pool.acquire() as conn:
        rows = await store.open_incidents(conn)
        resolved_rows = await store.resolved_since(conn, store.ts(resolved_after))
        next_id = await store.next_incident_id(conn)
        windows = await store.recent_maintenance(conn)
        max_window = await store.max_maintenance_id(conn)
        histories = await store.node_histories(conn)
        call_rates = await store.call_rates(conn)
        answered = {
            r["id"]: await store.answering_since(conn, routers_below(topology, r["root_node"]),
                                                 r["opened_at"])
            for r in rows
            if r["raised_by"] == "calls" and r["kind"] == Kind.OUTAGE.value
            and r["root_node"] in topology
        }  # fmt: skip
    found = Restored(next_id=next_id, next_maintenance=int(max_window) + 1,
                     call_rates=call_rates, answered=answered)  # fmt: skip
    for r in rows:
        nodes = [n for n in r["nodes"] if n in topology]
        if r["root_node"] not in topology:
            continue  # the topology lost the root; the incident stays open in the database
        inc = Incident(
            id=r["id"], root=r["root_node"], kind=Kind(r["kind"]), inferred=r["inferred"],
            opened_at=r["opened_at"].timestamp(), nodes=nodes or [r["root_node"]],
            raised_by=r["raised_by"],
            reopened_at=r["reopened_since"].timestamp() if r["reopened_since"] else None,
            works_ended=_time_or_none(r["works_ended"]),
            recovering_since=_time_or_none(r["recovering_since"]),  # its root answered then
            root_since=_time_or_none(r["root_since"]),  # a root it moved up to failed then
        )  # fmt: skip
        found.incidents.append(inc)
        opened = r["opened_detail"]
        if opened is not None:
            said = json.loads(opened) if isinstance(opened, str) else opened
            found.raised[inc.id] = (
                inc.opened_at - float(said.get("first_call_ago") or 0.0),
                int(said.get("callers") or 0),
                [str(b) for b in said.get("buildings") or ()],
            )
        if r["eta"] is not None:
            found.eta[inc.id] = r["eta"].timestamp()
        found.calls[inc.id] = r["calls"]
    found.resolved = [
        Incident(id=r["id"], root=r["root_node"], kind=Kind(r["kind"]), inferred=r["inferred"],
                 opened_at=r["opened_at"].timestamp(),
                 nodes=[n for n in r["nodes"] if n in topology] or [r["root_node"]],
                 state=IncidentState.RESOLVED, resolved_at=r["resolved_at"].timestamp(),
                 recovering_since=_time_or_none(r["recovering_since"]))
        for r in resolved_rows
    ]  # fmt: skip
    found.histories = [
        (h["node_id"], float(h["history_n"]), float(h["history_lost"]))
        for h in histories
        if h["node_id"] in topology.nodes
    ]
    found.maintenance = [
        Maintenance(w["id"], w["node_id"], w["starts_at"].timestamp(),
                    w["ends_at"].timestamp(), w["reason"], w["created_by"])
        for w in windows
    ]  # fmt: skip
    return found


def routers_below(topology: Topology, root: str) -> list[str]:
    """The subscribers' own routers below a node."""
    nodes, prefix = topology.nodes, cpe_id("")
    below = topology.descendants(root)
    return [n for n in below if n.startswith(prefix) and nodes[n].kind == "cpe"]


def _time_or_none(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()
