"""Leases from one clock, the database's: a reaper or a worker whose own clock runs minutes ahead
neither requeues nor takes over a job whose lease was just renewed."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

from service import models
from service.db import session_scope
from service.jobs import claim_job, heartbeat, reap_expired
from tests.integration.test_job_lifecycle import job, submit


@pytest.fixture
def clock_three_minutes_ahead(monkeypatch) -> None:
    """This process's clock (every `utcnow` the service modules hold) three minutes fast."""
    real = models.utcnow

    def fast():
        return real() + timedelta(minutes=3)

    for module in list(sys.modules.values()):
        if (module.__name__ or "").startswith("service") and getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", fast)


def test_a_fast_clock_neither_reaps_nor_takes_over_a_job_with_a_fresh_lease(database_url: str, request) -> None:
    job_id = submit(database_url)
    with session_scope(database_url) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_seconds=60) is not None
        assert heartbeat(session, job_id, worker_id="w1", lease_seconds=60) is False  # renewed, no cancel
    request.getfixturevalue("clock_three_minutes_ahead")  # the reaper's and the second worker's machine
    with session_scope(database_url) as session:
        reaped = reap_expired(session)
        assert (reaped.requeued, reaped.ended) == ([], [])  # was: requeued just after its renewal
        assert claim_job(session, job_id, worker_id="w2", lease_seconds=60) is None  # was: taken over
    assert (job(database_url, job_id).status, job(database_url, job_id).worker_id) == ("running", "w1")
