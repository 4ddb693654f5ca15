"""/v1/schedules: cron-driven merge jobs (create, list, read with recent runs, update, delete, trigger)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import DispatcherDep, PrincipalDep, SessionDep, SettingsDep
from api.schemas import MergeJobCreate, MergeJobPublic
from service.models import Schedule
from service.reaper import send_quietly
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
from service.submission import job_request

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


class ScheduleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(description="Five-field cron expression, e.g. '0 2 * * *'")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    template: MergeJobCreate = Field(description="The merge-job body each run submits")
    overlap: Literal["skip", "queue"] = Field("skip", description="When the previous run is still active")
    paused: bool = False


class ScheduleUpdate(BaseModel):
    cron: str | None = None
    timezone: str | None = None
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
    overlap: str
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


def _template(body: MergeJobCreate, principal) -> dict[str, Any]:
    """Validated like a submitted job (method, parameters, allowlist), stored as its request."""
    request = job_request(body.merge_config(), principal, body.output, body.metadata)
    return {"config": request.config, "output": request.output_prefix, "metadata": request.metadata or {}}


@router.post("", status_code=201, response_model=SchedulePublic)
def create(body: ScheduleCreate, principal: PrincipalDep, session: SessionDep, response: Response) -> SchedulePublic:
    principal.require("schedules:write")
    spec = ScheduleSpec(
        body.name, body.cron, body.timezone, _template(body.template, principal), body.overlap, body.paused
    )
    schedule = create_schedule(session, principal.tenant_id, spec)
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return SchedulePublic.of(schedule)


@router.get("", response_model=dict)
def list_all(principal: PrincipalDep, session: SessionDep) -> dict:
    principal.require("jobs:read")
    schedules = [SchedulePublic.of(s).model_dump(mode="json") for s in list_schedules(session, principal.tenant_id)]
    return {"data": schedules, "has_more": False, "next_cursor": None}


@router.get("/{schedule_id}", response_model=SchedulePublic)
def read(schedule_id: str, principal: PrincipalDep, session: SessionDep) -> SchedulePublic:
    principal.require("jobs:read")
    schedule = get_schedule(session, principal.tenant_id, schedule_id)
    return SchedulePublic.of(schedule, recent_runs(session, schedule.id))


@router.patch("/{schedule_id}", response_model=SchedulePublic)
def change(schedule_id: str, body: ScheduleUpdate, principal: PrincipalDep, session: SessionDep) -> SchedulePublic:
    principal.require("schedules:write")
    changes = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"template"})
    if body.template is not None:
        changes["template"] = _template(body.template, principal)
    return SchedulePublic.of(update_schedule(session, principal.tenant_id, schedule_id, **changes))


@router.delete("/{schedule_id}", status_code=204)
def remove(schedule_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    principal.require("schedules:write")
    delete_schedule(session, principal.tenant_id, schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/trigger", status_code=202, response_model=MergeJobPublic)
def run_now(
    schedule_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> MergeJobPublic:
    principal.require("schedules:write")
    job = trigger(session, principal.tenant_id, schedule_id, settings.max_attempts)
    send_quietly(settings, dispatcher, job.id)
    return MergeJobPublic.of(job)
