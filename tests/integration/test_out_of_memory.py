"""CUDA out of memory on a worker (issue 12): the merge is retried with FDA's second-order graph in
smaller chunks, then fails as `out_of_memory` (not `internal_error`). No GPU here: the FDA step itself
(fda_core.fda.runner.construct_anchors) raises torch.cuda.OutOfMemoryError, inside the real run_merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select

import fda_core.fda.runner as runner
from service.db import session_scope
from service.execute import execute_job
from service.jobs import submit_job
from service.jobspec import JobSpec
from service.migrate import upgrade
from service.models import JobEvent, MergeJob, Tenant
from service.settings import Settings

FDA_FAST = {"anchors": 8, "construction_steps": 3, "adaptation_epochs": 2}


@pytest.fixture
def settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}", storage_url=str(tmp_path / "storage"),
        cache_dir=tmp_path / "cache", lease_seconds=30, local_inputs=True, oom_retries=2,
    )  # fmt: skip
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=[str(tmp_path_factory.getbasetemp())]))
    return settings


def out_of_memory_for(monkeypatch: pytest.MonkeyPatch, failures: int, error: type[Exception]) -> list:
    """construct_anchors raises `error` on its first `failures` calls; returns each call's chunk_size."""
    chunks: list = []
    real = runner.construct_anchors

    def construct(block, theta0, experts, taus, initial, settings, **kwargs):
        chunks.append(settings.chunk_size)
        if len(chunks) <= failures:
            raise error("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.3 GiB total capacity)")
        return real(block, theta0, experts, taus, initial, settings, **kwargs)

    monkeypatch.setattr(runner, "construct_anchors", construct)
    return chunks


def submit(settings: Settings, llama) -> str:
    base, experts = llama
    body = {"method": "fda", "base_model": str(base), "models": [{"model": str(e)} for e in experts]}
    with session_scope(settings.database_url) as session:
        spec = JobSpec.model_validate({**body, "parameters": FDA_FAST})
        return submit_job(session, tenant_id="tn_a", request=spec)[0].id


def job_and_events(settings: Settings, job_id: str) -> tuple[MergeJob, list[str]]:
    with session_scope(settings.database_url) as session:
        events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return session.get_one(MergeJob, job_id), [m for m in events if m]


def test_out_of_memory_every_time_retries_with_smaller_chunks_then_fails_as_out_of_memory(
    settings: Settings, llama, monkeypatch
) -> None:
    chunks = out_of_memory_for(monkeypatch, failures=99, error=torch.cuda.OutOfMemoryError)
    job_id = submit(settings, llama)
    assert execute_job(job_id, settings) == "failed"
    assert chunks == [None, 4, 2]  # all 8 anchors at once, then halved at each of the 2 retries
    job, events = job_and_events(settings, job_id)
    assert (job.status, job.error_code, job.attempt) == ("failed", "out_of_memory", 1)
    assert "out of memory" in job.error_message and "after 2 retries" in job.error_message
    assert "reference" not in job.error_message  # a clear message, not internal_error's reference
    assert any("retrying with chunk_size 4" in m for m in events), events
    assert not list(Path(settings.storage_url).rglob("*.*"))  # nothing published


def test_out_of_memory_once_is_retried_in_smaller_chunks_and_the_job_succeeds(
    settings: Settings, llama, monkeypatch
) -> None:
    chunks = out_of_memory_for(monkeypatch, failures=1, error=RuntimeError)  # the older torch spelling
    job_id = submit(settings, llama)
    assert execute_job(job_id, settings) == "succeeded"
    assert chunks[:2] == [None, 4] and set(chunks[1:]) == {4}  # every block of the retry in chunks of 4
    job, _ = job_and_events(settings, job_id)
    assert (job.status, job.attempt, job.error_code) == ("succeeded", 1, None)
