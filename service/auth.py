"""Tenants and bearer API keys: keys are shown once, stored as sha256 with a lookup prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select
from sqlalchemy.orm import Session

from service.errors import InvalidRequest, NotFound, ServiceError
from service.ids import new_id
from service.models import ApiKey, Tenant, utcnow

SCOPES = ("jobs:read", "jobs:write", "schedules:write", "admin", "metrics:read")
TENANT_SCOPES = ("jobs:read", "jobs:write", "schedules:write", "admin")  # what admin implies and may grant
OPERATOR_SCOPES = ("metrics:read",)  # fleet-wide: granted by an operator (fdamerge keys create) only
DEFAULT_SCOPES = ("jobs:read", "jobs:write")
KEY_PREFIX = "fdm"


class Unauthorized(ServiceError):
    code = "unauthorized"


class Forbidden(ServiceError):
    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who is calling: their tenant, what they may do, and where their inputs may come from."""

    tenant_id: str
    scopes: frozenset[str]
    allowed_prefixes: tuple[str, ...]

    def require(self, scope: str) -> None:
        implied = "admin" in self.scopes and scope in TENANT_SCOPES
        if scope not in self.scopes and not implied:
            raise Forbidden(f"this API key lacks the {scope!r} scope")


def ensure_tenant(session: Session, name: str, allowed_prefixes: list[str] | None = None) -> Tenant:
    """The tenant called `name` (created if new); given prefixes are added to its allowlist."""
    tenant = tenant_named(session, name)
    if tenant is None:
        tenant = Tenant(id=new_id("tn"), name=name, allowed_prefixes=[], disabled=False)
        session.add(tenant)
    new = [p for p in allowed_prefixes or [] if p not in tenant.allowed_prefixes]
    if new:
        tenant.allowed_prefixes = [*tenant.allowed_prefixes, *new]
    session.flush()
    return tenant


def tenant_named(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def narrow_allowlist(tenant: Tenant, keep: list[str]) -> None:
    """Keep only entries already on the allowlist (a tenant may narrow its own, never widen it)."""
    extra = [entry for entry in keep if entry not in tenant.allowed_prefixes]
    if extra:
        raise InvalidRequest(
            f"allowed_inputs: {extra[0]!r} is not on this tenant's allowlist; only an operator can add entries"
            " (fdamerge tenants allow)",
            "allowed_inputs",
        )
    tenant.allowed_prefixes = [entry for entry in tenant.allowed_prefixes if entry in keep]


def active_keys(session: Session, tenant_id: str) -> int:
    live = or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow())
    query = select(func.count()).where(ApiKey.tenant_id == tenant_id, ApiKey.revoked.is_(False), live)
    return int(session.scalar(query) or 0)


def create_api_key(
    session: Session, tenant: Tenant, scopes: list[str] | None = None, expires_at: datetime | None = None
) -> str:
    """A new key for the tenant; returns the plaintext, which is never stored or shown again."""
    wanted = list(scopes or DEFAULT_SCOPES)
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if expires_at is not None and expires_at <= utcnow():
        raise ValueError(f"expires_at {expires_at.isoformat()} has already passed; give a future time")
    lookup, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    plaintext = f"{KEY_PREFIX}_{lookup}_{secret}"
    session.add(
        ApiKey(
            id=new_id("key"), tenant_id=tenant.id, lookup=lookup, sha256=key_digest(plaintext), scopes=wanted,
            expires_at=expires_at,
        )
    )  # fmt: skip
    session.flush()
    return plaintext


def authenticate(session: Session, presented: str) -> Principal:
    """The principal of a bearer key; Unauthorized for unknown, wrong, revoked or expired keys."""
    row = session.execute(KEY_AND_TENANT, {"lookup": key_lookup(presented)}).first()  # one round trip, no ORM
    return principal_of_row(row, presented)


def key_lookup(presented: str) -> str:
    """The lookup prefix of a key that has a key's shape (checked without the database); Unauthorized if not."""
    parts = presented.split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        raise Unauthorized("malformed API key")
    return parts[1]


def principal_of_row(row: Any, presented: str) -> Principal:
    """The principal from a KEY_AND_TENANT row (None: no key with that lookup), checked against the key
    as presented: its digest, revocation, expiry and the tenant's state."""
    if row is None or not hmac.compare_digest(row.sha256, key_digest(presented)):
        raise Unauthorized("unknown API key")
    if row.revoked or (row.expires_at is not None and row.expires_at <= utcnow()):
        raise Unauthorized("API key revoked or expired")
    if row.disabled:
        raise Unauthorized("this API key's tenant is disabled")
    return Principal(row.tenant_id, frozenset(row.scopes), tuple(row.allowed_prefixes))


_KEYS, _TENANTS = cast(Table, ApiKey.__table__).c, cast(Table, Tenant.__table__).c
KEY_AND_TENANT = (  # Core columns, built once: no ORM entities to load, nothing to construct per request
    select(
        _KEYS.sha256, _KEYS.revoked, _KEYS.expires_at, _KEYS.scopes, _TENANTS.id.label("tenant_id"), _TENANTS.disabled,
        _TENANTS.allowed_prefixes,
    )
    .join_from(ApiKey.__table__, Tenant.__table__, _TENANTS.id == _KEYS.tenant_id)
    .where(_KEYS.lookup == bindparam("lookup"))
)  # fmt: skip


def key_digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_of(session: Session, plaintext: str) -> ApiKey:
    """The stored row of a key just created (found by its lookup prefix)."""
    return session.scalars(select(ApiKey).where(ApiKey.lookup == plaintext.split("_")[1])).one()


def list_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)))


def get_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey:
    """A key by id (its tenant's only, when `tenant_id` is given: another's answers NotFound)."""
    key = session.get(ApiKey, key_id)
    if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
        raise NotFound(f"no API key {key_id!r}")
    return key


def revoke_key(session: Session, tenant_id: str | None, key_id: str) -> ApiKey:
    key = get_key(session, key_id, tenant_id)
    key.revoked = True
    session.commit()
    return key


def expire_key(session: Session, tenant_id: str | None, key_id: str, at: datetime) -> ApiKey:
    """Set when the key stops working (a time in the future; revoke to stop it now)."""
    if at.tzinfo is None:
        raise InvalidRequest("expires_at: give a time zone (e.g. 2030-01-01T00:00:00Z)", "expires_at")
    if at <= utcnow():
        raise InvalidRequest("expires_at: already passed; to stop a key now, revoke it", "expires_at")
    key = get_key(session, key_id, tenant_id)
    if key.revoked:
        raise InvalidRequest(f"key {key_id} is revoked; it cannot be given a new expiry", "expires_at")
    key.expires_at = at
    session.commit()
    return key
