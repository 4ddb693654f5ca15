"""Webhook deliveries from one clock: an event recorded by a worker whose own clock runs minutes ahead is
due at once (found by bench/chaos.py's clock-ahead fault: such a worker's events waited out its skew)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service import models
from service.db import session_scope
from service.jobs import claim_job
from service.models import WebhookEndpoint
from service.webhook_sender import claim_due
from tests.integration.test_job_lifecycle import submit


class _FiveMinutesFast(datetime):
    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.now(tz) + timedelta(minutes=5)


def test_an_event_recorded_by_a_worker_whose_clock_is_fast_is_due_at_once(database_url: str, monkeypatch) -> None:
    with session_scope(database_url) as session:
        session.add(WebhookEndpoint(id="we_1", tenant_id="tn_a", url="https://example.com/hook", secret="whsec_x"))
    job_id = submit(database_url)
    monkeypatch.setattr(models, "datetime", _FiveMinutesFast)  # every utcnow() of this process, defaults included
    assert models.utcnow() > datetime.now(UTC) + timedelta(minutes=4)
    with session_scope(database_url) as session:  # the fast worker claims: merge_job.running is queued
        assert claim_job(session, job_id, worker_id="w1", lease_seconds=60) is not None
    monkeypatch.undo()  # the sender's machine keeps time
    claimed = claim_due(database_url, 10)
    assert [c.id for c in claimed] != [], "the delivery waited for the worker's clock"  # was: due in 5 minutes


def test_a_scheduler_whose_clock_is_fast_fires_nothing_before_its_time(database_url: str, monkeypatch) -> None:
    from sqlalchemy import update

    from service.models import Schedule
    from service.schedules import tick
    from tests.integration.test_schedules import SETTINGS, jobs_of, make

    schedule_id = make(database_url)
    with session_scope(database_url) as session:  # due in two minutes by the database's clock
        soon = datetime.now(UTC) + timedelta(minutes=2)
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_fire_at=soon))
    monkeypatch.setattr(models, "datetime", _FiveMinutesFast)  # the beat's machine, five minutes fast
    with session_scope(database_url) as session:
        assert tick(session, SETTINGS) == []  # was: fired three minutes early
    assert jobs_of(database_url, schedule_id) == []
