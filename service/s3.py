"""A boto3 S3 client that works with AWS and S3-compatible stores alike."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import boto3
from botocore.config import Config

from fda_core.errors import CheckpointError

BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def make_s3_client(endpoint_url: str | None, region: str | None = None):  # -> S3Client
    config = Config(
        s3={"addressing_style": "path"},  # MinIO / SeaweedFS / Ceph need path-style
        request_checksum_calculation="when_required",  # boto3 ≥ 1.36 CRCs break some stores
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config)


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not BUCKET_NAME.fullmatch(parsed.netloc):
        raise CheckpointError(f"{uri}: expected s3://bucket/key with a valid bucket name")
    if any(part in ("..", ".") for part in key.split("/")) or any(ord(c) < 32 for c in key):
        raise CheckpointError(f"{uri}: key contains '..', '.' or control characters")
    return parsed.netloc, key
