"""The merge job lifecycle: submit, claim with a lease, heartbeat, progress, finish, fail, cancel, reap.

States: queued → running → succeeded | failed; queued → cancelled; running → cancelling → cancelled
(or succeeded / failed: cancel is best effort). Every transition is one compare-and-set UPDATE, so
a duplicate queue delivery, a stale worker or a racing reaper can never move a job twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import counters
from service.clock import db_now
from service.errors import Conflict, IdempotencyMismatch, LeaseLost, NotFound
from service.ids import new_id
from service.models import Artifact, JobEvent, Leftover, MergeJob, Metric
from service.webhooks import record_event

if TYPE_CHECKING:
    from service.jobspec import JobSpec

ACTIVE = ("running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", *ACTIVE, *TERMINAL)


def submit_job(
    session: Session, *, tenant_id: str, request: JobSpec, idempotency_key: str | None = None, max_attempts: int = 3
) -> tuple[MergeJob, bool]:
    """A new queued job (committed), or the job an earlier request with this Idempotency-Key created.

    Returns (job, created). The same key with a different request raises IdempotencyMismatch.
    """
    if idempotency_key is not None:
        earlier = find_replay(session, tenant_id, idempotency_key, request)
        if earlier is not None:
            return earlier, False
    try:
        job = insert_job(session, tenant_id, request, max_attempts, idempotency_key=idempotency_key)
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        earlier = _by_idempotency_key(session, tenant_id, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return _replayed(earlier, request), False
    return job, True


def insert_job(session: Session, tenant_id: str, request: JobSpec, max_attempts: int, **links: Any) -> MergeJob:
    """A queued job and its first event, flushed but not committed (links: idempotency_key, schedule_id, fire_time)."""
    job = MergeJob(
        id=new_id("mj"), tenant_id=tenant_id, status="queued", stage="queued", config=request.config_document(),
        output_prefix=request.output, metadata_=dict(request.metadata), request_sha256=request.digest(),
        max_attempts=max_attempts, **links,
    )  # fmt: skip
    session.add(job)
    session.flush()  # the job row first: its events reference it
    session.add(JobEvent(job_id=job.id, kind="status", message="queued"))
    session.flush()
    return job


def find_replay(session: Session, tenant_id: str, key: str, request: JobSpec) -> MergeJob | None:
    """The job an earlier request with this Idempotency-Key created; IdempotencyMismatch if the body differs."""
    earlier = _by_idempotency_key(session, tenant_id, key)
    return _replayed(earlier, request) if earlier is not None else None


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> MergeJob | None:
    query = select(MergeJob).where(MergeJob.tenant_id == tenant_id, MergeJob.idempotency_key == key)
    return session.scalars(query).first()


def _replayed(job: MergeJob, request: JobSpec) -> MergeJob:
    if job.request_sha256 != request.digest():
        raise IdempotencyMismatch(f"Idempotency-Key was used for a different request (job {job.id})")
    return job


def output_base(job: MergeJob) -> str:
    """Where a job's output lives in storage: under its tenant and its own id, never shared."""
    return "/".join(part.strip("/") for part in (job.tenant_id, job.output_prefix, job.id) if part)


def attempt_prefix(base: str, attempt: int) -> str:
    return f"{base}/attempt-{attempt}"


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(MergeJob).where(MergeJob.id == job_id).values(enqueued_at=db_now()))
    session.commit()


def claim_sends(session: Session, job_ids: list[str]) -> list[str]:
    """Mark queued, unsent jobs as sent, by compare-and-set (in the caller's transaction): of several
    dispatchers that picked the same jobs, each job is won, and so sent, by one. Returns the won ids in
    the order given."""
    if not job_ids:
        return []
    won = session.scalars(
        update(MergeJob)
        .where(MergeJob.id.in_(job_ids), MergeJob.status == "queued", MergeJob.enqueued_at.is_(None))
        .values(enqueued_at=db_now())
        .returning(MergeJob.id)
    )
    ids = set(won)
    return [job_id for job_id in job_ids if job_id in ids]


def unmark_sent(session: Session, job_ids: list[str]) -> None:
    """Claimed sends that did not reach the broker: waiting again (the next dispatch or reaper tick sends them)."""
    session.execute(
        update(MergeJob).where(MergeJob.id.in_(job_ids), MergeJob.status == "queued").values(enqueued_at=None)
    )


def get_job(session: Session, tenant_id: str, job_id: str) -> MergeJob:
    """The tenant's job; another tenant's job is NotFound, never forbidden."""
    job = session.get(MergeJob, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no merge job {job_id!r}")
    return job


def claim_job(session: Session, job_id: str, *, worker_id: str, lease_seconds: float) -> MergeJob | None:
    """Take the job for this worker, or None when it is not claimable (already running elsewhere,
    finished, or its attempts used up): a duplicate delivery then simply exits. The attempt's output
    prefix is recorded as a leftover in the same transaction, before anything can be written there."""
    claimable = or_(
        MergeJob.status == "queued",
        (MergeJob.status == "running")
        & (MergeJob.lease_expires_at < db_now())
        & (MergeJob.attempt < MergeJob.max_attempts),
    )
    values = {
        "status": "running", "stage": "starting", "worker_id": worker_id, "attempt": MergeJob.attempt + 1,
        "lease_expires_at": db_now(lease_seconds), "started_at": func.coalesce(MergeJob.started_at, db_now()),
    }  # fmt: skip
    if _changed(session, update(MergeJob).where(MergeJob.id == job_id, claimable).values(**values)) != 1:
        session.rollback()
        return None
    job = session.get(MergeJob, job_id, populate_existing=True)
    assert job is not None
    session.merge(Leftover(job_id=job_id, attempt=job.attempt, prefix=attempt_prefix(output_base(job), job.attempt)))
    session.add(JobEvent(job_id=job_id, kind="status", attempt=job.attempt, message=f"running on {worker_id}"))
    record_event(session, job, "running")
    session.commit()
    return job


def is_claimable(session: Session, job_id: str) -> bool:
    """Whether a delivery of this job could claim it now (the worker's parent asks before using a
    process: a cancelled or finished job's message is dropped without work)."""
    claimable = or_(
        MergeJob.status == "queued",
        (MergeJob.status == "running")
        & (MergeJob.lease_expires_at < db_now())
        & (MergeJob.attempt < MergeJob.max_attempts),
    )
    return session.scalar(select(MergeJob.id).where(MergeJob.id == job_id, claimable)) is not None


def heartbeat(session: Session, job_id: str, *, worker_id: str, lease_seconds: float) -> bool:
    """Renew this worker's lease; returns whether a cancel was requested. LeaseLost if another worker owns it."""
    owned = _owned(job_id, worker_id)
    renewed = _changed(session, update(MergeJob).where(*owned).values(lease_expires_at=db_now(lease_seconds)))
    if renewed != 1:
        session.rollback()
        raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")
    cancel = bool(session.scalar(select(MergeJob.cancel_requested).where(MergeJob.id == job_id)))
    session.commit()
    return cancel


def record_progress(
    session: Session, job_id: str, *, worker_id: str, stage: str, progress: float, message: str = "", data=None
) -> None:
    """Stage, progress (0–1) and a progress event, by the job's owner only."""
    changed = _changed(
        session,
        update(MergeJob).where(*_owned(job_id, worker_id)).values(stage=stage, progress=max(0.0, min(1.0, progress))),
    )
    if changed != 1:
        session.rollback()
        raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")
    attempt = session.scalar(select(MergeJob.attempt).where(MergeJob.id == job_id)) or 0
    session.add(JobEvent(job_id=job_id, kind="progress", attempt=attempt, message=message, data=data or {}))
    session.commit()


def finish_job(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    result: dict[str, Any],
    artifacts: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
) -> None:
    """succeeded, with its artifacts and metrics, in one transaction: the owner's result lands exactly once.
    The winning attempt's leftover row goes in the same transaction: its files are the job's output now."""
    attempt = _end(session, job_id, worker_id, "succeeded", result=result, progress=1.0, stage="done")
    session.add_all(Artifact(job_id=job_id, **artifact) for artifact in artifacts)
    session.add_all(Metric(job_id=job_id, name=name, value=value) for name, value in metrics.items())
    session.execute(delete(Leftover).where(Leftover.job_id == job_id, Leftover.attempt == attempt))
    counters.add(session, counters.totals_of_result(result, sum(float(a["size"]) for a in artifacts)))
    session.commit()


def published(session: Session, job_id: str, output_uri: str) -> bool:
    """Whether the job ended succeeded with this output (a finish whose reply was lost may have committed)."""
    job = session.get(MergeJob, job_id, populate_existing=True)
    return job is not None and job.status == "succeeded" and (job.result or {}).get("output") == output_uri


def fail_job(
    session: Session, job_id: str, *, worker_id: str, code: str, message: str, param: str | None = None
) -> None:
    _end(session, job_id, worker_id, "failed", error_code=code, error_message=message, error_param=param)
    session.commit()


def cancelled_by_worker(session: Session, job_id: str, *, worker_id: str) -> None:
    """The worker stopped at a cancel request; nothing was written."""
    _end(session, job_id, worker_id, "cancelled", stage="cancelled")
    session.commit()


def _end(session: Session, job_id: str, worker_id: str, status: str, **values: Any) -> int:
    """The owner's terminal transition; returns the attempt that made it."""
    ended = _changed(
        session,
        update(MergeJob).where(*_owned(job_id, worker_id)).values(status=status, finished_at=db_now(), **values),
    )
    if ended != 1:
        session.rollback()
        raise LeaseLost(f"job {job_id} is no longer held by {worker_id}; not marking it {status}")
    message = values.get("error_message") or status
    attempt = int(session.scalar(select(MergeJob.attempt).where(MergeJob.id == job_id)) or 0)
    session.add(
        JobEvent(
            job_id=job_id, kind="status", attempt=attempt,
            message=f"{status}: {message}" if status == "failed" else status,
        )
    )  # fmt: skip
    if status == "failed":
        counters.add(session, {("failures", str(values.get("error_code") or "unknown")): 1.0})
    _announce(session, job_id, status)
    return attempt


def hand_back(session: Session, job_id: str, *, worker_id: str, reason: str, counts: bool) -> str:
    """The owner gives the job back to the queue: `counts` False (the worker is shutting down) does not
    use up an attempt; True (an infrastructure outage outlasted the attempt's retries) does, and with no
    attempts left the job fails with infrastructure_error. Returns the job's new status."""
    job = session.get(MergeJob, job_id, populate_existing=True)
    if job is None or job.worker_id != worker_id or job.status not in ACTIVE:
        session.rollback()
        raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")
    if job.status == "cancelling":
        _end(session, job_id, worker_id, "cancelled", stage="cancelled")
        session.commit()
        return "cancelled"
    if counts and job.attempt >= job.max_attempts:
        message = f"{reason} (on each of {job.attempt} attempts)"
        _end(session, job_id, worker_id, "failed", error_code="infrastructure_error", error_message=message)
        session.commit()
        return "failed"
    values: dict[str, Any] = {
        "status": "queued", "stage": "requeued", "worker_id": None, "lease_expires_at": None, "enqueued_at": None,
    }  # fmt: skip
    if not counts:
        values["max_attempts"] = MergeJob.max_attempts + 1  # this attempt did not count
    if _changed(session, update(MergeJob).where(*_owned(job_id, worker_id)).values(**values)) != 1:
        session.rollback()
        raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")
    session.add(JobEvent(job_id=job_id, kind="status", attempt=job.attempt, message=f"requeued: {reason}"))
    session.commit()
    return "queued"


def _announce(session: Session, job_id: str, status: str) -> None:
    """Webhook deliveries for this transition, in its transaction (the row re-read after the UPDATE)."""
    job = session.get(MergeJob, job_id, populate_existing=True)
    if job is not None:
        record_event(session, job, status)


def _changed(session: Session, statement: Any) -> int:
    """Rows an UPDATE changed: 1 means this compare-and-set won."""
    return cast(CursorResult, session.execute(statement)).rowcount


def _owned(job_id: str, worker_id: str) -> tuple:
    return MergeJob.id == job_id, MergeJob.worker_id == worker_id, MergeJob.status.in_(ACTIVE)


def request_cancel(session: Session, tenant_id: str, job_id: str) -> MergeJob:
    """queued → cancelled at once; running → cancelling (the worker stops at its next step)."""
    job = get_job(session, tenant_id, job_id)
    queued = update(MergeJob).where(MergeJob.id == job_id, MergeJob.status == "queued")
    if _changed(session, queued.values(status="cancelled", stage="cancelled", finished_at=db_now())) == 1:
        session.add(JobEvent(job_id=job_id, kind="status", message="cancelled before it started"))
        _announce(session, job_id, "cancelled")
    else:
        running = update(MergeJob).where(MergeJob.id == job_id, MergeJob.status.in_(ACTIVE))
        if _changed(session, running.values(status="cancelling", cancel_requested=True)) == 1:
            session.add(JobEvent(job_id=job_id, kind="status", message="cancelling"))
            _announce(session, job_id, "cancelling")
        else:
            session.rollback()
            ended = session.scalar(select(MergeJob.status).where(MergeJob.id == job_id))  # fresh, not the loaded row
            raise Conflict(f"job {job_id} already {ended}")
    session.commit()
    session.refresh(job)
    return job


@dataclass
class Reaped:
    requeued: list[str]  # to enqueue after the commit
    ended: list[str]  # jobs that ended (worker_lost, cancelled); their attempts' leftovers are garbage now


def retry_job(session: Session, tenant_id: str, job_id: str, max_attempts: int) -> MergeJob:
    """A failed or cancelled job back to queued (same id, fresh attempts, error cleared); send it after."""
    job = get_job(session, tenant_id, job_id)
    values = {
        "status": "queued", "stage": "retried", "progress": 0.0, "cancel_requested": False, "error_code": None,
        "error_message": None, "error_param": None, "finished_at": None, "worker_id": None,
        "lease_expires_at": None, "enqueued_at": None, "max_attempts": MergeJob.attempt + max_attempts,
    }  # fmt: skip
    retryable = (MergeJob.id == job_id, MergeJob.status.in_(("failed", "cancelled")))
    if _changed(session, update(MergeJob).where(*retryable).values(**values)) != 1:
        session.rollback()
        current = session.scalar(select(MergeJob.status).where(MergeJob.id == job_id))
        raise Conflict(f"job {job_id} is {current}; only failed or cancelled jobs can be retried")
    session.add(JobEvent(job_id=job_id, kind="status", attempt=job.attempt, message="retried: queued again"))
    session.commit()
    session.refresh(job)
    return job


def reap_expired(session: Session) -> Reaped:
    """Jobs whose worker stopped heartbeating (their lease passed, by the database's clock): re-queued
    while attempts remain, else failed with worker_lost; an abandoned cancelling job ends cancelled."""
    expired = select(MergeJob).where(MergeJob.status.in_(ACTIVE), MergeJob.lease_expires_at < db_now())
    reaped = Reaped([], [])
    for job in session.scalars(expired).all():
        outcome = _reap_one(session, job)
        if outcome == "queued":
            reaped.requeued.append(job.id)
        elif outcome != "skipped":
            reaped.ended.append(job.id)
    session.commit()
    return reaped


def _reap_one(session: Session, job: MergeJob) -> str:
    if job.status == "cancelling":
        values: dict[str, Any] = {"status": "cancelled", "stage": "cancelled", "finished_at": db_now()}
    elif job.attempt < job.max_attempts:
        values = {
            "status": "queued",
            "stage": "requeued",
            "worker_id": None,
            "lease_expires_at": None,
            "enqueued_at": None,
        }
    else:
        message = f"the worker was lost on each of {job.attempt} attempts"
        values = {"status": "failed", "error_code": "worker_lost", "error_message": message, "finished_at": db_now()}
    guard = (MergeJob.id == job.id, MergeJob.status == job.status, MergeJob.lease_expires_at == job.lease_expires_at)
    if _changed(session, update(MergeJob).where(*guard).values(**values)) != 1:
        return "skipped"  # a heartbeat or another reaper got there first
    session.add(
        JobEvent(job_id=job.id, kind="status", attempt=job.attempt, message=f"lease expired: {values['status']}")
    )
    if values["status"] == "failed":
        counters.add(session, {("failures", "worker_lost"): 1.0})
    _announce(session, job.id, str(values["status"]))
    return str(values["status"])


# --- leftovers: attempts' files that can never be published ---------------------------------------


def garbage_leftovers(session: Session, job_id: str | None = None, limit: int = 200) -> list[Leftover]:
    """Leftover rows whose attempt is not the one running now: that attempt can never publish
    (finish_job needs the owner of an active job, and deletes the winner's row itself)."""
    current = (MergeJob.status.in_(ACTIVE)) & (MergeJob.attempt == Leftover.attempt)
    query = select(Leftover).join(MergeJob, MergeJob.id == Leftover.job_id).where(~current)
    if job_id is not None:
        query = query.where(Leftover.job_id == job_id)
    return list(session.scalars(query.order_by(Leftover.created_at).limit(limit)))


def forget_leftover(session: Session, job_id: str, attempt: int) -> None:
    """The attempt's files are gone (deleted) or are the job's output; committed."""
    session.execute(delete(Leftover).where(Leftover.job_id == job_id, Leftover.attempt == attempt))
    session.commit()


def unclaimed(session: Session, older_than_seconds: float) -> list[str]:
    """Queued jobs sent to the queue longer ago than this and not claimed since (oldest first)."""
    query = select(MergeJob.id).where(
        MergeJob.status == "queued", MergeJob.enqueued_at.is_not(None),
        MergeJob.enqueued_at < db_now(-older_than_seconds),
    )  # fmt: skip
    return list(session.scalars(query.order_by(MergeJob.enqueued_at).limit(1000)))
