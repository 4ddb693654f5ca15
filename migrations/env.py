"""Alembic environment: the database URL comes from service.migrate (or FDA_DATABASE_URL)."""

from __future__ import annotations

from alembic import context

from service.db import make_engine
from service.models import Base
from service.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
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
