"""/v1/schedules: cron-driven merge jobs (create, list, read with recent runs, update, delete, trigger)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import DispatcherDep, PrincipalDep, SessionDep, SettingsDep
from api.openapi import responses
from api.schemas import MergeJobCreate, MergeJobPublic
from service.auth import Principal
from service.dispatch import dispatch
from service.jobspec import JobSpec
from service.models import Schedule
from service.schedules import (
    ScheduleSpec,
    create_schedule,
    delete_schedule,
    get_schedule,
    list_schedules,
    recent_runs,
    trigger,
    update_schedule,
)
from service.settings import Settings
from service.submission import check_submission, policy_of

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


class ScheduleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(max_length=120, description="Five-field cron expression, e.g. '0 2 * * *'")
    timezone: str = Field("UTC", max_length=64, description="IANA time zone the cron expression is read in")
    template: MergeJobCreate = Field(description="The merge-job body each run submits")
    overlap: Literal["skip", "queue"] = Field("skip", description="When the previous run is still active")
    paused: bool = False


class ScheduleUpdate(BaseModel):
    cron: str | None = Field(None, max_length=120)
    timezone: str | None = Field(None, max_length=64)
    template: MergeJobCreate | None = None
    overlap: Literal["skip", "queue"] | None = None
    paused: bool | None = None


class SchedulePublic(BaseModel):
    id: str
    object: Literal["schedule"] = "schedule"
    name: str
    cron: str
    timezone: str
    template: dict[str, Any]
    overlap: Literal["skip", "queue"]
    paused: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    skipped: int
    created_at: datetime
    recent_runs: list[MergeJobPublic] = []

    @classmethod
    def of(cls, schedule: Schedule, runs: list | None = None) -> SchedulePublic:
        return cls(
            id=schedule.id, name=schedule.name, cron=schedule.cron, timezone=schedule.timezone,
            template=schedule.template, overlap=schedule.overlap, paused=schedule.paused,
            next_fire_at=schedule.next_fire_at, last_fire_at=schedule.last_fire_at, skipped=schedule.skipped,
            created_at=schedule.created_at, recent_runs=[MergeJobPublic.of(job) for job in runs or []],
        )  # fmt: skip


def _template(body: JobSpec, principal: Principal, settings: Settings) -> JobSpec:
    """Checked like a submitted job (limits, allowlist), and again at every fire."""
    check_submission(body, policy_of(settings, principal), settings)
    return body


@router.post("", status_code=201, response_model=SchedulePublic, responses=responses(401, 403, 409, 413, 422))
def create(
    body: ScheduleCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, response: Response
) -> SchedulePublic:
    principal.require("schedules:write")
    template = _template(body.template, principal, settings)
    spec = ScheduleSpec(body.name, body.cron, body.timezone, template, body.overlap, body.paused)
    schedule = create_schedule(session, principal.tenant_id, spec, settings.limits.schedules_per_tenant)
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return SchedulePublic.of(schedule)


@router.get("", response_model=dict[str, Any], responses=responses(401, 403))
def list_all(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    principal.require("jobs:read")
    schedules = [SchedulePublic.of(s).model_dump(mode="json") for s in list_schedules(session, principal.tenant_id)]
    return {"data": schedules, "has_more": False, "next_cursor": None}


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=responses(401, 403, 404))
def read(schedule_id: str, principal: PrincipalDep, session: SessionDep) -> SchedulePublic:
    principal.require("jobs:read")
    schedule = get_schedule(session, principal.tenant_id, schedule_id)
    return SchedulePublic.of(schedule, recent_runs(session, schedule.id))


@router.patch("/{schedule_id}", response_model=SchedulePublic, responses=responses(401, 403, 404, 422))
def change(
    schedule_id: str, body: ScheduleUpdate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> SchedulePublic:
    principal.require("schedules:write")
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"template"})
    if body.template is not None:
        changes["template"] = _template(body.template, principal, settings)
    return SchedulePublic.of(update_schedule(session, principal.tenant_id, schedule_id, **changes))


@router.delete("/{schedule_id}", status_code=204, responses=responses(401, 403, 404))
def remove(schedule_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    principal.require("schedules:write")
    delete_schedule(session, principal.tenant_id, schedule_id)
    return Response(status_code=204)


@router.post(
    "/{schedule_id}/trigger",
    status_code=202,
    response_model=MergeJobPublic,
    responses=responses(401, 403, 404, 422, 429),
)
def run_now(
    schedule_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> MergeJobPublic:
    """One run now; its inputs are checked against the tenant's allowlist as it is now."""
    principal.require("schedules:write")
    job = trigger(session, principal.tenant_id, schedule_id, settings)
    dispatch(settings, dispatcher, principal.tenant_id)
    return MergeJobPublic.of(job)
