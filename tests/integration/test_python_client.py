"""The Python client against the real API app (SQLite): every verb, cursor pages, problems as ApiError."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdamerge_client import ApiError, Client
from service.db import session_scope
from service.jobs import claim_job, fail_job
from tests.integration.test_api_jobs import BODY, Stack


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def client_for(stack: Stack, key: str | None = None) -> Client:
    from fastapi.testclient import TestClient

    return Client("http://testserver", key or stack.key, http=TestClient(stack.client.app))


def test_submit_get_list_cancel_and_events(stack: Stack) -> None:
    client = client_for(stack)
    jobs = [client.submit(BODY, metadata={"run": str(i)}) for i in range(5)]
    assert [j.status for j in jobs] == ["queued"] * 5
    assert stack.dispatcher.enqueued == [j.id for j in jobs[:2]]  # the tenant's window; the rest wait their turn
    assert [j.id for j in client.jobs(page_size=2)] == [j.id for j in reversed(jobs)]  # three pages followed
    assert [j.id for j in client.jobs(metadata={"run": "3"})] == [jobs[3].id]
    cancelled = client.cancel(jobs[0].id)
    assert cancelled.status == "cancelled" and cancelled.done
    assert [e.message for e in client.events(jobs[0].id)] == ["queued", "cancelled before it started"]
    assert client.wait(jobs[0].id, timeout=5).status == "cancelled"


def test_the_same_idempotency_key_gives_the_same_job(stack: Stack) -> None:
    client = client_for(stack)
    first = client.submit(BODY, idempotency_key="nightly-2026-11-23")
    assert client.submit(BODY, idempotency_key="nightly-2026-11-23").id == first.id


def test_problems_become_api_errors_that_name_the_field(stack: Stack) -> None:
    client = client_for(stack)
    with pytest.raises(ApiError) as error:
        client.submit({**BODY, "models": [{"model": "s3://elsewhere/x"}]})
    assert (error.value.status, error.value.code, error.value.param) == (422, "invalid_request", "models[0].model")
    with pytest.raises(ApiError) as missing:
        client.get("mj_nope")
    assert missing.value.status == 404
    with pytest.raises(ApiError) as unauthorised:
        client_for(stack, "fdm_000000000000_bad").get("mj_nope")
    assert unauthorised.value.status == 401


def test_retry_requeues_a_failed_job(stack: Stack) -> None:
    client = client_for(stack)
    job = client.submit(BODY)
    with session_scope(stack.url) as session:
        claim_job(session, job.id, worker_id="w1", lease_seconds=60)
        fail_job(session, job.id, worker_id="w1", code="checkpoint_error", message="timeout")
    assert client.get(job.id).error["code"] == "checkpoint_error"
    assert client.retry(job.id).status == "queued"


def test_stream_events_follows_a_job_to_its_end(stack: Stack) -> None:
    client = client_for(stack)
    job = client.submit(BODY)
    client.cancel(job.id)
    assert [e.message for e in client.stream_events(job.id)] == ["queued", "cancelled before it started"]


def test_admins_create_list_and_revoke_keys_of_their_tenant(stack: Stack) -> None:
    from service.auth import create_api_key, ensure_tenant

    with session_scope(stack.url) as session:
        admin_key = create_api_key(session, ensure_tenant(session, "acme"), ["admin"])
    admin = client_for(stack, admin_key)
    created = admin.create_key(["jobs:read"])
    assert created["key"].startswith(created["prefix"]) and created["scopes"] == ["jobs:read"]
    reader = client_for(stack, created["key"])
    assert list(reader.jobs()) == []
    assert all(k["key"] is None for k in admin.keys()) and len(admin.keys()) == 4
    admin.revoke_key(created["id"])
    with pytest.raises(ApiError) as revoked:
        list(reader.jobs())
    assert revoked.value.status == 401
    with pytest.raises(ApiError) as not_admin:
        client_for(stack).keys()
    assert not_admin.value.status == 403
