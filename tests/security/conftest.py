"""A service the way an operator runs it for several tenants: local inputs enabled (as `fdamerge up`
does), each tenant sealed to its own folders, a real database, real files on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.queue import RecordingDispatcher
from service.settings import Settings


@dataclass
class Service:
    settings: Settings
    client: TestClient
    dispatcher: RecordingDispatcher
    inputs: Path  # acme's own folder
    models: Path  # the shared tiny models (also on acme's allowlist)
    keys: dict[str, str] = field(default_factory=dict)  # acme, acme_admin, globex, operator

    def headers(self, who: str = "acme", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def submit(self, body: dict, who: str = "acme", **headers: str):
        return self.client.post("/v1/merge-jobs", json=body, headers=self.headers(who, **headers))


def make_service(tmp_path: Path, models: Path, **settings_fields) -> Service:
    inputs, globex = tmp_path / "acme-inputs", tmp_path / "globex-inputs"
    inputs.mkdir(exist_ok=True)
    globex.mkdir(exist_ok=True)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'service.db'}", storage_url=str(tmp_path / "storage"),
        cache_dir=tmp_path / "cache", **{"local_inputs": True, **settings_fields},
    )  # fmt: skip
    upgrade(settings.database_url)
    keys = {}
    with session_scope(settings.database_url) as session:
        acme = ensure_tenant(session, "acme", [str(inputs), str(models)])
        keys["acme"] = create_api_key(session, acme, ["jobs:read", "jobs:write", "schedules:write"])
        keys["acme_admin"] = create_api_key(session, acme, ["admin"])
        keys["globex"] = create_api_key(session, ensure_tenant(session, "globex", [str(globex)]))
        keys["operator"] = create_api_key(session, ensure_tenant(session, "ops"), ["metrics:read"])
    dispatcher = RecordingDispatcher()
    client = TestClient(create_app(settings, dispatcher), raise_server_exceptions=False)
    return Service(settings, client, dispatcher, inputs, models, keys)


@pytest.fixture
def service(tmp_path: Path, llama) -> Service:
    base, _ = llama
    return make_service(tmp_path, base.parent.resolve())


def assert_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body
