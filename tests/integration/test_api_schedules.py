"""/v1/schedules over HTTP (SQLite): create, read with recent runs, pause, trigger, delete, isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.reaper import fire_schedules
from service.settings import Settings
from tests.integration.test_api_jobs import BODY, Stack, assert_problem


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path)
    with session_scope(stack.url) as session:
        stack.scheduler = create_api_key(session, ensure_tenant(session, "acme"), ["jobs:read", "schedules:write"])
    return stack


def create(stack: Stack, **fields):
    body = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris", "template": BODY, **fields}
    return stack.client.post("/v1/schedules", json=body, headers=stack.headers(stack.scheduler))


def test_a_schedule_is_created_triggered_and_shows_its_runs(stack: Stack) -> None:
    answer = create(stack)
    assert answer.status_code == 201, answer.text
    schedule = answer.json()
    assert schedule["id"].startswith("sch_") and schedule["next_fire_at"] and not schedule["paused"]
    run = stack.client.post(f"/v1/schedules/{schedule['id']}/trigger", headers=stack.headers(stack.scheduler))
    assert run.status_code == 202 and stack.dispatcher.enqueued == [run.json()["id"]]
    assert run.json()["metadata"] == {"schedule": "nightly"}
    read = stack.client.get(f"/v1/schedules/{schedule['id']}", headers=stack.headers()).json()
    assert [job["id"] for job in read["recent_runs"]] == [run.json()["id"]]


def test_the_tick_fires_due_schedules_and_pause_stops_them(stack: Stack) -> None:
    schedule = create(stack, cron="* * * * *", timezone="UTC").json()
    paused = create(stack, name="paused", cron="* * * * *", paused=True).json()
    settings = Settings(database_url=stack.url)
    from datetime import timedelta

    from sqlalchemy import update

    from service.models import Schedule, utcnow

    with session_scope(stack.url) as session:  # both due now
        session.execute(update(Schedule).values(next_fire_at=utcnow() - timedelta(seconds=1)))
    made = fire_schedules(settings, stack.dispatcher)
    assert len(made) == 1 and stack.dispatcher.enqueued == made
    assert stack.client.get(f"/v1/merge-jobs/{made[0]}", headers=stack.headers()).json()["status"] == "queued"
    stack.client.patch(f"/v1/schedules/{schedule['id']}", json={"paused": True}, headers=stack.headers(stack.scheduler))
    with session_scope(stack.url) as session:
        session.execute(update(Schedule).values(next_fire_at=utcnow() - timedelta(seconds=1)))
    assert fire_schedules(settings, stack.dispatcher) == []
    assert paused["paused"]


def test_schedules_refuse_bad_input_and_stay_in_their_tenant(stack: Stack) -> None:
    assert_problem(create(stack, cron="nightly"), 422, "invalid_request")
    assert_problem(create(stack, timezone="Moon/Base"), 422, "invalid_request")
    bad_input = create(stack, template={**BODY, "base_model": "s3://other/x"})
    assert_problem(bad_input, 422, "invalid_request")
    created = create(stack).json()
    assert_problem(create(stack), 409, "conflict")
    without_scope = stack.client.post(
        "/v1/schedules", json={"name": "x", "cron": "0 2 * * *", "template": BODY}, headers=stack.headers()
    )
    assert_problem(without_scope, 403, "forbidden")  # jobs:write is not schedules:write
    with session_scope(stack.url) as session:
        outsider = create_api_key(session, ensure_tenant(session, "globex"), ["jobs:read", "schedules:write"])
    for method in ("get", "delete"):
        answer = getattr(stack.client, method)(f"/v1/schedules/{created['id']}", headers=stack.headers(outsider))
        assert_problem(answer, 404, "not_found")
    assert (
        stack.client.delete(f"/v1/schedules/{created['id']}", headers=stack.headers(stack.scheduler)).status_code == 204
    )
