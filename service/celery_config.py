"""One Celery configuration for the API (sender) and the workers, from service settings.

Settings follow the shared service conventions §2: late acks, redelivery when a worker is lost,
one prefetched job, no result backend (job state lives in our database).
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from service.settings import VAR

VISIBILITY_TIMEOUT = 6 * 3600  # Redis redelivers unacked messages older than this even while they run


JOB_TIME_LIMIT = 24 * 3600  # a merge that runs a day is stuck: soft limit first (cleanup), then the hard kill


def make_celery(broker_url: str, name: str = "fdamerge") -> Celery:
    app = Celery(name, broker=broker_url)
    if broker_url.startswith("filesystem://"):
        app.conf.broker_transport = "service.broker:AtomicFilesystemTransport"
    app.conf.update(
        task_soft_time_limit=JOB_TIME_LIMIT - 600,
        task_time_limit=JOB_TIME_LIMIT,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="merge",
        task_routes={  # never behind a long merge on a GPU worker
            "fdamerge.reap": {"queue": "control"},
            "fdamerge.schedules": {"queue": "control"},
            "fdamerge.webhooks": {"queue": "webhooks"},  # slow receivers never delay the reaper or the scheduler
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, never the end of a worker
        worker_cancel_long_running_tasks_on_connection_loss=False,  # the lease, not the broker, decides
        broker_transport_options=_transport_options(broker_url),
    )
    return app


def broker_folder() -> Path:
    """The embedded broker's folder (messages in `in/`)."""
    return VAR / "broker"


def _transport_options(broker_url: str) -> dict:
    if broker_url.startswith("filesystem://"):  # the embedded broker: folders under ./var
        root = broker_folder()
        for sub in ("in", "processed", "control"):
            Path(root / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(root / "in"),
            "data_folder_out": str(root / "in"),
            "processed_folder": str(root / "processed"),
            "control_folder": str(root / "control"),  # remote control (fdamerge worker --drain), not ./control
            "store_processed": False,
        }
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "socket_connect_timeout": 10,
        "socket_timeout": 30,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
