"""The submit's cheaper statements (issue 12's ≤ 3 ms): the job, its event and its send claim as one
statement on PostgreSQL, equal to the two it replaces; statements run on the driver's cursor
(service/driver_sql.py) giving what Session.execute gives, errors included; autocommit for a submit
only; the pool's ping only for connections that sat idle."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from service import db
from service.accept import (
    INSERT_JOB,
    SUBMITTER,
    SUBMITTER_ON_DRIVER,
    _new_job,
    _row,
    insert_and_claim,
    insert_new,
    statements_commit_alone,
)
from service.auth import create_api_key, ensure_tenant, key_digest, key_lookup
from service.db import session_factory, session_scope
from service.dispatch import claim_window
from service.driver_sql import DriverStatement
from service.jobspec import JobSpec
from service.models import ApiKey, MergeJob, utcnow
from tests.integration.test_job_lifecycle import CONFIG, submit

SPEC = JobSpec.model_validate(CONFIG)


def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the one-statement submit and the driver statements are PostgreSQL's")


def claimed_and_new_sent(database_url: str, merged: bool, window: int) -> tuple[list[str], bool]:
    """A submit's send claim in a transaction rolled back after: (older jobs claimed, new job sent)."""
    session = session_factory(database_url)()
    try:
        job = _new_job("tn_a", SPEC, SPEC.digest(), None, 3)
        if merged:
            claimed = insert_and_claim(session, job, window)
        else:
            insert_new(session, job)
            claimed = claim_window(session, "tn_a", window)
        return [c for c in claimed if c != job.id], job.id in claimed
    finally:
        session.rollback()
        session.close()


@pytest.mark.parametrize(
    ("waiting", "running", "sent", "window"),
    [(0, 0, 0, 1), (0, 1, 0, 1), (0, 1, 0, 2), (0, 0, 1, 1), (2, 0, 0, 2), (2, 0, 0, 3), (1, 1, 1, 4), (3, 0, 0, 2)],
)
def test_one_statement_claims_what_insert_then_claim_did(
    database_url: str, waiting: int, running: int, sent: int, window: int
) -> None:
    """The new job cannot be seen by the UPDATE in its own statement: it is inserted sent exactly when the
    window has a slot beyond the older waiting jobs, which are claimed oldest first as before."""
    postgres_only(database_url)
    jobs = [submit(database_url) for _ in range(waiting + running + sent)]
    with session_scope(database_url) as session:
        for job_id in jobs[waiting : waiting + running]:
            session.execute(update(MergeJob).where(MergeJob.id == job_id).values(status="running"))
        for job_id in jobs[waiting + running :]:
            session.execute(update(MergeJob).where(MergeJob.id == job_id).values(enqueued_at=utcnow()))
    before = claimed_and_new_sent(database_url, merged=False, window=window)
    assert claimed_and_new_sent(database_url, merged=True, window=window) == before
    assert before[0] == jobs[: max(0, min(waiting, window - running - sent))]  # the reference itself, by hand


def test_a_driver_statement_returns_what_session_execute_returns(database_url: str) -> None:
    with session_scope(database_url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", ["s3://models/acme"]))
        session.execute(update(ApiKey).values(expires_at=utcnow() + timedelta(days=1)))
    values = {"lookup": key_lookup(key), "digest": key_digest(key), "key": None, "quota": 5}
    with session_scope(database_url) as session:
        if database_url.startswith("postgresql"):  # the driver returns +09:00 times: UTCDateTime's processor
            session.execute(text("SET LOCAL TIME ZONE 'Asia/Tokyo'"))  # must still make them UTC
        expected = session.execute(SUBMITTER, values).all()
        got = SUBMITTER_ON_DRIVER.rows(session, values)
    assert [tuple(row) for row in got] == [tuple(row) for row in expected] and len(got) == 1
    assert got[0].expires_at.utcoffset() == timedelta(0) and got[0].allowed_prefixes == ["s3://models/acme"]
    assert got[0]._fields == tuple(expected[0]._fields)


def test_a_driver_statement_raises_sqlalchemy_s_errors(database_url: str) -> None:
    postgres_only(database_url)
    job = _new_job("tn_a", SPEC, SPEC.digest(), None, 3)
    insert_job = DriverStatement(INSERT_JOB.values(**_row(job)))
    with session_scope(database_url) as session:
        insert_job.rows(session, {})
    session = session_factory(database_url)()
    try:
        with pytest.raises(IntegrityError) as raised:  # as accept_job catches a raced Idempotency-Key
            insert_job.rows(session, {})
        assert "parameters hidden" in str(raised.value)  # as the engine's hide_parameters
        session.rollback()
        with pytest.raises(ArgumentError, match="parameters missing: \\['digest'"):
            SUBMITTER_ON_DRIVER.rows(session, {"lookup": "x", "key": None, "quota": 1})
    finally:
        session.close()


def test_a_disconnect_on_the_driver_drops_the_pool_s_older_connections(database_url: str, monkeypatch) -> None:
    """A server restart under pooled connections: the first statement to meet it fails (OperationalError,
    connection invalidated), and the pool's other connections of before are not handed out again — the
    next request works at once, though its connection was used too recently to be pinged."""
    postgres_only(database_url)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)  # no ping can find them: the pool must drop them
    values = {"lookup": "nobody", "digest": "0" * 64, "key": None, "quota": 1}
    sessions = [session_factory(database_url)() for _ in range(2)]  # two pooled connections, both used now
    pids = [s.execute(text("SELECT pg_backend_pid()")).scalar_one() for s in sessions]
    for session in sessions:
        session.close()
    killer = db.make_engine(database_url)  # another pool's connection kills both ("a restart")
    try:
        with killer.begin() as other:
            for pid in pids:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        killer.dispose()
    session = session_factory(database_url)()
    try:
        with pytest.raises(OperationalError) as raised:
            SUBMITTER_ON_DRIVER.rows(session, values)
        assert raised.value.connection_invalidated
    finally:
        session.close()
    sessions = [session_factory(database_url)() for _ in range(2)]  # both pooled connections again
    try:
        for session in sessions:  # neither is the other dead one
            assert SUBMITTER_ON_DRIVER.rows(session, values) == []
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() not in pids
    finally:
        for session in sessions:
            session.close()


def test_a_submit_s_autocommit_does_not_outlive_its_session(database_url: str) -> None:
    """statements_commit_alone runs the submit's statements each on its own, and the pool resets the
    connection: the next session of any route is in a transaction again (its rollback undoes its work)."""
    postgres_only(database_url)
    session = session_factory(database_url)()
    statements_commit_alone(session)
    assert session.connection().connection.driver_connection.autocommit
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    session.close()
    session = session_factory(database_url)()
    try:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid  # the same connection, again
        assert not session.connection().connection.driver_connection.autocommit
        session.execute(update(MergeJob).values(stage="changed"))
        session.rollback()
    finally:
        session.close()
    submit(database_url)
    with session_scope(database_url) as session:
        assert session.scalars(select(MergeJob.stage)).all() == ["queued"]


def test_the_pool_pings_only_connections_that_sat_idle(database_url: str, monkeypatch) -> None:
    postgres_only(database_url)
    engine = db.make_engine(database_url)
    pings: list[int] = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda connection: pings.append(1) or real_ping(connection))
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.5)
    try:
        with engine.connect() as connection:  # opened just now: alive, not pinged
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as connection:  # used a moment ago: trusted, no round trip
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
        assert pings == []
        with session_scope(database_url) as other:  # another pool's connection
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.6)  # idle past the threshold: pinged, found dead, replaced before it is handed out
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        assert len(pings) == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("preflight", [False, True])
def test_a_submit_through_the_api_on_postgresql(database_url: str, monkeypatch, tmp_path, preflight: bool) -> None:
    """The route end to end on PostgreSQL (tests/integration/test_api_jobs.py runs on SQLite): accepted,
    replayed, refused as before, with its statements in autocommit — no BEGIN and COMMIT round trips —,
    also after preflight (whose rollback hands the connection back to the pool)."""
    postgres_only(database_url)
    from fastapi.testclient import TestClient

    from api.app import create_app
    from service.limits import Limits
    from service.queue import RecordingDispatcher
    from service.settings import Settings
    from tests.integration.test_api_jobs import BODY

    autocommit: list[bool] = []
    rows = DriverStatement.rows

    def spy(self, session, values):
        autocommit.append(session.connection().connection.driver_connection.autocommit)
        return rows(self, session, values)

    monkeypatch.setattr(DriverStatement, "rows", spy)
    body, allowed = BODY, ["s3://models/acme"]
    if preflight:  # every input's listing and header read at submit: local tiny checkpoints
        from tests.support.tiny_models import make_family

        base, experts = make_family(tmp_path / "models", "llama")
        body, allowed = (
            {**BODY, "base_model": str(base), "models": [{"model": str(e)} for e in experts]},
            [str(tmp_path)],
        )
    with session_scope(database_url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", allowed))
    dispatcher = RecordingDispatcher()
    settings = Settings(
        database_url=database_url, preflight=preflight, local_inputs=preflight, cache_dir=tmp_path / "cache",
        limits=Limits(queued_jobs_per_tenant=2),
    )  # fmt: skip
    client = TestClient(create_app(settings, dispatcher))
    headers = {"Authorization": f"Bearer {key}"}
    first = client.post("/v1/merge-jobs", json=body, headers={**headers, "Idempotency-Key": "k"})
    again = client.post("/v1/merge-jobs", json=body, headers={**headers, "Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 202 and again.json()["id"] == first.json()["id"]
    changed = client.post(
        "/v1/merge-jobs", json={**body, "parameters": {}}, headers={**headers, "Idempotency-Key": "k"}
    )
    assert changed.status_code == 422 and changed.json()["code"] == "idempotency_key_reused"
    second = client.post("/v1/merge-jobs", json=body, headers=headers)
    assert second.status_code == 202, second.text
    assert client.post("/v1/merge-jobs", json=body, headers=headers).status_code == 429  # two queued: the quota
    assert client.post("/v1/merge-jobs", json=body, headers={"Authorization": "Bearer fdm_x_y"}).status_code == 401
    assert dispatcher.enqueued == [first.json()["id"], second.json()["id"]]
    assert autocommit and all(autocommit)


def test_an_unreachable_database_answers_503_not_500(tmp_path) -> None:
    """Nothing the tenant sent: 503 `database_unavailable` with Retry-After (the client retries it)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from service.queue import RecordingDispatcher
    from service.settings import Settings
    from tests.integration.test_api_jobs import BODY

    settings = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", preflight=False)
    client = TestClient(create_app(settings, RecordingDispatcher()))  # no lifespan: its schema check is skipped
    for answer in (
        client.post("/v1/merge-jobs", json=BODY, headers={"Authorization": "Bearer fdm_abc_def"}),
        client.get("/v1/merge-jobs", headers={"Authorization": "Bearer fdm_abc_def"}),
    ):
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "database_unavailable" and answer.headers["retry-after"] == "1"
