"""Webhooks (Standard Webhooks): endpoints per tenant, deliveries written in the job's own transaction
(an outbox), sent by a periodic task with backoff, signed `v1,<base64 HMAC-SHA256(id.timestamp.body)>`.

SSRF guard: https only; the host is resolved once and every address must be public (no private,
loopback, link-local, multicast, reserved or metadata addresses); the request then goes to that
checked address (TLS still verifies the hostname), so DNS cannot swap in another address between
check and connect; redirects are not followed. FDA_WEBHOOKS_ALLOW_LOOPBACK=true admits http to
loopback, for local development and tests.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import secrets
import socket
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fdamerge_client.webhooks import signature
from service.clock import db_now
from service.errors import InvalidRequest, NotFound
from service.ids import new_id
from service.limits import LimitExceeded
from service.models import MergeJob, WebhookDelivery, WebhookEndpoint, utcnow

EVENTS = ("merge_job.running", "merge_job.succeeded", "merge_job.failed", "merge_job.cancelled", "merge_job.cancelling")
MAX_ATTEMPTS = 8
TIMEOUT_SECONDS = 10.0  # each of connect, write, read
DEADLINE_SECONDS = 15.0  # a whole delivery, however the receiver trickles its answer


# --- endpoints -----------------------------------------------------------------------------------


def create_endpoint(
    session: Session,
    tenant_id: str,
    url: str,
    events: list[str],
    allow_loopback: bool,
    max_endpoints: int | None = None,
) -> WebhookEndpoint:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise InvalidRequest(f"events: unknown {', '.join(unknown)}; choose from {', '.join(EVENTS)}", "events")
    if max_endpoints is not None:
        count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)) or 0
        if count >= max_endpoints:
            raise LimitExceeded(f"this tenant has {count} webhook endpoints", "url", "webhook_endpoints_per_tenant")
    check_url(url, allow_loopback)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    endpoint = WebhookEndpoint(id=new_id("we"), tenant_id=tenant_id, url=url, events=events, secret=secret)
    session.add(endpoint)
    session.commit()
    return endpoint


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != tenant_id:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}")
    return endpoint


def list_endpoints(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id).order_by(WebhookEndpoint.created_at)
    return list(session.scalars(query))


def delete_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> None:
    session.delete(get_endpoint(session, tenant_id, endpoint_id))
    session.commit()


def deliveries_of(session: Session, endpoint_id: str, limit: int = 100) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return list(session.scalars(query.order_by(WebhookDelivery.created_at.desc()).limit(limit)))


# --- events: written with the transition that caused them --------------------------------------


def record_event(session: Session, job: MergeJob, status: str) -> None:
    """Queue `merge_job.<status>` for every active endpoint of the job's tenant that wants it (not committed)."""
    event = f"merge_job.{status}"
    if event not in EVENTS:
        return
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == job.tenant_id, WebhookEndpoint.active.is_(True))
    for endpoint in session.scalars(query):
        if endpoint.events and event not in endpoint.events:
            continue
        payload = {"type": event, "timestamp": utcnow().isoformat(), "data": _job_summary(job, status)}
        session.add(  # due by the database's clock: the writer's may run ahead (service.clock)
            WebhookDelivery(
                id=new_id("msg"), endpoint_id=endpoint.id, event=event, payload=payload, next_attempt_at=db_now()
            )
        )


def _job_summary(job: MergeJob, status: str) -> dict[str, Any]:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {"id": job.id, "object": "merge_job", "status": status, "attempt": job.attempt, "error": error,
            "result": job.result, "metadata": job.metadata_}  # fmt: skip


# --- sending -------------------------------------------------------------------------------------


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 over "id.timestamp.body" with the secret's key bytes>."""
    return "v1," + signature(secret, message_id, timestamp, body)  # the same code receivers verify with


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s … capped at an hour, ±20 % jitter so endpoints coming back are not stampeded."""
    base = min(3600.0, 5.0 * 2 ** (attempts - 1))
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


async def post(client, url: str, body: bytes, headers: dict[str, str], allow_loopback: bool) -> int:
    """POST to the checked address; returns the status code. Redirects are answers, not followed."""
    import asyncio

    target = await asyncio.to_thread(check_url, url, allow_loopback)  # DNS: inside the caller's deadline
    parts = urlsplit(url)
    pinned = parts._replace(netloc=f"{_bracketed(target.address)}:{target.port}").geturl()
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    async with client.stream(
        "POST", pinned, content=body, headers={**headers, "host": parts.netloc}, extensions=extensions
    ) as response:
        return response.status_code  # the body is never read: a receiver cannot make us download it


class _Target:
    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port


def check_url(url: str, allow_loopback: bool) -> _Target:
    """The one address this URL may be sent to, or InvalidRequest saying why not."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port  # .port raises on a port outside 0–65535
    except ValueError as exc:
        raise InvalidRequest(f"url: {url[:200]!r} is not a valid URL ({exc})", "url") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise InvalidRequest(f"url: {url[:200]!r} is not an http(s) URL", "url")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise InvalidRequest(f"url: cannot resolve {hostname[:200]!r} ({exc})", "url") from None
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    loopback_only = all(a.is_loopback for a in addresses)
    if allow_loopback and loopback_only:
        return _Target(str(sorted(addresses, key=str)[0]), port)
    if parts.scheme != "https":
        raise InvalidRequest(f"url: {url!r} must be https", "url")
    if not all(_public(address) for address in addresses):
        raise InvalidRequest(f"url: {hostname} resolves to a non-public address", "url")
    return _Target(str(sorted(addresses, key=str)[0]), port)


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable, not multicast, and no private IPv4 hidden inside an IPv6 form."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in SITE_LOCAL:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and (any(address in net for net in NAT64) or int(address) >> 32 == 0):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # NAT64 / IPv4-compatible
        if embedded is not None and not _public(embedded):
            return False
    return True


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address
