"""A migration never waits on a lock for long (issue 12): on PostgreSQL it takes its locks under
FDA_MIGRATION_LOCK_TIMEOUT_SECONDS, so a transaction holding a table makes `fdamerge migrate` fail fast,
naming the lock timeout, with nothing half done, instead of hanging with every later query queued
behind its lock request. (Each role's schema-version check at start: tests/integration/test_process_control.py.)"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, inspect, text

from service.migrate import current_revision, expected_revision, upgrade


def test_a_migration_blocked_by_a_held_lock_fails_fast_naming_the_lock_timeout(
    postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.create_database(f"locks_{uuid.uuid4().hex[:8]}")
    upgrade(url, "0004")  # 0005 adds leftovers, whose foreign key locks merge_jobs
    monkeypatch.setenv("FDA_MIGRATION_LOCK_TIMEOUT_SECONDS", "1")  # the connections' own lock_timeout is 10 s
    engine = create_engine(url)
    holder = engine.connect()
    outcome: dict = {}

    def migrate() -> None:
        started = time.monotonic()
        try:
            upgrade(url)
        except Exception as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    try:
        holder.execute(text("LOCK TABLE merge_jobs IN ROW EXCLUSIVE MODE"))  # as a long transaction's UPDATE does
        migration = threading.Thread(target=migrate, daemon=True)
        migration.start()
        migration.join(timeout=30)
        assert not migration.is_alive(), "the migration hung behind the held lock"
    finally:
        holder.rollback()
        holder.close()
        migration.join(timeout=30)
    assert "error" in outcome, "the migration ran although merge_jobs was locked"
    assert "lock timeout" in str(outcome["error"]), outcome["error"]
    assert outcome["seconds"] < 8, outcome["seconds"]  # its own 1 s, not the connections' 10 s
    assert current_revision(url) == "0004"  # rolled back whole: nothing half migrated
    assert "leftovers" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(url)  # the lock gone, it simply runs again
    assert current_revision(url) == expected_revision()
