"""Liveness, readiness and the fleet's Prometheus metrics (behind a key with the metrics:read scope)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.openapi import responses
from service.observability import prometheus_text

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
def readyz(session: SessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))  # the database answers (an error becomes a 500 problem)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={**responses(401, 403), 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    """Prometheus exposition of the whole fleet (every tenant's totals): a key with the metrics:read
    scope, which only an operator can grant (fdamerge keys create --scope metrics:read)."""
    principal.require("metrics:read")
    return PlainTextResponse(prometheus_text(session, settings.broker_url), media_type="text/plain; version=0.0.4")
