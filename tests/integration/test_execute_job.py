"""A worker running one job through fda_core (no queue): output uploaded, artifacts recorded, or nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.db import session_scope
from service.execute import execute_job
from service.jobs import claim_job, request_cancel, submit_job
from service.jobspec import JobSpec
from service.migrate import upgrade
from service.models import MergeJob, Tenant
from service.settings import Settings
from tests.integration.test_merge_cli import load_with_transformers
from tests.support.tiny_models import save_expert

FDA_FAST = {"anchors": 4, "construction_steps": 3, "adaptation_epochs": 2}


@pytest.fixture
def settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}", storage_url=str(tmp_path / "storage"),
        cache_dir=tmp_path / "cache", lease_seconds=30, local_inputs=True,
    )  # fmt: skip
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:  # the tests' models live under pytest's temp root
        session.add(Tenant(id="tn_a", name="a", allowed_prefixes=[str(tmp_path_factory.getbasetemp())]))
    return settings


def submit(settings: Settings, config: dict) -> str:
    with session_scope(settings.database_url) as session:
        return submit_job(session, tenant_id="tn_a", request=JobSpec.model_validate(config))[0].id


def read(settings: Settings, job_id: str) -> MergeJob:
    with session_scope(settings.database_url) as session:
        return session.get_one(MergeJob, job_id)


def config_for(base: Path, experts: list[Path], method: str = "task_arithmetic", **parameters) -> dict:
    return {
        "method": method,
        "base_model": str(base),
        "models": [{"model": str(e)} for e in experts],
        "parameters": parameters,
    }


def test_a_job_runs_once_and_its_output_loads_with_transformers(settings: Settings, llama) -> None:
    base, experts = llama
    job_id = submit(settings, config_for(base, experts, "fda", **FDA_FAST))
    assert execute_job(job_id, settings) == "succeeded"
    assert execute_job(job_id, settings) == "not_claimed"  # a second delivery does nothing
    job = read(settings, job_id)
    assert (job.status, job.attempt, job.progress) == ("succeeded", 1, 1.0)
    output = Path(job.result["output"])
    assert output == Path(settings.storage_url) / "tn_a" / job_id / "attempt-1"  # tenant, job, attempt: never shared
    load_with_transformers("llama", output)
    with session_scope(settings.database_url) as session:
        from service.job_queries import artifacts_of, list_events, metrics_of

        artifacts = {a.path: a for a in artifacts_of(session, job_id)}
        metrics = metrics_of(session, job_id)
        events, _ = list_events(session, job_id, limit=100)
    assert {"model.safetensors", "merge_provenance.json", "README.md"} <= set(artifacts)
    assert any(path.startswith("anchors/") and a.kind == "anchors" for path, a in artifacts.items())
    import hashlib

    weights = artifacts["model.safetensors"]
    assert weights.sha256 == hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest()
    assert weights.size == (output / "model.safetensors").stat().st_size
    assert len(metrics["fda"]["layers"]) == 3 and "seconds" in metrics
    assert {"construct", "adapt"} <= {e.data.get("phase") for e in events if e.kind == "progress"}
    provenance = json.loads((output / "merge_provenance.json").read_text())
    assert provenance["method"] == "fda"


def test_a_bad_input_fails_the_job_with_a_code_and_leaves_no_output(settings: Settings, llama, tmp_path) -> None:
    base, experts = llama
    other = save_expert("gpt2", tmp_path / "gpt2-expert", seed=3)
    job_id = submit(settings, config_for(base, [experts[0], other]))
    assert execute_job(job_id, settings) == "failed"
    job = read(settings, job_id)
    assert job.status == "failed" and job.error_code in ("incompatible_models", "checkpoint_error")
    assert str(other) in (job.error_message or "")
    assert not list(Path(settings.storage_url).rglob("*.*"))


def test_a_pickle_checkpoint_fails_with_its_own_code(settings: Settings, llama, tmp_path) -> None:
    base, experts = llama
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (pickled / "config.json").write_text((base / "config.json").read_text())
    job_id = submit(settings, config_for(base, [experts[0], pickled]))
    assert execute_job(job_id, settings) == "failed"
    assert read(settings, job_id).error_code == "pickle_checkpoint"


def test_a_cancel_requested_while_running_ends_cancelled_with_nothing_uploaded(settings: Settings, llama) -> None:
    base, experts = llama
    job_id = submit(settings, config_for(base, experts, "fda", **{**FDA_FAST, "construction_steps": 50}))
    with session_scope(settings.database_url) as session:  # cancel arrives as the worker starts
        claim_job(session, job_id, worker_id="stale", lease_seconds=-1)  # a lost worker's claim, lease expired
        request_cancel(session, "tn_a", job_id)
        session.get_one(MergeJob, job_id).status = "running"  # still running on paper, cancel flag set
    assert execute_job(job_id, settings) == "cancelled"
    job = read(settings, job_id)
    assert (job.status, job.attempt) == ("cancelled", 2)
    assert not list(Path(settings.storage_url).rglob("*.*"))


def test_an_unexpected_error_fails_the_job_as_internal_error_instead_of_retrying(
    settings, llama, monkeypatch, caplog
) -> None:
    import service.execute as execute

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire at /srv/secret/path")

    monkeypatch.setattr(execute, "run_merge", broken)
    base, experts = llama
    job_id = submit(settings, config_for(base, experts))
    assert execute_job(job_id, settings) == "failed"
    job = read(settings, job_id)
    assert (job.status, job.error_code) == ("failed", "internal_error")
    assert job_id in job.error_message and "/srv/secret" not in job.error_message  # the tenant: a reference only
    assert "disk on fire at /srv/secret/path" in caplog.text  # operators: the exception and its traceback


def test_a_worker_whose_heartbeats_fail_for_a_whole_lease_stops(settings, monkeypatch) -> None:
    import service.execute as execute

    def database_down(*args, **kwargs):
        raise ConnectionError("database unreachable")

    beat = execute.Heartbeat(settings, "mj_x", "w1")
    monkeypatch.setattr(execute, "heartbeat", database_down)
    beat.beat()
    assert not beat.lost.is_set()  # one failed renewal is not yet a lost lease
    beat.renewed -= settings.lease_seconds + 1
    beat.beat()
    assert beat.lost.is_set()
