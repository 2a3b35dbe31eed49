"""The billing export in JSON, read through a server-side cursor in chunks of bytes (the
CSV is PostgreSQL's own COPY output: `store.downtime_csv`). Neither ever holds more than
a chunk of a million rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from outagemon.db import store

if TYPE_CHECKING:
    from outagemon.db.store import Conn

CHUNK = 256 * 1024  # bytes handed on at a time


async def json_chunks(
    conn: Conn, start: datetime, end: datetime, now: datetime, min_minutes: float,
    head: dict[str, Any],
) -> AsyncIterator[bytes]:  # fmt: skip
    """{...head, "rows": [{account, outage_minutes, ...}, ...]} in chunks (inside the
    caller's transaction); minutes as numbers, incident ids as strings, as everywhere in
    the API."""
    opening = orjson.dumps(head)[:-1]
    parts = [opening + (b',"rows":[' if head else b'"rows":[')]
    size, first = 0, True
    async for r in store.downtime_cursor(conn, start, end, now, min_minutes):
        item = orjson.dumps({
            "account": r["account"],
            "outage_minutes": float(r["outage_minutes"]),
            "planned_minutes": float(r["planned_minutes"]),
            "unverified_minutes": float(r["unverified_minutes"]),
            "incidents": [str(i) for i in r["incidents"]],
        })  # fmt: skip
        parts.append(item if first else b"," + item)
        first = False
        size += len(item)
        if size >= CHUNK:
            yield b"".join(parts)
            parts, size = [], 0
    parts.append(b"]}")
    yield b"".join(parts)
