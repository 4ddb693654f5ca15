"""What a tenant may submit: inputs only from its allowlist, well-formed URIs, a safe output prefix."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from fda_core.config import MergeConfig
from service.auth import Principal
from service.errors import InvalidRequest
from service.jobs import JobRequest

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def job_request(config: MergeConfig, principal: Principal, output: str | None, metadata: dict[str, Any]) -> JobRequest:
    for param, uri in _inputs(config):
        check_input_allowed(uri, principal.allowed_prefixes, param)
    if output is not None:
        check_relative_prefix(output, "output")
    return JobRequest(config.model_dump(mode="json", exclude_none=True), output, metadata)


def _inputs(config: MergeConfig) -> list[tuple[str, str]]:
    found = [("base_model", config.base_model)] if config.base_model else []
    models = [(f"models[{i}].model", m.model) for i, m in enumerate(config.models)]
    calibration = [(f"models[{i}].calibration", m.calibration) for i, m in enumerate(config.models) if m.calibration]
    return found + models + calibration


def check_input_allowed(uri: str, allowed: tuple[str, ...], param: str) -> None:
    """`uri` must be well formed and lie under one of the tenant's allowed prefixes (on a `/` boundary)."""
    _check_segments(uri, param)
    for prefix in allowed:
        stem = prefix.rstrip("/")
        if uri == stem or uri.startswith(stem + "/"):
            return
    where = ", ".join(allowed) if allowed else "nowhere (ask an admin: fdamerge keys create --allow-bucket)"
    raise InvalidRequest(f"{param}: {uri!r} is not under this tenant's allowed inputs: {where}", param)


def check_relative_prefix(prefix: str, param: str) -> None:
    if prefix.startswith("/") or "://" in prefix:
        raise InvalidRequest(f"{param}: {prefix!r} must be a relative prefix inside the service's storage", param)
    _check_segments(prefix, param)


def _check_segments(value: str, param: str) -> None:
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise InvalidRequest(f"{param}: control characters are not allowed", param)
    path = value.split("://", 1)[1] if "://" in value else value
    segments = path.strip("/").split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidRequest(f"{param}: {value!r} has an empty, '.' or '..' path segment", param)


def allowlist_entry(given: str) -> str:
    """An allowlist entry: `s3://bucket[/prefix]` (a bare bucket name is accepted) or an absolute local folder."""
    if given == "/":
        return given
    if given.startswith("/"):
        _check_segments(given, "allow")
        return given.rstrip("/")
    uri = given if given.startswith("s3://") else f"s3://{given.strip('/')}"
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    if not BUCKET.match(bucket):
        raise InvalidRequest(f"allow: {given!r} does not name a valid S3 bucket", "allow")
    _check_segments(uri, "allow")
    return uri.rstrip("/")
