"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep) -> dict:
    session.execute(text("SELECT 1"))  # the database answers (an error becomes a 500 problem)
    return {"status": "ready"}
