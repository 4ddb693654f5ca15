"""/metrics agrees with the database whichever API process answers; logs are JSON with the job's fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db import session_scope
from service.jobs import claim_job, fail_job, finish_job
from service.observability import JsonFormatter, logging_job
from service.queue import RecordingDispatcher
from service.settings import Settings
from tests.integration.test_api_jobs import Stack


def sample(text: str, name: str, **labels: str) -> float:
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = next(line for line in text.splitlines() if line.startswith(f"{name}{{{rendered}}} "))
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def test_metrics_count_what_the_database_holds_from_any_api_process(stack: Stack) -> None:
    ids = [stack.submit().json()["id"] for _ in range(4)]
    artifact = {"kind": "model", "path": "model.safetensors", "uri": "x", "size": 1000, "sha256": "0" * 64}
    with session_scope(stack.url) as session:
        for job_id in ids[:3]:
            claim_job(session, job_id, worker_id="w", lease_seconds=60)
        result = {
            "seconds": {"merge": 2.5, "fetch": 1.0},
            "checkpoint_cache": {"hits": 2, "misses": 1, "bytes_downloaded": 700},
        }
        finish_job(session, ids[0], worker_id="w", result=result, artifacts=[artifact], metrics={})
        fail_job(session, ids[1], worker_id="w", code="checkpoint_error", message="x")
    second_process = TestClient(create_app(Settings(database_url=stack.url, preflight=False), RecordingDispatcher()))
    for client in (stack.client, second_process):
        text = client.get("/metrics", headers=stack.headers(stack.operator)).text
        assert [sample(text, "fdamerge_jobs", status=s) for s in ("queued", "running", "succeeded", "failed")] == [
            1,
            1,
            1,
            1,
        ]
        assert sample(text, "fdamerge_phase_seconds_total", phase="merge") == 2.5
        assert sample(text, "fdamerge_bytes_total", direction="uploaded") == 1000
        assert sample(text, "fdamerge_bytes_total", direction="downloaded") == 700
        assert sample(text, "fdamerge_checkpoint_cache_total", outcome="hit") == 2


def test_log_lines_are_json_with_job_tenant_and_attempt() -> None:
    record = logging.LogRecord("service.execute", logging.INFO, __file__, 1, "claimed by %s", ("w1",), None)
    with logging_job("mj_1", "tn_a", 2):
        line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["job_id"], line["tenant_id"], line["attempt"]) == ("claimed by w1", "mj_1", "tn_a", 2)
    assert "job_id" not in json.loads(JsonFormatter().format(record))  # outside a job, no stale fields


def test_a_scrape_reads_the_counters_never_every_finished_job(stack: Stack) -> None:
    from sqlalchemy import Engine, event

    ids = [stack.submit().json()["id"] for _ in range(3)]
    with session_scope(stack.url) as session:
        for job_id in ids:
            claim_job(session, job_id, worker_id="w", lease_seconds=60)
            finish_job(session, job_id, worker_id="w", result={"seconds": {"merge": 1.0}}, artifacts=[], metrics={})
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        text = stack.client.get("/metrics", headers=stack.headers(stack.operator)).text
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert sample(text, "fdamerge_phase_seconds_total", phase="merge") == 3.0
    reads_jobs = [s for s in statements if "merge_jobs" in s or "artifacts" in s]
    assert reads_jobs and all("count(" in s and "GROUP BY merge_jobs.status" in s for s in reads_jobs), reads_jobs
