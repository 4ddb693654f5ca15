"""Output storage: S3 multipart uploads with sha256 while streaming, and local folders; prefixes deleted whole."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from service.s3 import make_s3_client
from service.storage import LocalStorage, S3Storage, put_tree

pytestmark = pytest.mark.s3
PART = 5 << 20  # S3's smallest part


def payload(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "out" / "model-00001.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    (tmp_path / "out" / "anchors").mkdir()
    (tmp_path / "out" / "anchors" / "block-000.safetensors").write_bytes(b"")
    return path


def test_a_multipart_upload_round_trips_with_its_sha256_and_a_prefix_is_deleted_whole(
    s3_server, tmp_path: Path
) -> None:
    client = make_s3_client(s3_server.endpoint_url)
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    storage = S3Storage(client, bucket, "jobs", part_bytes=PART)
    big = payload(tmp_path, 2 * PART + 12345)  # three parts, the last one short
    stored = {obj.path: obj for obj in put_tree(storage, tmp_path / "out", "tn/mj_1/attempt-1")}
    weights = stored["model-00001.safetensors"]
    assert weights.sha256 == hashlib.sha256(big.read_bytes()).hexdigest() and weights.size == big.stat().st_size
    body = client.get_object(Bucket=bucket, Key="jobs/tn/mj_1/attempt-1/model-00001.safetensors")["Body"].read()
    assert body == big.read_bytes()
    assert stored["anchors/block-000.safetensors"].size == 0  # an empty file is a valid object too
    storage.delete_prefix("tn/mj_1")
    assert client.list_objects_v2(Bucket=bucket, Prefix="jobs/").get("KeyCount", 0) == 0


def test_local_storage_writes_atomically_and_hashes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    big = payload(tmp_path, 3 << 20)
    stored = {obj.path: obj for obj in put_tree(storage, tmp_path / "out", "tn/mj_1/attempt-1")}
    target = tmp_path / "storage" / "tn" / "mj_1" / "attempt-1" / "model-00001.safetensors"
    assert target.read_bytes() == big.read_bytes()
    assert stored["model-00001.safetensors"].sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert not list((tmp_path / "storage").rglob(".*.part"))
    storage.delete_prefix("tn/mj_1")
    assert not (tmp_path / "storage" / "tn" / "mj_1").exists()
