"""/v1/tenant: the caller's tenant — its allowlist, limits and usage; an admin may narrow the
allowlist or disable the tenant (an operator re-enables it: fdamerge tenants enable)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.openapi import responses
from service.auth import narrow_allowlist
from service.models import Tenant
from service.tenants import disable_tenant, example_job, usage

router = APIRouter(prefix="/v1/tenant", tags=["tenant"])


class Usage(BaseModel):
    used: int
    limit: int


class TenantPublic(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    allowed_inputs: list[str] = Field(description="Where this tenant's inputs may come from")
    local_inputs: bool = Field(description="Whether this service accepts local paths at all")
    disabled: bool
    usage: dict[str, Usage]


class TenantUpdate(BaseModel):
    allowed_inputs: list[str] | None = Field(
        None, max_length=1000, description="A subset of the current allowlist (only an operator can widen it)"
    )
    disabled: Literal[True] | None = Field(
        None, description="true: refuse every key, cancel every job, stop the schedules (an operator re-enables)"
    )


def _public(tenant: Tenant, session, settings) -> TenantPublic:
    return TenantPublic(
        id=tenant.id, name=tenant.name, allowed_inputs=tenant.allowed_prefixes, local_inputs=settings.local_inputs,
        disabled=tenant.disabled, usage={k: Usage(**v) for k, v in usage(session, tenant.id, settings).items()},
    )  # fmt: skip


@router.get("", response_model=TenantPublic, responses=responses(401, 403))
def read(principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> TenantPublic:
    principal.require("jobs:read")
    return _public(session.get_one(Tenant, principal.tenant_id), session, settings)


@router.patch("", response_model=TenantPublic, responses=responses(401, 403, 422))
def change(body: TenantUpdate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> TenantPublic:
    principal.require("admin")
    tenant = session.get_one(Tenant, principal.tenant_id)
    if body.allowed_inputs is not None:
        narrow_allowlist(tenant, body.allowed_inputs)
        session.commit()
    if body.disabled:
        disable_tenant(session, tenant)
    return _public(tenant, session, settings)


@router.get("/example-job", responses=responses(401, 403))
def example(principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A merge-job body that runs on this stack (the dashboard's submit form starts from it)."""
    principal.require("jobs:read")
    return example_job(session.get_one(Tenant, principal.tenant_id), settings)
