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
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict, InvalidRequest, NotFound
from service.ids import new_id
from service.jobs import ACTIVE, JobRequest, insert_job
from service.models import MergeJob, Schedule, Tenant, utcnow
from service.submission import check_input_allowed

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
    template: dict[str, Any]  # {"config", "output", "metadata"}: a validated merge-job request
    overlap: str = "skip"
    paused: bool = False


def create_schedule(session: Session, tenant_id: str, spec: ScheduleSpec) -> Schedule:
    check_timing(spec.cron, spec.timezone)
    schedule = Schedule(
        id=new_id("sch"), tenant_id=tenant_id, name=spec.name, cron=spec.cron, timezone=spec.timezone,
        template=spec.template, overlap=spec.overlap, paused=spec.paused,
        next_fire_at=next_fire(spec.cron, spec.timezone, utcnow()),
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
    """Change cron, timezone, template, overlap or paused; the next fire time follows from now."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    for field, value in changes.items():
        setattr(schedule, field, value)
    check_timing(schedule.cron, schedule.timezone)
    schedule.next_fire_at = next_fire(schedule.cron, schedule.timezone, utcnow())
    session.commit()
    return schedule


def delete_schedule(session: Session, tenant_id: str, schedule_id: str) -> None:
    session.delete(get_schedule(session, tenant_id, schedule_id))  # its jobs stay, unlinked
    session.commit()


def recent_runs(session: Session, schedule_id: str, limit: int = 10) -> list[MergeJob]:
    query = select(MergeJob).where(MergeJob.schedule_id == schedule_id).order_by(MergeJob.fire_time.desc())
    return list(session.scalars(query.limit(limit)))


def trigger(session: Session, tenant_id: str, schedule_id: str, max_attempts: int) -> MergeJob:
    """A run now, outside the cron timing (its fire time is now)."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    job = _job_for(session, schedule, utcnow(), max_attempts)
    session.commit()
    return job


def tick(session: Session, max_attempts: int, now: datetime | None = None) -> list[str]:
    """Jobs for every due schedule (committed); returns their ids, to enqueue after this commit."""
    now = now or utcnow()
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
                _check_still_allowed(session, schedule)
                created.append(_job_for(session, schedule, fire_time, max_attempts).id)
        except IntegrityError:
            continue  # a concurrent tick made this fire time's job
        except Exception:  # e.g. an input no longer on the tenant's allowlist: this schedule's alone
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


def _check_still_allowed(session: Session, schedule: Schedule) -> None:
    """The tenant's allowlist may have shrunk since the schedule was made: inputs are checked at every fire."""
    allowed = tuple(session.get_one(Tenant, schedule.tenant_id).allowed_prefixes)
    config = schedule.template["config"]
    inputs = [("base_model", config.get("base_model"))] + [
        (f"models[{i}].model", m["model"]) for i, m in enumerate(config.get("models", []))
    ]
    for param, uri in inputs:
        if uri:
            check_input_allowed(uri, allowed, param)


def _job_for(session: Session, schedule: Schedule, fire_time: datetime, max_attempts: int) -> MergeJob:
    template = schedule.template
    metadata = {**template.get("metadata", {}), "schedule": schedule.name}
    request = JobRequest(template["config"], template.get("output"), metadata)
    return insert_job(session, schedule.tenant_id, request, max_attempts, schedule_id=schedule.id, fire_time=fire_time)


def _has_active_run(session: Session, schedule_id: str) -> bool:
    query = select(MergeJob.id).where(MergeJob.schedule_id == schedule_id, MergeJob.status.in_(("queued", *ACTIVE)))
    return session.scalars(query.limit(1)).first() is not None
