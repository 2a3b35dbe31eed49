"""The OpenAPI 3.0 description of the HTTP interface, served at /api/v1/openapi.json.

A test validates real responses against these schemas, so this stays true.
"""

from __future__ import annotations

from typing import Any

from outagemon import __version__
from outagemon.core.assess import Status

STATUSES = [s.value for s in Status]


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": _str("One sentence saying what was wrong.")},
}
CHECK = {
    "type": "object",
    "description": "Flat, every value a string ('' when absent), for dialplans' JSON_DECODE.",
    "required": ["status", "incident_id", "root_node", "since", "eta", "message", "matched_by",
                 "node", "address", "candidates"],
    "additionalProperties": False,
    "properties": {
        "status": _str("What is known about the caller's service.", enum=STATUSES),
        "incident_id": _str("The incident that explains the status."),
        "root_node": _str("That incident's root cause node."),
        "since": _str("When it began, ISO 8601 with offset: for an incident that reopened "
                      "(its root failed again soon after it resolved), when it failed again."),
        "eta": _str("Expected repair time: an engineer's estimate; for maintenance, the "
                    "works' end or an engineer's later estimate."),
        "message": _str("A sentence ready to be spoken to the caller."),
        "matched_by": _str("What the caller was found by.",
                           enum=["phone", "account", "address", "node"]),
        "node": _str("The node that serves the caller."),
        "address": _str("The caller's address as normalised."),
        "candidates": _str("For ambiguous: the possible addresses, ';'-separated."),
    },
}  # fmt: skip
NULLABLE_TIME = {"type": "string", "nullable": True, "description": "ISO 8601, or null."}
INCIDENT = {
    "type": "object",
    "required": ["id", "state", "kind", "root_node", "inferred", "nodes", "subscribers",
                 "opened_at", "resolved_at", "eta", "calls"],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["open", "resolved", "merged"]},
        "kind": {"type": "string", "enum": ["outage", "maintenance", "suspected"],
                 "description": "suspected: raised from a cluster of calls where the probes "
                                "see nothing; never said to callers as an outage until "
                                "confirmed (then it is an outage with the same id)."},
        "root_node": {"type": "string"},
        "inferred": {"type": "boolean",
                     "description": "The root was found from its children's failures."},
        "nodes": {"type": "array", "items": {"type": "string"},
                  "description": "Every node the incident cuts off, root first."},
        "subscribers": {"type": "integer", "minimum": 0},
        "opened_at": {"type": "string",
                      "description": "When its first fault began (a reopened incident keeps "
                                     "it; its timeline's `reopened` says since when again)."},
        "resolved_at": NULLABLE_TIME,
        "eta": NULLABLE_TIME,
        "calls": {"type": "integer", "minimum": 0,
                  "description": "Check requests answered with this incident."},
        "raised_by": {"type": "string", "enum": ["probes", "calls"],
                      "description": "calls: a suspected incident, confirmed or not."},
        "callers": {"type": "integer", "minimum": 0,
                    "description": "Raised by calls, open: distinct callers behind it (a "
                                   "subscriber, or a building named without one: once)."},
        "first_call_at": {"type": "string",
                          "description": "Raised by calls, open: when the first of them called."},
        "calls_per_minute": {"type": "array", "items": {"type": "integer", "minimum": 0},
                             "description": "Raised by calls, open: calls in each of the "
                                            "last 30 minutes, oldest first."},
        "buildings": {"type": "array", "items": {"type": "string"},
                      "description": "Raised by calls, open: the callers' buildings, "
                                     "written out (\"пр-т Мира, д. 10\")."},
    },
}  # fmt: skip
TIMELINE = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["at", "kind", "detail"],
        "properties": {
            "at": {"type": "string"},
            "kind": {"type": "string"},
            "detail": {"type": "object"},
        },
    },
}
INCIDENT_DETAIL = {
    "allOf": [INCIDENT, {"type": "object", "required": ["timeline"],
                         "properties": {"timeline": TIMELINE}}],
}  # fmt: skip
MAINTENANCE_IN = {
    "type": "object",
    "required": ["node", "starts_at", "ends_at"],
    "additionalProperties": False,
    "properties": {
        "node": {"type": "string"},
        "starts_at": {"type": "string", "format": "date-time"},
        "ends_at": {"type": "string", "format": "date-time"},
        "reason": {"type": "string", "maxLength": 2000},
    },
}
MAINTENANCE_OUT = {
    "type": "object",
    "required": ["id", "node", "starts_at", "ends_at", "reason", "nodes"],
    "properties": {
        "id": {"type": "string"},
        "node": {"type": "string"},
        "starts_at": {"type": "string"},
        "ends_at": {"type": "string"},
        "reason": {"type": "string"},
        "nodes": {"type": "integer", "description": "Nodes the works cover."},
    },
}
WORKS = {
    "type": "object",
    "required": ["id", "node", "starts_at", "ends_at", "reason", "by", "running"],
    "properties": {
        "id": {"type": "string"},
        "node": {"type": "string"},
        "starts_at": {"type": "string"},
        "ends_at": {
            "type": "string",
            "nullable": True,
            "description": "null when works yet to begin were withdrawn.",
        },
        "reason": {"type": "string"},
        "by": {"type": "string", "description": "The token's name that declared them."},
        "running": {"type": "boolean", "description": "Under way now (else to come)."},
        "withdrawn": {"type": "boolean", "description": "Answering a withdrawal: true."},
    },
}
WORKS_LIST = {
    "type": "object",
    "required": ["maintenance"],
    "properties": {"maintenance": {"type": "array", "items": WORKS}},
}
WORKS_CHANGE_IN = {
    "type": "object",
    "additionalProperties": False,
    "description": 'One of {"withdraw": true} (the works end now; works yet to begin are '
                   'gone) or {"ends_at": "..."} (cut short or extended).',
    "properties": {
        "withdraw": {"type": "boolean", "enum": [True]},
        "ends_at": {"type": "string", "format": "date-time"},
    },
}  # fmt: skip
UPDATE_IN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "eta": {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "description": "The expected repair time; null withdraws the estimate "
            "(callers hear that work continues; timeline: eta with "
            "withdrawn).",
        },
        "note": {"type": "string", "maxLength": 2000},
        "confirm": {
            "type": "boolean",
            "enum": [True],
            "description": "A suspected incident is real: it becomes an outage with "
            "the same id, and callers behind it hear outage.",
        },
        "dismiss": {
            "type": "boolean",
            "enum": [True],
            "description": "A suspected incident is not real: it ends.",
        },
        "resolve": {
            "type": "boolean",
            "enum": [True],
            "description": "An outage raised by calls and confirmed is repaired "
            "(the probes resolve their own).",
        },
    },
    "description": "eta and/or note; or one of confirm, dismiss, resolve (with a note if wished).",
}


_MINUTES = {"type": "number", "minimum": 0}
_KINDS = {
    "outage_minutes": {**_MINUTES, "description": "Cut off by an outage, the monitor seeing."},
    "planned_minutes": {**_MINUTES, "description": "Cut off by planned works (less any "
                        "outage at the same moment)."},
    "unverified_minutes": {**_MINUTES, "description": "Cut off while the monitor could not "
                           "see (blind, or not running): not verified."},
}  # fmt: skip
_IDS = {"type": "array", "items": {"type": "string"}, "description": "Incident ids."}
OUTAGES = {
    "type": "object",
    "required": ["account", "matched_by", "from", "to", "outage_minutes", "planned_minutes",
                 "unverified_minutes", "total_minutes", "incidents", "intervals", "served",
                 "message"],
    "properties": {
        "account": {"type": "string"},
        "matched_by": {"type": "string", "enum": ["account", "phone", "address"]},
        "from": {"type": "string"},
        "to": {"type": "string"},
        **_KINDS,
        "total_minutes": _MINUTES,
        "incidents": _IDS,
        "intervals": {
            "type": "array",
            "description": "Breaks in service, merged where incidents overlap, oldest first.",
            "items": {
                "type": "object",
                "required": ["from", "to", "minutes", "outage_minutes", "planned_minutes",
                             "unverified_minutes", "incidents"],
                "properties": {"from": {"type": "string"}, "to": {"type": "string"},
                               "minutes": _MINUTES, **_KINDS, "incidents": _IDS},
            },
        },
        "served": {
            "type": "array",
            "description": "Where the account was served within the period (the inventory "
                           "as it was).",
            "items": {
                "type": "object",
                "required": ["from", "to", "node", "address", "flat"],
                "properties": {k: {"type": "string"}
                               for k in ("from", "to", "node", "address", "flat")},
            },
        },
        "message": {"type": "string", "description": "A paragraph the helpdesk can read out."},
    },
}  # fmt: skip
DOWNTIME_JSON = {
    "type": "object",
    "required": ["from", "to", "min_minutes", "rows"],
    "properties": {
        "from": {"type": "string"},
        "to": {"type": "string"},
        "min_minutes": _MINUTES,
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["account", *_KINDS, "incidents"],
                "properties": {"account": {"type": "string"}, **_KINDS, "incidents": _IDS},
            },
        },
    },
}
_PERIOD = (
    "A date (its midnight in [messages] timezone) or an ISO 8601 time with an offset. "
    "Required; the period is [from, to), at most [history] max_period_days long."
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "The request is malformed.", 401: "No or wrong token.",
             403: "The token may not do this.", 404: "No such incident.",
             409: "Not possible now.", 413: "The body is too large.",
             503: "The database does not answer, or is busy."}  # fmt: skip
    return {str(c): _json(ERROR, texts[c]) for c in codes}


def _q(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}  # fmt: skip


# -- reports (http/reports.py) ---------------------------------------------------------

_NUM = {"type": "number"}
_SECONDS = {"type": "number", "nullable": True}
PLACE = {
    "type": "object",
    "required": [
        "key",
        "outage_minutes",
        "planned_minutes",
        "unverified_minutes",
        "availability_pct",
        "incidents",
    ],
    "properties": {
        "key": _str(
            "The building's address, the node's id, or the label's value "
            "('(none)' for nodes without it)."
        ),
        "outage_minutes": {
            **_NUM,
            "description": "Minutes any of it was cut off by an "
            "outage (overlapping incidents once).",
        },
        "planned_minutes": {**_NUM, "description": "Minutes cut off by planned works only."},
        "unverified_minutes": {
            **_NUM,
            "description": "Of those, minutes while the monitor was blind or stopped.",
        },
        "availability_pct": {
            **_NUM,
            "description": "100 × (1 − outage / period): planned works are not held against it.",
        },
        "incidents": {"type": "integer", "description": "Incidents that cut it off."},
        "name": _str("group=node: the node's name."),
        "kind": _str("group=node: the node's kind."),
    },
}
AVAILABILITY = {
    "type": "object",
    "required": ["from", "to", "group", "period_minutes", "places", "rows"],
    "properties": {
        "from": _str("The period's start."),
        "to": _str("The period's end."),
        "group": _str("building, node or a label."),
        "period_minutes": _NUM,
        "places": {
            "type": "integer",
            "description": "Places that lost anything (rows beyond limit left out).",
        },
        "rows": {"type": "array", "items": PLACE, "description": "Worst first."},
    },
}
RESPONSE = {
    "type": "object",
    "required": [
        "id",
        "state",
        "kind",
        "root_node",
        "opened_at",
        "detected_at",
        "resolved_at",
        "merged_into",
        "subscribers",
        "calls",
        "first_eta_at",
        "first_eta",
        "detect_seconds",
        "first_eta_seconds",
        "repair_seconds",
        "eta_error_seconds",
        "subscriber_hours",
    ],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string"},
        "kind": {"type": "string"},
        "root_node": {"type": "string"},
        "opened_at": _str("When the root's probes found it down."),
        "detected_at": NULLABLE_TIME,
        "resolved_at": NULLABLE_TIME,
        "merged_into": {"type": "string", "nullable": True},
        "subscribers": {
            "type": "integer",
            "description": "Subscribers it cut off: those its nodes serve, less those a "
            "confirmed outage raised by calls spared (their routers answered throughout), "
            "as billing counts them.",
        },
        "calls": {"type": "integer"},
        "first_eta_at": NULLABLE_TIME,
        "first_eta": NULLABLE_TIME,
        "detect_seconds": {**_SECONDS, "description": "opened_at to the incident's opening."},
        "first_eta_seconds": {
            **_SECONDS,
            "description": "opened_at to the first estimate, less the service between "
            "faults of a reopened incident.",
        },
        "repair_seconds": {
            **_SECONDS,
            "description": "opened_at to resolved_at, less the service between faults of a "
            "reopened incident (from a resolution to the fault that reopened it).",
        },
        "eta_error_seconds": {
            **_SECONDS,
            "description": "The repair the first estimate was for (resolved_at, or the "
            "resolution before a reopening) − first_eta: how much later than first told "
            "(negative: earlier).",
        },
        "subscriber_hours": {
            **_NUM,
            "description": "`subscribers` × hours down (a reopened incident's faults, not "
            "the service between them).",
        },
    },
}
INCIDENTS_REPORT = {
    "type": "object",
    "required": ["from", "to", "totals", "incidents", "notes"],
    "properties": {
        "from": {"type": "string"},
        "to": {"type": "string"},
        "totals": {"type": "object"},
        "incidents": {"type": "array", "items": RESPONSE},
        "notes": {"type": "object"},
    },
}
CALLS_REPORT = {
    "type": "object",
    "required": ["from", "to", "step_seconds", "source", "note", "calls", "buckets"],
    "properties": {
        "from": {"type": "string"},
        "to": {"type": "string"},
        "step_seconds": {"type": "integer"},
        "source": {"type": "string", "enum": ["per_minute", "incident_totals"]},
        "note": {"type": "string"},
        "calls": {"type": "integer"},
        "buckets": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "calls_per_minute", "open_incidents"],
                "properties": {
                    "at": {"type": "string"},
                    "calls_per_minute": _NUM,
                    "open_incidents": {"type": "integer"},
                },
            },
        },
    },
}


def _period() -> list[dict[str, Any]]:
    return [
        {
            **_q(
                "from",
                "The period's start: a date (its local midnight) or ISO 8601 with an offset.",
            ),
            "required": True,
        },
        {
            **_q(
                "to", "Its end (not included), after from; at most [history] max_period_days later."
            ),
            "required": True,
        },
    ]


def _report(summary: str, extra: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}, {}],
            "parameters": _period() + extra,
            "responses": {"200": _json(schema, "The figures."), **_errors(400, 401, 503)},
        }
    }


REPORT_PATHS = {
    "/api/v1/reports/availability": _report(
        "Outage minutes, availability and incidents per building, node or label.",
        [
            _q(
                "group",
                "building (default), node, or a label of the topology's nodes "
                "(inherited down the tree), such as district.",
            ),
            _q("limit", "Rows at most (1000).", pattern="^[0-9]+$"),
        ],
        AVAILABILITY,
    ),
    "/api/v1/reports/incidents": _report(
        "Each incident of the period: time to detect, to the first estimate, to repair; "
        "the first estimate against the repair; subscriber-hours.",
        [],
        INCIDENTS_REPORT,
    ),
    "/api/v1/reports/calls": _report(
        "Calls a minute that named an incident, and incidents open, per step.",
        [_q("step", "Seconds a bucket, 60 to 86400 (about 100 buckets).", pattern="^[0-9]+$")],
        CALLS_REPORT,
    ),
}


_HTML = {"text/html": {"schema": {"type": "string"}}}
_TO = {"description": "See Other: to the page named in Location.",
       "headers": {"Location": {"schema": {"type": "string"}}}}  # fmt: skip
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_FORM = {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
# The engineers' pages and what they post: HTML and redirects, for browsers (with
# [http] page_auth, behind a login; else open). Described so that every route is.
PAGE_PATHS: dict[str, Any] = {
    "/events": {"get": {
        "summary": "The live page's server-sent events (text/event-stream): the open "
                   "incidents as they change.",
        "responses": {"200": {"description": "An event stream, held open.",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      **_errors(401, 503)},
    }},
    "/incidents/{id}": {
        "parameters": _ID,
        "get": {"summary": "One incident's page (HTML): its tree, timeline and form.",
                "responses": {"200": {"description": "The page.", "content": _HTML},
                              **_errors(404)}},
        "post": {"summary": "The page's form: an ETA and a note (a write session or token, "
                            "and the form's CSRF token).",
                 "requestBody": {"required": True, "content": _FORM},
                 "responses": {"303": _TO, **_errors(400, 404, 413)}},
    },
    "/maintenance/{id}": {
        "parameters": _ID,
        "get": {"summary": "One planned works' page (HTML), with a button to withdraw them.",
                "responses": {"200": {"description": "The page.", "content": _HTML},
                              **_errors(404)}},
        "post": {"summary": "The page's button: withdraw the works (a write session or token, "
                            "and the form's CSRF token).",
                 "requestBody": {"required": True, "content": _FORM},
                 "responses": {"303": _TO, **_errors(400, 404, 413)}},
    },
    "/login": {
        "get": {"summary": "The login form (with [http] page_auth; else to /).",
                "responses": {"200": {"description": "The form.", "content": _HTML},
                              "303": _TO}},
        "post": {"summary": "Log in with a token: a session cookie, then to `next`.",
                 "requestBody": {"required": True, "content": _FORM},
                 "responses": {"303": _TO,
                               "429": {"description": "Too many failed logins from this "
                                       "address: the form again, with Retry-After.",
                                       "content": _HTML}}},
    },
    "/logout": {"post": {"summary": "End the session; to the login form.",
                         "requestBody": {"required": False, "content": _FORM},
                         "responses": {"303": _TO}}},
    "/static/{name}": {"get": {
        "summary": "The page's stylesheet and script.",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": ["page.css", "live.js"]}}],
        "responses": {"200": {"description": "The file."}, "404": {"description": "No such file."}},
    }},
}  # fmt: skip


def spec() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "outagemon", "version": __version__,
                 "description": "Is this caller inside a known outage? Incidents, planned works."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/v1/check": {"get": {
                "summary": "The phone menu's question: is this caller inside a known outage?",
                "security": secured,
                "parameters": [
                    _q("phone", "The caller's number, any common notation.", maxLength=500),
                    _q("account", "The account number.", maxLength=500),
                    _q("address", "A postal address, free text.", maxLength=500),
                    _q("flat", "The flat, with address: a number, perhaps with a letter "
                       "or part (12, 12а, 12/1), or a home's name as the subscribers' file "
                       "writes it for that building; anything else is a 400.", maxLength=500),
                    _q("node", "A topology node id.", maxLength=500),
                    _q("format", "json (default) or text: 'status|incident_id|eta'.",
                       enum=["json", "text"]),
                    _q("call_id", "The phone system's id of the call (Asterisk's ${UNIQUEID}): "
                       "accepted for its own records; outagemon neither logs nor keeps it.",
                       maxLength=500),
                    _q("channel", "ivr (default) or helpdesk.", enum=["ivr", "helpdesk"]),
                ],
                "responses": {
                    "200": {"description": "The answer.", "content": {
                        "application/json": {"schema": CHECK},
                        "text/plain": {"schema": {"type": "string"}}}},
                    **_errors(400, 401),
                },
            }},
            "/api/v1/incidents": {"get": {
                "summary": "Incidents, newest first.",
                "security": secured,
                "parameters": [_q("state", "open (default), resolved or all.",
                                  enum=["open", "resolved", "all"])],
                "responses": {
                    "200": _json({"type": "object", "required": ["incidents"],
                                  "properties": {"incidents": {"type": "array",
                                                               "items": INCIDENT}}},
                                 "The incidents."),
                    **_errors(400, 401, 503),
                },
            }},
            "/api/v1/incidents/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {
                    "summary": "One incident with its timeline.",
                    "security": secured,
                    "responses": {"200": _json(INCIDENT_DETAIL, "The incident."),
                                  **_errors(401, 404)},
                },
                "post": {
                    "summary": "Set the expected repair time and/or add a note; confirm or "
                               "dismiss a suspected incident (write token).",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": UPDATE_IN}}},
                    "responses": {"200": _json(INCIDENT, "The incident, updated."),
                                  **_errors(400, 401, 403, 404, 409, 413)},
                },
            },
            "/api/v1/maintenance": {
                "get": {
                    "summary": "Planned works under way and to come, soonest first.",
                    "security": secured,
                    "parameters": [_q("node", "Only the works on this node.")],
                    "responses": {"200": _json(WORKS_LIST, "The works."),
                                  **_errors(400, 401, 403)},
                },
                "post": {
                    "summary": "Declare planned works on a node and everything behind it.",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": MAINTENANCE_IN}}},
                    "responses": {"201": _json(MAINTENANCE_OUT, "The works, recorded."),
                                  **_errors(400, 401, 403, 409, 413)},
                },
            },
            "/api/v1/maintenance/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "post": {
                    "summary": "Withdraw planned works, or move their end; callers hear it "
                               "at once, the timeline of an incident they explained says it.",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": WORKS_CHANGE_IN}}},
                    "responses": {"200": _json(WORKS, "The works, as they now are."),
                                  **_errors(400, 401, 403, 404, 409, 413)},
                },
            },
            "/api/v1/subscribers/{account}/outages": {
                "parameters": [{"name": "account", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {
                    "summary": "How long a subscriber was without service in a period.",
                    "security": secured,
                    "parameters": [_q("from", _PERIOD), _q("to", _PERIOD),
                                   _q("lang", "The message's language (default: "
                                      "[messages] language).", enum=["ru", "en"])],
                    "responses": {"200": _json(OUTAGES, "The breaks and their minutes."),
                                  **_errors(400, 401, 404, 503)},
                },
            },
            "/api/v1/outages": {"get": {
                "summary": "The same, the subscriber found by a caller's keys as /check "
                           "finds them: phone, account, or address with flat.",
                "security": secured,
                "parameters": [
                    _q("phone", "The caller's number.", maxLength=500),
                    _q("account", "The account number.", maxLength=500),
                    _q("address", "A postal address, free text.", maxLength=500),
                    _q("flat", "The flat, with address.", maxLength=500),
                    _q("from", _PERIOD), _q("to", _PERIOD),
                    _q("lang", "The message's language.", enum=["ru", "en"]),
                ],
                "responses": {"200": _json(OUTAGES, "The breaks and their minutes."),
                              **_errors(400, 401, 404, 409, 503)},
            }},
            "/api/v1/reports/downtime": {"get": {
                "summary": "The billing export: one row per account cut off in the period, "
                           "outage, planned-works and unverified minutes apart, streamed.",
                "security": secured,
                "parameters": [
                    _q("from", _PERIOD), _q("to", _PERIOD),
                    _q("min_minutes", "Only accounts with at least this many minutes in "
                                      "all (default 0: any)."),
                    _q("format", "csv (default) or json.", enum=["csv", "json"]),
                ],
                "responses": {
                    "200": {"description": "The rows, in account order (chunked).",
                            "content": {
                                "text/csv": {"schema": {"type": "string", "description":
                                    "account,outage_minutes,planned_minutes,"
                                    "unverified_minutes,incidents (ids joined by ';')"}},
                                "application/json": {"schema": DOWNTIME_JSON}}},
                    **_errors(400, 401, 503),
                },
            }},
            "/healthz": {"get": {"summary": "200 while the process serves.",
                                 "responses": {"200": {"description": "Serving."}}}},
            "/readyz": {"get": {"summary": "200 once the topology is loaded and the first "
                                           "probe round is done; 503 with a reason otherwise.",
                                "responses": {"200": {"description": "Ready; while a "
                                                      "connected database is away, `database`"
                                                      " says since when and why (/check still"
                                                      " answers, writes are queued)."},
                                              "503": {"description": "Not ready, and why."}}}},
            "/metrics": {"get": {"summary": "Prometheus text format ([http] metrics_token, "
                                            "or a page session with page_auth, when set).",
                                 "responses": {"200": {"description": "Metrics."},
                                               **_errors(401)}}},
            "/": {"get": {"summary": "The live incident page for engineers (HTML).",
                          "responses": {"200": {"description": "The page."}}}},
            "/reports": {"get": {"summary": "The reports page for engineers (HTML, SVG): "
                                            "?range=24h (default), 7d or 30d.",
                                 "responses": {"200": {"description": "The page."}}}},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.0 document.")},
            }},
            **REPORT_PATHS,
            **PAGE_PATHS,
        },
    }  # fmt: skip
