"""Database tables: tenants, API keys, merge jobs, their events, artifacts and metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both backends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    allowed_prefixes: Mapped[list[str]] = mapped_column(default=list)  # s3://bucket[/prefix] inputs may come from
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # keys refused, no runs
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    lookup: Mapped[str] = mapped_column(String(16), unique=True)  # the key's public prefix, to find the row
    sha256: Mapped[str] = mapped_column(String(64))  # of the whole key; the key itself is never stored
    scopes: Mapped[list[str]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """A cron expression in a time zone that creates merge jobs from a template."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),
        Index("ix_schedules_due", "paused", "next_fire_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    template: Mapped[dict[str, Any]]  # {"config": …, "output": …, "metadata": …}, validated at creation
    overlap: Mapped[str] = mapped_column(String(8), default="skip")  # skip | queue
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_fire_at: Mapped[datetime | None]
    last_fire_at: Mapped[datetime | None]
    skipped: Mapped[int] = mapped_column(Integer, default=0)  # fire times skipped because a run was active
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


WAITING = "status = 'queued' AND enqueued_at IS NULL"  # accepted, not yet sent to the queue
# 'queued' written into a statement, not bound: a prepared statement's generic plan can prove only a literal
# implies the partial index's predicate (with `status = $1`, ix_merge_jobs_waiting went unused after 5 runs)
QUEUED = literal_column("'queued'", String)


class MergeJob(Base):
    __tablename__ = "merge_jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_merge_jobs_idempotency"),
        UniqueConstraint("schedule_id", "fire_time", name="uq_merge_jobs_schedule_fire"),
        Index("ix_merge_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_merge_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_merge_jobs_tenant_status", "tenant_id", "status"),  # per-tenant quotas and dispatch
        Index(  # the jobs waiting to be sent, oldest first: each submit's send claim reads it (claim_window)
            "ix_merge_jobs_waiting",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=text(WAITING),
            sqlite_where=text(WAITING),
        ),  # fmt: skip
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    config: Mapped[dict[str, Any]]  # the fda_core merge config, as submitted
    output_prefix: Mapped[str | None] = mapped_column(String(1024))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    enqueued_at: Mapped[datetime | None]  # set once the queue accepted the message (outbox: None = resend)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_param: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[dict[str, Any] | None]
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"), index=True)
    fire_time: Mapped[datetime | None]  # the schedule's fire time this job was made for: one job per fire time
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("merge_jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # status | progress | log
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_artifacts_job_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("merge_jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # model | anchors | card | provenance
    path: Mapped[str] = mapped_column(String(1024))  # relative to the job's output
    uri: Mapped[str] = mapped_column(String(2048))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Metric(Base):
    __tablename__ = "metrics"
    job_id: Mapped[str] = mapped_column(ForeignKey("merge_jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]


class Leftover(Base):
    """Storage one attempt may write to, recorded when the attempt is claimed (before it writes anything).

    The row of the attempt that wins is deleted in its finish transaction; every other row names files
    that can never be published, removed by the worker that made them or, after a crash, by the reaper."""

    __tablename__ = "leftovers"
    job_id: Mapped[str] = mapped_column(ForeignKey("merge_jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(1024))  # the attempt's key under FDA_STORAGE_URL
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FleetCounter(Base):
    """Totals /metrics reports, kept as jobs change state (never recomputed from every job)."""

    __tablename__ = "fleet_counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)  # one label value, e.g. a phase
    value: Mapped[float] = mapped_column(Float, default=0.0)


class WebhookEndpoint(Base):
    """Where a tenant hears about its jobs (Standard Webhooks); the secret signs every delivery."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(default=list)  # e.g. merge_job.succeeded; empty: all
    secret: Mapped[str] = mapped_column(String(100))  # whsec_…: needed to sign, so kept (not hashed)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint, retried with backoff until a 2xx or its attempts run out (an outbox)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header: receivers dedupe on it
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
