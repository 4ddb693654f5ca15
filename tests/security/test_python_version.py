"""One supported Python, declared once and kept equal everywhere it is stated (the README promised
3.10 while the code needs 3.11: datetime.UTC)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fda_core", "service", "api", "worker", "cli", "fdamerge_client", "migrations")


def declared() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.fullmatch(r">=(\d+)\.(\d+)", spec).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def test_pyproject_readme_tools_and_setup_state_the_same_python() -> None:
    major, minor = declared()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert project["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    readme = (ROOT / "README.md").read_text()
    assert f"Python {major}.{minor}+" in readme and not re.search(rf"Python 3\.(?!{minor})\d+\+", readme)
    assert f"sys.version_info >= ({major}, {minor})" in (ROOT / "scripts" / "setup.sh").read_text()
    assert sys.version_info >= (major, minor)  # and this run is on a supported one


def test_every_module_parses_as_the_oldest_supported_python() -> None:
    version = declared()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            ast.parse(path.read_text(), filename=str(path), feature_version=version)
