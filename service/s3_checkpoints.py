"""s3:// checkpoints for fda_core: ranged reads for headers, downloads into a local cache.

Headers are read with ranged GETs, so a whole merge is validated before any tensor data is
downloaded. A download streams to `.part`, hashing as it goes, then is renamed into place;
a sidecar records the ETag, size and sha256, so an unchanged object is not fetched twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from fda_core.errors import CheckpointError
from service.checkpoint_cache import make_room, object_lock, use
from service.s3 import split_s3_uri

CHUNK_BYTES = 8 << 20
SINGLE_FILE_SUFFIXES = (
    ".safetensors",
    ".jsonl",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
)  # .jsonl: FDA calibration


class S3Source:
    """A model folder (a key prefix) or one object in an S3 bucket."""

    def __init__(
        self, uri: str, client, cache_dir: Path, cache_max_bytes: int | None = None, max_files: int = 10_000
    ) -> None:
        self.uri, self.max_files = uri, max_files
        self.cache_root, self.cache_max_bytes = cache_dir, cache_max_bytes
        self.client = client
        self.bucket, key = split_s3_uri(uri)
        self.single_file = key.endswith(SINGLE_FILE_SUFFIXES)
        if self.single_file:
            self.prefix = key.rpartition("/")[0] + "/" if "/" in key else ""
        else:
            self.prefix = key.rstrip("/") + "/" if key else ""
        self.cache_dir = cache_dir / "s3" / self.bucket
        self._objects = self._list(key)

    def _list(self, key: str) -> dict[str, dict]:
        try:
            if self.single_file:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
                return {key.rsplit("/", 1)[-1]: {"size": head["ContentLength"], "etag": head["ETag"]}}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            objects: dict[str, dict] = {}
            for page in pages:
                for item in page.get("Contents", []):
                    objects[item["Key"][len(self.prefix) :]] = {"size": item["Size"], "etag": item["ETag"]}
                if len(objects) > self.max_files:
                    raise CheckpointError(f"{self.uri}: more than {self.max_files} objects; not a model folder")
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"{self.uri}: {_describe(exc)}") from None
        if not objects:
            raise CheckpointError(f"{self.uri}: no such object or prefix")
        return objects

    def list_files(self) -> list[str]:
        return sorted(self._objects)

    def size(self, name: str) -> int:
        self._check_listed(name)
        return int(self._objects[name]["size"])

    def _check_listed(self, name: str) -> None:
        if name not in self._objects:
            raise CheckpointError(f"{self.uri}: no object named {name!r} under this prefix")

    def read_range(self, name: str, start: int, length: int) -> bytes:
        self._check_listed(name)
        if length == 0:
            return b""
        where = f"s3://{self.bucket}/{self.prefix}{name}"
        try:
            byte_range = f"bytes={start}-{start + length - 1}"
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name, Range=byte_range)
            data = response["Body"].read(length)  # bounded even if a store ignores Range
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"{where}: {_describe(exc)}") from None
        if len(data) != length:
            raise CheckpointError(f"{where}: asked for {length} bytes at offset {start}, got {len(data)}")
        return data

    def local_path(self, name: str) -> Path:
        self._check_listed(name)
        path = self.cache_dir / "objects" / (self.prefix + name)
        downloaded = False
        if self._cached_record(path, name) is None:
            with object_lock(path):
                if self._cached_record(path, name) is None:  # another worker may have fetched it meanwhile
                    make_room(self.cache_root, self._objects[name]["size"], self.cache_max_bytes)
                    self._download(name, path)
                    downloaded = True
        use(path, self._record_path(name), downloaded)
        return path

    def sha256(self, name: str, stop: object = None) -> str:
        path = self.local_path(name)
        record = self._cached_record(path, name)
        assert record is not None
        return str(record["sha256"])

    def _record_path(self, name: str) -> Path:
        return self.cache_dir / "records" / (self.prefix + name + ".json")  # apart from objects: no name clashes

    def _cached_record(self, path: Path, name: str) -> dict | None:
        record_path = self._record_path(name)
        if not (path.exists() and record_path.exists()):
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        expected = self._objects[name]
        if (
            not isinstance(record, dict)
            or record.get("etag") != expected["etag"]
            or path.stat().st_size != expected["size"]
        ):
            return None
        return record

    def _download(self, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".part-{os.getpid()}")
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
            with open(partial, "wb") as handle:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    digest.update(chunk)
                    handle.write(chunk)
        except (ClientError, BotoCoreError) as exc:
            partial.unlink(missing_ok=True)
            raise CheckpointError(
                f"s3://{self.bucket}/{self.prefix}{name}: download failed: {_describe(exc)}"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)
        record = {**self._objects[name], "sha256": digest.hexdigest()}
        self._record_path(name).parent.mkdir(parents=True, exist_ok=True)
        self._record_path(name).write_text(json.dumps(record))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
    return str(exc)
