"""Sending webhook deliveries: claimed in a short transaction, sent with none open, outcome recorded.

A pass claims up to `limit` due deliveries, each by a compare-and-set UPDATE on its attempt count that
also pushes its next attempt past the send deadline (so a sender that dies mid-send only delays the
delivery, and two senders never send one delivery twice); this works the same on PostgreSQL and
SQLite. The claimed deliveries are then sent concurrently, each within a total deadline
(DEADLINE_SECONDS: DNS, connect, TLS, request and response headers together, however slowly a
receiver trickles bytes), and each outcome is recorded against the attempt that was claimed.
The sender runs on its own worker (`fdamerge webhooks`), apart from the reaper and the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import CursorResult, select, update

from service.clock import db_now
from service.db import session_scope
from service.models import WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from service.webhooks import DEADLINE_SECONDS, MAX_ATTEMPTS, TIMEOUT_SECONDS, backoff, post, sign

CONCURRENCY = 16
CLAIM_MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class Claimed:
    id: str
    attempt: int  # the attempt this sender owns
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    code: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


def deliver_due(settings: Settings, limit: int = 50) -> int:
    """One sender pass: every due delivery claimed is attempted once; returns how many were attempted."""
    claimed = claim_due(settings.database_url, limit)
    if not claimed:
        return 0
    outcomes = asyncio.run(send_all(claimed, settings.webhooks_allow_loopback))
    for delivery, outcome in zip(claimed, outcomes):
        record(settings.database_url, delivery, outcome)
    return len(claimed)


def claim_due(database_url: str, limit: int) -> list[Claimed]:
    lease = DEADLINE_SECONDS + CLAIM_MARGIN_SECONDS
    with session_scope(database_url) as session:
        due = select(WebhookDelivery.id, WebhookDelivery.attempts).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= db_now()
        )
        rows = session.execute(due.order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
        claimed = []
        for delivery_id, attempts in rows:
            won = update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == attempts, WebhookDelivery.next_attempt_at <= db_now(),
            )  # fmt: skip
            if cast(
                CursorResult, session.execute(won.values(attempts=attempts + 1, next_attempt_at=db_now(lease)))
            ).rowcount:
                claimed.append((delivery_id, attempts + 1))
        details = {}
        if claimed:
            query = (
                select(WebhookDelivery.id, WebhookDelivery.payload, WebhookEndpoint.url, WebhookEndpoint.secret)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.id.in_([delivery_id for delivery_id, _ in claimed]))
            )
            details = {row.id: row for row in session.execute(query)}
    return [
        Claimed(delivery_id, attempt, details[delivery_id].url, details[delivery_id].secret,
                json.dumps(details[delivery_id].payload, separators=(",", ":")).encode())
        for delivery_id, attempt in claimed if delivery_id in details
    ]  # fmt: skip


async def send_all(claimed: list[Claimed], allow_loopback: bool) -> list[Outcome]:
    import httpx

    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:

        async def one(delivery: Claimed) -> Outcome:
            async with gate:
                return await send_one(client, delivery, allow_loopback)

        return list(await asyncio.gather(*(one(delivery) for delivery in claimed)))


async def send_one(client, delivery: Claimed, allow_loopback: bool, deadline: float | None = None) -> Outcome:
    deadline = DEADLINE_SECONDS if deadline is None else deadline  # read at call time (tests shorten it)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(delivery.secret, delivery.id, timestamp, delivery.body),
    }
    try:
        async with asyncio.timeout(deadline):
            return Outcome(await post(client, delivery.url, delivery.body, headers, allow_loopback), None)
    except TimeoutError:
        return Outcome(None, f"TimeoutError: no complete answer within the {deadline:g} s delivery deadline")
    except Exception as exc:  # refused address, DNS, TLS, connection: this delivery's failure, nobody else's
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500])


def record(database_url: str, delivery: Claimed, outcome: Outcome) -> None:
    """The outcome of the attempt this sender claimed (a later claim, should this one have outlived its
    lease, owns the delivery instead and this write changes nothing)."""
    values: dict = {"last_status_code": outcome.code, "last_error": outcome.error}
    if outcome.succeeded:
        values.update(status="succeeded", delivered_at=db_now())
    elif delivery.attempt >= MAX_ATTEMPTS:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=db_now(backoff(delivery.attempt).total_seconds()))
    owned = update(WebhookDelivery).where(
        WebhookDelivery.id == delivery.id, WebhookDelivery.attempts == delivery.attempt,
        WebhookDelivery.status == "pending",
    )  # fmt: skip
    with session_scope(database_url) as session:
        session.execute(owned.values(**values))
