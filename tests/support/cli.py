"""Run `fdamerge` as a user would: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli.main", *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=300)


def write_config(path: Path, method: str, base: Path | None, experts: list[Path], **fields) -> Path:
    doc = {
        "method": method,
        "base_model": str(base) if base else None,
        "models": [{"model": str(e)} for e in experts],
        **fields,
    }
    path.write_text(yaml.safe_dump(doc))
    return path
