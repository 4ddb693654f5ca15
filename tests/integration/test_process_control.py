"""Processes as an operator meets them: every role refuses a database at another schema, SIGTERM on
`fdamerge up` stops every process it started (their children too), and SIGTERM on `fdamerge merge`
leaves no hidden staging folder."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from service.migrate import SchemaMismatch, expected_revision, upgrade
from service.queue import RecordingDispatcher
from service.settings import Settings
from tests.support.cli import REPO
from tests.support.services import free_port


def start_roles(roles: list[str], database_url: str) -> dict[str, subprocess.CompletedProcess]:
    """Each role started at once (they are independent; one after another they took twice as long)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FDA_DATABASE_URL": database_url, "FDA_BROKER_URL": "memory://"}
    started = {}
    for role in roles:
        command = [sys.executable, "-m", "cli.main", role, *(["--port", str(free_port())] if role == "api" else [])]
        started[role] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
    finished = {}
    try:
        for role, process in started.items():
            try:
                stdout, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"fdamerge {role} started on a database at another schema") from None
            finished[role] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        for process in started.values():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    return finished


@pytest.mark.parametrize("revision", [None, "0004"])
def test_every_role_refuses_to_start_on_a_database_at_another_schema(revision: str | None, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    if revision:
        upgrade(url, revision)
    for role, started in start_roles(["api", "worker", "beat", "webhooks"], url).items():
        assert started.returncode == 2, (role, started.stdout, started.stderr[-2000:])
        assert "fdamerge migrate" in started.stderr and expected_revision() in started.stderr, started.stderr
        assert (revision or "no fda-merge schema") in started.stderr
    with pytest.raises(SchemaMismatch), TestClient(create_app(Settings(database_url=url), RecordingDispatcher())):
        pass  # an API served some other way (uvicorn api.app:create_app) refuses too, at its lifespan start
    if revision is None:  # refused, not migrated as a side effect
        with sqlite3.connect(tmp_path / "jobs.db") as db:
            assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


FAKE_ROLE = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])  # as a Celery worker's pool process: the role's own child
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(300)
"""

LAUNCH_UP = """
import sys
import cli.service_commands as roles
fake = [sys.executable, {fake!r}, {pids!r}]
roles.worker_command = roles.beat_command = roles.webhooks_command = lambda *a: list(fake)
from cli.main import main
sys.exit(main(["up", "--no-demo", "--port", {port!r}]))
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (nobody reaped it yet)


def test_sigterm_on_up_stops_every_process_it_started_and_their_children(tmp_path: Path) -> None:
    (tmp_path / "fake_role.py").write_text(FAKE_ROLE)
    pids = tmp_path / "pids"
    port = free_port()
    launcher = tmp_path / "launch_up.py"
    launcher.write_text(LAUNCH_UP.format(fake=str(tmp_path / "fake_role.py"), pids=str(pids), port=str(port)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name in ("FDA_DATABASE_URL", "FDA_BROKER_URL", "FDA_STORAGE_URL"):
        env.pop(name, None)
    up = subprocess.Popen(
        [sys.executable, str(launcher)], cwd=tmp_path, env=env, stdout=open(tmp_path / "up.log", "w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    started: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            lines = pids.read_text().splitlines() if pids.exists() else []
            with contextlib.suppress(httpx.HTTPError):
                if len(lines) == 3 and httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            time.sleep(0.2)
        started = [int(pid) for line in lines for pid in line.split()]
        assert all(alive(pid) for pid in started)
        os.kill(up.pid, signal.SIGTERM)  # `up` alone, as systemd or docker stop would (not its group)
        assert up.wait(timeout=60) != 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in started if alive(pid)] == [], (tmp_path / "up.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


SLOW_FDA = {"anchors": 8, "construction_steps": 400, "tolerance": 0.0, "patience": 400, "adaptation_epochs": 2}


def test_sigterm_on_merge_removes_its_staging_folder(llama, tmp_path: Path) -> None:
    base, experts = llama
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "method": "fda", "base_model": str(base), "models": [{"model": str(e)} for e in experts],
        "parameters": SLOW_FDA,
    }))  # fmt: skip
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    merge = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "merge", str(config), "--out", str(out), "--quiet"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.partial-*")):
            assert merge.poll() is None and time.monotonic() < deadline, merge.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # into the merge itself
        merge.send_signal(signal.SIGTERM)
        _, stderr = merge.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            merge.kill()
    assert merge.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopped; no output written" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yaml"]  # no out, no .out.partial-…
