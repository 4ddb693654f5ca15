"""Enqueueing merge jobs: by task name, after the database commit, with task id = job id.

The API never imports the worker: it sends the task by name through a Celery app that only
knows the broker. Tests pass a recording dispatcher instead.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

MERGE_TASK = "fdamerge.merge"
MERGE_QUEUE = "merge"


class Dispatcher(Protocol):
    def enqueue(self, job_id: str) -> None: ...


class CeleryDispatcher:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url

    def enqueue(self, job_id: str) -> None:
        _sender(self.broker_url).send_task(MERGE_TASK, args=[job_id], task_id=job_id, queue=MERGE_QUEUE)


class RecordingDispatcher:
    """Remembers what was enqueued (tests, and a service run without workers)."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.enqueued.append(job_id)


@lru_cache(maxsize=4)
def _sender(broker_url: str):
    from service.celery_config import make_celery

    return make_celery(broker_url)
