"""Allowlists re-checked at every execution (trigger, retry, schedule fire, worker); the key and
tenant lifecycle in the API and the CLI; /metrics behind its own scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from cli.main import main as fdamerge
from service.db import session_scope
from service.execute import execute_job
from service.jobs import claim_job, fail_job
from service.models import MergeJob, Schedule, Tenant
from service.schedules import tick
from tests.security.conftest import Service, assert_problem
from tests.support.hostile import ta_body


def narrow(service: Service, keep: list[str]) -> None:
    """An operator narrows acme's allowlist (as fdamerge tenants allow --remove does)."""
    with session_scope(service.settings.database_url) as session:
        session.execute(update(Tenant).where(Tenant.name == "acme").values(allowed_prefixes=keep))


def submitted(service: Service, llama) -> tuple[str, dict]:
    base, experts = llama
    body = ta_body(str(base), [str(e) for e in experts])
    response = service.submit(body)
    assert response.status_code == 202, response.text
    return response.json()["id"], body


def test_the_worker_refuses_a_job_whose_inputs_left_the_allowlist(service: Service, llama) -> None:
    job_id, _ = submitted(service, llama)
    narrow(service, [str(service.inputs)])
    assert execute_job(job_id, service.settings) == "failed"
    with session_scope(service.settings.database_url) as session:
        job = session.get_one(MergeJob, job_id)
    assert job.error_code == "input_not_allowed" and job.error_param == "base_model"


def test_retry_checks_the_allowlist_as_it_is_now(service: Service, llama) -> None:
    job_id, _ = submitted(service, llama)
    with session_scope(service.settings.database_url) as session:
        claim_job(session, job_id, worker_id="w", lease_seconds=60)
        fail_job(session, job_id, worker_id="w", code="checkpoint_error", message="x")
    narrow(service, [str(service.inputs)])
    refused = service.client.post(f"/v1/merge-jobs/{job_id}/retry", headers=service.headers())
    assert_problem(refused, 422)  # was: queued again with inputs no longer allowed


def test_trigger_and_schedule_fires_check_the_allowlist_calibration_included(service: Service, llama) -> None:
    base, experts = llama
    calibration = service.inputs / "calib.jsonl"
    calibration.write_text('{"text": "a b c d e f g h"}\n')
    body = {
        "method": "fda", "base_model": str(base), "models": [{"model": str(experts[0]), "calibration": str(calibration)},
        {"model": str(experts[1])}], "parameters": {"anchors": 4, "construction_steps": 2, "adaptation_epochs": 1},
    }  # fmt: skip
    made = service.client.post(
        "/v1/schedules", json={"name": "n", "cron": "0 2 * * *", "template": body}, headers=service.headers()
    )
    assert made.status_code == 201, made.text
    schedule_id = made.json()["id"]
    narrow(service, [str(service.models)])  # the calibration file's folder is gone from the allowlist
    trigger = service.client.post(f"/v1/schedules/{schedule_id}/trigger", headers=service.headers())
    assert assert_problem(trigger, 422)["param"] == "models[0].calibration"
    with session_scope(service.settings.database_url) as session:
        session.execute(update(Schedule).values(next_fire_at=datetime.now(UTC) - timedelta(minutes=1)))
    with session_scope(service.settings.database_url) as session:
        assert tick(session, service.settings) == []
        assert session.get_one(Schedule, schedule_id).skipped == 1


def test_a_disabled_tenant_loses_its_keys_its_jobs_and_its_schedules(service: Service, llama) -> None:
    job_id, _ = submitted(service, llama)
    assert fdamerge(["tenants", "disable", "acme", "--database-url", service.settings.database_url]) == 0
    assert_problem(service.client.get("/v1/merge-jobs", headers=service.headers()), 401, "unauthorized")
    with session_scope(service.settings.database_url) as session:
        assert session.get_one(MergeJob, job_id).status == "cancelled"
    assert fdamerge(["tenants", "enable", "acme", "--database-url", service.settings.database_url]) == 0
    assert service.client.get("/v1/merge-jobs", headers=service.headers()).status_code == 200


def test_a_tenant_admin_can_narrow_but_never_widen_its_allowlist(service: Service) -> None:
    headers = service.headers("acme_admin")
    widen = service.client.patch("/v1/tenant", json={"allowed_inputs": ["/", "s3://everything"]}, headers=headers)
    assert_problem(widen, 422)
    narrowed = service.client.patch("/v1/tenant", json={"allowed_inputs": [str(service.inputs)]}, headers=headers)
    assert narrowed.status_code == 200 and narrowed.json()["allowed_inputs"] == [str(service.inputs)]


def test_keys_are_revoked_and_expired_from_the_api_and_the_cli(service: Service) -> None:
    admin = service.headers("acme_admin")
    made = service.client.post("/v1/api-keys", json={"scopes": ["jobs:read"]}, headers=admin).json()
    probe = {"Authorization": f"Bearer {made['key']}"}
    assert service.client.get("/v1/merge-jobs", headers=probe).status_code == 200
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (
        service.client.patch(f"/v1/api-keys/{made['id']}", json={"expires_at": soon}, headers=admin).status_code == 200
    )
    url = service.settings.database_url
    assert fdamerge(["keys", "expire", made["id"], "--at", "2020-01-01T00:00:00Z", "--database-url", url]) == 2
    assert fdamerge(["keys", "revoke", made["id"], "--database-url", url]) == 0
    assert_problem(service.client.get("/v1/merge-jobs", headers=probe), 401)


def test_a_key_already_expired_at_creation_is_refused(service: Service) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    made = service.client.post("/v1/api-keys", json={"expires_at": past}, headers=service.headers("acme_admin"))
    assert assert_problem(made, 422)["param"] == "expires_at"


def test_metrics_need_the_operator_only_metrics_scope(service: Service) -> None:
    assert_problem(service.client.get("/metrics"), 401)  # was: every tenant's totals, no key
    assert_problem(service.client.get("/metrics", headers=service.headers("acme_admin")), 403)  # admin ≠ operator
    grant = service.client.post(
        "/v1/api-keys", json={"scopes": ["metrics:read"]}, headers=service.headers("acme_admin")
    )
    assert_problem(grant, 422)  # a tenant cannot mint a fleet-wide key
    assert service.client.get("/metrics", headers=service.headers("operator")).status_code == 200


def test_keys_create_refuses_to_create_a_new_database(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository: var/fdamerge.db does not exist here
    assert fdamerge(["keys", "create", "--tenant", "acme"]) == 2
    assert "no job database" in capsys.readouterr().err and not (tmp_path / "var").exists()


@pytest.mark.parametrize("scope", ["metrics:read"])
def test_keys_create_on_the_cli_can_grant_the_operator_scope(service: Service, scope: str, capsys) -> None:
    url = service.settings.database_url
    assert fdamerge(["keys", "create", "--tenant", "ops", "--scope", scope, "--database-url", url]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert service.client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_submit_verifies_its_key_as_the_database_has_it_now_bad_body_or_not(service: Service, llama) -> None:
    """The submit verifies its key in its own first statement (service/accept.py), not in a dependency:
    a key revoked from the CLI answers 401 at once, and a bad body or header sent with a bad key answers
    401, never 422 (the validation handler verifies the key first)."""
    base, experts = llama
    good = ta_body(str(base), [str(e) for e in experts])
    bad = {**good, "method": 7}
    admin = service.headers("acme_admin")
    made = service.client.post("/v1/api-keys", json={}, headers=admin).json()
    probe = {"Authorization": f"Bearer {made['key']}"}
    assert service.client.post("/v1/merge-jobs", json=good, headers=probe).status_code == 202
    assert_problem(service.client.post("/v1/merge-jobs", json=bad, headers=probe), 422, "invalid_request")
    assert fdamerge(["keys", "revoke", made["id"], "--database-url", service.settings.database_url]) == 0
    assert_problem(service.client.post("/v1/merge-jobs", json=good, headers=probe), 401, "unauthorized")
    assert_problem(service.client.post("/v1/merge-jobs", json=bad, headers=probe), 401, "unauthorized")
    bad_header = {**probe, "Idempotency-Key": "two words"}  # outside the header's pattern: 422 for a good key
    assert_problem(service.client.post("/v1/merge-jobs", json=good, headers=bad_header), 401, "unauthorized")
    assert_problem(service.submit(good, **{"Idempotency-Key": "two words"}), 422, "invalid_request")
    unknown = {"Authorization": "Bearer fdm_000000000000_nope"}
    assert_problem(service.client.post("/v1/merge-jobs", json=bad, headers=unknown), 401, "unauthorized")
    malformed = {"Authorization": "Bearer not-a-key"}
    assert_problem(service.client.post("/v1/merge-jobs", json=bad, headers=malformed), 401, "unauthorized")
    assert_problem(service.client.post("/v1/merge-jobs", json=bad), 401, "unauthorized")
