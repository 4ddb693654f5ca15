"""Shared fixtures: tiny model families, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.support.tiny_models import make_family  # noqa: E402


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Path]]]:
    root = tmp_path_factory.mktemp("models")
    return {family: make_family(root, family) for family in ("bert", "gpt2", "llama", "vit")}


@pytest.fixture(scope="session")
def llama(families) -> tuple[Path, list[Path]]:
    return families["llama"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 endpoint on loopback, with credentials in the environment."""
    from tests.support.services import ACCESS_KEY, SECRET_KEY, start_seaweedfs

    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), env)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL on loopback (trust auth), stopped by its own pg_ctl at the end.

    Its directory is outside pytest's root-only temp tree: the server runs as the postgres user."""
    import shutil
    import tempfile

    from tests.support.services import start_postgres

    directory = Path(tempfile.mkdtemp(prefix="fda-postgres-"))
    try:
        server = start_postgres(directory)
        yield server
        server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis on loopback, stopped by its own PID at the end."""
    from tests.support.services import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
