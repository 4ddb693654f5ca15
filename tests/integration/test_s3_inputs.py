"""Checkpoints in a real S3-compatible store (SeaweedFS): validated by ranged reads, then downloaded."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fda_core.checkpoints.sources import sha256_file
from service.s3 import make_s3_client
from tests.support.cli import run_cli, write_config
from tests.support.compare import load_tensors

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    make_s3_client(s3_server.endpoint_url).create_bucket(Bucket=name)
    return name


def upload_folder(endpoint: str, bucket: str, folder: Path, prefix: str) -> str:
    client = make_s3_client(endpoint)
    for path in folder.iterdir():
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def test_merge_from_s3_equals_the_same_merge_from_local_files(s3_server, bucket, llama, tmp_path: Path) -> None:
    base, experts = llama
    uris = [upload_folder(s3_server.endpoint_url, bucket, p, p.name) for p in [base, *experts]]
    env = {"FDA_S3_ENDPOINT_URL": s3_server.endpoint_url, "FDA_CACHE_DIR": str(tmp_path / "cache")}
    remote = run_cli(
        "merge",
        str(write_config(tmp_path / "s3.yaml", "ties", uris[0], uris[1:])),
        "--out",
        str(tmp_path / "s3"),
        env=env,
    )
    assert remote.returncode == 0, remote.stderr
    local = run_cli(
        "merge", str(write_config(tmp_path / "local.yaml", "ties", base, experts)), "--out", str(tmp_path / "local")
    )
    assert local.returncode == 0, local.stderr
    ours, reference = load_tensors(tmp_path / "s3"), load_tensors(tmp_path / "local")
    assert all(torch.equal(ours[name], reference[name]) for name in reference)
    provenance = json.loads((tmp_path / "s3" / "merge_provenance.json").read_text())
    assert [i["location"] for i in provenance["inputs"]] == uris
    assert [i["sha256"] for i in provenance["inputs"]] == [
        sha256_file(p / "model.safetensors") for p in [base, *experts]
    ]
    assert json.loads((tmp_path / "s3" / "config.json").read_text()) == json.loads((base / "config.json").read_text())


def test_a_single_safetensors_object_is_an_input(s3_server, bucket, llama, tmp_path: Path) -> None:
    base, experts = llama
    client = make_s3_client(s3_server.endpoint_url)
    client.upload_file(str(experts[0] / "model.safetensors"), bucket, "single/expert.safetensors")
    config = write_config(tmp_path / "c.yaml", "task_arithmetic", base, [f"s3://{bucket}/single/expert.safetensors"])
    env = {"FDA_S3_ENDPOINT_URL": s3_server.endpoint_url, "FDA_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(
        load_tensors(tmp_path / "out")["model.norm.weight"],
        load_file(str(experts[0] / "model.safetensors"))["model.norm.weight"],
    )


def test_a_mismatch_is_reported_before_any_weights_are_downloaded(s3_server, bucket, llama, tmp_path: Path) -> None:
    base, experts = llama
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    tensors = load_file(str(experts[1] / "model.safetensors"))
    tensors["model.norm.weight"] = torch.zeros(33)
    save_file(tensors, str(wrong / "model.safetensors"))
    uris = [
        upload_folder(s3_server.endpoint_url, bucket, p, name)
        for p, name in ((base, "b"), (experts[0], "e0"), (wrong, "e1"))
    ]
    cache = tmp_path / "cache"
    env = {"FDA_S3_ENDPOINT_URL": s3_server.endpoint_url, "FDA_CACHE_DIR": str(cache)}
    result = run_cli(
        "merge",
        str(write_config(tmp_path / "c.yaml", "ties", uris[0], uris[1:])),
        "--out",
        str(tmp_path / "out"),
        env=env,
    )
    assert result.returncode != 0
    assert "'model.norm.weight'" in result.stderr and "[33]" in result.stderr and f"{uris[2]}" in result.stderr
    assert not cache.exists() or not any(p.suffix == ".safetensors" for p in cache.rglob("*")), (
        "weights were downloaded"
    )
    assert not (tmp_path / "out").exists()


def test_a_missing_object_is_a_clear_error(s3_server, bucket, llama, tmp_path: Path) -> None:
    base, experts = llama
    config = write_config(tmp_path / "c.yaml", "task_arithmetic", base, [f"s3://{bucket}/no-such-model"])
    result = run_cli(
        "merge", str(config), "--out", str(tmp_path / "out"), env={"FDA_S3_ENDPOINT_URL": s3_server.endpoint_url}
    )
    assert result.returncode != 0
    assert f"s3://{bucket}/no-such-model: no such object or prefix" in result.stderr
