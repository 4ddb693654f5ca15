"""API keys: shown once, stored hashed, scoped, revocable; `fdamerge keys create` prints one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.main import main as fdamerge
from service.auth import Forbidden, Unauthorized, authenticate, create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.models import ApiKey, utcnow


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    return url


def test_a_key_authenticates_as_its_tenant_and_only_its_hash_is_stored(url: str) -> None:
    with session_scope(url) as session:
        tenant = ensure_tenant(session, "acme", ["s3://models/acme"])
        key = create_api_key(session, tenant, ["jobs:read"])
    with session_scope(url) as session:
        principal = authenticate(session, key)
        stored = session.scalars(select(ApiKey)).one()
    assert principal.tenant_id == tenant.id and principal.allowed_prefixes == ("s3://models/acme",)
    assert key.split("_")[2] not in (stored.sha256, stored.lookup)
    principal.require("jobs:read")
    with pytest.raises(Forbidden, match="jobs:write"):
        principal.require("jobs:write")


@pytest.mark.parametrize("change", ["wrong secret", "revoked", "expired", "malformed"])
def test_a_bad_key_is_refused(url: str, change: str) -> None:
    with session_scope(url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme"))
    with session_scope(url) as session:
        stored = session.scalars(select(ApiKey)).one()
        if change == "revoked":
            stored.revoked = True
        if change == "expired":
            stored.expires_at = utcnow() - timedelta(seconds=1)
    presented = {"wrong secret": key[:-2] + "xx", "malformed": "Bearer nonsense"}.get(change, key)
    with session_scope(url) as session, pytest.raises(Unauthorized):
        authenticate(session, presented)


def test_keys_create_prints_a_working_key_as_its_last_line(url: str, monkeypatch, capsys) -> None:
    from service.settings import get_settings

    monkeypatch.setenv("FDA_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert fdamerge(["keys", "create", "--tenant", "acme", "--allow-bucket", "models/team"]) == 0
    finally:
        get_settings.cache_clear()
    key = capsys.readouterr().out.strip().splitlines()[-1]
    with session_scope(url) as session:
        assert authenticate(session, key).allowed_prefixes == ("s3://models/team",)


@pytest.mark.parametrize("bad", ["", "s3://", "s3://UPPER", "s3://b/../x", "a"])
def test_keys_create_refuses_an_allowlist_entry_that_names_no_bucket(url: str, bad: str, monkeypatch, capsys) -> None:
    from service.settings import get_settings

    monkeypatch.setenv("FDA_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert fdamerge(["keys", "create", "--tenant", "acme", "--allow-bucket", bad]) == 2
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert "bucket" in error or "segment" in error
