"""Reading jobs: cursor pages of a tenant's jobs (filtered) and of one job's events."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from service.errors import InvalidRequest
from service.models import Artifact, JobEvent, MergeJob, Metric

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True)
class JobFilter:
    statuses: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def page_size(limit: int | None) -> int:
    """The default when omitted; coerced down to the maximum."""
    return DEFAULT_LIMIT if limit is None or limit < 1 else min(limit, MAX_LIMIT)


def list_jobs(
    session: Session, tenant_id: str, filters: JobFilter, limit: int | None = None, after: str | None = None
) -> tuple[list[MergeJob], str | None]:
    """Newest first. Returns (jobs, next cursor or None)."""
    size = page_size(limit)
    query = _filtered(select(MergeJob).where(MergeJob.tenant_id == tenant_id), filters)
    if after:
        created, job_id = _decode(after)
        query = query.where(
            or_(MergeJob.created_at < created, and_(MergeJob.created_at == created, MergeJob.id < job_id))
        )
    rows = list(session.scalars(query.order_by(MergeJob.created_at.desc(), MergeJob.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, _encode(rows[-1]) if more else None


def as_utc(moment: datetime | None) -> datetime | None:
    """Query times without a zone are UTC (the API's times are all UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _filtered(query: Select, filters: JobFilter) -> Select:
    if filters.statuses:
        query = query.where(MergeJob.status.in_(filters.statuses))
    if filters.created_after:
        query = query.where(MergeJob.created_at >= as_utc(filters.created_after))
    if filters.created_before:
        query = query.where(MergeJob.created_at < as_utc(filters.created_before))
    for key, value in filters.metadata.items():
        query = query.where(MergeJob.metadata_[key].as_string() == value)
    return query


def _encode(job: MergeJob) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = as_utc(datetime.fromisoformat(created))
        assert moment is not None
        return moment, str(job_id)
    except (ValueError, TypeError, AssertionError) as exc:
        raise InvalidRequest("after: not a cursor this service issued", "after") from exc


def list_events(
    session: Session, job_id: str, after: int | None = None, limit: int | None = None
) -> tuple[list[JobEvent], int | None]:
    """Oldest first, after the event id `after`. Returns (events, next cursor or None)."""
    size = page_size(limit)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    rows = list(session.scalars(query.order_by(JobEvent.id).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, rows[-1].id if more else None


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.path)))


def metrics_of(session: Session, job_id: str) -> dict[str, dict]:
    return {m.name: m.value for m in session.scalars(select(Metric).where(Metric.job_id == job_id))}


def job_status(session: Session, job_id: str) -> str | None:
    job = session.get(MergeJob, job_id)
    return job.status if job is not None else None


def latest_events(session: Session, job_ids: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """For each job: (its newest event id, its status) — what an event stream waits on, for many jobs at once."""
    found: dict[str, tuple[int | None, str | None]] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        newest = select(JobEvent.job_id, func.max(JobEvent.id)).where(JobEvent.job_id.in_(chunk))
        ids = dict(session.execute(newest.group_by(JobEvent.job_id)).tuples().all())
        statuses = dict(
            session.execute(select(MergeJob.id, MergeJob.status).where(MergeJob.id.in_(chunk))).tuples().all()
        )
        found.update({job_id: (ids.get(job_id), statuses.get(job_id)) for job_id in chunk})
    return found
