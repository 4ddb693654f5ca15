"""Sealed inputs: local paths only where enabled, symlinks resolved before the allowlist, regular
files only, no folder listings in errors, allowlists re-checked at every execution."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from service.db import session_scope
from service.execute import execute_job
from service.models import MergeJob, Tenant
from service.settings import Settings
from service.submission import allowlist_entry
from tests.security.conftest import Service, assert_problem, make_service
from tests.support.hostile import ta_body


def other_tenants_output(service: Service, llama) -> Path:
    """A finished merge of globex's, in the service's storage (what the symlink attack downloaded)."""
    base, _ = llama
    target = Path(service.settings.storage_url) / "tn_globex" / "secret" / "attempt-1"
    shutil.copytree(base, target)
    return target


def test_a_symlink_to_another_tenants_output_is_refused_at_submit(service: Service, llama) -> None:
    base, experts = llama
    (service.inputs / "innocent").symlink_to(other_tenants_output(service, llama))
    problem = assert_problem(
        service.submit(ta_body(str(base), [str(experts[0]), str(service.inputs / "innocent")])), 422
    )
    assert problem["param"] == "models[1].model" and "resolves (through a symlink)" in problem["detail"]


def test_a_symlinked_weight_file_inside_an_allowed_folder_is_refused_when_read(service: Service, llama) -> None:
    base, experts = llama
    folder = service.inputs / "mixed"
    folder.mkdir()
    (folder / "config.json").write_bytes((base / "config.json").read_bytes())
    (folder / "model.safetensors").symlink_to(other_tenants_output(service, llama) / "model.safetensors")
    problem = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), str(folder)])), 422)
    assert "resolves outside" in problem["detail"]


def test_a_symlink_swapped_in_after_submit_is_refused_by_the_worker(tmp_path: Path, llama) -> None:
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve())
    honest = service.inputs / "expert"
    shutil.copytree(experts[0], honest)
    job_id = service.submit(ta_body(str(base), [str(honest), str(experts[1])])).json()["id"]
    shutil.rmtree(honest)
    honest.symlink_to(other_tenants_output(service, llama))  # the folder now points at globex's output
    assert execute_job(job_id, service.settings) == "failed"
    with session_scope(service.settings.database_url) as session:
        job = session.get_one(MergeJob, job_id)
    assert job.error_code == "input_not_allowed" and "resolves (through a symlink)" in job.error_message


@pytest.mark.parametrize("special", ["/dev/zero", "/proc/self/fd/0", "fifo"])
def test_devices_fifos_and_proc_files_answer_422_without_hanging(service: Service, llama, special: str) -> None:
    base, experts = llama
    if special == "fifo":
        special = str(service.inputs / "pipe.safetensors")
        os.mkfifo(special)
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.append(service.submit(ta_body(str(base), [str(experts[0]), special]))), daemon=True
    )
    worker.start()
    worker.join(timeout=20)
    assert outcome, "the submit hung (a FIFO opened for reading blocks)"
    assert_problem(outcome[0], 422)  # was a 500


def test_a_device_under_an_allowed_folder_is_not_a_regular_file(tmp_path: Path, llama) -> None:
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve())
    with session_scope(service.settings.database_url) as session:  # an allowlist that (wrongly) covers /dev
        session.execute(
            update(Tenant).where(Tenant.name == "acme").values(allowed_prefixes=["/dev", str(service.models)])
        )
    problem = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), "/dev/zero"])), 422)
    assert "regular file" in problem["detail"]


def test_errors_never_list_the_files_of_a_folder(service: Service, llama) -> None:
    base, experts = llama
    folder = service.inputs / "not-a-model"
    folder.mkdir()
    for name in ("id_rsa", "passwords.txt", "payroll.csv"):
        (folder / name).write_text("secret")
    problem = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), str(folder)])), 422)
    assert not any(name in problem["detail"] for name in ("id_rsa", "passwords", "payroll"))
    etc = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), "/etc"])), 422)
    assert "passwd" not in etc["detail"] and "not under this tenant's allowed inputs" in etc["detail"]


def test_local_paths_are_off_unless_the_operator_enables_them(tmp_path: Path, llama) -> None:
    base, experts = llama
    assert Settings().local_inputs is False  # production settings
    service = make_service(tmp_path, base.parent.resolve(), local_inputs=False)
    problem = assert_problem(service.submit(ta_body(str(base), [str(e) for e in experts])), 422)
    assert "FDA_LOCAL_INPUTS" in problem["detail"]


def test_the_service_own_folders_are_never_inputs(tmp_path: Path, llama) -> None:
    """Even under an allowlisted folder: the checkpoint cache, the database and other tenants' outputs."""
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve())
    with session_scope(service.settings.database_url) as session:
        session.execute(update(Tenant).where(Tenant.name == "acme").values(allowed_prefixes=[str(tmp_path)]))
    for path in (
        service.settings.cache_dir / "s3",
        Path(service.settings.storage_url) / "tn_globex",
        tmp_path / "service.db",
    ):
        assert service.submit(ta_body(str(path), [str(path)])).status_code == 422


@pytest.mark.parametrize("entry", ["/", "//", "/./"])
def test_the_root_folder_is_never_an_allowlist_entry(entry: str) -> None:
    from service.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        allowlist_entry(entry)
