"""The worker's S3 download cache: reused while unchanged, kept within its disk budget by LRU eviction."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from service import checkpoint_cache
from service.s3 import make_s3_client
from service.s3_checkpoints import S3Source

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"cache-{uuid.uuid4().hex[:8]}"
    client = make_s3_client(s3_server.endpoint_url)
    client.create_bucket(Bucket=name)
    for i in range(3):
        client.put_object(Bucket=name, Key=f"m{i}/model.safetensors", Body=bytes([i]) * 1000)
    return name


def fetch(s3_server, bucket: str, index: int, cache: Path, budget: int | None) -> Path:
    source = S3Source(f"s3://{bucket}/m{index}", make_s3_client(s3_server.endpoint_url), cache, budget)
    return source.local_path("model.safetensors")


def test_the_least_recently_used_object_is_evicted_to_stay_within_budget(
    s3_server, bucket, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(checkpoint_cache, "_pinned", set())  # a fresh worker process
    first = fetch(s3_server, bucket, 0, tmp_path, budget=2500)
    second = fetch(s3_server, bucket, 1, tmp_path, budget=2500)
    checkpoint_cache._pinned.clear()  # the next job, in a new process: nothing pinned
    old = time.time() - 100
    os.utime(tmp_path / "s3" / bucket / "records" / "m0" / "model.safetensors.json", (old, old))
    third = fetch(s3_server, bucket, 2, tmp_path, budget=2500)
    assert not first.exists() and second.exists() and third.read_bytes() == bytes([2]) * 1000
    again = fetch(s3_server, bucket, 0, tmp_path, budget=None)
    assert again.read_bytes() == bytes([0]) * 1000  # evicted objects come back on demand


def test_objects_of_the_running_job_are_never_evicted_under_it(s3_server, bucket, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint_cache, "_pinned", set())
    first = fetch(s3_server, bucket, 0, tmp_path, budget=1500)
    second = fetch(s3_server, bucket, 1, tmp_path, budget=1500)  # over budget, but the first is in use
    assert first.exists() and second.exists()
