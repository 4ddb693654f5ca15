"""The API's own documentation pages, /docs (Swagger UI) and /redoc, with their assets served from
the fastapi-offline package: no CDN, so they work on a machine without internet, and no inline script."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(str(files("fastapi_offline") / "static"))
OURS = Path(__file__).resolve().parent.parent / "static" / "docs"
SERVED = {
    "swagger-ui-bundle.js": ASSETS / "swagger-ui-bundle.js",
    "swagger-ui.css": ASSETS / "swagger-ui.css",
    "redoc.standalone.js": ASSETS / "redoc.standalone.js",
    "favicon.png": ASSETS / "favicon.png",
    "swagger-init.js": OURS / "swagger-init.js",
}
SWAGGER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fda-merge API</title>
<link rel="icon" href="/docs/assets/favicon.png"><link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script><script src="/docs/assets/swagger-init.js"></script>
</body></html>"""
REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fda-merge API</title>
<link rel="icon" href="/docs/assets/favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc><script src="/docs/assets/redoc.standalone.js"></script></body></html>"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger() -> HTMLResponse:
    return HTMLResponse(SWAGGER)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return HTMLResponse(REDOC)


@router.get("/docs/assets/{name}")
def asset(name: str) -> FileResponse:
    path = SERVED.get(name)
    if path is None:
        raise HTTPException(404, f"no asset {name!r}")
    media = "text/css" if name.endswith(".css") else "image/png" if name.endswith(".png") else "text/javascript"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=86400"})
