"""Every error as RFC 9457 problem+json: service errors, request validation, HTTP errors."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from fda_core.errors import FdaMergeError
from service.auth import Forbidden, Unauthorized
from service.errors import Conflict, IdempotencyMismatch, InvalidRequest, LeaseLost, NotFound, ServiceError

log = logging.getLogger(__name__)
STATUS: dict[type[Exception], int] = {
    InvalidRequest: 422,
    IdempotencyMismatch: 422,
    NotFound: 404,
    Conflict: 409,
    LeaseLost: 409,
    Unauthorized: 401,
    Forbidden: 403,
}
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
          413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error"}  # fmt: skip


def problem(status: int, detail: str, request: Request, code: str, **extensions: Any) -> JSONResponse:
    body = {
        "type": f"https://fda-merge.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        **extensions,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 400)
        return problem(status, str(exc), request, exc.code, param=getattr(exc, "param", None))

    @app.exception_handler(FdaMergeError)
    async def merge_error(request: Request, exc: FdaMergeError) -> JSONResponse:
        return problem(422, str(exc), request, "invalid_config")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "param": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
                "message": e["msg"].removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['param']}: {e['message']}" for e in errors)
        return problem(
            422, detail, request, "invalid_request", param=errors[0]["param"] if errors else None, errors=errors
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "internal error; it has been logged", request, "internal_error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "body_too_large" if exc.status_code == 413 else f"http_{exc.status_code}"
        return problem(exc.status_code, str(exc.detail), request, code)
