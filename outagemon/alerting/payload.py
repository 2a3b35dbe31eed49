"""What is sent: an incident as one Alertmanager alert, and a webhook body in the shape of
Alertmanager's own webhook (version 4) with outagemon's fields added.

An incident is one alert for its whole life: its labels identify it and route it
(`incident_id`, `kind`, `severity`, `root_node`, `node_kind`, the operator's topology
labels); its annotations carry what changes (ETA, note, subscribers, calls). Times in the
incident object are ISO 8601 strings, as PostgreSQL's JSON gives them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from outagemon.config import NotifyConfig
from outagemon.core.calls import building_text
from outagemon.core.topology import Topology, inherited_label

ALERTNAME = "OutagemonIncident"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended" in webhook payloads
ENDED = ("resolved", "merged")


@dataclass(frozen=True, slots=True)
class Change:
    """One outbox row: an incident's change, and the incident as the change left it."""

    incident_id: int
    revision: int
    event: str
    at: datetime
    incident: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key: the same for every attempt to send this change."""
        return f"{self.incident_id}:{self.revision}"


def rfc3339(t: datetime | float) -> str:
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, tz=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def severity(incident: dict[str, Any], cfg: NotifyConfig) -> str:
    """info for planned works and for incidents only suspected from calls (nobody has
    confirmed them yet); else by the subscribers cut off (thresholds in [notify])."""
    if incident.get("kind") in ("maintenance", "suspected"):
        return "info"
    subscribers = int(incident.get("subscribers") or 0)
    if subscribers >= cfg.critical_subscribers:
        return "critical"
    if subscribers >= cfg.major_subscribers:
        return "major"
    return "warning"


def label_set(incident: dict[str, Any], topology: Topology, cfg: NotifyConfig) -> dict[str, str]:
    root = str(incident["root_node"])
    node = topology.nodes.get(root)
    found = {
        "alertname": ALERTNAME,
        "incident_id": str(incident["id"]),
        "kind": str(incident["kind"]),
        "severity": severity(incident, cfg),
        "root_node": root,
        "node_kind": node.kind if node is not None else "unknown",
    }
    for name in cfg.labels:
        value = inherited_label(topology, root, name)
        if value is not None and name not in found:
            found[name] = value
    return found


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cut_off(incident: dict[str, Any], where: str) -> str:
    """The nodes an incident cuts off, counted as the page and the API count them: its
    root among them (it said "131 node(s) cut off behind" the root)."""
    n = int(incident.get("nodes", 1))
    return f"{plural(n, 'node')} cut off: {where} and {plural(n - 1, 'node')} behind it"


def _raised(incident: dict[str, Any]) -> dict[str, Any]:
    """What raised an incident raised by calls (its opened event's detail), else {}."""
    raised = incident.get("raised")
    return raised if isinstance(raised, dict) else {}


def _suspected_summary(incident: dict[str, Any], where: str) -> str:
    """ "Suspected outage at …: N callers from … in M minutes (not confirmed)"."""
    raised = _raised(incident)
    callers = int(raised.get("callers") or 0)
    summary = f"Suspected outage at {where}"
    if callers:
        summary += f": {plural(callers, 'caller')}"
        buildings = [str(b) for b in raised.get("buildings") or [] if b]
        if buildings:
            summary += f" from {'; '.join(building_text(b) for b in buildings[:3])}"
            summary += f" and {len(buildings) - 3} more" if len(buildings) > 3 else ""
        ago = raised.get("first_call_ago")
        if ago is not None:
            summary += f" in {plural(max(1, math.ceil(float(ago) / 60)), 'minute')}"
    return summary + " (not confirmed)"


def annotation_set(incident: dict[str, Any], topology: Topology) -> dict[str, str]:
    root = str(incident["root_node"])
    node = topology.nodes.get(root)
    where = f"{root} ({node.name})" if node is not None and node.name else root
    kind = incident.get("kind")
    by_calls = incident.get("raised_by") == "calls" or kind == "suspected"
    subscribers = int(incident.get("subscribers") or 0)
    calls = int(incident.get("calls") or 0)
    eta = _time(incident.get("eta"))
    eta_text = rfc3339(eta) if eta is not None else ""
    note = str(incident.get("note") or "")
    state = str(incident.get("state") or "open")
    if kind == "suspected":
        summary = _suspected_summary(incident, where)
    else:
        what = "Planned works" if kind == "maintenance" else "Outage"
        summary = f"{what} at {where}: {plural(subscribers, 'subscriber')} cut off"
    if eta is not None:
        summary += f", ETA {eta.astimezone(UTC):%H:%M} UTC"
    if state == "merged":
        summary += f" (absorbed into incident {incident.get('merged_into')})"
    elif state == "resolved":
        summary += " (ended)" if kind == "suspected" else " (resolved)"
    opened = _time(incident.get("opened_at"))
    since = f" since {rfc3339(opened)}" if opened is not None else ""
    inferred = bool(incident.get("inferred"))
    tail = (f", {plural(subscribers, 'subscriber')}, {plural(calls, 'call')} to the phone "
            "menu.")  # fmt: skip
    if kind == "suspected":
        description = (
            f"Suspected incident {incident['id']}{since} at {where}: raised by calls the "
            "probes cannot explain (no probe sees a fault there). Not confirmed: it awaits "
            "an engineer, who confirms it (it becomes an outage) or dismisses it"
            f"{tail}"
        )
    elif by_calls:
        description = (
            f"Incident {incident['id']}{since}: raised by calls at {where} and confirmed by "
            f"an engineer (no probe sees it), {_cut_off(incident, where)}"
            f"{tail}"
        )
    else:
        description = (
            f"Incident {incident['id']}{since}: {_cut_off(incident, where)}"
            f"{' (inferred from its children: it has no probe of its own)' if inferred else ''}"
            f"{tail}"
        )
    if note:
        description += f" Note: {note}"
    return {
        "summary": summary,
        "description": description,
        "eta": eta_text,
        "note": note,
        "subscribers": str(subscribers),
        "calls": str(calls),
        "inferred": "true" if inferred else "false",
    }


def generator_url(incident: dict[str, Any], cfg: NotifyConfig) -> str:
    base = cfg.external_url or "http://outagemon.invalid"
    return f"{base}/incidents/{incident['id']}"


def alert(incident: dict[str, Any], topology: Topology, cfg: NotifyConfig, now: float,
          ended_at: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The incident as an alert for `POST /api/v2/alerts`: firing until `endsAt` (a few
    re-send intervals ahead while open, so a monitor that stops sending lets it lapse),
    or ended at `ended_at` once resolved or absorbed."""
    opened = _time(incident.get("opened_at"))
    if ended_at is None and str(incident.get("state")) in ENDED:
        ended_at = _time(incident.get("resolved_at")) or datetime.fromtimestamp(now, tz=UTC)
    ends = rfc3339(ended_at) if ended_at is not None else rfc3339(now + 4 * cfg.resend_interval)
    return {
        "labels": label_set(incident, topology, cfg),
        "annotations": annotation_set(incident, topology),
        "startsAt": rfc3339(opened) if opened is not None else rfc3339(now),
        "endsAt": ends,
        "generatorURL": generator_url(incident, cfg),
    }


def fingerprint(label_set: dict[str, str]) -> str:
    text = "\0".join(f"{k}\0{v}" for k, v in sorted(label_set.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def webhook(change: Change, topology: Topology, cfg: NotifyConfig, now: float) -> dict[str, Any]:
    """The body of a webhook: Alertmanager's webhook payload (version 4), one alert, and
    `outagemon` with the event, the idempotency key and the incident."""
    inc = change.incident
    ended = str(inc.get("state")) in ENDED
    one = alert(inc, topology, cfg, now)
    status = "resolved" if ended else "firing"
    one["status"] = status
    one["fingerprint"] = fingerprint(one["labels"])
    if not ended:
        one["endsAt"] = ZERO_TIME
    return {
        "version": "4",
        "groupKey": f'{{}}:{{incident_id="{change.incident_id}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "outagemon",
        "groupLabels": {"incident_id": str(change.incident_id)},
        "commonLabels": one["labels"],
        "commonAnnotations": one["annotations"],
        "externalURL": cfg.external_url,
        "alerts": [one],
        "outagemon": {
            "event": change.event,
            "incident_id": change.incident_id,
            "revision": change.revision,
            "idempotency_key": change.key,
            "at": rfc3339(change.at),
            "incident": inc,
        },
    }
