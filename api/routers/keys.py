"""/v1/api-keys: a tenant's admins create (shown once), list, expire and revoke the tenant's keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, Field

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.openapi import responses
from service.auth import (
    DEFAULT_SCOPES,
    OPERATOR_SCOPES,
    active_keys,
    create_api_key,
    expire_key,
    get_key,
    key_of,
    list_keys,
    revoke_key,
)
from service.errors import InvalidRequest
from service.limits import LimitExceeded
from service.models import ApiKey, Tenant

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
TenantScope = Literal["jobs:read", "jobs:write", "schedules:write", "admin"]
Scope = Literal["jobs:read", "jobs:write", "schedules:write", "admin", "metrics:read"]


class KeyCreate(BaseModel):
    scopes: list[TenantScope] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1, max_length=4)
    expires_at: AwareDatetime | None = Field(None, description="When the key stops working (in the future)")


class KeyUpdate(BaseModel):
    expires_at: AwareDatetime = Field(description="When the key stops working (in the future; revoke to stop now)")


class KeyPublic(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    prefix: str
    scopes: list[Scope]
    revoked: bool
    expires_at: datetime | None
    created_at: datetime
    key: str | None = None  # only in the creation response

    @classmethod
    def of(cls, key: ApiKey, plaintext: str | None = None) -> KeyPublic:
        return cls(
            id=key.id, prefix=f"fdm_{key.lookup}", scopes=key.scopes, revoked=key.revoked, expires_at=key.expires_at,
            created_at=key.created_at, key=plaintext,
        )  # fmt: skip


@router.post("", status_code=201, response_model=KeyPublic, responses=responses(401, 403, 422))
def create(body: KeyCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> KeyPublic:
    principal.require("admin")
    if set(body.scopes) & set(OPERATOR_SCOPES):  # the schema refuses them too; kept for direct calls
        raise InvalidRequest("scopes: metrics:read is granted by an operator (fdamerge keys create)", "scopes")
    if active_keys(session, principal.tenant_id) >= settings.limits.api_keys_per_tenant:
        raise LimitExceeded(
            "this tenant has its limit of active keys; revoke one first", "scopes", "api_keys_per_tenant"
        )
    try:
        plaintext = create_api_key(session, session.get_one(Tenant, principal.tenant_id), body.scopes, body.expires_at)
    except ValueError as exc:
        param = "expires_at" if "expires_at" in str(exc) else "scopes"
        raise InvalidRequest(f"{param}: {exc}", param) from None
    session.commit()
    return KeyPublic.of(key_of(session, plaintext), plaintext)


@router.get("", responses=responses(401, 403))
def list_all(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    principal.require("admin")
    data = [KeyPublic.of(k).model_dump(mode="json") for k in list_keys(session, principal.tenant_id)]
    return {"data": data, "has_more": False, "next_cursor": None}


@router.get("/{key_id}", response_model=KeyPublic, responses=responses(401, 403, 404))
def read(key_id: str, principal: PrincipalDep, session: SessionDep) -> KeyPublic:
    principal.require("admin")
    return KeyPublic.of(get_key(session, key_id, principal.tenant_id))


@router.patch("/{key_id}", response_model=KeyPublic, responses=responses(401, 403, 404, 422))
def change(key_id: str, body: KeyUpdate, principal: PrincipalDep, session: SessionDep) -> KeyPublic:
    """Set when the key expires (a revoked key stays revoked)."""
    principal.require("admin")
    return KeyPublic.of(expire_key(session, principal.tenant_id, key_id, body.expires_at))


@router.delete("/{key_id}", response_model=KeyPublic, responses=responses(401, 403, 404))
def revoke(key_id: str, principal: PrincipalDep, session: SessionDep) -> KeyPublic:
    principal.require("admin")
    return KeyPublic.of(revoke_key(session, principal.tenant_id, key_id))
