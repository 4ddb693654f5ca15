"""Periodic work: the reaper and the scheduler tick.

Each reaper tick: jobs whose lease expired go back to the queue (or end); leftovers of attempts that
can never publish are deleted (their rows stay until the delete succeeds, so a failed tick loses
nothing); queued jobs whose message was lost after it was sent are sent again; waiting jobs are sent
as their tenants' windows allow.
"""

from __future__ import annotations

import logging

from service.db import session_scope
from service.jobs import forget_leftover, garbage_leftovers, mark_enqueued, reap_expired, unclaimed
from service.queue import Dispatcher, waiting_job_ids
from service.settings import Settings
from service.storage import Storage, storage_of

log = logging.getLogger(__name__)


def reap_and_requeue(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    """Returns the jobs sent to the queue: those whose lease expired (back in their tenant's window),
    those whose message was lost, and every waiting job that now fits its tenant's window."""
    from service.dispatch import dispatch_all

    with session_scope(settings.database_url) as session:
        reap_expired(session)
    try:
        clean_leftovers(settings)
    except Exception:
        log.exception("deleting leftovers failed; the next tick retries")
    resent = resend_unclaimed(settings, dispatcher)
    return resent + dispatch_all(settings, dispatcher)


def clean_leftovers(settings: Settings, job_id: str | None = None, storage: Storage | None = None) -> int:
    """Delete the files of attempts that can never publish (all jobs, or one); returns how many went."""
    storage = storage or storage_of(settings)
    with session_scope(settings.database_url) as session:
        garbage = [(row.job_id, row.attempt, row.prefix) for row in garbage_leftovers(session, job_id)]
    for job, attempt, prefix in garbage:
        storage.delete_prefix(prefix)
        with session_scope(settings.database_url) as session:
            forget_leftover(session, job, attempt)
    return len(garbage)


def resend_unclaimed(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    """Queued jobs that were sent but that nobody claimed, and whose message the broker no longer holds
    (a failed claim acked by Celery, a worker lost holding it, a broker that lost it): sent again. The
    claim is a compare-and-set, so a duplicate message only costs the worker a database read."""
    try:
        waiting = waiting_job_ids(settings.broker_url)  # the broker first: a job claimed meanwhile is not queued
    except Exception:
        log.warning("cannot read the merge queue; lost messages are re-sent once it answers", exc_info=True)
        return []
    if waiting is None:
        return []
    with session_scope(settings.database_url) as session:
        lost = [job_id for job_id in unclaimed(session, settings.unclaimed_after_seconds) if job_id not in waiting]
    resent = []
    for job_id in lost:
        try:
            send(settings, dispatcher, job_id)
            resent.append(job_id)
        except Exception:
            log.exception("job %s: its message was lost and re-sending failed; the next tick retries", job_id)
            break
    if resent:
        log.warning("re-sent %d queued jobs whose messages were lost: %s", len(resent), ", ".join(resent[:20]))
    return resent


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
    """One webhook sender pass (service.webhook_sender)."""
    from service.webhook_sender import deliver_due

    return deliver_due(settings)
