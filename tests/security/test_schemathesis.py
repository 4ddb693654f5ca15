"""schemathesis against the running API: a real uvicorn server over a real PostgreSQL and Redis, every
operation, a valid key with every scope. Zero 5xx and zero responses outside the documented contract
(status codes, content types, schemas, headers); invalid requests must be refused. Bounded:
FDA_SCHEMATHESIS_EXAMPLES examples per operation (default 12: about a minute on two cores)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.models import Tenant
from service.queue import CeleryDispatcher
from service.settings import Settings
from tests.support.services import free_port

EXAMPLES = int(os.environ.get("FDA_SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


class Live:
    def __init__(self, url: str, key: str, settings: Settings, allowed: list[str]) -> None:
        self.url, self.key, self.settings, self.allowed = url, key, settings, allowed

    def restore_tenant(self) -> None:
        """A fuzzed PATCH /v1/tenant may disable the tenant or narrow its allowlist: undo it."""
        with session_scope(self.settings.database_url) as session:
            session.execute(
                update(Tenant).where(Tenant.name == "fuzz").values(disabled=False, allowed_prefixes=self.allowed)
            )


@pytest.fixture(scope="module")
def live(postgres_server, redis_server, llama, tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    base, _ = llama
    settings = Settings(
        database_url=postgres_server.create_database(f"fuzz_{uuid.uuid4().hex[:8]}"), broker_url=redis_server.url,
        storage_url=str(tmp / "storage"), cache_dir=tmp / "cache", local_inputs=True,
    )  # fmt: skip
    upgrade(settings.database_url)
    allowed = [str(base.parent.resolve()), "s3://models/fuzz"]
    with session_scope(settings.database_url) as session:
        tenant = ensure_tenant(session, "fuzz", allowed)
        key = create_api_key(session, tenant, ["jobs:read", "jobs:write", "schedules:write", "admin", "metrics:read"])
    port = free_port()
    app = create_app(settings, CeleryDispatcher(settings.broker_url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Live(f"http://127.0.0.1:{port}", key, settings, allowed)
    server.should_exit = True
    thread.join(timeout=15)


def operations(live: Live) -> list:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, mode: GenerationMode, live: Live, failures: list[str]) -> None:
    """EXAMPLES cases of one operation in one mode; every failing check is recorded, not raised, so
    one run reports every operation that breaks the contract."""

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        try:
            case.call_and_validate(
                base_url=live.url, headers={"Authorization": f"Bearer {live.key}"}, checks=CHECKS, timeout=60
            )
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup, or a dropped connection
            failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
        finally:
            live.restore_tenant()

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (GET /healthz has no parameters)
        assert mode is GenerationMode.NEGATIVE


def test_every_operation_keeps_the_contract_on_valid_and_invalid_requests(live: Live) -> None:
    failures: list[str] = []
    found = operations(live)
    assert len(found) >= 25  # every operation of the API, not a subset
    for operation in found:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, live, failures)
    assert not failures, "\n\n".join(failures[:20])
