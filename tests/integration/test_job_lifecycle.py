"""The job lifecycle on both databases the service runs on: SQLite (embedded) and a real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, update

from service.db import make_engine, session_scope
from service.errors import Conflict, IdempotencyMismatch, LeaseLost, NotFound
from service.jobs import (
    cancelled_by_worker,
    claim_job,
    fail_job,
    finish_job,
    garbage_leftovers,
    get_job,
    heartbeat,
    reap_expired,
    record_progress,
    request_cancel,
    submit_job,
)
from service.jobspec import JobSpec
from service.models import Base, JobEvent, MergeJob, utcnow

CONFIG = {"method": "task_arithmetic", "base_model": "s3://b/base", "models": [{"model": "s3://b/a"}]}
LEASE = 60.0


def submit(url: str, key: str | None = None, config=CONFIG, tenant: str = "tn_a") -> str:
    with session_scope(url) as session:
        job, _ = submit_job(session, tenant_id=tenant, request=JobSpec.model_validate(config), idempotency_key=key)
        return job.id


def expire_lease(url: str, job_id: str) -> None:
    with session_scope(url) as session:
        session.execute(update(MergeJob).where(MergeJob.id == job_id).values(lease_expires_at=utcnow() - timedelta(1)))


def job(url: str, job_id: str) -> MergeJob:
    with session_scope(url) as session:
        return session.get_one(MergeJob, job_id)


def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_a_job_runs_from_queued_to_succeeded_with_its_artifacts_and_events(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_seconds=LEASE) is not None
        record_progress(session, job_id, worker_id="w1", stage="merge", progress=0.5, data={"layer": 3})
        assert heartbeat(session, job_id, worker_id="w1", lease_seconds=LEASE) is False
        artifact = {
            "kind": "model",
            "path": "model.safetensors",
            "uri": "s3://o/x",
            "size": 5 * 2**30,
            "sha256": "0" * 64,
        }
        finish_job(session, job_id, worker_id="w1", result={"tensors": 3}, artifacts=[artifact], metrics={"fda": {}})
    done = job(database_url, job_id)
    assert (done.status, done.attempt, done.progress, done.result) == ("succeeded", 1, 1.0, {"tensors": 3})
    assert done.started_at is not None and done.finished_at is not None and done.finished_at >= done.started_at
    with session_scope(database_url) as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
    assert [e.kind for e in events] == ["status", "status", "progress", "status"]
    assert events[2].data == {"layer": 3} and events[-1].message == "succeeded"


def test_a_second_delivery_of_the_same_job_does_not_run_it_again(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_seconds=LEASE) is not None
        assert claim_job(session, job_id, worker_id="w2", lease_seconds=LEASE) is None
    assert (job(database_url, job_id).worker_id, job(database_url, job_id).attempt) == ("w1", 1)


def test_concurrent_claims_let_exactly_one_worker_win(database_url: str) -> None:
    job_id = submit(database_url)
    won: list[str] = []
    barrier = threading.Barrier(8)

    def worker(name: str) -> None:
        barrier.wait()
        with session_scope(database_url) as session:
            if claim_job(session, job_id, worker_id=name, lease_seconds=LEASE) is not None:
                won.append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and job(database_url, job_id).worker_id == won[0]


def test_an_expired_lease_passes_the_job_to_another_worker_and_the_old_one_cannot_finish(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        claim_job(session, job_id, worker_id="w1", lease_seconds=LEASE)
    expire_lease(database_url, job_id)
    with session_scope(database_url) as session:
        assert claim_job(session, job_id, worker_id="w2", lease_seconds=LEASE) is not None
        with pytest.raises(LeaseLost):
            finish_job(session, job_id, worker_id="w1", result={}, artifacts=[], metrics={})
        with pytest.raises(LeaseLost):
            heartbeat(session, job_id, worker_id="w1", lease_seconds=LEASE)
        finish_job(session, job_id, worker_id="w2", result={}, artifacts=[], metrics={})
    assert (job(database_url, job_id).status, job(database_url, job_id).attempt) == ("succeeded", 2)


def test_the_reaper_requeues_lost_jobs_until_their_attempts_are_used_then_fails_them(database_url: str) -> None:
    job_id = submit(database_url)
    for attempt in (1, 2, 3):
        with session_scope(database_url) as session:
            claimed = claim_job(session, job_id, worker_id=f"w{attempt}", lease_seconds=LEASE)
            assert claimed is not None and claimed.attempt == attempt
        expire_lease(database_url, job_id)
        with session_scope(database_url) as session:
            reaped = reap_expired(session)
        assert reaped.requeued == ([job_id] if attempt < 3 else [])
        assert reaped.ended == ([] if attempt < 3 else [job_id])
        with session_scope(database_url) as session:  # each lost attempt's files are garbage from now on
            assert [row.attempt for row in garbage_leftovers(session)] == list(range(1, attempt + 1))
    lost = job(database_url, job_id)
    assert (lost.status, lost.error_code, lost.attempt) == ("failed", "worker_lost", 3)
    with session_scope(database_url) as session:
        assert claim_job(session, job_id, worker_id="w4", lease_seconds=LEASE) is None


def test_cancel_ends_a_queued_job_at_once_and_asks_a_running_one_to_stop(database_url: str) -> None:
    queued, running = submit(database_url), submit(database_url)
    with session_scope(database_url) as session:
        claim_job(session, running, worker_id="w1", lease_seconds=LEASE)
        assert request_cancel(session, "tn_a", queued).status == "cancelled"
        assert request_cancel(session, "tn_a", running).status == "cancelling"
        assert heartbeat(session, running, worker_id="w1", lease_seconds=LEASE) is True
        assert claim_job(session, queued, worker_id="w2", lease_seconds=LEASE) is None
        cancelled_by_worker(session, running, worker_id="w1")
        with pytest.raises(Conflict):
            request_cancel(session, "tn_a", running)
    assert job(database_url, running).status == "cancelled"


def test_a_cancelling_job_whose_worker_died_ends_cancelled(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        claim_job(session, job_id, worker_id="w1", lease_seconds=LEASE)
        request_cancel(session, "tn_a", job_id)
    expire_lease(database_url, job_id)
    with session_scope(database_url) as session:
        assert reap_expired(session).requeued == []
    assert job(database_url, job_id).status == "cancelled"


def test_a_failed_job_keeps_the_error_that_names_its_input(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        claim_job(session, job_id, worker_id="w1", lease_seconds=LEASE)
        fail_job(session, job_id, worker_id="w1", code="shape_mismatch", message="tensor 'x' …", param="models[0]")
    failed = job(database_url, job_id)
    assert (failed.status, failed.error_code, failed.error_param) == ("failed", "shape_mismatch", "models[0]")


def test_an_idempotency_key_replays_its_job_and_refuses_a_different_body(database_url: str) -> None:
    first = submit(database_url, key="k1")
    assert submit(database_url, key="k1") == first
    assert submit(database_url, key="k1", tenant="tn_b") != first  # keys are per tenant
    with pytest.raises(IdempotencyMismatch):
        submit(database_url, key="k1", config={**CONFIG, "method": "ties"})
    with session_scope(database_url) as session:
        assert len(session.scalars(select(MergeJob).where(MergeJob.tenant_id == "tn_a")).all()) == 1


def test_another_tenants_job_is_not_found(database_url: str) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        with pytest.raises(NotFound):
            get_job(session, "tn_b", job_id)
        with pytest.raises(NotFound):
            request_cancel(session, "tn_b", job_id)
        assert get_job(session, "tn_a", job_id).id == job_id


def test_upgrading_a_database_with_jobs_keeps_their_events_and_artifacts(tmp_path) -> None:
    from sqlalchemy import text

    from service.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    rows = [
        "INSERT INTO tenants (id, name, allowed_prefixes, created_at) VALUES ('tn', 'a', '[]', '2026-01-01')",
        "INSERT INTO merge_jobs (id, tenant_id, status, progress, config, metadata, attempt, max_attempts,"
        " cancel_requested, created_at) VALUES ('mj_1', 'tn', 'succeeded', 1, '{}', '{}', 1, 3, 0, '2026-01-01')",
        "INSERT INTO job_events (job_id, at, kind, attempt, message, data) VALUES ('mj_1', '2026-01-01', 'status', 1, 'x', '{}')",
        "INSERT INTO artifacts (job_id, kind, path, uri, size, sha256) VALUES ('mj_1', 'model', 'm', 'u', 1, 's')",
    ]
    with session_scope(url) as session:
        for row in rows:
            session.execute(text(row))
    upgrade(url)  # 0002 rebuilds merge_jobs on SQLite
    with session_scope(url) as session:
        counts = [
            session.scalar(text(f"SELECT count(*) FROM {table}")) for table in ("merge_jobs", "job_events", "artifacts")
        ]
    assert counts == [1, 1, 1]
