"""The Celery app of the workers: `celery -A worker.app worker -Q merge -c 1 --max-tasks-per-child 1`.

Settings come from service/ (FDA_BROKER_URL and friends). No CUDA call happens in this parent
process: forked children would inherit a broken CUDA context.
"""

from __future__ import annotations

from celery import signals

from service.celery_config import make_celery
from service.observability import configure_json_logging
from service.settings import get_settings

REAP_EVERY_SECONDS = 30.0

app = make_celery(get_settings().broker_url, name="fdamerge-worker")
WEBHOOKS_EVERY_SECONDS = 5.0
TICK_EVERY_SECONDS = 15.0  # cron has minute resolution: a run starts within 15 s of its fire time


def _every(task: str, seconds: float) -> dict:
    """A periodic task whose message expires with its interval: a stalled worker gets no backlog."""
    return {"task": task, "schedule": seconds, "options": {"expires": seconds}}


app.conf.beat_schedule = {
    "reap-expired-leases": _every("fdamerge.reap", REAP_EVERY_SECONDS),
    "fire-due-schedules": _every("fdamerge.schedules", TICK_EVERY_SECONDS),
    "deliver-webhooks": _every("fdamerge.webhooks", WEBHOOKS_EVERY_SECONDS),
}
app.conf.imports = ("worker.tasks",)


@signals.setup_logging.connect
def _json_logs(**_kwargs) -> None:
    """Celery's own logging replaced by JSON lines that carry job id, tenant and attempt."""
    configure_json_logging()
