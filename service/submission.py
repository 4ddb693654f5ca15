"""What a tenant may submit: inputs only from its allowlist, sealed; limits; a safe output prefix.

Local paths are accepted only where the operator enables them (FDA_LOCAL_INPUTS; `fdamerge up`
does, production settings do not). A local input is resolved with every symlink followed and the
result checked against the tenant's allowlist; the service's own folders (the checkpoint cache,
other tenants' outputs, the database, the broker) are never inputs. fda_core then checks every file
it opens again, after opening it (fda_core.checkpoints.sources.LocalAccess). Checked at submit and
again at every execution: a trigger, a retry, a schedule's fire, and on the worker.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy.orm import Session

from fda_core.checkpoints.sources import LocalAccess
from service.auth import Principal
from service.errors import InvalidRequest
from service.jobspec import JobSpec
from service.models import Tenant
from service.settings import VAR, Settings

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class InputNotAllowed(InvalidRequest):
    """Over HTTP a refused field like any other (422 invalid_request); a job a worker refuses for it
    fails with error.code input_not_allowed."""


@dataclass(frozen=True)
class InputPolicy:
    """Where one tenant's job may read from."""

    tenant_id: str
    allowed: tuple[str, ...]  # the tenant's allowlist: s3://bucket[/prefix] and absolute folders
    local_inputs: bool  # the operator accepts local paths at all
    denied: tuple[Path, ...] = ()  # resolved service folders, never inputs …
    excepted: tuple[Path, ...] = ()  # … except these (the tenant's own outputs)
    storage_s3: str | None = None  # s3://bucket/prefix of the outputs: only the tenant's own part is readable

    @classmethod
    def of(cls, settings: Settings, tenant_id: str, allowed: tuple[str, ...]) -> InputPolicy:
        denied, excepted, storage_s3 = [_real(settings.cache_dir)], [], None
        if settings.storage_url.startswith("s3://"):
            storage_s3 = settings.storage_url.rstrip("/")
        else:
            storage = _real(Path(settings.storage_url.removeprefix("file://")))
            denied.append(storage)
            excepted.append(storage / tenant_id)
        if settings.database_url.startswith("sqlite:///"):
            denied.append(_real(Path(settings.database_url.removeprefix("sqlite:///"))))
        if settings.broker_url.startswith("filesystem://"):
            denied.append(_real(VAR / "broker"))
        return cls(tenant_id, allowed, settings.local_inputs, tuple(denied), tuple(excepted), storage_s3)

    def local_access(self) -> LocalAccess:
        """fda_core's view of this policy: what every LocalSource of the job may open."""
        roots = tuple(_real(Path(entry)) for entry in self.allowed if entry.startswith("/"))
        return LocalAccess(self.local_inputs, roots, self.denied, self.excepted)

    def check(self, uri: str, param: str) -> None:
        _check_segments(uri, param)
        scheme = urlparse(uri).scheme
        if scheme in ("", "file"):
            self._check_local(uri, param)
        elif scheme == "s3":
            self._check_s3(uri, param)
        else:
            raise InvalidRequest(
                f"{param}: {uri!r}: only s3:// URIs (and local paths, where enabled) are accepted", param
            )

    def _check_local(self, uri: str, param: str) -> None:
        if not self.local_inputs:
            raise InputNotAllowed(
                f"{param}: local paths are not accepted by this service (FDA_LOCAL_INPUTS is off); give an s3:// URI",
                param,
            )
        path = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri)
        if not path.is_absolute():
            raise InvalidRequest(
                f"{param}: {uri!r}: a local path must be absolute (the service has no working directory)", param
            )
        real = _real(path)
        if not self.local_access().permits(real):
            raise InputNotAllowed(f"{param}: {uri!r} {self._where(real != path)}", param)

    def _check_s3(self, uri: str, param: str) -> None:
        if not any(_under(uri, entry) for entry in self.allowed if not entry.startswith("/")):
            raise InputNotAllowed(f"{param}: {uri!r} {self._where(False)}", param)
        if self.storage_s3 and _under(uri, self.storage_s3) and not _under(uri, f"{self.storage_s3}/{self.tenant_id}"):
            raise InputNotAllowed(f"{param}: {uri!r} is another tenant's output", param)

    def _where(self, resolved: bool) -> str:
        verb = "resolves (through a symlink) to a place outside" if resolved else "is not under"
        where = ", ".join(self.allowed) if self.allowed else "nowhere (ask an operator: fdamerge tenants allow)"
        return f"{verb} this tenant's allowed inputs: {where}"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _under(uri: str, prefix: str) -> bool:
    stem = prefix.rstrip("/")
    return uri == stem or uri.startswith(stem + "/")


def check_submission(spec: JobSpec, policy: InputPolicy, settings: Settings) -> None:
    """Every check that needs nothing but the spec and the tenant: limits, then each input's place."""
    spec.check_limits(settings.limits)
    for param, uri in spec.inputs():
        policy.check(uri, param)


def policy_of(settings: Settings, principal: Principal) -> InputPolicy:
    return InputPolicy.of(settings, principal.tenant_id, principal.allowed_prefixes)


def current_policy(session: Session, settings: Settings, tenant_id: str) -> InputPolicy:
    """The tenant's policy as the database has it now (it may have narrowed, or been disabled, since)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or tenant.disabled:
        raise InputNotAllowed("this tenant is disabled; its jobs no longer run", None)
    return InputPolicy.of(settings, tenant_id, tuple(tenant.allowed_prefixes))


def recheck(session: Session, settings: Settings, tenant_id: str, spec: JobSpec) -> InputPolicy:
    """At every execution: the spec against the tenant's current allowlist and limits."""
    policy = current_policy(session, settings, tenant_id)
    check_submission(spec, policy, settings)
    return policy


def _check_segments(value: str, param: str) -> None:
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise InvalidRequest(f"{param}: control characters are not allowed", param)
    path = value.split("://", 1)[1] if "://" in value else value
    segments = path.strip("/").split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidRequest(f"{param}: {value!r} has an empty, '.' or '..' path segment", param)


def allowlist_entry(given: str) -> str:
    """An allowlist entry: `s3://bucket[/prefix]` (a bare bucket name is accepted) or an absolute
    local folder other than `/` (resolved when checked, so a symlinked folder works)."""
    if given.startswith("/"):
        if given.strip("/") == "":
            raise InvalidRequest("allow: '/' would let this tenant read every file of the host; name a folder", "allow")
        _check_segments(given, "allow")
        return given.rstrip("/")
    uri = given if given.startswith("s3://") else f"s3://{given.strip('/')}"
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    if not BUCKET.match(bucket):
        raise InvalidRequest(f"allow: {given!r} does not name a valid S3 bucket", "allow")
    _check_segments(uri, "allow")
    return uri.rstrip("/")
