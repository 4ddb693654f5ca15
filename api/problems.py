"""Every error as RFC 9457 problem+json: service errors, request validation, HTTP errors."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from api.deps import database_slot
from api.openapi import PROBLEM, TITLES
from fda_core.errors import FdaMergeError
from service.auth import Forbidden, Unauthorized, authenticate
from service.db import session_scope
from service.errors import Conflict, IdempotencyMismatch, InvalidRequest, LeaseLost, NotFound, ServiceError, Unavailable
from service.limits import Busy, QuotaExceeded

log = logging.getLogger(__name__)
STATUS: dict[type[Exception], int] = {
    InvalidRequest: 422,
    IdempotencyMismatch: 422,
    NotFound: 404,
    Conflict: 409,
    LeaseLost: 409,
    Unauthorized: 401,
    Forbidden: 403,
    QuotaExceeded: 429,
    Busy: 503,
    Unavailable: 503,
}


def problem(status: int, detail: str, instance: str, code: str, **extensions: Any) -> JSONResponse:
    body = {
        "type": f"https://fda-merge.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        **{k: v for k, v in extensions.items() if k != "headers"},
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    headers.update(extensions.get("headers") or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 400)
        extensions: dict[str, Any] = {"param": getattr(exc, "param", None)}
        if getattr(exc, "limit", None):
            extensions["limit"] = exc.limit  # type: ignore[attr-defined]
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            extensions["headers"] = {"Retry-After": str(retry_after)}
        return problem(status, str(exc), request.url.path, exc.code, **extensions)

    @app.exception_handler(FdaMergeError)
    async def merge_error(request: Request, exc: FdaMergeError) -> JSONResponse:
        return problem(422, str(exc), request.url.path, "invalid_config")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            unauthorized = await _verify_deferred_key(request)
        except Busy as busy:
            return problem(503, str(busy), request.url.path, busy.code, param=None)
        if unauthorized is not None:  # a bad key answers 401 before anything is said about the body
            return problem(401, str(unauthorized), request.url.path, unauthorized.code, param=None)
        errors = [_item(e) for e in exc.errors()]
        detail = "; ".join(
            e["message"] if e["message"].startswith(f"{e['param']}: ") else f"{e['param']}: {e['message']}"
            for e in errors
        )[:2000]
        return problem(
            422, detail, request.url.path, "invalid_request", param=errors[0]["param"] if errors else None,
            errors=errors[:50],
        )  # fmt: skip

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
        """The job database unreachable, restarted under a connection, or past a statement timeout:
        nothing the tenant sent, and worth a retry (the Python client retries 503s), not a 500."""
        log.warning("database unavailable on %s: %s", request.url.path, type(exc.orig).__name__)
        detail = "the job database is unavailable; retry shortly"
        return problem(503, detail, request.url.path, "database_unavailable", headers={"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "body_too_large" if exc.status_code == 413 else f"http_{exc.status_code}"
        return problem(exc.status_code, str(exc.detail), request.url.path, code, headers=exc.headers)


async def _verify_deferred_key(request: Request) -> Unauthorized | None:
    """A route that verifies its key in its own first statement (the submit: api/deps.get_presented_key)
    never reached it when its request failed validation: the key is verified here, in a worker thread, in
    one of the process's database turns like any request's session (Busy past the wait)."""
    presented = getattr(request.state, "unverified_key", None)
    if presented is None:
        return None

    def verify() -> None:
        with session_scope(request.app.state.settings.database_url) as session:
            authenticate(session, presented)

    try:
        async with database_slot(request):
            await to_thread.run_sync(verify)
    except Unauthorized as exc:
        return exc
    return None


FIELD_FIRST = re.compile(r"^((?:models\.\d+\.)?[a-z_]+(?:\.[A-Za-z0-9_]+)*): ")


def _item(error: dict[str, Any]) -> dict[str, str]:
    """{param, message} of a validation error; a whole-body check that names its field first
    (`parameters.steps: …`) blames that field."""
    message = str(error["msg"]).removeprefix("Value error, ")
    param = ".".join(str(p) for p in error["loc"] if p != "body")
    named = FIELD_FIRST.match(message)
    if named and (not param or param in ("models", "parameters")):
        param = named.group(1)
    return {"param": param or "body", "message": message[:1000]}


class CatchAll:
    """Pure ASGI: an unexpected exception becomes a 500 problem (the traceback logged for operators,
    a reference for the tenant) and the connection stays usable — Starlette's own handler re-raises,
    so the server closed the connection after every 500."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("unhandled error on %s (reference %s)", scope.get("path"), reference)
            if started:
                raise  # the response is half sent: only closing the connection tells the client
            response = problem(
                500, f"internal error (reference {reference}); it has been logged", scope.get("path", ""),
                "internal_error",
            )  # fmt: skip
            await response(scope, receive, send)
