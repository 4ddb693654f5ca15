"""Request and response bodies of the merge-jobs resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from fda_core.config import MergeConfig
from service.models import Artifact, JobEvent, MergeJob


class MergeJobCreate(MergeConfig):
    """An fda_core merge config (method, base_model, models, parameters, dtype, seed, layers) plus where and
    what for."""

    output: str | None = Field(
        None, max_length=512, description="Prefix under the service's storage; default: the job id"
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32, description="Free key/values, filterable")

    def merge_config(self) -> MergeConfig:
        return MergeConfig.model_validate(self.model_dump(exclude={"output", "metadata"}))


class JobErrorPublic(BaseModel):
    code: str
    message: str
    param: str | None = None


class MergeJobPublic(BaseModel):
    id: str
    object: Literal["merge_job"] = "merge_job"
    status: str
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
    kind: str
    attempt: int
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: JobEvent) -> JobEventPublic:
        return cls(
            id=event.id, at=event.at, kind=event.kind, attempt=event.attempt, message=event.message, data=event.data
        )


class ArtifactPublic(BaseModel):
    kind: str
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
