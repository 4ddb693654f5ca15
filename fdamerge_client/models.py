"""What the API returns, as plain dataclasses (fields as in docs/service.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    stage: str | None
    progress: float
    attempt: int
    max_attempts: int
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    config: dict[str, Any]
    output: str | None
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, body: dict[str, Any]) -> Job:
        values: dict[str, Any] = {name: body.get(name) for name in cls.__dataclass_fields__ if name != "raw"}
        return cls(**values, raw=body)


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    kind: str
    attempt: int
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, body: dict[str, Any]) -> Event:
        return cls(body["id"], body["at"], body["kind"], body["attempt"], body["message"], body["data"])


@dataclass(frozen=True)
class Artifact:
    kind: str
    path: str
    uri: str
    size: int
    sha256: str
    download: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Artifact:
        return cls(body["kind"], body["path"], body["uri"], body["size"], body["sha256"], body["download"])
