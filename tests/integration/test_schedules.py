"""Schedules on SQLite and a real PostgreSQL: one job per fire time even under concurrent ticks."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from service.db import session_scope
from service.errors import Conflict, InvalidRequest
from service.jobspec import JobSpec
from service.models import MergeJob, Schedule
from service.schedules import ScheduleSpec, create_schedule, next_fire, tick, trigger, update_schedule
from service.settings import Settings
from tests.integration.test_job_lifecycle import CONFIG

TEMPLATE = {"config": CONFIG, "output": "nightly", "metadata": {"team": "a"}}
SETTINGS = Settings()  # tick and trigger read the limits and the tenant's allowlist (s3://b for tenant a)


def make(url: str, **fields) -> str:
    fields["template"] = JobSpec.from_stored(fields.get("template", TEMPLATE))
    spec = ScheduleSpec(**{"name": "nightly", "cron": "0 2 * * *", "timezone": "UTC", **fields})
    with session_scope(url) as session:
        return create_schedule(session, "tn_a", spec).id


def make_due(url: str, schedule_id: str, when: datetime) -> None:
    with session_scope(url) as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_fire_at=when))


def jobs_of(url: str, schedule_id: str) -> list[MergeJob]:
    with session_scope(url) as session:
        return list(session.scalars(select(MergeJob).where(MergeJob.schedule_id == schedule_id)))


def test_next_fire_follows_the_time_zone_across_daylight_saving() -> None:
    before = datetime(2026, 3, 28, 12, tzinfo=UTC)  # Paris moves to summer time on 29 March
    first = next_fire("0 2 * * *", "Europe/Paris", before)
    assert first == datetime(2026, 3, 29, 1, tzinfo=UTC) or first == datetime(2026, 3, 29, 0, tzinfo=UTC)
    second = next_fire("0 2 * * *", "Europe/Paris", first)
    assert second == datetime(2026, 3, 30, 0, tzinfo=UTC)  # 02:00 CEST
    assert next_fire("30 9 * * 1", "UTC", datetime(2026, 11, 23, 9, 30, tzinfo=UTC)) == datetime(
        2026, 11, 30, 9, 30, tzinfo=UTC
    )


def test_a_due_schedule_makes_one_job_from_its_template_and_moves_on(database_url: str) -> None:
    schedule_id = make(database_url)
    fire = datetime(2026, 1, 1, 2, tzinfo=UTC)
    make_due(database_url, schedule_id, fire)
    with session_scope(database_url) as session:
        created = tick(session, SETTINGS)
        assert tick(session, SETTINGS) == []  # not due again until its next fire time
        schedule = session.get_one(Schedule, schedule_id)
        assert schedule.next_fire_at > datetime.now(UTC) and schedule.last_fire_at == fire
    [job] = jobs_of(database_url, schedule_id)
    assert (
        created == [job.id] and job.fire_time == fire and job.config == JobSpec.model_validate(CONFIG).config_document()
    )
    assert job.metadata_ == {"team": "a", "schedule": "nightly"} and job.output_prefix == "nightly"


def test_concurrent_ticks_make_exactly_one_job_per_fire_time(database_url: str) -> None:
    schedule_id = make(database_url, overlap="queue")
    make_due(database_url, schedule_id, datetime(2026, 1, 1, 2, tzinfo=UTC))
    barrier = threading.Barrier(6)
    made: list[str] = []
    errors: list[BaseException] = []

    def ticker() -> None:
        barrier.wait()
        try:
            with session_scope(database_url) as session:
                made.extend(tick(session, SETTINGS))
        except BaseException as exc:  # a tick that crashes on the race is a bug too
            errors.append(exc)

    threads = [threading.Thread(target=ticker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(jobs_of(database_url, schedule_id)) == 1 and len(made) == 1


def test_paused_schedules_do_not_fire_and_skip_overlap_waits_for_the_active_run(database_url: str) -> None:
    paused = make(database_url, name="paused", paused=True)
    skipping = make(database_url, name="skipping", overlap="skip")
    queueing = make(database_url, name="queueing", overlap="queue")
    for fire in (datetime(2026, 1, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, 2, tzinfo=UTC)):
        for schedule_id in (paused, skipping, queueing):
            make_due(database_url, schedule_id, fire)
        with session_scope(database_url) as session:
            tick(session, SETTINGS)
    assert jobs_of(database_url, paused) == []
    assert len(jobs_of(database_url, skipping)) == 1  # the first run is still queued: the second fire is skipped
    assert len(jobs_of(database_url, queueing)) == 2
    with session_scope(database_url) as session:
        assert session.get_one(Schedule, skipping).skipped == 1
        update_schedule(session, "tn_a", paused, paused=False)
        assert session.get_one(Schedule, paused).next_fire_at > datetime.now(UTC) - timedelta(seconds=1)


def test_trigger_runs_now_and_bad_timing_or_a_taken_name_is_refused(database_url: str) -> None:
    schedule_id = make(database_url)
    with session_scope(database_url) as session:
        job = trigger(session, "tn_a", schedule_id, SETTINGS)
    assert [j.id for j in jobs_of(database_url, schedule_id)] == [job.id]
    with pytest.raises(InvalidRequest, match="cron"):
        make(database_url, name="bad", cron="every day")
    with pytest.raises(InvalidRequest, match="timezone"):
        make(database_url, name="bad", timezone="Mars/Olympus")
    with pytest.raises(Conflict):
        make(database_url)


def test_a_daily_time_in_the_hour_that_repeats_fires_once() -> None:
    first = next_fire("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC))
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    assert next_fire("30 1 * * *", "America/New_York", first) == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)


@pytest.mark.parametrize("cron", ["* * * * * *", "0 0 31 2 *", "0 2 * *"])
def test_cron_expressions_must_have_five_fields_and_fire_some_day(database_url: str, cron: str) -> None:
    with pytest.raises(InvalidRequest, match="cron"):
        make(database_url, name="bad", cron=cron)


def test_a_schedule_whose_inputs_left_the_allowlist_skips_and_others_still_fire(database_url: str) -> None:
    blocked = make(
        database_url, name="blocked", template={**TEMPLATE, "config": {**CONFIG, "base_model": "s3://gone/base"}}
    )
    fine = make(database_url, name="fine")
    fire = datetime(2026, 1, 1, 2, tzinfo=UTC)
    for schedule_id in (blocked, fine):
        make_due(database_url, schedule_id, fire)
    with session_scope(database_url) as session:
        tick(session, SETTINGS)
        assert session.get_one(Schedule, blocked).skipped == 1
        assert session.get_one(Schedule, blocked).next_fire_at > datetime.now(UTC)  # moved on, not stuck
    assert jobs_of(database_url, blocked) == [] and len(jobs_of(database_url, fine)) == 1
