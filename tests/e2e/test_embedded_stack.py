"""`fdamerge up` on a laptop: one command, then `fdamerge submit --wait` merges local folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from fdamerge_client import Client
from tests.integration.test_merge_cli import load_with_transformers
from tests.support.cli import REPO
from tests.support.services import free_port

UP_DEADLINE = 180  # s: migrations, the API and two Celery workers, each importing torch, on 2 loaded cores


def start_up(workdir: Path, port: int, allow: Sequence[Path] = ()) -> tuple[subprocess.Popen, str]:
    """`fdamerge up` in workdir (its own cache too: nothing depends on what an earlier test built); its
    key may merge from workdir and the folders in `allow`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FDA_CACHE_DIR": str(workdir / "cache")}
    # no test stops `up` mid-job: its stop need not wait grace + 15 s (45 s by default) for a role whose
    # warm shutdown has not ended (seen once jobs have run) before killing it
    env["FDA_SHUTDOWN_GRACE_SECONDS"] = "2"
    for name in ("FDA_DATABASE_URL", "FDA_BROKER_URL", "FDA_STORAGE_URL"):
        env.pop(name, None)  # the embedded defaults
    log = open(workdir / "up.log", "w")
    folders = [arg for folder in [workdir, *allow] for arg in ("--allow", str(folder))]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), *folders], cwd=workdir, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + UP_DEADLINE
    while time.monotonic() < deadline and process.poll() is None:
        text = (workdir / "up.log").read_text()
        keys = [line.split()[-1] for line in text.splitlines() if line.startswith("API key")]
        if keys:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return process, keys[0]
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    stop_group(process)
    raise AssertionError(f"fdamerge up did not come up:\n{(workdir / 'up.log').read_text()[-3000:]}")


@dataclass
class Up:
    workdir: Path  # its var/ (database, storage) and up.log
    port: int
    key: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def up(llama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `fdamerge up` for this module's tests (starting it is most of each test's time): none of
    them needs a fresh one — each reads only its own jobs and schedules, and the supervisor replaces
    the worker the restart test kills."""
    base, _ = llama
    workdir, port = tmp_path_factory.mktemp("up"), free_port()
    process, key = start_up(workdir, port, allow=[base.parent])
    try:
        yield Up(workdir, port, key, process)
    finally:
        stop_group(process)


def test_fdamerge_up_then_submit_wait_merges_local_checkpoints(up: Up, llama, tmp_path: Path) -> None:
    base, experts = llama
    port, key = up.port, up.key
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "method": "fda", "base_model": str(base), "models": [{"model": str(e)} for e in experts],
        "parameters": {"anchors": 4, "construction_steps": 5, "adaptation_epochs": 2},
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "FDA_API_KEY": key}
    submitted = subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", str(config), "--wait", "--server", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + (up.workdir / "up.log").read_text()[-3000:]
    job = yaml.safe_load(submitted.stdout)
    assert job["status"] == "succeeded" and job["attempt"] == 1
    load_with_transformers("llama", Path(job["result"]["output"]))
    assert Path(job["result"]["output"]).is_relative_to(up.workdir / "var" / "storage")
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(f"http://127.0.0.1:{port}/v1/merge-jobs/{job['id']}/artifacts", headers=auth).json()
    weights = next(a for a in listed["data"] if a["path"] == "model.safetensors")
    content = httpx.get(f"http://127.0.0.1:{port}{weights['download']}", headers=auth).content
    assert hashlib.sha256(content).hexdigest() == weights["sha256"] and len(content) == weights["size"]
    with Client(f"http://127.0.0.1:{port}", key) as client:  # the Python client streams and checks it too
        artifact = next(a for a in client.artifacts(job["id"]) if a.path == "model.safetensors")
        assert client.download(artifact, tmp_path / "dl" / "model.safetensors").read_bytes() == content
    server = ["--server", f"http://127.0.0.1:{port}"]
    made = subprocess.run(
        [sys.executable, "-m", "cli.main", "schedules", "create", "nightly", "0 2 * * *", str(config), *server],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    schedule_id = yaml.safe_load(made.stdout)["id"]
    fired = subprocess.run(
        [sys.executable, "-m", "cli.main", "schedules", "trigger", schedule_id, *server],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert fired.returncode == 0, fired.stderr
    with Client(f"http://127.0.0.1:{port}", key) as client:
        run = client.wait(yaml.safe_load(fired.stdout)["id"], timeout=240, poll=0.5)
        assert run.status == "succeeded" and run.metadata == {"schedule": "nightly"}


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to `fdamerge up` and its workers, then SIGKILL to anything of the group still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass  # killed below; a slow shutdown is not the test's failure
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_log(workdir: Path, *patterns: str, timeout: float = UP_DEADLINE) -> None:
    """Until every regex matches in up.log (e.g. the control worker and its beat have started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (workdir / "up.log").read_text()
        if all(re.search(pattern, text) for pattern in patterns):
            return
        time.sleep(0.5)
    raise AssertionError(f"not in up.log after {timeout} s: {patterns}\n{text[-3000:]}")


def test_the_running_scheduler_fires_a_due_schedule_on_time(up: Up, llama) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from service.db import session_scope
    from service.models import MergeJob, Schedule

    base, experts = llama
    port, key = up.port, up.key
    wait_for_log(up.workdir, r"beat: Starting", r"control@\S+ ready\.")  # the tick runs from here on
    template = {"method": "linear", "base_model": str(base), "models": [{"model": str(e)} for e in experts]}
    with Client(f"http://127.0.0.1:{port}", key) as client:
        schedule = client.create_schedule("soon", "0 2 * * *", template)
        fire = datetime.now(UTC) + timedelta(seconds=3)
        database = f"sqlite:///{up.workdir / 'var' / 'fdamerge.db'}"
        with session_scope(database) as session:  # due in 3 s instead of at 02:00
            session.execute(update(Schedule).where(Schedule.id == schedule["id"]).values(next_fire_at=fire))
        deadline = time.monotonic() + 90
        while not client.schedule(schedule["id"])["recent_runs"] and time.monotonic() < deadline:
            time.sleep(1)
        [run] = client.schedule(schedule["id"])["recent_runs"]
        assert client.wait(run["id"], timeout=120, poll=0.5).status == "succeeded"
    with session_scope(database) as session:
        job = session.get_one(MergeJob, run["id"])
    assert abs((job.fire_time - fire).total_seconds()) < 0.01
    assert timedelta(0) <= job.created_at - fire < timedelta(seconds=60)  # within cron's resolution (tick: 15 s)


def test_fdamerge_up_restarts_a_worker_that_dies(up: Up) -> None:
    import psutil

    def merge_workers() -> list:
        found = []
        for child in psutil.Process(up.process.pid).children():
            try:
                if "merge@" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except psutil.Error:  # gone, or a zombie not yet reaped by the supervisor
                continue
        return found

    logged = len((up.workdir / "up.log").read_text())
    [first] = merge_workers()
    first.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [p.pid for p in merge_workers()] in ([], [first.pid]):
        time.sleep(0.5)
    [second] = merge_workers()
    assert second.pid != first.pid and "restarting" in (up.workdir / "up.log").read_text()[logged:]
    deadline = time.monotonic() + UP_DEADLINE  # … and it comes up: a worker stopped while still starting
    while not re.search(r"merge@\S+ ready\.", (up.workdir / "up.log").read_text()[logged:]):  # held up 45 s
        assert time.monotonic() < deadline, "the restarted merge worker never became ready"
        time.sleep(0.5)
