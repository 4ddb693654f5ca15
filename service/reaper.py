"""Periodic work: the reaper (expired leases back to the queue after the commit, or ended with their
leftovers deleted; queued jobs whose message never reached the queue sent again) and the scheduler tick."""

from __future__ import annotations

import logging

from service.db import session_scope
from service.jobs import mark_enqueued, reap_expired
from service.queue import Dispatcher
from service.settings import Settings
from service.storage import make_storage

log = logging.getLogger(__name__)


def reap_and_requeue(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    """Returns the jobs sent to the queue: those whose lease expired (back in their tenant's window)
    and every waiting job that now fits its tenant's window (service.dispatch)."""
    from service.dispatch import dispatch_all

    with session_scope(settings.database_url) as session:
        reaped = reap_expired(session)
    if reaped.ended:
        storage = make_storage(settings.storage_url, settings.s3_endpoint_url, settings.s3_region)
        for base in reaped.ended:
            storage.delete_prefix(base)
    return dispatch_all(settings, dispatcher)


def send(settings: Settings, dispatcher: Dispatcher, job_id: str) -> None:
    """Enqueue, then record that the queue has it (a crash in between only causes a harmless resend)."""
    dispatcher.enqueue(job_id)
    with session_scope(settings.database_url) as session:
        mark_enqueued(session, job_id)


def send_quietly(settings: Settings, dispatcher: Dispatcher, job_id: str) -> None:
    """After the commit. If the broker is down the job stays accepted and the next reaper tick sends it."""
    try:
        send(settings, dispatcher, job_id)
    except Exception:
        log.exception("job %s accepted but not yet enqueued; the reaper will retry", job_id)


def fire_schedules(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    """One scheduler tick: jobs for the due schedules, committed, then sent as their tenants' windows allow."""
    from service.dispatch import dispatch
    from service.models import MergeJob
    from service.schedules import tick

    with session_scope(settings.database_url) as session:
        created = tick(session, settings)
        tenants = {session.get_one(MergeJob, job_id).tenant_id for job_id in created}
    for tenant_id in sorted(tenants):
        dispatch(settings, dispatcher, tenant_id)
    return created


def deliver_webhooks(settings: Settings) -> int:
    """One sender pass: every due delivery attempted once; returns how many were attempted."""
    from service.models import WebhookDelivery
    from service.webhooks import attempt_delivery, due_deliveries

    with session_scope(settings.database_url) as session:
        due = [delivery.id for delivery in due_deliveries(session)]
    for delivery_id in due:  # one transaction per delivery: a slow or broken endpoint holds up no other
        with session_scope(settings.database_url) as session:
            delivery = session.get(WebhookDelivery, delivery_id, with_for_update={"skip_locked": True})
            if delivery is not None and delivery.status == "pending":
                attempt_delivery(session, delivery, settings.webhooks_allow_loopback)
    return len(due)
