"""Every number finite and in range, at the API and in the CLI; NaN/Inf in an input or the output
fails the merge naming the tensor (check_finite, on by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.db import session_scope
from service.execute import execute_job
from service.models import MergeJob
from tests.security.conftest import Service, assert_problem
from tests.support.cli import run_cli, write_config
from tests.support.hostile import ta_body


def raw_post(service: Service, text: str):
    headers = service.headers(**{"Content-Type": "application/json"})
    return service.client.post("/v1/merge-jobs", content=text.encode(), headers=headers)


@pytest.mark.parametrize(
    ("fragment", "param"),
    [
        ('"models": [{"model": "M", "weight": NaN}, {"model": "M"}]', "models.0.weight"),
        ('"models": [{"model": "M", "weight": 1e309}, {"model": "M"}]', "models.0.weight"),
        ('"models": [{"model": "M"}, {"model": "M"}], "parameters": {"lambda": NaN}', "parameters.lambda"),
        ('"models": [{"model": "M"}, {"model": "M"}], "parameters": {"lambda": [0, Infinity]}', "parameters.lambda"),
        ('"models": [{"model": "M", "parameters": {"weight": -1e999}}, {"model": "M"}]', "models.0.parameters"),
        ('"models": [{"model": "M"}, {"model": "M"}], "seed": 99999999999999999999999', "seed"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused_at_submit(
    service: Service, llama, fragment: str, param: str
) -> None:
    base, experts = llama
    text = '{"method": "task_arithmetic", "base_model": "B", ' + fragment + "}"
    text = text.replace('"B"', json.dumps(str(base))).replace('"M"', json.dumps(str(experts[0])))
    problem = assert_problem(raw_post(service, text), 422, "invalid_request")
    assert problem["param"].startswith(param), problem  # was: accepted, 21/21 tensors NaN, shown as null
    assert service.dispatcher.enqueued == []


def poisoned(source: Path, target: Path, value: float) -> Path:
    """A copy of a checkpoint with one value of one tensor set to `value`."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "model.safetensors":
            (target / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(source / "model.safetensors"))
    name = sorted(n for n, t in tensors.items() if t.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_nan_inside_an_input_fails_the_job_naming_the_input_and_tensor(service: Service, llama) -> None:
    base, experts = llama
    bad = poisoned(experts[1], service.inputs / "nan-expert", float("nan"))
    response = service.submit(ta_body(str(base), [str(experts[0]), str(bad)]))
    assert response.status_code == 202, response.text  # headers are fine; the values are read by the worker
    job_id = response.json()["id"]
    assert execute_job(job_id, service.settings) == "failed"
    with session_scope(service.settings.database_url) as session:
        job = session.get_one(MergeJob, job_id)
    assert job.error_code == "non_finite" and "nan-expert" in job.error_message and "tensor '" in job.error_message
    assert not (Path(service.settings.storage_url) / job.tenant_id).exists() or not any(
        (Path(service.settings.storage_url) / job.tenant_id).rglob("*.safetensors")
    )


def test_a_merge_that_overflows_to_inf_fails_naming_the_tensor_and_check_finite_false_lets_it_through(
    tmp_path: Path, llama
) -> None:
    base, experts = llama
    config = write_config(tmp_path / "overflow.yaml", "task_arithmetic", base, experts, parameters={"lambda": 1e300})
    merged = run_cli("merge", str(config), "--out", str(tmp_path / "out"), "--quiet")
    assert merged.returncode == 2 and "Traceback" not in merged.stderr
    assert "the merge produced NaN or infinite values" in merged.stderr and "tensor '" in merged.stderr
    assert not (tmp_path / "out").exists()
    allowed = write_config(
        tmp_path / "allowed.yaml", "task_arithmetic", base, experts, parameters={"lambda": 1e300}, check_finite=False
    )
    assert run_cli("merge", str(allowed), "--out", str(tmp_path / "out2"), "--quiet").returncode == 0
    assert not bool(torch.isfinite(next(iter(load_file(str(tmp_path / "out2" / "model.safetensors")).values()))).all())


def test_fdamerge_merge_refuses_nan_in_yaml_with_one_line_and_no_traceback(tmp_path: Path, llama) -> None:
    base, experts = llama
    config = tmp_path / "nan.yaml"
    config.write_text(f"method: linear\nmodels:\n  - model: {experts[0]}\n    weight: .nan\n  - model: {experts[1]}\n")
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # was: exit 0 with NaN weights
    assert "models.0.weight" in result.stderr and "finite" in result.stderr
