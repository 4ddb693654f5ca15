"""The merge-jobs HTTP API over a real database (SQLite here; the lifecycle tests cover PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.jobs import claim_job, record_progress
from service.migrate import upgrade
from service.queue import RecordingDispatcher
from service.settings import Settings

BODY = {
    "method": "task_arithmetic",
    "base_model": "s3://models/acme/base",
    "models": [{"model": "s3://models/acme/a"}, {"model": "s3://models/acme/b"}],
    "parameters": {"lambda": 0.5},
}


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'api.db'}"
        upgrade(self.url)
        with session_scope(self.url) as session:
            acme = ensure_tenant(session, "acme", ["s3://models/acme"])
            self.key = create_api_key(session, acme)
            self.reader = create_api_key(session, acme, ["jobs:read"])
            self.other = create_api_key(session, ensure_tenant(session, "globex", ["s3://models/globex"]))
            self.operator = create_api_key(session, ensure_tenant(session, "ops"), ["metrics:read"])
        self.dispatcher = RecordingDispatcher()
        settings = Settings(database_url=self.url, preflight=False)  # inputs do not exist: test_api_preflight.py
        self.client = TestClient(create_app(settings, self.dispatcher))

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    def submit(self, body=BODY, **headers: str):
        return self.client.post("/v1/merge-jobs", json=body, headers=self.headers(**headers))


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["status"], body["code"]) == (status, code) and body["detail"] and body["instance"]
    return body


def test_a_submitted_job_is_accepted_queued_and_enqueued_after_commit(stack: Stack) -> None:
    response = stack.submit()
    assert response.status_code == 202
    job = response.json()
    assert job["id"].startswith("mj_") and job["status"] == "queued" and job["attempt"] == 0
    assert response.headers["location"] == f"/v1/merge-jobs/{job['id']}"
    assert stack.dispatcher.enqueued == [job["id"]]
    read = stack.client.get(f"/v1/merge-jobs/{job['id']}", headers=stack.headers()).json()
    assert read["config"]["models"][1]["model"] == "s3://models/acme/b" and read["config"]["parameters"] == {
        "lambda": 0.5
    }


def test_an_idempotent_replay_returns_the_same_job_and_enqueues_once(stack: Stack) -> None:
    first = stack.submit(**{"Idempotency-Key": "k-1"})
    again = stack.submit(**{"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and len(stack.dispatcher.enqueued) == 1
    different = stack.submit({**BODY, "parameters": {"lambda": 0.3}}, **{"Idempotency-Key": "k-1"})
    assert_problem(different, 422, "idempotency_key_reused")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"method": "no_such_method"}, "method"),
        ({"models": [{"model": "s3://models/globex/a"}]}, "models[0].model"),
        ({"models": [{"model": "s3://models/acme/../globex/a"}]}, "models[0].model"),
        ({"base_model": "s3://other-bucket/base"}, "base_model"),
        ({"output": "/etc/passwd"}, "output"),
        ({"parameters": {"lambda": "lots"}}, "parameters"),
    ],
)
def test_bad_requests_are_refused_at_submit_naming_the_field(stack: Stack, change: dict, param: str) -> None:
    problem = assert_problem(stack.submit({**BODY, **change}), 422, "invalid_request")
    assert param in (problem.get("param") or "") + problem["detail"]
    assert stack.dispatcher.enqueued == []


def test_requests_need_a_valid_key_with_the_right_scope(stack: Stack) -> None:
    assert_problem(stack.client.post("/v1/merge-jobs", json=BODY), 401, "unauthorized")
    assert_problem(stack.submit(Authorization="Bearer fdm_000000000000_nope"), 401, "unauthorized")
    assert_problem(
        stack.client.post("/v1/merge-jobs", json=BODY, headers=stack.headers(stack.reader)), 403, "forbidden"
    )


def test_another_tenants_job_answers_404(stack: Stack) -> None:
    job_id = stack.submit().json()["id"]
    for path in ("", "/events", "/artifacts", "/metrics"):
        assert_problem(
            stack.client.get(f"/v1/merge-jobs/{job_id}{path}", headers=stack.headers(stack.other)), 404, "not_found"
        )
    assert_problem(
        stack.client.post(f"/v1/merge-jobs/{job_id}/cancel", headers=stack.headers(stack.other)), 404, "not_found"
    )
    assert stack.client.get("/v1/merge-jobs", headers=stack.headers(stack.other)).json()["data"] == []


def test_listing_pages_through_every_job_newest_first_with_filters(stack: Stack) -> None:
    ids = [stack.submit({**BODY, "metadata": {"team": "a" if i % 2 else "b"}}).json()["id"] for i in range(7)]
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"after": cursor} if cursor else {})}
        page = stack.client.get("/v1/merge-jobs", params=params, headers=stack.headers()).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert seen == ids[::-1]
    team_a = stack.client.get("/v1/merge-jobs", params={"metadata": "team:a"}, headers=stack.headers()).json()
    assert {job["id"] for job in team_a["data"]} == set(ids[1::2])
    stack.client.post(f"/v1/merge-jobs/{ids[0]}/cancel", headers=stack.headers())
    cancelled = stack.client.get("/v1/merge-jobs", params={"status": "cancelled"}, headers=stack.headers()).json()
    assert [job["id"] for job in cancelled["data"]] == [ids[0]]
    assert_problem(
        stack.client.get("/v1/merge-jobs", params={"after": "garbage"}, headers=stack.headers()), 422, "invalid_request"
    )


def test_cancel_and_events_follow_the_job(stack: Stack) -> None:
    job_id = stack.submit().json()["id"]
    with session_scope(stack.url) as session:
        claim_job(session, job_id, worker_id="w1", lease_seconds=60)
        record_progress(session, job_id, worker_id="w1", stage="merge", progress=0.25, data={"layer": 1})
    cancelled = stack.client.post(f"/v1/merge-jobs/{job_id}/cancel", headers=stack.headers()).json()
    assert cancelled["status"] == "cancelling"
    events = stack.client.get(f"/v1/merge-jobs/{job_id}/events", params={"limit": 2}, headers=stack.headers()).json()
    assert [e["kind"] for e in events["data"]] == ["status", "status"] and events["has_more"]
    rest = stack.client.get(
        f"/v1/merge-jobs/{job_id}/events", params={"after": events["next_cursor"]}, headers=stack.headers()
    ).json()
    assert [e["kind"] for e in rest["data"]] == ["progress", "status"] and rest["data"][0]["data"] == {"layer": 1}


def test_events_stream_as_server_sent_events_until_the_job_ends(stack: Stack) -> None:
    job_id = stack.submit().json()["id"]
    stack.client.post(f"/v1/merge-jobs/{job_id}/cancel", headers=stack.headers())
    with stack.client.stream(
        "GET", f"/v1/merge-jobs/{job_id}/events", params={"stream": "true"}, headers=stack.headers()
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert text.count("event: status") == 2 and text.rstrip().endswith('data: {"status": "cancelled"}')


def test_an_oversized_body_is_refused_before_it_is_read(stack: Stack) -> None:
    huge = {**BODY, "metadata": {"blob": "x" * (2 << 20)}}
    assert_problem(stack.submit(huge), 413, "body_too_large")


def test_health_readiness_and_openapi(stack: Stack) -> None:
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    assert stack.client.get("/readyz").json() == {"status": "ready"}
    paths = stack.client.get("/openapi.json").json()["paths"]
    assert {"/v1/merge-jobs", "/v1/merge-jobs/{job_id}/cancel", "/v1/merge-jobs/{job_id}/events"} <= set(paths)


class BrokerDown:
    def enqueue(self, job_id: str) -> None:
        raise ConnectionError("broker unreachable")


def test_a_job_accepted_while_the_broker_is_down_is_sent_later_by_the_reaper(stack: Stack) -> None:
    from service.reaper import reap_and_requeue

    stack.client.app.state.dispatcher = BrokerDown()
    job_id = stack.submit().json()["id"]
    assert stack.client.get(f"/v1/merge-jobs/{job_id}", headers=stack.headers()).json()["status"] == "queued"
    settings = Settings(database_url=stack.url, storage_url=str(Path(stack.url.split("///")[1]).parent / "s"))
    with session_scope(stack.url) as session:  # age the job past the reaper's grace period
        from sqlalchemy import update

        from service.models import MergeJob, utcnow

        session.execute(update(MergeJob).values(created_at=utcnow().replace(year=2020)))
    assert reap_and_requeue(settings, stack.dispatcher) == [job_id]
    assert stack.dispatcher.enqueued == [job_id]
    assert reap_and_requeue(settings, stack.dispatcher) == []  # sent once, then recorded as sent


def test_a_chunked_oversized_body_is_refused_with_413(stack: Stack) -> None:
    def chunks():
        yield b'{"method": "linear", "metadata": {"blob": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}}'

    response = stack.client.post(
        "/v1/merge-jobs", content=chunks(), headers=stack.headers(**{"Content-Type": "application/json"})
    )
    assert_problem(response, 413, "body_too_large")


def test_list_filters_take_zoneless_times_as_utc(stack: Stack) -> None:
    job_id = stack.submit().json()["id"]
    listed = stack.client.get(
        "/v1/merge-jobs", params={"created_after": "2020-01-01T00:00:00"}, headers=stack.headers()
    )
    assert listed.status_code == 200 and [j["id"] for j in listed.json()["data"]] == [job_id]
    later = stack.client.get("/v1/merge-jobs", params={"created_after": "2999-01-01T00:00:00"}, headers=stack.headers())
    assert later.json()["data"] == []


def test_an_unexpected_error_is_a_problem_document_too(stack: Stack, monkeypatch) -> None:
    import api.routers.jobs as routes

    monkeypatch.setattr(routes, "get_job", lambda *a: 1 / 0)
    client = TestClient(stack.client.app, raise_server_exceptions=False)
    assert_problem(client.get("/v1/merge-jobs/mj_x", headers=stack.headers()), 500, "internal_error")


def test_a_failed_job_can_be_retried_under_its_id_and_a_succeeded_one_cannot(stack: Stack) -> None:
    from service.jobs import fail_job, finish_job

    failed, succeeded = stack.submit().json()["id"], stack.submit().json()["id"]
    with session_scope(stack.url) as session:
        for job_id in (failed, succeeded):
            claim_job(session, job_id, worker_id="w1", lease_seconds=60)
        fail_job(session, failed, worker_id="w1", code="checkpoint_error", message="s3 timeout")
        finish_job(session, succeeded, worker_id="w1", result={}, artifacts=[], metrics={})
    retried = stack.client.post(f"/v1/merge-jobs/{failed}/retry", headers=stack.headers())
    assert retried.status_code == 202
    job = retried.json()
    assert (job["status"], job["error"], job["attempt"], job["max_attempts"]) == ("queued", None, 1, 4)
    assert stack.dispatcher.enqueued[-1] == failed
    with session_scope(stack.url) as session:
        assert claim_job(session, failed, worker_id="w2", lease_seconds=60).attempt == 2
    assert_problem(stack.client.post(f"/v1/merge-jobs/{succeeded}/retry", headers=stack.headers()), 409, "conflict")
