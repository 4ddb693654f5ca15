"""Tenant controls: disable (keys refused, jobs stopped, schedules silent), allowlists, usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.auth import active_keys
from service.errors import Conflict, NotFound
from service.jobs import ACTIVE, request_cancel
from service.models import MergeJob, Schedule, Tenant, WebhookEndpoint
from service.settings import Settings


def get_tenant(session: Session, name_or_id: str) -> Tenant:
    tenant = session.get(Tenant, name_or_id) or session.scalars(select(Tenant).where(Tenant.name == name_or_id)).first()
    if tenant is None:
        raise NotFound(f"no tenant {name_or_id!r}")
    return tenant


def disable_tenant(session: Session, tenant: Tenant) -> list[str]:
    """Its keys stop working at once, its schedules stop firing, and its queued and running jobs are
    cancelled (running ones stop at their next step). Returns the jobs cancelled."""
    tenant.disabled = True
    session.commit()
    live = select(MergeJob.id).where(MergeJob.tenant_id == tenant.id, MergeJob.status.in_(("queued", *ACTIVE)))
    stopped = []
    for job_id in list(session.scalars(live)):
        try:
            request_cancel(session, tenant.id, job_id)
            stopped.append(job_id)
        except Conflict:  # it ended meanwhile
            continue
    return stopped


def enable_tenant(session: Session, tenant: Tenant) -> None:
    tenant.disabled = False
    session.commit()


def change_allowlist(session: Session, tenant: Tenant, add: list[str], remove: list[str]) -> list[str]:
    """Operator: add and remove entries (already validated by service.submission.allowlist_entry)."""
    kept = [entry for entry in tenant.allowed_prefixes if entry not in remove]
    tenant.allowed_prefixes = kept + [entry for entry in add if entry not in kept]
    session.commit()
    return tenant.allowed_prefixes


def usage(session: Session, tenant_id: str, settings: Settings) -> dict[str, Any]:
    """What the tenant has against each per-tenant limit."""

    def count(query) -> int:
        return int(session.scalar(query) or 0)

    jobs = select(func.count()).where(MergeJob.tenant_id == tenant_id)
    limits = settings.limits
    return {
        "queued_jobs": {"used": count(jobs.where(MergeJob.status == "queued")), "limit": limits.queued_jobs_per_tenant},
        "running_jobs": {
            "used": count(jobs.where(MergeJob.status.in_(ACTIVE))), "limit": limits.running_jobs_per_tenant,
        },
        "webhook_endpoints": {
            "used": count(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)),
            "limit": limits.webhook_endpoints_per_tenant,
        },
        "schedules": {
            "used": count(select(func.count()).where(Schedule.tenant_id == tenant_id)),
            "limit": limits.schedules_per_tenant,
        },
        "api_keys": {"used": active_keys(session, tenant_id), "limit": limits.api_keys_per_tenant},
    }  # fmt: skip


def example_job(tenant: Tenant, settings: Settings) -> dict[str, Any]:
    """A merge-job body this tenant can submit on this stack: the demo checkpoints `fdamerge up` builds
    when they are there and on the allowlist, else a shape under the tenant's first S3 prefix."""
    demo = settings.example_models
    local = [entry for entry in tenant.allowed_prefixes if entry.startswith("/")]
    if demo is not None and settings.local_inputs and (Path(demo) / "base").is_dir() and local:
        root = str(Path(demo).resolve())
        names = ("expert-a", "expert-b")
        return {"method": "ties", "base_model": f"{root}/base", "models": [{"model": f"{root}/{n}"} for n in names],
                "parameters": {"density": 0.5, "lambda": 1.0}}  # fmt: skip
    prefix = next((entry for entry in tenant.allowed_prefixes if entry.startswith("s3://") and entry != "s3://"), None)
    prefix = prefix or "s3://your-bucket/your-prefix"
    return {"method": "ties", "base_model": f"{prefix}/base",
            "models": [{"model": f"{prefix}/expert-a"}, {"model": f"{prefix}/expert-b"}],
            "parameters": {"density": 0.5, "lambda": 1.0}}  # fmt: skip
