"""The API's database connections against its threads (issue 12): ~40 threads, 15 pooled connections,
and a request holding its connection between its dependency and its endpoint while waiting for a
thread: 100 concurrent reads made every thread wait on the pool, and 80 answered 500 after its 30 s.
Now a request waits for a session on the event loop (at most db_pool_size at once), and a bounded wait
answers 503 `busy` with Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import api.deps
from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.queue import RecordingDispatcher
from service.settings import Settings

BODY = {"method": "linear", "base_model": "s3://models/acme/base", "models": [{"model": "s3://models/acme/a"}]}


def app_and_key(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    with session_scope(url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", ["s3://models/acme"]))
    return create_app(Settings(database_url=url, preflight=False), RecordingDispatcher()), {
        "Authorization": f"Bearer {key}"
    }


async def at_once(app, requests: list[tuple[str, str]], headers: dict) -> tuple[Counter, float]:
    transport = httpx.ASGITransport(app=app)  # in process: the app's own thread limiter (40) and pool
    async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=120) as client:
        started = time.monotonic()
        answers = await asyncio.gather(
            *[client.request(m, p, headers=headers, json=BODY if m == "POST" else None) for m, p in requests]
        )
        return Counter(a.status_code for a in answers), time.monotonic() - started


def test_a_hundred_concurrent_requests_all_answer_without_waiting_on_the_pool(tmp_path: Path) -> None:
    app, headers = app_and_key(tmp_path)
    requests = [("GET", "/v1/merge-jobs")] * 70 + [("POST", "/v1/merge-jobs")] * 30  # a submit also dispatches
    statuses, seconds = asyncio.run(at_once(app, requests, headers))
    assert statuses == Counter({200: 70, 202: 30}), statuses
    assert seconds < 20, seconds  # was 60 s: a pool timeout (30 s), twice


def test_a_request_that_cannot_get_a_session_in_time_answers_503_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, headers = app_and_key(tmp_path)
    monkeypatch.setattr(api.deps, "SESSION_WAIT_SECONDS", 0.2)

    async def with_every_session_taken() -> httpx.Response:
        app.state.session_gate = asyncio.Semaphore(0)  # every slot held (by slow requests)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get("/v1/merge-jobs", headers=headers)

    answer = asyncio.run(with_every_session_taken())
    assert answer.status_code == 503 and answer.json()["code"] == "busy", answer.text
    assert answer.headers["Retry-After"] and "database" in answer.json()["detail"]


def test_a_bad_body_s_key_check_takes_a_database_turn_like_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit's key is verified in its own statement; a submit whose body fails validation never gets
    there, so the validation handler verifies the key (401 before 422) — in one of the process's
    database turns, like any request's session (its own turn was given back before the handler runs):
    without that, anyone sending key-shaped tokens with bad bodies held as many connections at once as
    there are threads."""
    import api.problems

    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, preflight=False, db_pool_size=1), RecordingDispatcher())
    lock, running, most = threading.Lock(), [0], [0]
    real = api.problems.authenticate

    def slow_authenticate(session, presented):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.1)
            return real(session, presented)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(api.problems, "authenticate", slow_authenticate)
    unknown = {"Authorization": "Bearer fdm_000000000000_nope"}

    async def twelve_bad_bodies() -> Counter:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            answers = await asyncio.gather(
                *[client.post("/v1/merge-jobs", headers=unknown, json={"method": 7}) for _ in range(12)]
            )
        return Counter(a.status_code for a in answers)

    assert asyncio.run(twelve_bad_bodies()) == Counter({401: 12})
    assert most[0] == 1, most  # was 12: one connection per request at once, past the process's limit
