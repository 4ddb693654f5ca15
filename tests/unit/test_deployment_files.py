"""docker-compose.yml and the Dockerfile, validated offline (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import compose
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"  # the binary itself: the pip wrapper always exits 0


def compose_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMPOSE), "-f", str(path), "config", "-q"], capture_output=True, text=True)


def test_compose_file_is_valid_and_has_every_role(tmp_path: Path) -> None:
    checked = compose_config(REPO / "docker-compose.yml")
    assert checked.returncode == 0, checked.stderr
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {"api", "worker", "beat", "migrate", "postgres", "redis", "s3", "buckets"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert [services[role]["command"][0] for role in ("api", "worker", "beat", "migrate")] == [
        "api", "worker", "beat", "migrate"
    ]  # fmt: skip
    broken = tmp_path / "broken.yml"
    broken.write_text((REPO / "docker-compose.yml").read_text().replace("condition: service_healthy", "condition: 7"))
    assert compose_config(broken).returncode != 0  # the validator does reject a bad file


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    linted = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
