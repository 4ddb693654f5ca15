"""The submit path's own mechanisms (service/accept.py, claim_window, the Redis message): one transaction
for replay, quota, insert and send claim that still sends each job exactly once, answers replays and
quotas as before, and a Celery message on Redis identical to send_task's."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import Counter

import pytest
from sqlalchemy import select

from service.accept import SUBMITTER, accept_job, identify_submitter
from service.db import session_factory, session_scope
from service.errors import IdempotencyMismatch
from service.jobspec import JobSpec
from service.limits import Limits, QuotaExceeded
from service.models import JobEvent, MergeJob
from service.queue import MERGE_QUEUE, MERGE_TASK, CeleryDispatcher, _sender
from service.settings import Settings
from tests.integration.test_dispatch_once import Recording
from tests.integration.test_job_lifecycle import CONFIG, job, submit

SPEC = JobSpec.model_validate(CONFIG)


def accept(settings: Settings, dispatcher, key: str | None = None, spec: JobSpec = SPEC) -> tuple[MergeJob, bool]:
    session = session_factory(settings.database_url)()
    try:
        return accept_job(session, settings, dispatcher, "tn_a", spec, key)
    finally:
        session.close()


def test_a_submit_inserts_the_job_as_submit_job_does_and_sends_it(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    recording = Recording()
    made, created = accept(settings, recording, "k1")
    assert created and recording.sent == [made.id]
    stored = job(database_url, made.id)
    assert (stored.status, stored.stage, stored.attempt, stored.max_attempts, stored.idempotency_key) == (
        "queued", "queued", 0, settings.max_attempts, "k1",
    )  # fmt: skip
    assert stored.config == SPEC.config_document() and stored.request_sha256 == SPEC.digest()
    assert stored.created_at == made.created_at and stored.enqueued_at is not None
    with session_scope(database_url) as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == made.id)).all()
        assert [(e.kind, e.message, e.attempt, e.data) for e in events] == [("status", "queued", 0, {})]


def test_the_window_sends_the_oldest_waiting_jobs_first(database_url: str) -> None:
    settings = Settings(database_url=database_url, limits=Limits(running_jobs_per_tenant=2))
    older = [submit(database_url) for _ in range(3)]  # waiting, never sent
    recording = Recording()
    made, _ = accept(settings, recording)
    assert recording.sent == older[:2]  # the window is full: the new job waits behind them
    assert job(database_url, made.id).enqueued_at is None and job(database_url, older[2]).enqueued_at is None
    accept(settings, recording)
    assert recording.sent == older[:2]  # still full


def test_concurrent_submits_send_every_job_exactly_once(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("one writer at a time on SQLite: nothing concurrent to race")
    settings = Settings(database_url=database_url, limits=Limits(running_jobs_per_tenant=10**6))
    waiting = [submit(database_url) for _ in range(6)]  # each submit below may claim these too
    recording, made, errors = Recording(), [], []

    def worker() -> None:
        try:
            for _ in range(5):
                made.append(accept(settings, recording)[0].id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert Counter(recording.sent) == Counter(waiting + made)  # each once: none twice, none left behind
    assert all(job(database_url, j).enqueued_at is not None for j in waiting + made)


def test_a_replay_is_answered_before_the_quota_and_a_changed_body_is_refused(database_url: str) -> None:
    settings = Settings(database_url=database_url, limits=Limits(queued_jobs_per_tenant=1))
    first, _ = accept(settings, Recording(), "same")
    again, created = accept(settings, Recording(), "same")  # the queue is full, the replay still answers
    assert again.id == first.id and not created
    with pytest.raises(QuotaExceeded):
        accept(settings, Recording(), "other")
    with pytest.raises(IdempotencyMismatch):
        accept(settings, Recording(), "same", SPEC.with_metadata(team="x"))


def test_a_replay_of_a_job_not_yet_sent_sends_it(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    first, _ = accept(settings, Recording(fail_after=0), "k")  # the broker refused: accepted, waiting
    assert job(database_url, first.id).enqueued_at is None
    recording = Recording()
    again, created = accept(settings, recording, "k")
    assert (again.id, created, recording.sent) == (first.id, False, [first.id])


def test_concurrent_submits_with_one_key_make_one_job(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("one writer at a time on SQLite")
    settings = Settings(database_url=database_url)
    recording, answers = Recording(), []
    start = threading.Barrier(4, timeout=30)

    def worker() -> None:
        start.wait()
        answers.append(accept(settings, recording, "racing"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len({made.id for made, _ in answers}) == 1 and sum(created for _, created in answers) == 1
    assert len(recording.sent) == 1


def test_the_redis_message_is_the_one_send_task_writes(redis_server) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.delete(MERGE_QUEUE)
    CeleryDispatcher(redis_server.url).enqueue("mj_fast")
    _sender(redis_server.url).send_task(MERGE_TASK, args=["mj_slow"], task_id="mj_slow", queue=MERGE_QUEUE)
    fast, slow = [json.loads(raw) for raw in reversed(client.lrange(MERGE_QUEUE, 0, -1))]
    client.delete(MERGE_QUEUE)
    for message in (fast, slow):
        message["body"] = json.loads(base64.b64decode(message["body"]))
        assert message["properties"].pop("delivery_tag")
    assert json.dumps(fast).replace("mj_fast", "ID") == json.dumps(slow).replace("mj_slow", "ID")
    assert fast["body"] == [["mj_fast"], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_the_submit_s_first_statement_reads_the_key_s_own_tenant_only(database_url: str) -> None:
    """identify_submitter: the key verified, and the replay and quota of the key's tenant — another
    tenant's job under the same Idempotency-Key is neither a replay nor counted (the subqueries are
    correlated to the key's row, no tenant id comes from the request)."""
    from service.auth import Unauthorized, create_api_key, ensure_tenant

    with session_scope(database_url) as session:
        acme, globex = ensure_tenant(session, "acme"), ensure_tenant(session, "globex")
        acme_key, globex_key = create_api_key(session, acme), create_api_key(session, globex)
        acme_id, globex_id = acme.id, globex.id
    settings, recording = Settings(database_url=database_url), Recording()
    for tenant_id, key in ((globex_id, "same"), (globex_id, "other"), (acme_id, "acme's own")):
        session = session_factory(database_url)()
        try:
            accept_job(session, settings, recording, tenant_id, SPEC, key)
        finally:
            session.close()
    earlier = job_by_key(database_url, globex_id, "same")
    with session_scope(database_url) as session:
        seen = identify_submitter(session, acme_key, "same", 2)  # acme has 1 queued job, globex 2
        assert (seen.principal.tenant_id, seen.earlier_id, seen.at_quota) == (acme_id, None, False)
        seen = identify_submitter(session, globex_key, "same", 2)
        assert (seen.principal.tenant_id, seen.earlier_id, seen.at_quota) == (globex_id, earlier, True)
        assert identify_submitter(session, globex_key, None, 3).earlier_id is None
        assert not identify_submitter(session, globex_key, None, 3).at_quota
        assert identify_submitter(session, acme_key, None, 1).at_quota
        forged = {"lookup": globex_key.split("_")[1], "digest": "0" * 64, "key": "same", "quota": 1}
        row = session.execute(SUBMITTER, forged).one()  # the right prefix, not the key: nothing of its jobs read
        assert (row.earlier_id, row.at_quota) == (None, None)
        with pytest.raises(Unauthorized):
            identify_submitter(session, acme_key[:-1] + ("x" if acme_key[-1] != "x" else "y"), None, 100)


def job_by_key(database_url: str, tenant_id: str, key: str) -> str:
    with session_scope(database_url) as session:
        return session.scalars(
            select(MergeJob.id).where(MergeJob.tenant_id == tenant_id, MergeJob.idempotency_key == key)
        ).one()


def test_the_send_claim_reads_the_waiting_index_in_a_prepared_statement_s_generic_plan(database_url: str) -> None:
    """Each submit's claim finds the waiting jobs through the partial index ix_merge_jobs_waiting, also
    once psycopg prepares the statement and PostgreSQL plans it generically (a bound `status = $1` cannot
    prove the index's predicate: every claim scanned the tenant's queue, 3.3 ms at 3,000 queued jobs)."""
    if database_url.startswith("sqlite"):
        pytest.skip("prepared statements' generic plans are PostgreSQL's")
    from psycopg import sql
    from sqlalchemy import event

    from service.dispatch import claim_window

    settings = Settings(database_url=database_url)
    for _ in range(3):
        accept(settings, Recording())
    sent: list[tuple[str, object]] = []
    session = session_factory(database_url)()
    try:
        engine = session.get_bind()

        def capture(conn, cursor, statement, parameters, context, executemany) -> None:
            if statement.lstrip().upper().startswith("UPDATE MERGE_JOBS SET ENQUEUED_AT"):
                sent.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            claim_window(session, "tn_a", 10)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        session.rollback()
        ((statement, parameters),) = sent
        names: list[str] = []  # the driver's %(name)s placeholders as a PREPARE's $1, $2, ...

        def numbered(match: re.Match) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        cursor = session.connection().connection.cursor()
        body = re.sub(r"%\((\w+)\)s", numbered, statement)
        values = [parameters[name] for name in names]  # type: ignore[index]
        types = {float: "float8", int: "int8", str: "text", list: "text[]"}
        cursor.execute(f"PREPARE claim({', '.join(types[type(v)] for v in values)}) AS {body}")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        literals = sql.SQL(", ").join(sql.Literal(v) for v in values)
        cursor.execute(sql.SQL("EXPLAIN EXECUTE claim({})").format(literals))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        session.rollback()
        session.close()
    # merge_jobs_1: the waiting subquery (the outer UPDATE's own row lookup may use the index either way)
    assert "using ix_merge_jobs_waiting on merge_jobs merge_jobs_1" in plan, plan
