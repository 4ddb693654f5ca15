"""The reaper against a real Redis broker: a queued job whose message was sent but is no longer on the
queue (a failed claim that Celery acked, a worker lost holding it, a broker that lost it) is sent again;
a job whose message is still waiting, or that a worker claimed, is left alone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import redis
from sqlalchemy import update

from service.db import session_scope
from service.jobs import claim_job, mark_enqueued
from service.models import MergeJob, utcnow
from service.queue import MERGE_QUEUE, CeleryDispatcher, waiting_job_ids
from service.reaper import reap_and_requeue, send
from service.settings import Settings
from tests.integration.test_job_lifecycle import job, submit


def sent_long_ago(url: str, *job_ids: str) -> None:
    with session_scope(url) as session:
        session.execute(
            update(MergeJob).where(MergeJob.id.in_(job_ids)).values(enqueued_at=utcnow() - timedelta(minutes=5))
        )


def test_a_queued_job_whose_message_was_lost_is_sent_again_once(
    database_url: str, redis_server, tmp_path: Path
) -> None:
    redis.Redis.from_url(redis_server.url).delete(MERGE_QUEUE)
    settings = Settings(
        database_url=database_url, broker_url=redis_server.url, storage_url=f"file://{tmp_path / 'storage'}",
        unclaimed_after_seconds=60,
    )  # fmt: skip
    dispatcher = CeleryDispatcher(redis_server.url)
    waiting, lost, claimed = submit(database_url), submit(database_url), submit(database_url)
    send(settings, dispatcher, waiting)  # its message is on the queue
    with session_scope(database_url) as session:
        mark_enqueued(session, lost)  # recorded as sent, but the broker has no message for it
        mark_enqueued(session, claimed)
        assert claim_job(session, claimed, worker_id="w1", lease_seconds=60) is not None
    sent_long_ago(database_url, waiting, lost, claimed)
    assert waiting_job_ids(redis_server.url) == {waiting}

    assert reap_and_requeue(settings, dispatcher) == [lost]
    assert waiting_job_ids(redis_server.url) == {waiting, lost}  # a message for it is waiting now
    assert (job(database_url, lost).status, job(database_url, lost).attempt) == ("queued", 0)
    assert reap_and_requeue(settings, dispatcher) == []  # sent just now: not again on the next tick


def test_a_lost_message_is_not_resent_before_the_timeout(database_url: str, redis_server, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_server.url).delete(MERGE_QUEUE)
    settings = Settings(
        database_url=database_url, broker_url=redis_server.url, storage_url=f"file://{tmp_path / 'storage'}",
        unclaimed_after_seconds=600,
    )  # fmt: skip
    lost = submit(database_url)
    with session_scope(database_url) as session:
        mark_enqueued(session, lost)
    sent_long_ago(database_url, lost)  # five minutes: a worker may still be about to claim it
    assert reap_and_requeue(settings, CeleryDispatcher(redis_server.url)) == []
