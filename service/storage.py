"""Where merge outputs go: a local directory or S3, picked by the URL in FDA_STORAGE_URL.

Both compute sha256 while streaming each file (a multipart ETag is not a content hash) and
can delete a prefix (on S3 its unfinished multipart uploads too), so a failed or cancelled job
leaves nothing behind. Uploads check `stop` (cancel, lease lost, shutdown) between parts, and S3
calls ride out transient errors for `retry_seconds` (service.retry).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fda_core.errors import MergeCancelled
from service.retry import retrying

Stop = Callable[[], bool]

PART_BYTES = 64 << 20  # 8 MiB default parts would cap an object near 78 GiB (10,000 parts)


@dataclass(frozen=True)
class StoredObject:
    path: str  # relative to the job's output prefix
    uri: str
    size: int
    sha256: str


class Storage(Protocol):
    def put_file(self, source: Path, key: str, stop: Stop | None = None) -> StoredObject: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def uri(self, key: str) -> str: ...


def make_storage(
    url: str, s3_endpoint_url: str | None = None, s3_region: str | None = None, retry_seconds: float = 0.0
) -> Storage:
    if url.startswith("s3://"):
        from service.s3 import make_s3_client, split_s3_uri

        bucket, prefix = split_s3_uri(url)
        return S3Storage(make_s3_client(s3_endpoint_url, s3_region), bucket, prefix, retry_seconds=retry_seconds)
    return LocalStorage(Path(url.removeprefix("file://")))


def storage_of(settings) -> Storage:  # settings: service.settings.Settings
    return make_storage(
        settings.storage_url, settings.s3_endpoint_url, settings.s3_region, settings.transient_retry_seconds
    )


def put_tree(
    storage: Storage,
    local: Path,
    prefix: str,
    stop: Stop | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[StoredObject]:
    """Every file under `local`, to `prefix/<relative path>`, in sorted order; progress(done, total, name)."""
    stored = []
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for done, path in enumerate(files):
        relative = path.relative_to(local).as_posix()
        if progress is not None:
            progress(done, len(files), relative)
        obj = storage.put_file(path, f"{prefix}/{relative}", stop)
        stored.append(StoredObject(relative, obj.uri, obj.size, obj.sha256))
    return stored


def _chunks(source: Path, size: int, stop: Stop | None = None) -> Iterator[bytes]:
    with open(source, "rb") as handle:
        while chunk := handle.read(size):
            if stop is not None and stop():
                raise MergeCancelled(f"upload of {source.name} stopped (cancel, lease lost or shutdown)")
            yield chunk


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def path_of(self, key: str) -> Path:
        return self.root / key

    def put_file(self, source: Path, key: str, stop: Stop | None = None) -> StoredObject:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        digest, size = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                for chunk in _chunks(source, 8 << 20, stop):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return StoredObject(key, str(target), size, digest.hexdigest())

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Storage:
    def __init__(
        self, client, bucket: str, prefix: str = "", part_bytes: int = PART_BYTES, retry_seconds: float = 0.0
    ) -> None:
        self.client, self.bucket, self.prefix, self.part_bytes = client, bucket, prefix.strip("/"), part_bytes
        self.retry_seconds = retry_seconds

    def _call(self, what: str, operation: Callable, stop: Stop | None = None, **kwargs):
        if self.retry_seconds <= 0:
            return operation(**kwargs)
        return retrying(lambda: operation(**kwargs), f"S3 {what}", self.retry_seconds, stop)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put_file(self, source: Path, key: str, stop: Stop | None = None) -> StoredObject:
        """Multipart upload of PART_BYTES parts, hashing each part as it is sent; aborted on any error
        (and, should this process die first, by whoever deletes the prefix: delete_prefix)."""
        full = self._key(key)
        where = {"Bucket": self.bucket, "Key": full}
        upload = self._call("create upload", self.client.create_multipart_upload, stop, **where)["UploadId"]
        digest, size, parts = hashlib.sha256(), 0, []
        try:
            for number, chunk in enumerate(_chunks(source, self.part_bytes, stop), start=1):
                digest.update(chunk)
                size += len(chunk)
                answer = self._call(
                    "upload part",
                    self.client.upload_part,
                    stop,
                    **where,
                    UploadId=upload,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            if not parts:  # an empty file still needs one (empty) part
                answer = self._call(
                    "upload part", self.client.upload_part, stop, **where, UploadId=upload, PartNumber=1, Body=b""
                )
                parts.append({"PartNumber": 1, "ETag": answer["ETag"]})
            self._call(
                "complete upload", self.client.complete_multipart_upload, stop, **where, UploadId=upload,
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):  # the store is down: the leftover row keeps it for the reaper
                self.client.abort_multipart_upload(**where, UploadId=upload)
            raise
        return StoredObject(key, self.uri(key), size, digest.hexdigest())

    def delete_prefix(self, prefix: str) -> None:
        """Every object under the prefix, and every unfinished multipart upload there (a killed worker's)."""
        under = self._key(prefix).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call("list", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=under))):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self._call(
                    "delete", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
        for upload in self.unfinished_uploads(prefix):
            self._call(
                "abort upload", self.client.abort_multipart_upload, Bucket=self.bucket, Key=upload["Key"],
                UploadId=upload["UploadId"],
            )  # fmt: skip

    def unfinished_uploads(self, prefix: str) -> list[dict]:
        under = self._key(prefix).rstrip("/") + "/"
        found: list[dict] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in self._call("list uploads", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=under))):
            found += [u for u in page.get("Uploads", []) if u["Key"].startswith(under)]
        return found

    def presigned_url(self, key: str, seconds: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds
        )


def presigned_get(uri: str, s3_endpoint_url: str | None, s3_region: str | None, seconds: int = 3600) -> str:
    """A time-limited GET URL for an s3:// artifact."""
    from service.s3 import make_s3_client, split_s3_uri

    bucket, key = split_s3_uri(uri)
    client = make_s3_client(s3_endpoint_url, s3_region)
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)
