"""/v1/merge-jobs: submit, list, read, cancel, and each job's events, artifacts and metrics."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from api.deps import (
    DispatcherDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StreamHubDep,
    SubmitContextDep,
)
from api.openapi import responses
from api.schemas import ArtifactPublic, JobEventPublic, JobStatus, MergeJobCreate, MergeJobPublic, Page
from api.streams import EventStreamResponse
from service.accept import accept_job, identify_submitter, statements_commit_alone
from service.dispatch import check_queue_quota, dispatch
from service.errors import NotFound
from service.job_queries import JobFilter, artifacts_of, list_events, list_jobs, metrics_of
from service.jobs import get_job, request_cancel, retry_job
from service.jobspec import JobSpec
from service.preflight import preflight
from service.storage import presigned_get
from service.submission import InvalidRequest, check_submission, policy_of, recheck

router = APIRouter(prefix="/v1/merge-jobs", tags=["merge jobs"])
log = logging.getLogger(__name__)
MAX_EVENT_ID = 2**63 - 1
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="Any 1–255 visible ASCII characters; a replay returns the job the first request created",
    ),
]  # fmt: skip
Limit = Annotated[int | None, Query(description="Page size: default 20, larger values coerced down to 100")]


@router.post("", status_code=202, response_model=MergeJobPublic, responses=responses(401, 403, 413, 422, 429, 503))
def create_merge_job(
    body: MergeJobCreate, context: SubmitContextDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Accept a merge job (202). A replayed Idempotency-Key returns the job it created."""
    session, settings, gate = context.session, context.settings, context.gate
    quota = settings.limits.queued_jobs_per_tenant
    statements_commit_alone(session)
    submitter = identify_submitter(session, context.presented_key, idempotency_key, quota)  # 401 first, as every route
    principal = submitter.principal
    principal.require("jobs:write")
    policy = policy_of(settings, principal)
    check_submission(body, policy, settings)

    def slow_checks() -> None:
        with gate.slot(principal.tenant_id):
            preflight(body, settings, policy)

    job, created = accept_job(
        session, settings, context.dispatcher, principal.tenant_id, body, idempotency_key,
        slow_checks if settings.preflight else None, submitter,
    )  # fmt: skip
    headers = {"Location": f"/v1/merge-jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    # the model is ours and valid: serialised once, not validated again as a response_model return would be
    return Response(MergeJobPublic.of(job).model_dump_json(), 202, headers, "application/json")


@router.get("", response_model=Page[MergeJobPublic], responses=responses(401, 403, 422))
def list_merge_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metadata: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
    limit: Limit = None,
    after: Annotated[str | None, Query(max_length=512, description="The next_cursor of the previous page")] = None,
) -> Page[MergeJobPublic]:
    principal.require("jobs:read")
    filters = JobFilter(tuple(status or ()), created_after, created_before, _pairs(metadata or []))
    jobs, cursor = list_jobs(session, principal.tenant_id, filters, limit, after)
    return Page(data=[MergeJobPublic.of(j) for j in jobs], has_more=cursor is not None, next_cursor=cursor)


def _pairs(items: list[str]) -> dict[str, str]:
    if any(":" not in item for item in items):
        raise InvalidRequest("metadata: filters are key:value", "metadata")
    return dict(item.split(":", 1) for item in items)


@router.get("/{job_id}", response_model=MergeJobPublic, responses=responses(401, 403, 404, 422))
def get_merge_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> MergeJobPublic:
    principal.require("jobs:read")
    return MergeJobPublic.of(get_job(session, principal.tenant_id, job_id))


@router.post("/{job_id}/cancel", response_model=MergeJobPublic, responses=responses(401, 403, 404, 409, 422))
def cancel_merge_job(
    job_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> MergeJobPublic:
    """Queued jobs end at once; running ones go to `cancelling` and stop at their next step."""
    principal.require("jobs:write")
    job = request_cancel(session, principal.tenant_id, job_id)
    dispatch(settings, dispatcher, principal.tenant_id)  # a cancelled queued job frees its slot
    return MergeJobPublic.of(job)


@router.post(
    "/{job_id}/retry", response_model=MergeJobPublic, status_code=202, responses=responses(401, 403, 404, 409, 422, 429)
)
def retry_merge_job(
    job_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> MergeJobPublic:
    """A failed or cancelled job runs again under the same id (409 otherwise), if its inputs are still
    on the tenant's allowlist."""
    principal.require("jobs:write")
    recheck(session, settings, principal.tenant_id, JobSpec.of_job(get_job(session, principal.tenant_id, job_id)))
    check_queue_quota(session, principal.tenant_id, settings)
    job = retry_job(session, principal.tenant_id, job_id, settings.max_attempts)
    dispatch(settings, dispatcher, principal.tenant_id)
    return MergeJobPublic.of(job)


@router.get(
    "/{job_id}/events",
    response_model=Page[JobEventPublic],
    responses={**responses(401, 403, 404, 422, 429), 200: {"content": {"text/event-stream": {}}}},
)
def merge_job_events(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    hub: StreamHubDep,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="The next_cursor of the previous page")
    ] = None,
    limit: Limit = None,
    stream: bool = Query(
        False, description="server-sent events until the job ends (keep-alive comments while it is quiet)"
    ),
):
    principal.require("jobs:read")
    get_job(session, principal.tenant_id, job_id)
    if stream:
        return EventStreamResponse(hub.events(job_id, after), hub.admit(principal.tenant_id))
    events, cursor = list_events(session, job_id, after, limit)
    return Page(
        data=[JobEventPublic.of(e) for e in events],
        has_more=cursor is not None,
        next_cursor=str(cursor) if cursor is not None else None,
    )


@router.get("/{job_id}/artifacts", response_model=Page[ArtifactPublic], responses=responses(401, 403, 404, 422))
def merge_job_artifacts(job_id: str, principal: PrincipalDep, session: SessionDep) -> Page[ArtifactPublic]:
    principal.require("jobs:read")
    get_job(session, principal.tenant_id, job_id)
    artifacts = [
        ArtifactPublic.of(a, f"/v1/merge-jobs/{job_id}/artifacts/{a.path}") for a in artifacts_of(session, job_id)
    ]
    return Page(data=artifacts, has_more=False, next_cursor=None)


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=Response,
    responses={
        **responses(401, 403, 404, 422),
        200: {"description": "The file (local storage)", "content": {"application/octet-stream": {}}},
        307: {"description": "A presigned URL to fetch it from (S3)"},
    },
)
def download_artifact(
    job_id: str, path: str, request: Request, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
):
    """The artifact's bytes: a redirect to a presigned URL on S3, streamed from local storage."""
    principal.require("jobs:read")
    get_job(session, principal.tenant_id, job_id)
    found = next((a for a in artifacts_of(session, job_id) if a.path == path), None)
    if found is None:
        raise NotFound(f"job {job_id} has no artifact {path!r}")
    if found.uri.startswith("s3://"):
        endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        url = presigned_get(found.uri, endpoint, settings.s3_region)
        if "application/json" in request.headers.get("accept", ""):  # browsers: navigate, no CORS on the bucket
            return JSONResponse({"url": url})
        return RedirectResponse(url, 307)
    return FileResponse(found.uri, filename=Path(found.path).name, media_type="application/octet-stream")


@router.get("/{job_id}/metrics", responses=responses(401, 403, 404, 422))
def merge_job_metrics(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    principal.require("jobs:read")
    get_job(session, principal.tenant_id, job_id)
    return {"object": "metrics", "job_id": job_id, "metrics": metrics_of(session, job_id)}
