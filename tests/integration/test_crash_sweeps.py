"""What a crashed attempt leaves behind is removed, and only that (issue 12): its objects and unfinished
S3 multipart uploads by the reaper (the leftovers table: one row per attempt, recorded at the claim),
its `.part` downloads and scratch folder by the next attempt on its host. A retry's files are safe."""

from __future__ import annotations

import fcntl
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.execute import execute_job
from service.jobs import attempt_prefix, claim_job, fail_job, output_base, submit_job
from service.jobspec import JobSpec
from service.migrate import upgrade
from service.models import Leftover, MergeJob, Tenant
from service.queue import RecordingDispatcher
from service.reaper import reap_and_requeue
from service.s3 import make_s3_client
from service.settings import Settings
from tests.integration.test_job_lifecycle import expire_lease

PART = 5 << 20


def new_database(tmp_path: Path, allowed: str) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with session_scope(url) as session:
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=[allowed]))
    return url


def submit(url: str, base: str, experts: list[str]) -> str:
    spec = JobSpec.model_validate(
        {"method": "task_arithmetic", "base_model": base, "models": [{"model": e} for e in experts]}
    )
    with session_scope(url) as session:
        return submit_job(session, tenant_id="tn_a", request=spec)[0].id


def claim(url: str, job_id: str, worker: str) -> str:
    """The attempt's storage prefix (recorded as a leftover by the claim itself)."""
    with session_scope(url) as session:
        job = claim_job(session, job_id, worker_id=worker, lease_seconds=30)
        assert job is not None
        return attempt_prefix(output_base(job), job.attempt)


@pytest.mark.s3
def test_the_reaper_removes_a_dead_attempts_objects_and_multipart_uploads_but_not_the_retrys(
    s3_server, tmp_path: Path
) -> None:
    client = make_s3_client(s3_server.endpoint_url)
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    url = new_database(tmp_path, "s3://models")
    settings = Settings(
        database_url=url, storage_url=f"s3://{bucket}/jobs", s3_endpoint_url=s3_server.endpoint_url,
        broker_url="memory://",
    )  # fmt: skip
    job_id = submit(url, "s3://models/base", ["s3://models/a"])

    def write(prefix: str) -> None:
        """What a worker killed mid-upload leaves: one finished object, one multipart upload with a part."""
        client.put_object(Bucket=bucket, Key=f"jobs/{prefix}/README.md", Body=b"card")
        upload = client.create_multipart_upload(Bucket=bucket, Key=f"jobs/{prefix}/model.safetensors")["UploadId"]
        client.upload_part(
            Bucket=bucket, Key=f"jobs/{prefix}/model.safetensors", UploadId=upload, PartNumber=1, Body=b"x" * PART
        )

    def left(prefix: str) -> tuple[list[str], list[str]]:
        under = f"jobs/{prefix}/"
        objects = client.list_objects_v2(Bucket=bucket, Prefix=under).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=under).get("Uploads", [])
        return sorted(o["Key"] for o in objects), [u["Key"] for u in uploads if u["Key"].startswith(under)]

    first = claim(url, job_id, "w1")
    write(first)
    expire_lease(url, job_id)  # worker 1 was killed: its lease runs out
    reap_and_requeue(settings, RecordingDispatcher())  # requeued; attempt 1 can never publish now
    second = claim(url, job_id, "w2")
    write(second)  # the retry is uploading (no reaper tick of the retry's own start ran)
    reap_and_requeue(settings, RecordingDispatcher())
    assert left(first) == ([], [])  # the dead attempt's object and its unfinished upload are gone
    assert left(second) == ([f"jobs/{second}/README.md"], [f"jobs/{second}/model.safetensors"])  # the retry's: kept
    with session_scope(url) as session:
        assert [row.attempt for row in session.scalars(select(Leftover).where(Leftover.job_id == job_id))] == [2]
        fail_job(session, job_id, worker_id="w2", code="merge_error", message="the retry failed")
    reap_and_requeue(settings, RecordingDispatcher())  # the retry ended: its files are garbage too
    assert left(second) == ([], [])
    with session_scope(url) as session:
        assert session.scalars(select(Leftover).where(Leftover.job_id == job_id)).all() == []


def test_the_next_attempt_on_a_host_sweeps_dead_downloads_and_scratch_folders_not_live_ones(
    llama, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path / "cache"
    objects = cache / "s3" / "models" / "objects" / "acme" / "base"
    objects.mkdir(parents=True)
    dead_part = objects / "model.safetensors.part-99999"  # a download whose worker was killed
    live_part = objects / "config.json.part-88888"  # a download running in another worker process
    scratch = cache / "jobs"
    dead_scratch, live_scratch = scratch / "mj_dead-1", scratch / "mj_live-2"
    for folder in (dead_scratch, live_scratch):
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "model.safetensors").write_bytes(b"half a merge")
    dead_part.write_bytes(b"half a download")
    live_part.write_bytes(b"downloading")
    (scratch / "mj_dead-1.lock").touch()  # its holder died: the lock is free
    held = [open(objects / "config.json.lock", "a"), open(scratch / "mj_live-2.lock", "a")]  # noqa: SIM115
    for handle in held:  # as the other worker holds them (flock: per open file, so this process conflicts too)
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        url = new_database(tmp_path, str(tmp_path_factory.getbasetemp()))
        settings = Settings(
            database_url=url, storage_url=str(tmp_path / "storage"), cache_dir=cache, local_inputs=True,
            lease_seconds=30,
        )  # fmt: skip
        base, experts = llama
        job_id = submit(url, str(base), [str(e) for e in experts])
        assert execute_job(job_id, settings) == "succeeded"
        assert not dead_part.exists() and not dead_scratch.exists()
        assert live_part.read_bytes() == b"downloading"
        assert (live_scratch / "out" / "model.safetensors").read_bytes() == b"half a merge"
        assert sorted(p.name for p in scratch.iterdir()) == ["mj_live-2", "mj_live-2.lock"]  # its own: gone too
        with session_scope(url) as session:
            assert session.get_one(MergeJob, job_id).status == "succeeded"
    finally:
        for handle in held:
            handle.close()
