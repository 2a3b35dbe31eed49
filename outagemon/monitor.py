"""The daemon's main work: probe results into the correlator, its events into the database.

`Monitor` owns the correlator and the queue of writes; the probing side (the real ICMP
scheduler, or the simulated network of the demo) calls `observe()`, and `tick()` runs a
few times a second. Everything the HTTP side reads (incidents, states, maintenance) is
here in memory, so answering a caller never waits for the database.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from outagemon import logs
from outagemon.config import Config
from outagemon.core.correlator import Correlator
from outagemon.core.directory import Directory
from outagemon.core.health import NodeState, Settings
from outagemon.core.incidents import Event, Incident, IncidentState, Kind, Maintenance
from outagemon.db import store
from outagemon.db.writer import Writer
from outagemon.metrics import Registry

if TYPE_CHECKING:
    from outagemon.db.store import Conn

log = logs.get("outagemon.monitor")

ANCHOR_PREFIX = "anchor:"
HISTORY_EVERY = 600.0  # seconds between saves of every node's loss history


def settings_of(cfg: Config) -> Settings:
    c = cfg.correlation
    return Settings(
        down_after=cfg.probe.down_after,
        up_after=cfg.probe.up_after,
        window=c.window,
        infer_min_children=c.infer_min_children,
        infer_ratio=c.infer_ratio,
        resolve_hold=c.resolve_hold,
        timeout=cfg.probe.timeout,
        interval=cfg.probe.interval,
    )


def anchors_of(cfg: Config, directory: Directory) -> dict[str, str]:
    """Anchor node id -> address: configured addresses (named after their node when the
    topology has one), else the topology's probed roots."""
    topo = directory.topology
    if cfg.vantage.anchors:
        return {topo.by_ip.get(ip, ANCHOR_PREFIX + ip): ip for ip in cfg.vantage.anchors}
    return {r: ip for r in topo.roots if (ip := topo.nodes[r].ip) is not None}


class Monitor:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        metrics: Registry,
        writer: Writer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.directory = directory
        self.writer = writer
        self.clock = clock
        self.anchors = anchors_of(config, directory)
        self.correlator = Correlator(directory.topology, settings_of(config), self.anchors)
        self.correlator.record_transitions = writer is not None
        self.eta: dict[int, float] = {}  # incident id -> expected repair time
        self.calls: dict[int, int] = {}  # incident id -> check answers that named it
        self._calls_unsaved: dict[int, int] = {}
        self.recent: dict[str, Incident] = {}  # node -> recently resolved incident covering it
        self.maintenance: list[Maintenance] = []
        self._history_saved = clock()
        self.first_round_done = False
        self.last_tick = 0.0
        self.metrics = metrics
        self._events = metrics.counter("outagemon_incident_events_total", "Incident events.")
        self._open = metrics.gauge("outagemon_incidents_open", "Open incidents by kind.")
        self._blind = metrics.gauge(
            "outagemon_blind", "1 while every anchor is down: the monitor cannot see."
        )
        self._results = metrics.counter("outagemon_probe_results_total", "Probe results.")
        self._down = metrics.gauge("outagemon_nodes_down", "Probed nodes that are down.")

    # -- feeding -----------------------------------------------------------------------

    def observe(self, node: str, ok: bool, at: float) -> None:
        self._results.inc(result="answered" if ok else "lost")
        self.correlator.observe(node, ok, at)

    def tick(self) -> list[str]:
        """Decide, persist what was decided; return the nodes to probe now."""
        now = self.clock()
        self.last_tick = now
        for event in self.correlator.tick(now):
            self._handle(event)
        self._open.set(sum(1 for i in self.correlator.incidents.values()
                           if i.kind is Kind.OUTAGE), kind="outage")  # fmt: skip
        self._open.set(sum(1 for i in self.correlator.incidents.values()
                           if i.kind is Kind.MAINTENANCE), kind="maintenance")  # fmt: skip
        self._blind.set(1 if self.correlator.blind else 0)
        self._down.set(self.correlator.nodes_down)
        self._save_calls()
        self._save_states()
        if now - self._history_saved >= HISTORY_EVERY:
            self.save_history()
        cutoff = now - self.config.messages.restored_for
        if self.recent and len(self.recent) > 10_000:
            self.recent = {n: i for n, i in self.recent.items() if (i.resolved_at or 0) > cutoff}
        return self.correlator.take_requests()

    def subscribers_of(self, nodes: list[str]) -> int:
        """Subscribers served by these nodes (each once: a router's owner is counted at the
        node that serves the address, not again at the router)."""
        counts = self.directory.counts
        return sum(counts.get(n, 0) for n in nodes)

    def _handle(self, e: Event) -> None:
        self._events.inc(kind=e.kind)
        if e.kind in ("blind", "seeing"):
            log.warning(f"monitor.{e.kind}", anchors=list(self.anchors))
            return
        inc = self.correlator.incidents.get(e.incident or -1)
        log.info(f"incident.{e.kind}", incident=e.incident, root=e.root, **_loggable(e.detail))
        if e.kind == "resolved":
            resolved = dataclasses.replace(
                self._resolved_copy(e),
                nodes=list(e.nodes),
                state=IncidentState.RESOLVED,
                resolved_at=e.at,
            )
            for n in resolved.nodes:
                self.recent[n] = resolved
        if self.writer is None:
            return
        self.writer.submit(e.kind, self._op(e, inc))

    def _resolved_copy(self, e: Event) -> Incident:
        found = self.correlator.last_resolved(e.root or "")
        if found is not None and found.id == e.incident:
            return found
        return Incident(e.incident or 0, e.root or "", Kind.OUTAGE, False, e.at, list(e.nodes))

    def _op(self, e: Event, inc: Incident | None) -> Any:
        """The database write for one event (values captured now, written later)."""
        at = store.ts(e.at)
        detail = json.dumps(e.detail, default=str)
        iid = e.incident
        snapshot = None
        if inc is not None:
            snapshot = (inc.id, inc.kind.value, inc.root, inc.inferred, store.ts(inc.opened_at),
                        list(inc.nodes), self.subscribers_of(inc.nodes))  # fmt: skip

        async def write(conn: Conn) -> None:
            if e.kind == "opened" and snapshot is not None:
                sid, kind, root, inferred, opened, nodes, subs = snapshot
                await conn.execute(
                    "insert into incident (id, state, kind, root_node, inferred, opened_at,"
                    " subscribers) values ($1, 'open', $2, $3, $4, $5, $6)"
                    " on conflict (id) do nothing",
                    sid, kind, root, inferred, opened, subs,
                )  # fmt: skip
                await _set_nodes(conn, sid, nodes)
            elif e.kind == "reopened":
                await conn.execute(
                    "update incident set state = 'open', resolved_at = null where id = $1", iid
                )
            elif e.kind == "nodes" and snapshot is not None:
                await _set_nodes(conn, snapshot[0], snapshot[5])
                await conn.execute("update incident set subscribers = $2 where id = $1",
                                   snapshot[0], snapshot[6])  # fmt: skip
                if not e.detail.get("added"):
                    return  # membership shrank or reordered: no timeline line
            elif e.kind == "root_moved" and snapshot is not None:
                await conn.execute(
                    "update incident set root_node = $2, inferred = $3 where id = $1",
                    iid, snapshot[2], snapshot[3],
                )  # fmt: skip
            elif e.kind == "merged":
                await conn.execute(
                    "update incident set state = 'merged', merged_into = $2, resolved_at = $3"
                    " where id = $1", iid, e.detail["into"], at,
                )  # fmt: skip
            elif e.kind == "resolved":
                await conn.execute(
                    "update incident set state = 'resolved', resolved_at = $2 where id = $1",
                    iid, at,
                )  # fmt: skip
            elif e.kind == "kind_changed":
                await conn.execute("update incident set kind = $2 where id = $1", iid,
                                   str(e.detail["to"]))  # fmt: skip
            await conn.execute(
                "insert into incident_event (incident_id, at, kind, detail)"
                " values ($1, $2, $3, $4::jsonb)",
                iid, at, e.kind, detail,
            )  # fmt: skip

        return write

    # -- engineers' writes -------------------------------------------------------------

    def set_eta(self, incident_id: int, eta: float | None, note: str, who: str) -> None:
        if eta is not None:
            self.eta[incident_id] = eta
            self.correlator.version += 1  # callers hear the new estimate at once
        if self.writer is None:
            return
        at = store.ts(self.clock())

        async def write(conn: Conn) -> None:
            if eta is not None:
                await conn.execute("update incident set eta = $2 where id = $1", incident_id,
                                   store.ts(eta))  # fmt: skip
                await conn.execute(
                    "insert into incident_event (incident_id, at, kind, detail)"
                    " values ($1, $2, 'eta', $3::jsonb)",
                    incident_id, at, json.dumps({"eta": store.ts(eta), "by": who}, default=str),
                )  # fmt: skip
            if note:
                await conn.execute(
                    "insert into incident_event (incident_id, at, kind, detail)"
                    " values ($1, $2, 'note', $3::jsonb)",
                    incident_id, at, json.dumps({"note": note, "by": who}),
                )  # fmt: skip

        self.writer.submit("eta", write)

    def add_maintenance(self, window: Maintenance, who: str) -> None:
        self.maintenance.append(window)
        self.correlator.set_maintenance(self.maintenance, self.clock())
        if self.writer is None:
            return

        async def write(conn: Conn) -> None:
            await conn.execute(
                "insert into maintenance (id, node_id, starts_at, ends_at, reason, created_by)"
                " overriding system value values ($1, $2, $3, $4, $5, $6)",
                window.id, window.node, store.ts(window.starts_at), store.ts(window.ends_at),
                window.reason, who,
            )  # fmt: skip

        self.writer.submit("maintenance", write)

    def count_call(self, incident_id: int) -> None:
        self.calls[incident_id] = self.calls.get(incident_id, 0) + 1
        self._calls_unsaved[incident_id] = self._calls_unsaved.get(incident_id, 0) + 1

    def save_history(self) -> None:
        """Every node's loss history, in one write (COPY): done every HISTORY_EVERY seconds
        and when the daemon stops, so a restart keeps what it learnt about lossy links."""
        self._history_saved = self.clock()
        if self.writer is None:
            return
        nodes = self.directory.topology.nodes
        rows = [(n, ns.n, ns.lost) for n, ns in self.correlator.states.items() if n in nodes]

        async def write(conn: Conn) -> None:
            await conn.execute("create temporary table h (node_id text, n real, lost real)"
                               " on commit drop")  # fmt: skip
            await conn.copy_records_to_table("h", records=rows, columns=["node_id", "n", "lost"])
            await conn.execute(
                "insert into node_state (node_id, state, changed_at, history_n, history_lost)"
                " select node_id, 'unknown', now(), n, lost from h"
                " on conflict (node_id) do update set history_n = excluded.history_n,"
                " history_lost = excluded.history_lost"
            )

        self.writer.submit("history", write)

    def _save_states(self) -> None:
        """Node state changes since the last tick, as one write (a recovery of 100,000
        nodes is one statement, not 100,000)."""
        changes, self.correlator.transitions = self.correlator.transitions, []
        if not changes or self.writer is None:
            return
        nodes = self.directory.topology.nodes
        latest: dict[str, tuple[str, float]] = {}
        for node, state, at in changes:
            if node in nodes:
                latest[node] = (state, at)
        states = self.correlator.states
        rows = [
            (node, state, store.ts(at), round(states[node].short_lost / states[node].short_n, 4)
             if node in states and states[node].short_n else 0.0)
            for node, (state, at) in latest.items()
        ]  # fmt: skip

        async def write(conn: Conn) -> None:
            await conn.executemany(
                "insert into node_state (node_id, state, changed_at, loss) values ($1, $2, $3, $4)"
                " on conflict (node_id) do update set state = excluded.state,"
                " changed_at = excluded.changed_at, loss = excluded.loss",
                rows,
            )

        self.writer.submit("node_states", write)

    def _save_calls(self) -> None:
        if not self._calls_unsaved or self.writer is None:
            return
        batch, self._calls_unsaved = self._calls_unsaved, {}

        async def write(conn: Conn) -> None:
            await conn.executemany(
                "update incident set calls = calls + $2 where id = $1", list(batch.items())
            )

        self.writer.submit("calls", write)

    # -- restart -----------------------------------------------------------------------

    async def restore(self, pool: asyncpg.Pool) -> int:
        """Open incidents, incidents resolved within `restored_for`, planned works and loss
        histories from the database; returns how many open incidents."""
        since = store.ts(self.clock() - self.config.messages.restored_for)
        async with pool.acquire() as conn:
            rows = await store.open_incidents(conn)
            resolved_rows = await store.resolved_since(conn, since)
            next_id = await store.next_incident_id(conn)
            windows = await conn.fetch(
                "select id, node_id, starts_at, ends_at, reason from maintenance"
                " where ends_at > now() - interval '1 day'"
            )
            max_window = await conn.fetchval("select coalesce(max(id), 0) from maintenance")
            histories = await conn.fetch(
                "select node_id, history_n, history_lost from node_state where history_n > 0"
            )
        incidents = []
        for r in rows:
            nodes = [n for n in r["nodes"] if n in self.directory.topology]
            if r["root_node"] not in self.directory.topology:
                continue  # the topology lost the root; the incident stays open in the database
            inc = Incident(
                id=r["id"], root=r["root_node"], kind=Kind(r["kind"]), inferred=r["inferred"],
                opened_at=r["opened_at"].timestamp(), nodes=nodes or [r["root_node"]],
            )  # fmt: skip
            incidents.append(inc)
            if r["eta"] is not None:
                self.eta[inc.id] = r["eta"].timestamp()
            self.calls[inc.id] = r["calls"]
        resolved = [
            Incident(id=r["id"], root=r["root_node"], kind=Kind(r["kind"]),
                     inferred=r["inferred"], opened_at=r["opened_at"].timestamp(),
                     nodes=list(r["nodes"]) or [r["root_node"]], state=IncidentState.RESOLVED,
                     resolved_at=r["resolved_at"].timestamp())
            for r in resolved_rows
        ]  # fmt: skip
        self.resume(
            incidents,
            next_id,
            {h["node_id"]: (float(h["history_n"]), float(h["history_lost"])) for h in histories},
            [Maintenance(w["id"], w["node_id"], w["starts_at"].timestamp(),
                         w["ends_at"].timestamp(), w["reason"])
             for w in windows],
            resolved,
        )  # fmt: skip
        self.next_maintenance = int(max_window) + 1
        return len(incidents)

    def resume(
        self,
        incidents: list[Incident],
        next_id: int,
        histories: dict[str, tuple[float, float]],
        windows: list[Maintenance],
        resolved: list[Incident],
    ) -> None:
        """Take up what a previous run stored (read by `restore`): open incidents continue
        with their ids, each node keeps its loss history (n, lost: a clean target keeps its
        short streak), planned works stand, and the callers of incidents resolved lately
        (oldest first) hear "restored" as before."""
        self.correlator.restore(incidents, next_id)
        topo = self.directory.topology.nodes
        for node, (n, lost) in histories.items():
            if node in topo:
                ns = self.correlator.states.setdefault(node, NodeState())
                ns.n, ns.lost = n, lost
        for inc in resolved:
            for node in inc.nodes:
                if node in topo:
                    self.recent[node] = inc
        self.maintenance = list(windows)
        self.correlator.set_maintenance(self.maintenance, self.clock())

    next_maintenance = 1

    def set_directory(self, directory: Directory) -> None:
        """A reload: the correlator keeps the state of nodes that still exist."""
        self.directory = directory
        self.anchors = anchors_of(self.config, directory)
        self.correlator.anchors = list(self.anchors) or self.correlator.anchors
        self.correlator.set_topology(directory.topology)


async def _set_nodes(conn: Conn, incident_id: int, nodes: list[str]) -> None:
    await conn.execute("delete from incident_node where incident_id = $1", incident_id)
    await conn.copy_records_to_table(
        "incident_node", records=[(incident_id, n) for n in dict.fromkeys(nodes)],
        columns=["incident_id", "node_id"],
    )  # fmt: skip


def _loggable(detail: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in detail.items() if k not in ("event", "level")}
