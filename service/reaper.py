"""The periodic reaper: expired leases back to the queue (after the commit), or failed with worker_lost."""

from __future__ import annotations

from service.db import session_scope
from service.jobs import reap_expired
from service.queue import Dispatcher
from service.settings import Settings


def reap_and_requeue(settings: Settings, dispatcher: Dispatcher) -> list[str]:
    with session_scope(settings.database_url) as session:
        requeued = reap_expired(session)
    for job_id in requeued:
        dispatcher.enqueue(job_id)
    return requeued
