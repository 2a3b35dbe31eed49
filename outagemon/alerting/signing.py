"""Webhook signatures: HMAC-SHA256 over the timestamp and the body (docs/alerting.md).

The receiver recomputes `hex(hmac_sha256(secret, timestamp + "." + body))`, compares it in
constant time with the `X-Outagemon-Signature` header (`sha256=<hex>`), and refuses a
timestamp older than a few minutes (a replay), keeping the idempotency keys it has seen
for that long.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Outagemon-Timestamp"
SIGNATURE_HEADER = "X-Outagemon-Signature"
KEY_HEADER = "Idempotency-Key"
TOLERANCE = 300.0  # seconds a receiver should accept a timestamp off its own clock


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for this body sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(secret: str, timestamp: int, body: bytes, key: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        KEY_HEADER: key,
    }


def verify(secret: str, timestamp: str, sent: str, body: bytes, now: float,
           tolerance: float = TOLERANCE) -> bool:  # fmt: skip
    """Whether a request is ours and fresh: what a receiver does (docs/alerting.md)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), sent)
