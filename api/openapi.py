"""The OpenAPI document as the API behaves: the bearer scheme, every error as problem+json.

Routes declare the problem statuses they can answer (`responses(401, 404, …)`); every operation
also documents 500 and, where a body is read, 413 (the body-size middleware answers before the
route). FastAPI's default 422 schema (HTTPValidationError) is replaced: validation errors are
problem documents too, with `errors: [{param, message}]`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

PROBLEM = "application/problem+json"
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content", 429: "Too Many Requests",
          500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


class ProblemItem(BaseModel):
    param: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus `code` (stable, for programs), `param` (the request field at fault)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://fda-merge.dev/problems/invalid_request"])
    title: str
    status: int
    detail: str
    instance: str
    code: str = Field(description="invalid_request, limit_exceeded, quota_exceeded, input_not_allowed, not_found, …")
    param: str | None = None
    errors: list[ProblemItem] | None = None
    limit: str | None = Field(None, description="The limit a limit_exceeded / quota_exceeded refusal names")


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses for these statuses, for a route's `responses=`."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": TITLES[status],
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        found[status] = entry
    return found


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _statuses(path: str, operation: dict[str, Any]) -> list[int]:
    """What any operation of this shape can answer, whatever the route declared: 500 always; with a
    key, 401 and 403; with a body, 400 (not JSON), 413 and 422; with parameters, 422; with an id in
    the path, 404."""
    found = [500]
    if operation.get("security"):
        found += [401, 403]
    if "requestBody" in operation:
        found += [400, 413, 422]
    if operation.get("parameters"):
        found.append(422)
    if "{" in path:
        found.append(404)
    return found


def _document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            for status, entry in responses(*_statuses(path, operation)).items():
                current = answers.get(str(status))
                if current is None or "application/json" in current.get("content", {}):  # FastAPI's own 422
                    answers[str(status)] = entry
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and f'"#/components/schemas/{unused}"' not in str(document["paths"]).replace("'", '"'):
            del schemas[unused]
    return document
