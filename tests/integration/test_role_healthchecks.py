"""Health checks per role (issue 12): the Dockerfile and every long-running compose service check with
`fdamerge healthcheck`, which reads the role's own health file (workers and beat serve no port 8000),
and that command answers 0 only while the role here is alive: a real merge worker keeps its file fresh,
a killed or wedged one (stale file) and an API whose /healthz does not answer fail it."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.main import main
from service import health
from service.migrate import upgrade
from tests.support.cli import REPO

ROLES = ("api", "worker", "beat", "webhooks")
CHECK = ["CMD", "fdamerge", "healthcheck"]


def test_the_dockerfile_and_every_long_running_compose_role_check_with_fdamerge_healthcheck() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for role in ROLES:
        assert services[role]["healthcheck"]["test"] == CHECK, role
        assert "8000" not in json.dumps(services[role]["healthcheck"]), role
    assert services["migrate"]["healthcheck"] == {"disable": True}  # one-shot: no health file, no check
    healthchecks = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("HEALTHCHECK")]
    assert len(healthchecks) == 1 and healthchecks[0].endswith('CMD ["fdamerge", "healthcheck"]'), healthchecks
    assert "8000" not in healthchecks[0] and "curl" not in healthchecks[0]


@pytest.fixture
def health_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "health"
    monkeypatch.setenv("FDA_HEALTH_DIR", str(folder))
    return folder


def healthcheck() -> int:
    return main(["healthcheck"])


def test_a_real_merge_worker_passes_the_check_while_alive_and_fails_it_once_killed(
    health_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    assert healthcheck() == 1  # nothing runs here yet
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FDA_DATABASE_URL": url,
        "FDA_BROKER_URL": "memory://", "FDA_HEALTH_DIR": str(health_dir),
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(health_dir.glob("*.json")):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker wrote no health file"
            time.sleep(0.1)
        assert healthcheck() == 0
        [written] = health_dir.glob("*.json")
        os.utime(written, (time.time() - health.STALE_SECONDS - 5,) * 2)  # wedged: its timer stopped touching it
        assert healthcheck() == 1
        health.touch(written.stem, pid=worker.pid)  # fresh again (as its timer does)
        assert healthcheck() == 0
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert healthcheck() == 1  # its file is fresh, but its process is gone


@pytest.fixture
def healthz() -> Iterator[tuple[int, list[int]]]:
    """A stand-in API: (port, [the status /healthz answers])."""
    answer = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], answer
    server.shutdown()
    server.server_close()


def test_the_api_passes_the_check_only_while_its_healthz_answers(health_dir: Path, healthz) -> None:
    port, answer = healthz
    health.touch("api", port=port)  # as `fdamerge api` does (health.keep_fresh), from this live process
    assert healthcheck() == 0
    answer[0] = 503
    assert healthcheck() == 1
    health.touch("api", port=port + 1 if port < 65535 else port - 1)  # nobody listens there
    assert healthcheck() == 1
