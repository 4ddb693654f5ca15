"""/v1/webhook-endpoints: where a tenant hears about its jobs; the signing secret is shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.openapi import responses
from service.models import WebhookDelivery, WebhookEndpoint
from service.webhooks import EVENTS, create_endpoint, delete_endpoint, deliveries_of, get_endpoint, list_endpoints

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
Event = Literal[
    "merge_job.running", "merge_job.succeeded", "merge_job.failed", "merge_job.cancelled", "merge_job.cancelling"
]
assert set(Event.__args__) == set(EVENTS)  # type: ignore[attr-defined]


class EndpointCreate(BaseModel):
    url: str = Field(max_length=2048, description="https URL (public addresses only)")
    events: list[Event] = Field(default_factory=list, max_length=len(EVENTS), description="Empty: every event")


class EndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[Event]
    active: bool
    created_at: datetime
    secret: str | None = None  # only in the creation response

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, with_secret: bool = False) -> EndpointPublic:
        return cls(
            id=endpoint.id, url=endpoint.url, events=endpoint.events, active=endpoint.active,
            created_at=endpoint.created_at, secret=endpoint.secret if with_secret else None,
        )  # fmt: skip


class DeliveryPublic(BaseModel):
    id: str
    event: Event
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryPublic:
        return cls(
            id=d.id, event=d.event, status=d.status, attempts=d.attempts, last_status_code=d.last_status_code,
            last_error=d.last_error, created_at=d.created_at, delivered_at=d.delivered_at,
            next_attempt_at=d.next_attempt_at,
        )  # fmt: skip


@router.post("", status_code=201, response_model=EndpointPublic, responses=responses(401, 403, 422))
def create(body: EndpointCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> EndpointPublic:
    principal.require("jobs:write")
    endpoint = create_endpoint(
        session, principal.tenant_id, body.url, list(body.events), settings.webhooks_allow_loopback,
        settings.limits.webhook_endpoints_per_tenant,
    )  # fmt: skip
    return EndpointPublic.of(endpoint, with_secret=True)


@router.get("", responses=responses(401, 403))
def list_all(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    principal.require("jobs:read")
    data = [EndpointPublic.of(e).model_dump(mode="json") for e in list_endpoints(session, principal.tenant_id)]
    return {"data": data, "has_more": False, "next_cursor": None}


@router.get("/{endpoint_id}", response_model=EndpointPublic, responses=responses(401, 403, 404))
def read(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> EndpointPublic:
    principal.require("jobs:read")
    return EndpointPublic.of(get_endpoint(session, principal.tenant_id, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204, responses=responses(401, 403, 404))
def remove(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    principal.require("jobs:write")
    delete_endpoint(session, principal.tenant_id, endpoint_id)
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries", responses=responses(401, 403, 404))
def deliveries(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    principal.require("jobs:read")
    get_endpoint(session, principal.tenant_id, endpoint_id)
    data = [DeliveryPublic.of(d).model_dump(mode="json") for d in deliveries_of(session, endpoint_id)]
    return {"data": data, "has_more": False, "next_cursor": None}
