"""The Celery app of the workers: `celery -A worker.app worker -Q merge -c 1 --max-tasks-per-child 1`.

Settings come from service/ (FDA_BROKER_URL and friends). No CUDA call happens in this parent
process: forked children would inherit a broken CUDA context. At start the worker checks the
database schema; while it runs it keeps its health file fresh from its own event loop; on shutdown
its job gets FDA_SHUTDOWN_GRACE_SECONDS, then is handed back (service.shutdown).
"""

from __future__ import annotations

import logging

from celery import bootsteps, signals

from service import health, shutdown
from service.celery_config import make_celery
from service.observability import configure_json_logging
from service.settings import get_settings

app = make_celery(get_settings().broker_url, name="fdamerge-worker")
log = logging.getLogger(__name__)


def _every(task: str, seconds: float) -> dict:
    """A periodic task whose message expires with its interval: a stalled worker gets no backlog."""
    return {"task": task, "schedule": seconds, "options": {"expires": seconds}}


_periods = get_settings()  # cron has minute resolution: the 15 s tick starts a run within 15 s of its time
app.conf.beat_schedule = {
    "reap-expired-leases": _every("fdamerge.reap", _periods.reap_every_seconds),
    "fire-due-schedules": _every("fdamerge.schedules", _periods.schedules_every_seconds),
    "deliver-webhooks": _every("fdamerge.webhooks", _periods.webhooks_every_seconds),
}
app.conf.imports = ("worker.tasks",)


class Liveness(bootsteps.StartStopStep):
    """Touches this worker's health file from the consumer's own timer (service.health)."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, consumer) -> None:
        name = consumer.hostname

        def beat() -> None:
            health.touch(name)

        beat()
        self.tref = consumer.timer.call_repeatedly(health.TOUCH_SECONDS, beat)

    def stop(self, consumer) -> None:
        if getattr(self, "tref", None) is not None:
            self.tref.cancel()


app.steps["consumer"].add(Liveness)


@signals.setup_logging.connect
def _json_logs(**_kwargs) -> None:
    """Celery's own logging replaced by JSON lines that carry job id, tenant and attempt."""
    configure_json_logging()


@signals.worker_init.connect
def _schema_is_ours(**_kwargs) -> None:
    from service.migrate import SchemaMismatch, check_schema

    try:
        check_schema(get_settings().database_url)
    except SchemaMismatch as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


@signals.worker_process_init.connect
def _job_process(**_kwargs) -> None:
    shutdown.install_in_job_process()


@signals.worker_shutting_down.connect
def _bounded_shutdown(**_kwargs) -> None:
    shutdown.after_grace(get_settings().shutdown_grace_seconds)
