"""The dashboard: one static page, its script and its styles (no inline script: the page's CSP
allows scripts from this origin only); its data comes from the same API with the same keys."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


@router.get("/dashboard/app.js")
def script() -> FileResponse:
    return FileResponse(STATIC / "dashboard.js", media_type="text/javascript")


@router.get("/dashboard/app.css")
def styles() -> FileResponse:
    return FileResponse(STATIC / "dashboard.css", media_type="text/css")
