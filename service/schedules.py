"""Scheduled merges: a cron expression in a time zone makes jobs from a template, one per fire time.

A periodic tick takes the due schedules (`FOR UPDATE SKIP LOCKED` on PostgreSQL), advances each to
its next fire time and inserts the job inside a savepoint. The unique (schedule_id, fire_time) on
merge_jobs makes a second, concurrent tick's insert fail harmlessly, so a fire time never yields
two jobs. Missed fire times (the service was down) collapse into one run, stamped with the first of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.clock import database_time
from service.dispatch import check_queue_quota
from service.errors import Conflict, InvalidRequest, NotFound, ServiceError
from service.ids import new_id
from service.jobs import ACTIVE, insert_job
from service.jobspec import JobSpec
from service.limits import LimitExceeded
from service.models import MergeJob, Schedule, utcnow
from service.settings import Settings
from service.submission import recheck

OVERLAP = ("skip", "queue")
log = logging.getLogger(__name__)


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after `after`, read in the schedule's zone, in UTC.

    When clocks go back, a wall-clock time happens twice; it fires once (the first occurrence).
    """
    local = after.astimezone(ZoneInfo(timezone))
    times = croniter(cron, local)
    candidate = times.get_next(datetime)
    while candidate.replace(tzinfo=None) == local.replace(tzinfo=None):  # the repeated hour's second pass
        candidate = times.get_next(datetime)
    return candidate.astimezone(UTC)


def check_timing(cron: str, timezone: str) -> None:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"timezone: {timezone!r} is not an IANA time zone (e.g. Europe/Paris)", "timezone"
        ) from None
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidRequest(f"cron: {cron!r} is not a five-field cron expression (e.g. '0 2 * * *')", "cron")
    try:
        next_fire(cron, timezone, utcnow())
    except (CroniterBadDateError, CroniterBadCronError):
        raise InvalidRequest(f"cron: {cron!r} never fires (e.g. 31 February)", "cron") from None


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    cron: str
    timezone: str
    template: JobSpec  # what each run submits, stored as JobSpec.stored()
    overlap: str = "skip"
    paused: bool = False


def create_schedule(session: Session, tenant_id: str, spec: ScheduleSpec, max_schedules: int | None = None) -> Schedule:
    check_timing(spec.cron, spec.timezone)
    if max_schedules is not None:
        count = session.scalar(select(func.count()).where(Schedule.tenant_id == tenant_id)) or 0
        if count >= max_schedules:
            raise LimitExceeded(f"this tenant has {count} schedules", "name", "schedules_per_tenant")
    schedule = Schedule(
        id=new_id("sch"), tenant_id=tenant_id, name=spec.name, cron=spec.cron, timezone=spec.timezone,
        template=spec.template.stored(), overlap=spec.overlap, paused=spec.paused,
        next_fire_at=next_fire(spec.cron, spec.timezone, database_time(session)),
    )  # fmt: skip
    session.add(schedule)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a schedule named {spec.name!r} already exists") from None
    return schedule


def get_schedule(session: Session, tenant_id: str, schedule_id: str) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or schedule.tenant_id != tenant_id:
        raise NotFound(f"no schedule {schedule_id!r}")
    return schedule


def list_schedules(session: Session, tenant_id: str) -> list[Schedule]:
    return list(session.scalars(select(Schedule).where(Schedule.tenant_id == tenant_id).order_by(Schedule.name)))


def update_schedule(session: Session, tenant_id: str, schedule_id: str, **changes: Any) -> Schedule:
    """Change cron, timezone, template (a JobSpec), overlap or paused; the next fire time follows from now."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    for field, value in changes.items():
        setattr(schedule, field, value.stored() if isinstance(value, JobSpec) else value)
    check_timing(schedule.cron, schedule.timezone)
    schedule.next_fire_at = next_fire(schedule.cron, schedule.timezone, database_time(session))
    session.commit()
    return schedule


def delete_schedule(session: Session, tenant_id: str, schedule_id: str) -> None:
    session.delete(get_schedule(session, tenant_id, schedule_id))  # its jobs stay, unlinked
    session.commit()


def recent_runs(session: Session, schedule_id: str, limit: int = 10) -> list[MergeJob]:
    query = select(MergeJob).where(MergeJob.schedule_id == schedule_id).order_by(MergeJob.fire_time.desc())
    return list(session.scalars(query.limit(limit)))


def trigger(session: Session, tenant_id: str, schedule_id: str, settings: Settings) -> MergeJob:
    """A run now, outside the cron timing (its fire time is now); its inputs checked against the
    tenant's allowlist as it is now, and the tenant's queue quota."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    spec = _spec_of(schedule)
    recheck(session, settings, tenant_id, spec)
    check_queue_quota(session, tenant_id, settings)
    job = _job_for(session, schedule, spec, utcnow(), settings.max_attempts)
    session.commit()
    return job


def tick(session: Session, settings: Settings, now: datetime | None = None) -> list[str]:
    """Jobs for every due schedule (committed); returns their ids, to enqueue after this commit."""
    now = now or database_time(session)  # the database's clock: the beat's own may run ahead (service.clock)
    due = (
        select(Schedule)
        .where(Schedule.paused.is_(False), Schedule.next_fire_at <= now)
        .with_for_update(skip_locked=True)
    )
    created = []
    for schedule in session.scalars(due).all():
        fire_time = _advance(schedule, now)  # outside the savepoint: a failing schedule still moves on
        if schedule.overlap == "skip" and _has_active_run(session, schedule.id):
            schedule.skipped += 1
            continue
        try:
            with session.begin_nested():
                spec = _spec_of(schedule)
                recheck(session, settings, schedule.tenant_id, spec)  # the allowlist may have shrunk since
                check_queue_quota(session, schedule.tenant_id, settings)
                created.append(_job_for(session, schedule, spec, fire_time, settings.max_attempts).id)
        except IntegrityError:
            continue  # a concurrent tick made this fire time's job
        except (
            ServiceError
        ) as exc:  # an input no longer allowed, a disabled tenant, a full queue: this schedule's alone
            log.warning("schedule %s could not fire at %s: %s", schedule.id, fire_time, exc)
            schedule.skipped += 1
        except Exception:
            log.exception("schedule %s could not fire at %s", schedule.id, fire_time)
            schedule.skipped += 1
    session.commit()
    return created


def _advance(schedule: Schedule, now: datetime) -> datetime:
    """The fire time due now; the schedule moves to its next one after `now` (missed ones collapse)."""
    fire_time = schedule.next_fire_at
    assert fire_time is not None
    schedule.next_fire_at = next_fire(schedule.cron, schedule.timezone, max(now, fire_time))
    schedule.last_fire_at = fire_time
    return fire_time


def _spec_of(schedule: Schedule) -> JobSpec:
    return JobSpec.from_stored(schedule.template).with_metadata(schedule=schedule.name)


def _job_for(session: Session, schedule: Schedule, spec: JobSpec, fire_time: datetime, max_attempts: int) -> MergeJob:
    return insert_job(session, schedule.tenant_id, spec, max_attempts, schedule_id=schedule.id, fire_time=fire_time)


def _has_active_run(session: Session, schedule_id: str) -> bool:
    query = select(MergeJob.id).where(MergeJob.schedule_id == schedule_id, MergeJob.status.in_(("queued", *ACTIVE)))
    return session.scalars(query.limit(1)).first() is not None
