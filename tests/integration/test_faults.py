"""A worker through infrastructure faults, on the real servers: PostgreSQL and SeaweedFS behind a fault
proxy (tests/support/faults.py), the job run in this process by the worker's own code (execute_job).

Every fault here is one the issue found or reproduced: a finish whose reply is lost, a database or an
object store that goes away for a few seconds, a heartbeat that hangs, an object replaced between its
check and its download, a cancel during an upload, and an outage that outlasts the retry window.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.execute import execute_job
from service.jobs import request_cancel, submit_job
from service.jobspec import JobSpec
from service.migrate import upgrade
from service.models import Artifact, JobEvent, Leftover, MergeJob, Tenant
from service.s3 import make_s3_client
from service.settings import Settings
from tests.integration.test_s3_inputs import upload_folder
from tests.support.faults import FaultProxy

pytestmark = pytest.mark.s3
SLOW_FDA = {"anchors": 8, "construction_steps": 300, "tolerance": 0.0, "patience": 300, "adaptation_epochs": 2}
FAST_FDA = {"anchors": 4, "construction_steps": 3, "adaptation_epochs": 2}


@dataclass
class Rig:
    settings: Settings  # what the worker uses: the database and S3 through the proxies
    direct: str  # the database, directly (the test's own reads)
    pg: FaultProxy
    s3: FaultProxy
    inputs: list[str]
    bucket: str
    endpoint: str

    def submit(self, parameters: dict, method: str = "fda") -> str:
        body = {"method": method, "base_model": self.inputs[0], "models": [{"model": u} for u in self.inputs[1:]]}
        spec = JobSpec.model_validate({**body, "parameters": parameters})
        with session_scope(self.direct) as session:
            return submit_job(session, tenant_id="tn_a", request=spec)[0].id

    def job(self, job_id: str) -> MergeJob:
        with session_scope(self.direct) as session:
            return session.get_one(MergeJob, job_id)

    def wait_for_stage(self, job_id: str, stage: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.job(job_id).stage != stage:
            assert time.monotonic() < deadline, f"job never reached {stage}: {self.job(job_id).stage}"
            time.sleep(0.05)

    def run_in_thread(self, job_id: str) -> dict:
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(status=execute_job(job_id, self.settings)))
        thread.start()
        outcome["thread"] = thread
        return outcome

    def stored(self, job_id: str) -> list[str]:
        listed = make_s3_client(self.endpoint).list_objects_v2(Bucket="outputs", Prefix="jobs/tn_a/")
        return sorted(o["Key"] for o in listed.get("Contents", []) if f"/{job_id}/" in o["Key"])

    def unfinished_uploads(self, job_id: str) -> list[str]:
        listed = make_s3_client(self.endpoint).list_multipart_uploads(Bucket="outputs", Prefix="jobs/tn_a/")
        return [u["Key"] for u in listed.get("Uploads", []) if f"/{job_id}/" in u["Key"]]


@pytest.fixture
def rig(postgres_server, s3_server, llama, tmp_path: Path) -> Iterator[Rig]:
    direct = postgres_server.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    upgrade(direct)
    host_port = direct.rsplit("@", 1)[1].split("/")[0]
    pg = FaultProxy("127.0.0.1", int(host_port.split(":")[1]))
    s3_port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    s3 = FaultProxy("127.0.0.1", s3_port)
    client = make_s3_client(s3_server.endpoint_url)
    bucket = f"models-{uuid.uuid4().hex[:6]}"
    client.create_bucket(Bucket=bucket)
    if "outputs" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket="outputs")
    base, experts = llama
    inputs = [upload_folder(s3_server.endpoint_url, bucket, p, f"acme/{p.name}") for p in [base, *experts]]
    with session_scope(direct) as session:
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=[f"s3://{bucket}/acme"]))
    settings = Settings(
        database_url=direct.replace(host_port, f"127.0.0.1:{pg.port}"), storage_url="s3://outputs/jobs",
        s3_endpoint_url=f"http://127.0.0.1:{s3.port}", cache_dir=tmp_path / "cache", lease_seconds=8,
        transient_retry_seconds=60,
    )  # fmt: skip
    yield Rig(settings, direct, pg, s3, inputs, bucket, s3_server.endpoint_url)
    pg.close()
    s3.close()


def test_a_finish_whose_reply_is_lost_keeps_the_outputs_of_the_job_that_succeeded(rig: Rig) -> None:
    job_id = rig.submit(FAST_FDA)
    rig.pg.lose_reply(b"succeeded", b"COMMIT")  # the finish UPDATE, then its COMMIT: committed, reply dropped
    assert execute_job(job_id, rig.settings) == "succeeded"
    assert rig.pg.rules.lost == 1
    job = rig.job(job_id)
    assert job.status == "succeeded"
    with session_scope(rig.direct) as session:
        artifacts = sorted(a.uri for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id)))
        assert session.scalars(select(Leftover).where(Leftover.job_id == job_id)).all() == []  # the winner's: gone
    assert artifacts and artifacts == [f"s3://outputs/{key}" for key in rig.stored(job_id)]  # every output is there


def paced_while_down(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """While the proxy refuses connections (and 1 s after), each construction step of the merge waits
    50 ms after reporting its progress, so the merge is still constructing when the outage ends on any
    machine — instead of a budget long enough for the slowest one (300 steps: 40 s of the suite).
    Returns the times of the construction steps, for the test to check that."""
    import service.execute as execute

    report, steps = execute.ProgressReporter.__call__, []

    def paced(reporter, progress) -> None:
        report(reporter, progress)
        if progress.phase == "construct":
            steps.append(time.monotonic())
            if steps[-1] < proxy.rules.down_until + 1.0:
                time.sleep(0.05)

    monkeypatch.setattr(execute.ProgressReporter, "__call__", paced)
    return steps


def test_a_database_outage_mid_merge_is_ridden_out_and_the_job_succeeds_on_its_first_attempt(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = paced_while_down(rig.pg, monkeypatch)
    job_id = rig.submit({**SLOW_FDA, "construction_steps": 60, "patience": 60})
    running = rig.run_in_thread(job_id)
    rig.wait_for_stage(job_id, "construct")
    rig.pg.outage(4.0)  # progress writes and a heartbeat fail meanwhile (the lease is 8 s)
    ended = rig.pg.rules.down_until
    running["thread"].join(timeout=600)
    job = rig.job(job_id)
    assert (running["status"], job.status, job.attempt, job.error_code) == ("succeeded", "succeeded", 1, None)
    assert steps[-1] > ended  # the merge was still constructing when the database came back


def test_an_s3_outage_during_the_download_is_retried_and_never_blamed_on_the_checkpoint(rig: Rig) -> None:
    rig.s3.throttle(40_000)  # bytes/s: the download takes a while
    job_id = rig.submit(FAST_FDA)
    running = rig.run_in_thread(job_id)
    rig.wait_for_stage(job_id, "fetch")
    time.sleep(0.5)
    rig.s3.outage(4.0)
    rig.s3.throttle(None)
    running["thread"].join(timeout=600)
    job = rig.job(job_id)
    assert (job.status, job.attempt, job.error_code) == ("succeeded", 1, None), job.error_message


def test_an_outage_longer_than_the_retry_window_hands_the_job_back_as_an_infrastructure_error(rig: Rig) -> None:
    settings = rig.settings.model_copy(update={"transient_retry_seconds": 2.0})
    rig.s3.outage(3600)  # the object store is gone for good
    job_id = rig.submit(FAST_FDA)
    assert execute_job(job_id, settings) == "queued"  # back in the queue for another attempt …
    job = rig.job(job_id)
    assert (job.status, job.attempt, job.error_code) == ("queued", 1, None)
    with session_scope(rig.direct) as session:
        messages = [e.message for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any(m.startswith("requeued: infrastructure error") for m in messages), messages
    with session_scope(rig.direct) as session:  # … and once its attempts are used, failed as the infrastructure's
        session.get_one(MergeJob, job_id).max_attempts = 2
    assert execute_job(job_id, settings) == "failed"
    job = rig.job(job_id)
    assert (job.status, job.error_code) == ("failed", "infrastructure_error")


def test_a_heartbeat_that_hangs_for_a_whole_lease_stops_the_merge(rig: Rig) -> None:
    job_id = rig.submit(SLOW_FDA)
    running = rig.run_in_thread(job_id)
    rig.wait_for_stage(job_id, "construct")
    rig.pg.blackhole(rig.settings.lease_seconds + 4)  # the renewal neither answers nor fails
    running["thread"].join(timeout=600)
    assert running["status"] == "lease_lost"  # it stopped instead of merging on without a lease
    assert rig.job(job_id).status == "running"  # on paper: the reaper hands it on


def test_an_input_replaced_after_its_check_fails_the_job_as_input_changed(rig: Rig, llama, tmp_path: Path) -> None:
    from tests.support.tiny_models import save_expert

    rig.s3.throttle(40_000)
    job_id = rig.submit(FAST_FDA)
    running = rig.run_in_thread(job_id)
    rig.wait_for_stage(job_id, "fetch")  # headers checked; the base is downloading
    other = save_expert("llama", tmp_path / "other", seed=9, scale=5.0)
    last = rig.inputs[-1].removeprefix(f"s3://{rig.bucket}/")
    make_s3_client(rig.endpoint).upload_file(str(other / "model.safetensors"), rig.bucket, f"{last}/model.safetensors")
    rig.s3.throttle(None)
    running["thread"].join(timeout=600)
    job = rig.job(job_id)
    assert (job.status, job.error_code) == ("failed", "input_changed"), (job.status, job.error_message)
    assert last in (job.error_message or "")
    assert rig.stored(job_id) == []


def test_a_cancel_during_the_upload_stops_it_and_leaves_nothing(rig: Rig) -> None:
    job_id = rig.submit(FAST_FDA)
    running = rig.run_in_thread(job_id)
    rig.wait_for_stage(job_id, "adapt")
    rig.s3.throttle(20_000)  # the upload crawls
    rig.wait_for_stage(job_id, "upload")
    with session_scope(rig.direct) as session:
        request_cancel(session, "tn_a", job_id)
    running["thread"].join(timeout=600)
    rig.s3.throttle(None)
    assert (running["status"], rig.job(job_id).status) == ("cancelled", "cancelled")
    assert rig.stored(job_id) == [] and rig.unfinished_uploads(job_id) == []


def test_every_database_connection_has_statement_and_lock_timeouts(rig: Rig) -> None:
    from sqlalchemy import text

    with session_scope(rig.direct) as session:
        settings = [session.scalar(text(f"SHOW {name}")) for name in ("statement_timeout", "lock_timeout")]
        idle = session.scalar(text("SHOW idle_in_transaction_session_timeout"))
    assert settings == ["30s", "10s"] and idle != "0"
