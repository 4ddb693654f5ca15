"""The production stack, all real: PostgreSQL, Redis, SeaweedFS S3, the HTTP API and `celery worker` processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.queue import CeleryDispatcher
from service.reaper import reap_and_requeue
from service.s3 import make_s3_client
from service.settings import Settings
from tests.integration.test_merge_cli import load_with_transformers
from tests.integration.test_observability import sample
from tests.integration.test_s3_inputs import upload_folder

pytestmark = pytest.mark.s3
ROOT = Path(__file__).resolve().parents[2]
LEASE = 4.0


class Stack:
    def __init__(self, settings: Settings, client: TestClient, key: str, inputs: list[str], tmp: Path) -> None:
        self.settings, self.client, self.key, self.inputs, self.tmp = settings, client, key, inputs, tmp
        self.workers: list[subprocess.Popen] = []
        self.operator = ""  # a metrics:read key

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ, "FDA_DATABASE_URL": s.database_url, "FDA_BROKER_URL": s.broker_url,
            "FDA_STORAGE_URL": s.storage_url, "FDA_S3_ENDPOINT_URL": s.s3_endpoint_url or "",
            "FDA_CACHE_DIR": str(self.tmp / f"cache-{len(self.workers)}"), "FDA_LEASE_SECONDS": str(LEASE),
            "OMP_NUM_THREADS": "1",
        }  # fmt: skip

    def start_worker(self) -> subprocess.Popen:
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h"
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "merge", "-c", "1",
                   "--prefetch-multiplier", "1", "--max-tasks-per-child", "1", "-n", name, "--loglevel", "INFO"]  # fmt: skip
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")
        worker = subprocess.Popen(
            command, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(worker)
        return worker

    def submit(self, parameters: dict) -> str:
        body = {
            "method": "fda", "base_model": self.inputs[0], "models": [{"model": u} for u in self.inputs[1:]],
            "parameters": parameters,
        }  # fmt: skip
        response = self.client.post("/v1/merge-jobs", json=body, headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def get(self, path: str) -> dict:
        response = self.client.get(f"/v1/merge-jobs/{path}", headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, job_id: str, ready: Callable[[dict], bool], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if ready(job):
                return job
            time.sleep(0.2)
        logs = "\n".join((self.tmp / f"worker{i}.log").read_text()[-3000:] for i in range(len(self.workers)))
        raise AssertionError(f"job {job_id} stuck at {self.get(job_id)}\n{logs}")

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)  # pool children that outlived their parent


@pytest.fixture
def stack(postgres_server, redis_server, s3_server, llama, tmp_path: Path) -> Iterator[Stack]:
    s3 = make_s3_client(s3_server.endpoint_url)
    models, outputs = f"models-{uuid.uuid4().hex[:6]}", f"outputs-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=models)
    s3.create_bucket(Bucket=outputs)
    base, experts = llama
    inputs = [upload_folder(s3_server.endpoint_url, models, p, f"acme/{p.name}") for p in [base, *experts]]
    settings = Settings(
        database_url=postgres_server.create_database(f"e2e_{uuid.uuid4().hex[:8]}"), broker_url=redis_server.url,
        storage_url=f"s3://{outputs}/jobs", s3_endpoint_url=s3_server.endpoint_url, lease_seconds=LEASE,
        cache_dir=tmp_path / "api-cache",
    )  # fmt: skip
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", [f"s3://{models}/acme"]))
        operator = create_api_key(session, ensure_tenant(session, "ops"), ["metrics:read"])
    client = TestClient(create_app(settings, CeleryDispatcher(settings.broker_url)))
    running = Stack(settings, client, key, inputs, tmp_path)
    running.operator = operator
    try:
        yield running
    finally:
        running.stop()


def objects_under(stack: Stack, job_id: str) -> list[str]:
    """Every object the job left in storage (all attempts)."""
    bucket, _, root = stack.settings.storage_url.removeprefix("s3://").partition("/")
    client = make_s3_client(stack.settings.s3_endpoint_url)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/")
    return sorted(item["Key"] for item in listed.get("Contents", []) if f"/{job_id}/" in item["Key"])


def download(stack: Stack, job_id: str, target: Path) -> Path:
    bucket, _, output = stack.get(job_id)["result"]["output"].removeprefix("s3://").partition("/")
    client = make_s3_client(stack.settings.s3_endpoint_url)
    for key in objects_under(stack, job_id):
        path = target / key.removeprefix(f"{output}/")
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(path))
    return target


def test_an_fda_job_posted_over_http_runs_on_a_celery_worker_and_its_s3_output_loads(stack: Stack) -> None:
    job_id = stack.submit({"anchors": 4, "construction_steps": 5, "adaptation_epochs": 2})
    CeleryDispatcher(stack.settings.broker_url).enqueue(job_id)  # the same message delivered twice
    stack.start_worker()
    job = stack.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed"))
    assert (job["status"], job["attempt"]) == ("succeeded", 1), job
    output = job["result"]["output"]
    assert output.startswith(f"{stack.settings.storage_url}/") and output.endswith(f"/{job_id}/attempt-1")
    load_with_transformers("llama", download(stack, job_id, stack.tmp / "out"))
    artifacts = stack.get(f"{job_id}/artifacts")["data"]
    bucket = stack.settings.storage_url.removeprefix("s3://").split("/")[0]
    assert sorted(a["uri"] for a in artifacts) == [f"s3://{bucket}/{k}" for k in objects_under(stack, job_id)]
    assert len(stack.get(f"{job_id}/metrics")["metrics"]["fda"]["layers"]) == 3
    metrics = stack.client.get("/metrics", headers={"Authorization": f"Bearer {stack.operator}"}).text
    assert sample(metrics, "fdamerge_jobs", status="succeeded") == 1
    assert sample(metrics, "fdamerge_queue_depth", queue="merge") in (0, 1)  # read from Redis (the duplicate may wait)
    assert sample(metrics, "fdamerge_checkpoint_cache_total", outcome="miss") >= 3  # base + 2 experts from S3
    assert sample(metrics, "fdamerge_bytes_total", direction="downloaded") > 0
    weights = next(a for a in artifacts if a["path"] == "model.safetensors")
    redirect = stack.client.get(
        weights["download"], headers={"Authorization": f"Bearer {stack.key}"}, follow_redirects=False
    )
    assert redirect.status_code == 307
    content = httpx.get(redirect.headers["location"]).content  # a presigned URL: no key needed
    as_json = stack.client.get(
        weights["download"], headers={"Authorization": f"Bearer {stack.key}", "Accept": "application/json"}
    )
    assert httpx.get(as_json.json()["url"]).content == content  # what the dashboard navigates to
    assert hashlib.sha256(content).hexdigest() == weights["sha256"] and len(content) == weights["size"]
    phases = {e["data"].get("phase") for e in stack.get(f"{job_id}/events?limit=100")["data"]}
    assert {"validate", "construct", "adapt"} <= phases


def test_a_worker_killed_mid_job_is_replaced_and_the_job_succeeds_exactly_once(stack: Stack) -> None:
    first = stack.start_worker()
    # long enough to be caught in construct (the kill follows the first construct report), and run
    # to the end by attempt 2: every step past what the kill needs is paid in full once (400: ~40 s)
    slow = {"anchors": 8, "construction_steps": 80, "tolerance": 0.0, "patience": 80, "adaptation_epochs": 2}
    job_id = stack.submit(slow)
    stack.wait_for(job_id, lambda j: j["stage"] == "construct")
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker: parent and the child running the job
    first.wait()
    stack.client = TestClient(create_app(stack.settings, CeleryDispatcher(stack.settings.broker_url)))  # API restart
    assert stack.get(job_id)["status"] == "running"  # nothing lost: the state lives in PostgreSQL
    stack.start_worker()
    time.sleep(LEASE + 0.5)
    assert reap_and_requeue(stack.settings, CeleryDispatcher(stack.settings.broker_url)) == [job_id]
    job = stack.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=300)
    assert (job["status"], job["attempt"]) == ("succeeded", 2), job
    events = stack.get(f"{job_id}/events?limit=100")["data"]
    assert sum(e["message"].startswith("running on") for e in events) == 2
    assert [e["message"] for e in events if e["kind"] == "status"][-1] == "succeeded"
    stored = objects_under(stack, job_id)  # attempt 1's partial files are gone; only attempt 2's remain
    assert all("/attempt-2/" in key for key in stored)
    assert len(stored) == len(stack.get(f"{job_id}/artifacts")["data"])


def test_a_job_that_kills_its_worker_every_time_ends_failed_worker_lost(stack: Stack) -> None:
    job_id = stack.submit({"anchors": 8, "construction_steps": 400, "tolerance": 0.0, "patience": 400})
    dispatcher = CeleryDispatcher(stack.settings.broker_url)
    worker = stack.start_worker()
    for attempt in (1, 2, 3):
        stack.wait_for(job_id, lambda j, n=attempt: j["attempt"] == n and j["stage"] == "construct")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        if attempt < 3:  # the next worker starts while the lease runs out (it has no message until the reaper's)
            worker = stack.start_worker()
        time.sleep(LEASE + 0.5)
        assert reap_and_requeue(stack.settings, dispatcher) == ([job_id] if attempt < 3 else [])
    job = stack.get(job_id)
    assert (job["status"], job["error"]["code"], job["attempt"]) == ("failed", "worker_lost", 3)
    assert objects_under(stack, job_id) == []


def test_cancel_while_running_ends_cancelled_with_nothing_in_storage(stack: Stack) -> None:
    stack.start_worker()
    job_id = stack.submit({"anchors": 8, "construction_steps": 2000, "tolerance": 0.0, "patience": 2000})
    stack.wait_for(job_id, lambda j: j["stage"] == "construct")
    answer = stack.client.post(f"/v1/merge-jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {stack.key}"})
    assert answer.json()["status"] == "cancelling"
    job = stack.wait_for(job_id, lambda j: j["status"] in ("cancelled", "succeeded", "failed"))
    assert job["status"] == "cancelled" and job["result"] is None
    assert objects_under(stack, job_id) == []
