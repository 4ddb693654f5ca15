"""s3:// checkpoints for fda_core: ranged reads for headers, downloads into a local cache.

Headers are read with ranged GETs, so a whole merge is validated before any tensor data is
downloaded. A download streams to `.part`, hashing as it goes, then is renamed into place;
a sidecar records the ETag, size and sha256, so an unchanged object is not fetched twice.

Every read is pinned to the object version the listing saw (If-Match on its ETag, and the size
checked): bytes that were validated are the bytes merged; an object replaced meanwhile fails the job
as `input_changed`. Transient S3 errors are retried with backoff (a broken download resumes where it
stopped) and, if they outlast the window, are infrastructure errors, not the tenant's checkpoint's.
A download checks the transfer's stop condition (cancel, lease lost, shutdown) between chunks.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from fda_core.errors import CheckpointError, MergeCancelled
from service.checkpoint_cache import make_room, object_lock, use
from service.retry import InfrastructureError, delays, is_transient, retrying
from service.s3 import split_s3_uri

log = logging.getLogger(__name__)
_stop: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("transfer_stop", default=None)


class InputChanged(CheckpointError):
    """The object was replaced after it was listed and checked: merging it would merge unchecked bytes."""


@contextmanager
def transfer_stop(stop: Callable[[], bool]) -> Iterator[None]:
    """Downloads in this context stop (MergeCancelled) between chunks once `stop()` is true."""
    token = _stop.set(stop)
    try:
        yield
    finally:
        _stop.reset(token)


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
        self, uri: str, client, cache_dir: Path, cache_max_bytes: int | None = None, max_files: int = 10_000,
        retry_seconds: float = 0.0,
    ) -> None:  # fmt: skip
        self.uri, self.max_files, self.retry_seconds = uri, max_files, retry_seconds
        self.stop = _stop.get()
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

    def _call(self, what: str, action: Callable):
        """An S3 call, transient errors retried for the window (then InfrastructureError)."""
        if self.retry_seconds <= 0:
            try:
                return action()
            except (ClientError, BotoCoreError) as exc:
                if is_transient(exc):
                    raise InfrastructureError(f"{what}: {_describe(exc)}") from exc
                raise
        return retrying(action, what, self.retry_seconds, self.stop)

    def _list(self, key: str) -> dict[str, dict]:
        try:
            return self._call(f"{self.uri}: listing", lambda: self._list_once(key))
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"{self.uri}: {_describe(exc)}") from None

    def _list_once(self, key: str) -> dict[str, dict]:
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
        byte_range = f"bytes={start}-{start + length - 1}"

        def read() -> bytes:
            response = self._get(name, Range=byte_range)
            return response["Body"].read(length)  # bounded even if a store ignores Range

        try:
            data = self._call(f"{where}: ranged read", read)
        except (ClientError, BotoCoreError) as exc:
            raise self._refusal(where, exc) from None
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

    def _get(self, name: str, **kwargs):
        """GetObject of the listed version only (If-Match on the listing's ETag)."""
        return self.client.get_object(
            Bucket=self.bucket, Key=self.prefix + name, IfMatch=self._objects[name]["etag"], **kwargs
        )

    def _refusal(self, where: str, exc: Exception) -> CheckpointError:
        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return InputChanged(f"{where}: the object changed after it was checked; submit the job again")
        return CheckpointError(f"{where}: {_describe(exc)}")

    def _download(self, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".part-{os.getpid()}")
        where = f"s3://{self.bucket}/{self.prefix}{name}"
        digest = hashlib.sha256()
        try:
            with open(partial, "wb") as handle:
                self._stream_into(name, where, handle, digest)
        except (ClientError, BotoCoreError) as exc:
            partial.unlink(missing_ok=True)
            raise self._refusal(f"{where}: download failed", exc) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        expected = int(self._objects[name]["size"])
        if partial.stat().st_size != expected:
            partial.unlink(missing_ok=True)
            raise InputChanged(f"{where}: downloaded a different size than was listed ({expected} bytes); submit again")
        os.replace(partial, path)
        record = {**self._objects[name], "sha256": digest.hexdigest()}
        self._record_path(name).parent.mkdir(parents=True, exist_ok=True)
        self._record_path(name).write_text(json.dumps(record))

    def _stream_into(self, name: str, where: str, handle, digest) -> None:
        """The object's bytes into `handle`; a transient error mid-stream resumes from the byte reached
        (a ranged GET of the same version), for up to the retry window."""
        pauses = iter(delays(self.retry_seconds) if self.retry_seconds > 0 else [])
        written = 0
        while True:
            try:
                extra = {"Range": f"bytes={written}-"} if written else {}
                for chunk in self._get(name, **extra)["Body"].iter_chunks(CHUNK_BYTES):
                    if self.stop is not None and self.stop():
                        raise MergeCancelled(f"{where}: download stopped (cancel, lease lost or shutdown)")
                    digest.update(chunk)
                    handle.write(chunk)
                    written += len(chunk)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                pause = next(pauses, None)
                if pause is None:
                    raise InfrastructureError(f"{where}: download failed: {_describe(exc)}") from exc
                log.warning("%s: download interrupted at byte %d (%s); resuming in %.1f s", where, written, exc, pause)
                time.sleep(pause)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
    return str(exc)
