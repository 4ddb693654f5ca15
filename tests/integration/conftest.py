"""Fixtures of the service's integration tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from service.db import session_scope
from service.migrate import upgrade
from service.models import Tenant

_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"lifecycle{next(_databases)}")
    upgrade(url)
    with session_scope(url) as session:
        session.add_all([Tenant(id="tn_a", name="a", allowed_prefixes=["s3://b"]), Tenant(id="tn_b", name="b")])
    return url
