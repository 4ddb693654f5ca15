"""The CLI for people: no tracebacks for their mistakes, paths relative to the YAML, a job's outputs
listed and downloaded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn
import yaml

from api.app import create_app
from service.execute import execute_job
from tests.security.conftest import Service
from tests.support.cli import REPO, run_cli
from tests.support.hostile import ta_body
from tests.support.services import free_port


def test_nan_in_a_submitted_yaml_is_one_line_not_a_traceback(tmp_path: Path, llama) -> None:
    base, experts = llama
    config = tmp_path / "nan.yaml"
    config.write_text(f"method: linear\nmodels:\n  - model: {experts[0]}\n    weight: .nan\n  - model: {base}\n")
    result = run_cli("submit", str(config), env={"FDA_API_KEY": "fdm_x_y", "FDA_SERVER_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2 and "Traceback" not in result.stderr and "finite" in result.stderr


def test_metadata_without_a_value_names_the_flag(tmp_path: Path, llama) -> None:
    base, experts = llama
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump(ta_body(str(base), [str(e) for e in experts])))
    result = run_cli("submit", str(config), "--metadata", "novalue", env={"FDA_API_KEY": "fdm_x_y"})
    assert result.returncode == 2 and "--metadata: expected KEY=VALUE, got 'novalue'" in result.stderr
    assert "dictionary update sequence" not in result.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    from service.auth import ensure_tenant
    from service.db import session_scope
    from service.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with session_scope(url) as session:
        for index in range(3000):  # far more output than a pipe buffer holds
            ensure_tenant(session, f"tenant-{index:04d}")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (f"tenants list --database-url {url}", "--help"):
        piped = subprocess.run(
            f"{sys.executable} -m cli.main {command} | head -c 10", shell=True, capture_output=True, text=True,
            env=environment, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert piped.stderr == "", piped.stderr  # no traceback, no "Broken pipe" message either


def test_relative_paths_in_a_yaml_are_relative_to_the_yaml(tmp_path: Path, llama) -> None:
    base, experts = llama
    project = tmp_path / "project"
    for folder in (base, *experts):
        shutil.copytree(folder, project / "models" / folder.name)
    config = project / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "task_arithmetic",
                "base_model": f"models/{base.name}",
                "models": [{"model": f"./models/{e.name}"} for e in experts],
            }  # fmt: skip
        )
    )
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"), "--quiet")  # run from the repository
    assert result.returncode == 0, result.stderr  # was: resolved against the working directory


def test_jobs_artifacts_lists_and_jobs_download_fetches_a_jobs_outputs(service: Service, llama, tmp_path) -> None:
    base, experts = llama
    job_id = service.submit(ta_body(str(base), [str(e) for e in experts])).json()["id"]
    assert execute_job(job_id, service.settings) == "succeeded"
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service.settings, service.dispatcher), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {"FDA_API_KEY": service.keys["acme"], "FDA_SERVER_URL": f"http://127.0.0.1:{port}"}
        listed = run_cli("jobs", "artifacts", job_id, env=env)
        assert listed.returncode == 0, listed.stderr
        artifacts = yaml.safe_load(listed.stdout)
        weights = next(a for a in artifacts if a["path"] == "model.safetensors")
        fetched = run_cli("jobs", "download", job_id, "--out", str(tmp_path / "dl"), env=env)
        assert fetched.returncode == 0, fetched.stderr
        content = (tmp_path / "dl" / "model.safetensors").read_bytes()
        assert hashlib.sha256(content).hexdigest() == weights["sha256"]
        assert {a["path"] for a in artifacts} == {
            p.relative_to(tmp_path / "dl").as_posix() for p in (tmp_path / "dl").rglob("*") if p.is_file()
        }
        missing = run_cli("jobs", "download", job_id, "--out", str(tmp_path / "x"), "--path", "nope", env=env)
        assert missing.returncode == 2 and "no artifact 'nope'" in missing.stderr
    finally:
        server.should_exit = True
        thread.join(timeout=10)
