"""--device: CUDA merges equal CPU merges where a GPU exists; a clear error where none does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli.main import main as fdamerge
from tests.support.cli import run_cli, write_config
from tests.support.compare import load_tensors, max_abs_difference


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error_before_any_work(llama, tmp_path: Path) -> None:
    base, experts = llama
    result = run_cli(
        "merge",
        str(write_config(tmp_path / "c.yaml", "ties", base, experts)),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cuda",
    )
    assert result.returncode == 2
    assert "device 'cuda' requested but CUDA is not available here; use --device cpu" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU smoke test)")
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "tsv", "iso_c"])
def test_cuda_merge_matches_cpu(method: str, llama, tmp_path: Path) -> None:
    base, experts = llama
    config = write_config(tmp_path / "c.yaml", method, base, experts, seed=3)
    for device in ("cpu", "cuda"):
        assert fdamerge(["merge", str(config), "--out", str(tmp_path / device), "--device", device, "--quiet"]) == 0
    differences = max_abs_difference(load_tensors(tmp_path / "cpu"), load_tensors(tmp_path / "cuda"))
    if method == "dare_ties":  # CPU and CUDA generators draw different masks from the same seed
        assert set(differences) == set(load_tensors(base))
    else:
        assert max(differences.values()) <= 1e-4
