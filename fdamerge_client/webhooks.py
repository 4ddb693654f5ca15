"""Verifying fda-merge's webhook deliveries in your receiver (Standard Webhooks, v1 signatures).

from fdamerge_client.webhooks import verify
if not verify(secret, request.headers, request.body):   # the whsec_… shown when you created the endpoint
    return 400
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """base64 HMAC-SHA256 of "id.timestamp.body", keyed with the secret's base64 part."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return base64.b64encode(
        hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = 300, now: float | None = None
) -> bool:
    """True when one of the `v1,` signatures matches and the timestamp is within `tolerance` seconds (replays)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id, timestamp = lower["webhook-id"], int(lower["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    try:
        expected = signature(secret, message_id, timestamp, body).encode()
    except ValueError:  # not a whsec_ secret
        return False
    offered = [part.split(",", 1)[1] for part in lower.get("webhook-signature", "").split() if part.startswith("v1,")]
    return any(hmac.compare_digest(expected, candidate.encode("utf-8", "replace")) for candidate in offered)
