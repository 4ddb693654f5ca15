"""Request and response bodies of the merge-jobs resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from service.jobspec import JobSpec
from service.models import Artifact, JobEvent, MergeJob

MergeJobCreate = JobSpec  # the request body: one typed job specification (service/jobspec.py)
JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
EventKind = Literal["status", "progress", "log"]
ArtifactKind = Literal["model", "anchors", "card", "provenance", "file"]


class JobErrorPublic(BaseModel):
    code: str = Field(description="invalid_config, checkpoint_error, pickle_checkpoint, incompatible_models, …")
    message: str
    param: str | None = None


class MergeJobPublic(BaseModel):
    id: str
    object: Literal["merge_job"] = "merge_job"
    status: JobStatus
    stage: str | None
    progress: float
    attempt: int
    max_attempts: int
    error: JobErrorPublic | None
    result: dict[str, Any] | None
    config: dict[str, Any]
    output: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: MergeJob) -> MergeJobPublic:
        error = None
        if job.error_code:
            error = JobErrorPublic(code=job.error_code, message=job.error_message or "", param=job.error_param)
        return cls(
            id=job.id, status=job.status, stage=job.stage, progress=job.progress, attempt=job.attempt,
            max_attempts=job.max_attempts, error=error, result=job.result,
            config=job.config, output=job.output_prefix, metadata=job.metadata_, created_at=job.created_at,
            started_at=job.started_at, finished_at=job.finished_at,
        )  # fmt: skip


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


class JobEventPublic(BaseModel):
    id: int
    at: datetime
    kind: EventKind
    attempt: int
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: JobEvent) -> JobEventPublic:
        return cls(
            id=event.id, at=event.at, kind=event.kind, attempt=event.attempt, message=event.message, data=event.data
        )


class ArtifactPublic(BaseModel):
    kind: ArtifactKind
    path: str
    uri: str
    size: int
    sha256: str
    download: str  # GET it with the same key: S3 answers with a presigned redirect, local storage streams

    @classmethod
    def of(cls, artifact: Artifact, download: str) -> ArtifactPublic:
        return cls(
            kind=artifact.kind, path=artifact.path, uri=artifact.uri, size=artifact.size, sha256=artifact.sha256,
            download=download,
        )  # fmt: skip
