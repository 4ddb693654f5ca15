"""Settings from the environment (FDA_*), built once and overridable in tests.

Backends are picked by URL scheme only: `sqlite:///…` or `postgresql+psycopg://…`;
a local directory or `s3://bucket/prefix` for outputs; `filesystem://` (embedded) or `redis://…`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.limits import Limits

VAR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FDA_", extra="ignore")

    database_url: str = Field(f"sqlite:///{VAR / 'fdamerge.db'}", description="SQLAlchemy URL of the job database")
    broker_url: str = Field("filesystem://", description="Celery broker; filesystem:// is the embedded one")
    storage_url: str = Field(str(VAR / "storage"), description="Where outputs go: a directory or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, SeaweedFS); None for AWS")
    s3_public_endpoint_url: str | None = Field(None, description="Endpoint clients reach for presigned downloads")
    s3_region: str | None = Field(None, description="Region for the S3 client; None takes AWS_DEFAULT_REGION")
    cache_dir: Path = Field(Path("~/.cache/fda-merge").expanduser(), description="Downloaded checkpoints")
    cache_max_bytes: int | None = Field(
        None, gt=0, description="Disk budget of the checkpoint cache (LRU); None: no limit"
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A claimed job is another worker's after this without a heartbeat"
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries of one job before it fails with worker_lost")
    device: str = Field("cpu", description="Where workers merge: cpu, cuda or cuda:N")
    webhooks_allow_loopback: bool = Field(False, description="Allow http webhooks to loopback (development, tests)")
    preflight: bool = Field(True, description="Read every input's header at submit (422 before any download)")
    local_inputs: bool = Field(
        False, description="Accept local paths as inputs (fdamerge up: on); each still on the tenant's allowlist"
    )
    db_statement_timeout_seconds: float = Field(
        30.0, gt=0, description="PostgreSQL: a statement running longer is cancelled (every connection)"
    )
    db_pool_size: int = Field(
        10,
        ge=1,
        description="Database connections a process keeps (twice as many more on demand); the API serves this "
        "many requests with a database session at once, the others wait without holding a thread (503 after 10 s)",
    )
    db_lock_timeout_seconds: float = Field(
        10.0, gt=0, description="A statement waiting longer for a lock fails (PostgreSQL lock_timeout, SQLite busy)"
    )
    transient_retry_seconds: float = Field(
        300.0, gt=0, description="How long an attempt rides out a database, broker or storage outage (backoff)"
    )
    unclaimed_after_seconds: float = Field(
        60.0, gt=0, description="A queued job sent this long ago, whose message the broker no longer holds, is re-sent"
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="A stopping worker lets its job run this long, then hands it back (no attempt used)"
    )
    reap_every_seconds: float = Field(30.0, gt=0, description="The reaper's period (fdamerge beat)")
    schedules_every_seconds: float = Field(15.0, gt=0, description="The scheduler tick's period (fdamerge beat)")
    webhooks_every_seconds: float = Field(5.0, gt=0, description="The webhook sender's period (fdamerge beat)")
    stream_keepalive_seconds: float = Field(15.0, gt=0, description="An event stream sends a comment this often")
    oom_retries: int = Field(2, ge=0, description="Retries of a merge that ran out of GPU memory, smaller each time")
    limits: Limits = Field(default_factory=Limits, description="Per-job and per-tenant limits (FDA_LIMIT_*)")
    example_models: Path | None = Field(
        None, description="Folder of demo checkpoints (base, expert-a, expert-b) the dashboard's example merges"
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
