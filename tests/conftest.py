"""Shared fixtures: tiny model families, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.support.tiny_models import make_family  # noqa: E402


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Path]]]:
    root = tmp_path_factory.mktemp("models")
    return {family: make_family(root, family) for family in ("bert", "gpt2", "llama", "vit")}


@pytest.fixture(scope="session")
def llama(families) -> tuple[Path, list[Path]]:
    return families["llama"]
