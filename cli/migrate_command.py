"""`fdamerge migrate`: bring the job database (FDA_DATABASE_URL) to the newest schema."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser("migrate", help="create or upgrade the job database (FDA_DATABASE_URL)")
    parser.add_argument("--database-url", help="SQLAlchemy URL; default: FDA_DATABASE_URL or ./var/fdamerge.db")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.migrate import upgrade
    from service.settings import get_settings

    url = args.database_url or get_settings().database_url
    upgrade(url)
    print(f"database at the newest schema: {_without_password(url)}")
    return 0


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
