"""Where merge outputs go: a local directory or S3, picked by the URL in FDA_STORAGE_URL.

Both compute sha256 while streaming each file (a multipart ETag is not a content hash) and
can delete a prefix, so a failed or cancelled job leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PART_BYTES = 64 << 20  # 8 MiB default parts would cap an object near 78 GiB (10,000 parts)


@dataclass(frozen=True)
class StoredObject:
    path: str  # relative to the job's output prefix
    uri: str
    size: int
    sha256: str


class Storage(Protocol):
    def put_file(self, source: Path, key: str) -> StoredObject: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def uri(self, key: str) -> str: ...


def make_storage(url: str, s3_endpoint_url: str | None = None, s3_region: str | None = None) -> Storage:
    if url.startswith("s3://"):
        from service.s3 import make_s3_client, split_s3_uri

        bucket, prefix = split_s3_uri(url)
        return S3Storage(make_s3_client(s3_endpoint_url, s3_region), bucket, prefix)
    return LocalStorage(Path(url.removeprefix("file://")))


def put_tree(storage: Storage, local: Path, prefix: str) -> list[StoredObject]:
    """Every file under `local`, to `prefix/<relative path>`, in sorted order."""
    stored = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = path.relative_to(local).as_posix()
        obj = storage.put_file(path, f"{prefix}/{relative}")
        stored.append(StoredObject(relative, obj.uri, obj.size, obj.sha256))
    return stored


def _chunks(source: Path, size: int) -> Iterator[bytes]:
    with open(source, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def path_of(self, key: str) -> Path:
        return self.root / key

    def put_file(self, source: Path, key: str) -> StoredObject:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        digest, size = hashlib.sha256(), 0
        with open(partial, "wb") as out:
            for chunk in _chunks(source, 8 << 20):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        os.replace(partial, target)
        return StoredObject(key, str(target), size, digest.hexdigest())

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Storage:
    def __init__(self, client, bucket: str, prefix: str = "", part_bytes: int = PART_BYTES) -> None:
        self.client, self.bucket, self.prefix, self.part_bytes = client, bucket, prefix.strip("/"), part_bytes

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put_file(self, source: Path, key: str) -> StoredObject:
        """Multipart upload of PART_BYTES parts, hashing each part as it is sent; aborted on any error."""
        full = self._key(key)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        digest, size, parts = hashlib.sha256(), 0, []
        try:
            for number, chunk in enumerate(_chunks(source, self.part_bytes), start=1):
                digest.update(chunk)
                size += len(chunk)
                answer = self.client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            if not parts:  # an empty file still needs one (empty) part
                answer = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload, PartNumber=1, Body=b"")
                parts.append({"PartNumber": 1, "ETag": answer["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload)
            raise
        return StoredObject(key, self.uri(key), size, digest.hexdigest())

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix).rstrip("/") + "/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

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
