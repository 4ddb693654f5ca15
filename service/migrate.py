"""The job database's schema: `fdamerge migrate` brings it to the newest (Alembic, migrations/ at the
repository root); every role checks at start that it runs against the schema its code expects."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaMismatch(Exception):
    """The database is not at the revision this code needs (never migrated, older, or newer)."""


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def expected_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def current_revision(database_url: str) -> str | None:
    from alembic.migration import MigrationContext

    from service.db import make_engine

    engine = make_engine(database_url, pooled=False)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def check_schema(database_url: str) -> None:
    """SchemaMismatch naming both revisions and what to run, unless the database is at our head."""
    from sqlalchemy.engine import make_url

    found, wanted = current_revision(database_url), expected_revision()
    if found == wanted:
        return
    shown = make_url(database_url).render_as_string(hide_password=True)
    state = "has no fda-merge schema" if found is None else f"is at schema revision {found}"
    raise SchemaMismatch(
        f"the job database {shown} {state}; this fda-merge needs revision {wanted}: "
        "run `fdamerge migrate` (with the same FDA_DATABASE_URL), then start it again"
    )
