"""Concurrent submits of one tenant each dispatch its waiting jobs: every job reaches the queue once,
however many dispatchers picked it, and a broker that refuses puts the unsent jobs back to waiting."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import Engine, event

from service.dispatch import dispatch
from service.limits import Limits
from service.settings import Settings
from tests.integration.test_job_lifecycle import job, submit


class Recording:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.lock = threading.Lock()
        self.fail_after = fail_after

    def enqueue(self, job_id: str) -> None:
        with self.lock:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise ConnectionError("the broker is down")
            self.sent.append(job_id)


def test_concurrent_dispatchers_send_each_waiting_job_once(database_url: str) -> None:
    ids = [submit(database_url) for _ in range(12)]
    settings = Settings(database_url=database_url, limits=Limits(running_jobs_per_tenant=100))
    dispatchers = 4
    all_read = threading.Barrier(dispatchers, timeout=10)
    waited: set[int] = set()

    def after_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        # every dispatcher has read the same waiting jobs before any of them sends one
        picks = "enqueued_at IS NULL ORDER BY merge_jobs.created_at" in " ".join(statement.split())
        if picks and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            all_read.wait()

    recording = Recording()
    returned: list[list[str]] = []
    event.listen(Engine, "after_cursor_execute", after_execute)
    try:
        threads = [
            threading.Thread(target=lambda: returned.append(dispatch(settings, recording, "tn_a")))
            for _ in range(dispatchers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        event.remove(Engine, "after_cursor_execute", after_execute)
    assert len(waited) == dispatchers
    assert Counter(recording.sent) == Counter(ids)  # was: each job sent by every dispatcher that saw it
    assert sorted(j for sent in returned for j in sent) == sorted(ids)
    assert all(job(database_url, j).enqueued_at is not None for j in ids)


def test_jobs_the_broker_refused_wait_to_be_sent_again(database_url: str) -> None:
    ids = [submit(database_url) for _ in range(3)]
    settings = Settings(database_url=database_url, limits=Limits(running_jobs_per_tenant=100))
    assert dispatch(settings, Recording(fail_after=1), "tn_a") == ids[:1]
    assert [job(database_url, j).enqueued_at is None for j in ids] == [False, True, True]
    assert dispatch(settings, Recording(), "tn_a") == ids[1:]  # the next dispatch sends them
