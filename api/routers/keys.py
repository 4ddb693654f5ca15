"""/v1/api-keys: a tenant's admins create (shown once), list and revoke the tenant's keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, Field

from api.deps import PrincipalDep, SessionDep
from service.auth import DEFAULT_SCOPES, create_api_key, key_of, list_keys, revoke_key
from service.errors import InvalidRequest
from service.models import ApiKey, Tenant

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


class KeyCreate(BaseModel):
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1)
    expires_at: AwareDatetime | None = None


class KeyPublic(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    prefix: str
    scopes: list[str]
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


@router.post("", status_code=201, response_model=KeyPublic)
def create(body: KeyCreate, principal: PrincipalDep, session: SessionDep) -> KeyPublic:
    principal.require("admin")
    try:
        plaintext = create_api_key(session, session.get_one(Tenant, principal.tenant_id), body.scopes, body.expires_at)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "scopes") from None
    session.commit()
    return KeyPublic.of(key_of(session, plaintext), plaintext)


@router.get("")
def list_all(principal: PrincipalDep, session: SessionDep) -> dict:
    principal.require("admin")
    data = [KeyPublic.of(k).model_dump(mode="json") for k in list_keys(session, principal.tenant_id)]
    return {"data": data, "has_more": False, "next_cursor": None}


@router.delete("/{key_id}", response_model=KeyPublic)
def revoke(key_id: str, principal: PrincipalDep, session: SessionDep) -> KeyPublic:
    principal.require("admin")
    return KeyPublic.of(revoke_key(session, principal.tenant_id, key_id))
