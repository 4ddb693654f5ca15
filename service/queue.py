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


def waiting_job_ids(broker_url: str, limit: int = 10_000) -> set[str] | None:
    """Job ids of the merge messages waiting on the queue (not yet taken by a worker), or None when
    the broker cannot say cheaply. A queued job sent a while ago whose message is not among these was
    lost (a worker died holding it, a failed claim was acked, the broker lost it) and is sent again."""
    if broker_url.startswith(("redis://", "rediss://")):
        return _redis_waiting(broker_url, limit)
    if broker_url.startswith("filesystem://"):
        return _filesystem_waiting(limit)
    return None


def _redis_waiting(broker_url: str, limit: int) -> set[str] | None:
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    lists = [MERGE_QUEUE, *(f"{MERGE_QUEUE}\x06\x16{step}" for step in (3, 6, 9))]  # kombu's priority lists
    if sum(int(client.llen(name)) for name in lists) > limit:
        return None
    found: set[str] = set()
    for name in lists:
        found.update(filter(None, (_task_id(raw) for raw in client.lrange(name, 0, -1))))
    return found


def _filesystem_waiting(limit: int) -> set[str] | None:
    from service.celery_config import broker_folder

    messages = list((broker_folder() / "in").glob(f"*.{MERGE_QUEUE}.msg"))
    if len(messages) > limit:
        return None
    found: set[str] = set()
    for path in messages:
        try:
            found.update(filter(None, [_task_id(path.read_bytes())]))
        except OSError:
            continue  # taken by a worker meanwhile
    return found


def _task_id(raw: bytes | str) -> str | None:
    import json

    try:
        message = json.loads(raw)
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None
