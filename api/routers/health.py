"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from api.deps import SessionDep, SettingsDep
from service.observability import prometheus_text

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep) -> dict:
    session.execute(text("SELECT 1"))  # the database answers (an error becomes a 500 problem)
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    """Prometheus exposition: fleet counts from the database, so every API process reports the same."""
    return PlainTextResponse(prometheus_text(session, settings.broker_url), media_type="text/plain; version=0.0.4")
