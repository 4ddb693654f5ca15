"""`fdamerge worker --drain` against a real merge worker (Celery on a real Redis): a drained worker
takes no new job and stays up; `--resume` makes it take jobs again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.migrate import upgrade
from service.queue import MERGE_QUEUE, CeleryDispatcher, waiting_job_ids
from tests.support.cli import REPO

START_DEADLINE = 120  # s: a Celery worker importing the service on 2 loaded cores


@pytest.fixture
def worker(redis_server, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A worker of the test's own (the test stops it), on a Redis database of its own: the shared
    worker, if it is up, neither takes its messages nor hears its control commands."""
    with running_worker(redis_server.url.rsplit("/", 1)[0] + "/1", tmp_path) as env:
        yield env


@pytest.fixture(scope="module")
def shared_worker(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One worker for the tests that leave it running and idle (starting one takes most of a test)."""
    with running_worker(redis_server.url, tmp_path_factory.mktemp("worker")) as env:
        yield env


@contextlib.contextmanager
def running_worker(broker_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    redis.Redis.from_url(broker_url).delete(MERGE_QUEUE)
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FDA_DATABASE_URL": url,
        "FDA_BROKER_URL": broker_url, "FDA_HEALTH_DIR": str(tmp_path / "health"),
        "FDA_STORAGE_URL": f"file://{tmp_path / 'storage'}", "FDA_CACHE_DIR": str(tmp_path / "cache"),
        "FDA_SHUTDOWN_GRACE_SECONDS": "2", "FDA_LOCAL_INPUTS": "true",
    }  # fmt: skip
    log = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=env, stdout=open(log, "w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_DEADLINE
        while "ready." not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield {**env, "pid": str(process.pid)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def control(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", *flags], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def taken(broker_url: str, job_id: str, within: float) -> bool:
    """Whether the worker took the job's message off the queue within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if job_id not in (waiting_job_ids(broker_url) or set()):
            return True
        time.sleep(0.2)
    return False


def test_a_drained_worker_takes_no_new_job_until_it_is_resumed(shared_worker: dict[str, str]) -> None:
    worker = shared_worker
    broker = worker["FDA_BROKER_URL"]
    drained = control(worker, "--drain")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "draining merge@" in drained.stdout and "drained: no job is running" in drained.stdout
    CeleryDispatcher(broker).enqueue("mj_after_drain")  # no such job: once taken, its claim just fails
    assert waiting_job_ids(broker) == {"mj_after_drain"}
    assert not taken(broker, "mj_after_drain", within=4.0)  # the drained worker leaves it on the queue
    resumed = control(worker, "--resume")
    assert resumed.returncode == 0 and "resumed: merge@" in resumed.stdout, resumed.stdout + resumed.stderr
    assert taken(broker, "mj_after_drain", within=20.0)
    assert Path(f"/proc/{worker['pid']}").exists(), "a drained worker stays up (a supervisor would restart it)"


def test_sigterm_mid_job_hands_the_job_back_after_the_grace_without_using_an_attempt(worker, llama) -> None:
    from service.db import session_scope
    from service.jobs import submit_job
    from service.jobspec import JobSpec
    from service.models import JobEvent, MergeJob, Tenant
    from service.submission import allowlist_entry

    url, base, experts = worker["FDA_DATABASE_URL"], *llama
    spec = JobSpec.model_validate({
        "method": "fda", "base_model": str(base), "models": [{"model": str(e)} for e in experts],
        "parameters": {"anchors": 8, "construction_steps": 2000, "tolerance": 0.0, "patience": 2000},
    })  # fmt: skip
    with session_scope(url) as session:
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=[allowlist_entry(str(base.parent))]))
        session.flush()
        job_id = submit_job(session, tenant_id="tn_a", request=spec)[0].id
    CeleryDispatcher(worker["FDA_BROKER_URL"]).enqueue(job_id)
    deadline = time.monotonic() + 120
    while True:
        with session_scope(url) as session:
            job = session.get_one(MergeJob, job_id)
        if job.stage == "construct":
            break
        assert job.status in ("queued", "running") and time.monotonic() < deadline, (job.status, job.error_message)
        time.sleep(0.1)
    os.kill(int(worker["pid"]), signal.SIGTERM)  # docker stop, systemctl stop
    deadline = time.monotonic() + 60
    while Path(f"/proc/{worker['pid']}").exists() and pool_state(worker["pid"]) != "Z":
        assert time.monotonic() < deadline, "the worker waited past its grace"
        time.sleep(0.2)
    with session_scope(url) as session:
        job = session.get_one(MergeJob, job_id)
        events = [e.message for e in session.query(JobEvent).filter(JobEvent.job_id == job_id)]
    outcome = (job.status, job.attempt, job.max_attempts)
    assert outcome == ("queued", 1, 4), (events, job.error_code, job.error_message)  # attempt 1 did not count
    assert any(m.startswith("requeued") for m in events), events


def pool_state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_messages_of_cancelled_jobs_are_dropped_without_a_job_process(shared_worker: dict[str, str]) -> None:
    from service.db import session_scope
    from service.jobs import request_cancel
    from service.models import Tenant
    from tests.integration.test_job_lifecycle import submit

    worker = shared_worker
    url, broker = worker["FDA_DATABASE_URL"], worker["FDA_BROKER_URL"]
    with session_scope(url) as session:
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=["s3://b"]))
    ids = [submit(url) for _ in range(6)]
    with session_scope(url) as session:
        for job_id in ids:
            request_cancel(session, "tn_a", job_id)  # queued → cancelled at once; their messages stay queued
    pool = settled_pool(worker["pid"])  # (a message an earlier test gave the worker replaced its pool process)
    assert len(pool) == 1
    for job_id in ids:
        CeleryDispatcher(broker).enqueue(job_id)
    deadline = time.monotonic() + 30
    while waiting_job_ids(broker):
        assert time.monotonic() < deadline, "the worker did not take the messages"
        time.sleep(0.2)
    time.sleep(2.0)
    # one job per pool process (--max-tasks-per-child 1): a message run there would have replaced it
    assert pool_processes(worker["pid"]) == pool


def pool_processes(pid: str) -> list[int]:
    return sorted(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def settled_pool(pid: str, quiet: float = 1.5, timeout: float = 30.0) -> list[int]:
    """The worker's pool processes once they have stayed the same for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    pool, since = pool_processes(pid), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the worker's pool never settled"
        time.sleep(0.1)
        now = pool_processes(pid)
        if now != pool:
            pool, since = now, time.monotonic()
    return pool
