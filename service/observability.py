"""Prometheus metrics from the database at scrape time (so any number of API processes agree): jobs by
status (an indexed count), and totals kept in fleet_counters as jobs change state (service.counters;
never a scan of every job); the queue depth from the broker; JSON logs that carry the job, tenant and
attempt."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import counters
from service.models import MergeJob, WebhookDelivery
from service.queue import MERGE_QUEUE

JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def prometheus_text(session: Session, broker_url: str) -> str:
    lines: list[str] = []
    _family(lines, "fdamerge_jobs", "gauge", "Merge jobs by status", _by_status(session))
    _family(lines, "fdamerge_queue_depth", "gauge", "Messages waiting on the merge queue", _queue(broker_url))
    _family(
        lines, "fdamerge_phase_seconds_total", "counter", "Seconds spent per merge phase (succeeded jobs)",
        _counter(session, "phase_seconds", "phase"),
    )  # fmt: skip
    _family(
        lines, "fdamerge_bytes_total", "counter", "Bytes moved (downloaded inputs, uploaded outputs)",
        _counter(session, "bytes", "direction", ("downloaded", "uploaded")),
    )  # fmt: skip
    _family(
        lines, "fdamerge_checkpoint_cache_total", "counter", "Worker checkpoint cache uses",
        _counter(session, "checkpoint_cache", "outcome", ("hit", "miss")),
    )  # fmt: skip
    _family(
        lines, "fdamerge_job_failures_total", "counter", "Failed jobs by error code",
        _counter(session, "failures", "code"),
    )  # fmt: skip
    _family(lines, "fdamerge_webhook_deliveries", "gauge", "Webhook deliveries by outcome", _deliveries(session))
    return "\n".join(lines) + "\n"


def _counter(
    session: Session, name: str, label: str, always: tuple[str, ...] = ()
) -> list[tuple[dict[str, str], float]]:
    values = {value: 0.0 for value in always} | counters.read(session, name)
    return [({label: value}, total) for value, total in sorted(values.items())]


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")


def _by_status(session: Session) -> list[tuple[dict[str, str], float]]:
    counts = dict(session.execute(select(MergeJob.status, func.count()).group_by(MergeJob.status)).all())
    return [({"status": status}, float(counts.get(status, 0))) for status in JOB_STATUSES]


def _deliveries(session: Session) -> list[tuple[dict[str, str], float]]:
    counts = dict(session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all())
    return [({"status": status}, float(counts.get(status, 0))) for status in DELIVERY_STATUSES]


def _queue(broker_url: str) -> list[tuple[dict[str, str], float]]:
    if not broker_url.startswith(("redis://", "rediss://")):
        return []  # the embedded broker has no cheap depth to report
    import redis

    try:
        return [({"queue": MERGE_QUEUE}, float(redis.Redis.from_url(broker_url, socket_timeout=2).llen(MERGE_QUEUE)))]
    except redis.RedisError:
        return []


# --- JSON logs -----------------------------------------------------------------------------------

job_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("job_context", default=None)


@contextmanager
def logging_job(job_id: str, tenant_id: str, attempt: int) -> Iterator[None]:
    """Every log record inside carries the job id, tenant and attempt."""
    token = job_context.set({"job_id": job_id, "tenant_id": tenant_id, "attempt": attempt})
    try:
        yield
    finally:
        job_context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **(job_context.get() or {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
