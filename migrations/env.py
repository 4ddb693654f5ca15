"""Alembic environment: the database URL comes from service.migrate (or FDA_DATABASE_URL).

On PostgreSQL a migration waits at most FDA_MIGRATION_LOCK_TIMEOUT_SECONDS (10) for each lock, so a
long transaction holding a table cannot make the migration (and everything queued behind its lock
request) wait: it fails, naming the timeout, and can be run again. Its statements may run long.
"""

from __future__ import annotations

import os

from alembic import context

from service.db import make_engine
from service.models import Base
from service.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            seconds = float(os.environ.get("FDA_MIGRATION_LOCK_TIMEOUT_SECONDS", "10"))
            connection.exec_driver_sql(f"SET lock_timeout = {int(seconds * 1000)}")
            connection.exec_driver_sql("SET statement_timeout = 0")
            connection.commit()
        if connection.dialect.name == "sqlite":
            # Batch migrations rebuild tables (copy, DROP, rename); with foreign keys on, SQLite's DROP
            # would first delete the rows and cascade into job_events, artifacts and metrics.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
