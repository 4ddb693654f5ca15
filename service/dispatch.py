"""Fair dispatch to the shared queue, and the per-tenant job quotas.

A tenant has at most `running_jobs_per_tenant` jobs on the queue or running at once (its window);
its other queued jobs wait in the database with `enqueued_at` unset and are sent, oldest first,
as its own jobs end (the worker dispatches the tenant's next job when an attempt ends; the reaper
tick catches anything missed). The broker is FIFO, so with T tenants a new job waits behind at
most T windows of jobs, however many one tenant has submitted. Two API processes racing may each
send one job into the same free slot: the window is a soft bound (one over per racing process).
"""

from __future__ import annotations

import logging

from sqlalchemy import ColumnElement, bindparam, func, literal, literal_column, or_, select, update
from sqlalchemy.orm import Session

from service.clock import db_now
from service.db import session_scope
from service.jobs import ACTIVE, claim_sends, unmark_sent
from service.limits import QuotaExceeded
from service.models import QUEUED, MergeJob
from service.queue import Dispatcher
from service.settings import Settings

log = logging.getLogger(__name__)


def in_flight(session: Session, tenant_id: str) -> int:
    """The tenant's jobs on the queue (sent, not yet claimed) or running."""
    sent = (MergeJob.status == "queued") & MergeJob.enqueued_at.is_not(None)
    query = select(func.count()).where(MergeJob.tenant_id == tenant_id, or_(MergeJob.status.in_(ACTIVE), sent))
    return int(session.scalar(query) or 0)


def next_to_send(session: Session, tenant_id: str, window: int) -> list[str]:
    """The tenant's oldest waiting jobs that fit in its window now."""
    free = window - in_flight(session, tenant_id)
    if free <= 0:
        return []
    waiting = select(MergeJob.id).where(
        MergeJob.tenant_id == tenant_id, MergeJob.status == QUEUED, MergeJob.enqueued_at.is_(None)
    )
    return list(session.scalars(waiting.order_by(MergeJob.created_at, MergeJob.id).limit(free)))


def waiting_tenants(session: Session) -> list[str]:
    query = select(MergeJob.tenant_id).where(MergeJob.status == QUEUED, MergeJob.enqueued_at.is_(None))
    return sorted(set(session.scalars(query.distinct())))


def dispatch(settings: Settings, dispatcher: Dispatcher, tenant_id: str) -> list[str]:
    """Send what fits in the tenant's window (after the commit that queued it); returns the ids sent.

    The jobs are first claimed for sending (compare-and-set on `enqueued_at`, one short transaction),
    then enqueued: concurrent submits of one tenant each send only the jobs they won, never the same
    one again. A broker outage puts the unsent ones back to waiting (the reaper's next tick sends
    them); a crash between claim and enqueue leaves a job marked sent with no message, which the
    reaper re-sends after `unclaimed_after_seconds` (service.reaper.resend_unclaimed)."""
    with session_scope(settings.database_url) as session:
        due = next_to_send(session, tenant_id, settings.limits.running_jobs_per_tenant)
        claimed = claim_sends(session, due)
    return send_claimed(settings, dispatcher, claimed)


def claim_window(session: Session, tenant_id: str, window: int) -> list[str]:
    """`next_to_send` and `claim_sends` in one statement, in the caller's transaction (a submit's own, so
    its insert and its send claim commit together): the tenant's oldest waiting jobs that fit in its
    window, marked sent by compare-and-set. A job another dispatcher claimed first fails the re-checked
    `enqueued_at IS NULL` and is not returned. Returns the ids won, oldest first."""
    won = session.execute(CLAIM_WINDOW, {"for_tenant": tenant_id, "window": window}).all()
    return [job_id for job_id, _ in sorted(won, key=lambda row: (row[1], row[0]))]


def free_slots(tenant: ColumnElement[str], window: ColumnElement[int]) -> ColumnElement[int]:
    """The tenant's window less its jobs in flight (sent, not yet claimed, or running), counted up to the
    window only (never more rows than the window is wide): never negative, one scan."""
    jobs = MergeJob.__table__.c
    sent = (jobs.status == "queued") & jobs.enqueued_at.is_not(None)
    active = jobs.status.in_([literal_column(f"'{status}'") for status in ACTIVE])  # constants in the SQL: an
    # expanding IN parameter is re-rendered into the statement at every execution (~2 % of a submit's API CPU)
    in_flight = select(literal(1)).where(jobs.tenant_id == tenant, or_(active, sent)).limit(window)
    return window - select(func.count()).select_from(in_flight.subquery()).scalar_subquery()


def waiting_where(tenant: ColumnElement[str]) -> tuple[ColumnElement[bool], ...]:
    """The tenant's waiting jobs (queued, never sent): exactly the rows of the partial index
    ix_merge_jobs_waiting (`'queued'` written into the SQL: a bound status cannot use it)."""
    jobs = MergeJob.__table__.c
    return jobs.tenant_id == tenant, jobs.status == QUEUED, jobs.enqueued_at.is_(None)


def _claim_window_statement():  # built once: constructing the expression costs more than running it
    jobs, tenant, window = MergeJob.__table__.c, bindparam("for_tenant"), bindparam("window")
    waiting = (
        select(jobs.id)
        .where(*waiting_where(tenant))
        .order_by(jobs.created_at, jobs.id)
        .limit(free_slots(tenant, window))
    )
    return (
        update(MergeJob.__table__)
        .where(jobs.id.in_(waiting), jobs.status == QUEUED, jobs.enqueued_at.is_(None))
        .values(enqueued_at=db_now())
        .returning(jobs.id, jobs.created_at)
    )


CLAIM_WINDOW = _claim_window_statement()


def send_claimed(settings: Settings, dispatcher: Dispatcher, claimed: list[str]) -> list[str]:
    """Enqueue jobs whose send this process claimed (after the claim's commit); a broker that refuses
    puts the rest back to waiting. Returns the ids sent."""
    for index, job_id in enumerate(claimed):
        try:
            dispatcher.enqueue(job_id)
        except Exception:
            log.exception("job %s accepted but not yet enqueued; the reaper will retry", job_id)
            _put_back(settings, claimed[index:])
            return claimed[:index]
    return claimed


def _put_back(settings: Settings, job_ids: list[str]) -> None:
    try:
        with session_scope(settings.database_url) as session:
            unmark_sent(session, job_ids)
    except Exception:  # the database is down too: the reaper re-sends them as unclaimed
        log.exception("jobs %s: could not mark them unsent; the reaper re-sends them", ", ".join(job_ids))


def dispatch_all(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    with session_scope(settings.database_url) as session:
        tenants = waiting_tenants(session)
    return [job_id for tenant_id in tenants for job_id in dispatch(settings, dispatcher, tenant_id)]


def check_queue_quota(session: Session, tenant_id: str, settings: Settings) -> None:
    """429 when the tenant already has its limit of queued jobs (they clear as its jobs run)."""
    limit = settings.limits.queued_jobs_per_tenant
    query = select(func.count()).where(MergeJob.tenant_id == tenant_id, MergeJob.status == "queued")
    queued = int(session.scalar(query) or 0)
    if queued >= limit:
        raise QuotaExceeded(f"this tenant has {queued} queued jobs; wait for some to start", "queued_jobs_per_tenant")
