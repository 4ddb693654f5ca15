"""What one job and one tenant may ask of the shared service (FDA_LIMIT_* variables).

Per-job limits are checked on the job specification before any I/O (JobSpec.check_limits) and,
for the sizes only a header shows, by preflight; per-tenant limits are counted in the database at
submit. Each refusal names its limit: 422 `limit_exceeded` for what the request itself asks,
429 `quota_exceeded` (with Retry-After) for what clears as the tenant's jobs finish.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import InvalidRequest, ServiceError


class Limits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FDA_LIMIT_", extra="ignore")

    models_per_job: int = Field(64, ge=1, le=1024, description="Experts in one job (the base not counted)")
    input_bytes_per_job: int = Field(2 << 40, ge=1, description="Weight bytes of all inputs of one job (2 TiB)")
    files_per_input: int = Field(10_000, ge=1, description="Files listed in one model folder or prefix")
    tensors_per_input: int = Field(200_000, ge=1, description="Tensors in one input checkpoint")
    header_bytes: int = Field(16 << 20, ge=1024, description="One safetensors header (the format allows 100 MB)")
    fda_budget: int = Field(
        100_000_000,
        ge=1,
        description="FDA: anchors × tokens × (construction_steps + adaptation_epochs); the thorough preset is 2.7M",
    )
    fda_anchors: int = Field(8192, ge=1, description="FDA: anchors per (layer, task); the llm preset's 8192")
    fda_tokens: int = Field(4096, ge=1, description="FDA: tokens per anchor")
    optimizer_steps: int = Field(10_000, ge=1, description="Iterative methods' steps per tensor (wudi: steps)")
    queued_jobs_per_tenant: int = Field(100, ge=1, description="A tenant's queued jobs; more answer 429")
    running_jobs_per_tenant: int = Field(
        2, ge=1, description="A tenant's jobs on the queue or running at once; the rest wait their turn (fairness)"
    )
    webhook_endpoints_per_tenant: int = Field(20, ge=1)
    schedules_per_tenant: int = Field(50, ge=1)
    api_keys_per_tenant: int = Field(50, ge=1, description="Active (unrevoked, unexpired) keys of a tenant")
    event_streams_per_tenant: int = Field(
        100, ge=1, description="Open ?stream=true event streams of one tenant, per API process; more answer 429"
    )
    concurrent_preflights: int = Field(4, ge=1, description="Submit-time input checks running at once per API process")


class LimitExceeded(InvalidRequest):
    """The request asks for more than a per-job or per-tenant count limit allows (422)."""

    code = "limit_exceeded"

    def __init__(self, message: str, param: str | None, limit: str) -> None:
        super().__init__(f"{message} (limit {limit}; FDA_LIMIT_{limit.upper()})", param)
        self.limit = limit


class QuotaExceeded(ServiceError):
    """The tenant has too much in flight; retry once some of it has finished (429 with Retry-After)."""

    code = "quota_exceeded"

    def __init__(self, message: str, limit: str, retry_after: int = 30) -> None:
        super().__init__(f"{message} (limit {limit}; FDA_LIMIT_{limit.upper()})")
        self.limit, self.retry_after = limit, retry_after


class Busy(ServiceError):
    """Every submit-time check slot of this API process is taken; retry shortly (503 with Retry-After)."""

    code = "busy"
    retry_after = 5


def at_most(value: int, limit: int, name: str, param: str, what: str) -> None:
    if value > limit:
        raise LimitExceeded(f"{param}: {what} {value:,} is over {limit:,}", param, name)
