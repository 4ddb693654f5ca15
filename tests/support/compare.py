"""Read whole safetensors outputs for comparisons in tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def load_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert set(a) == set(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    return {name: float((a[name].double() - b[name].double()).abs().max()) if a[name].numel() else 0.0 for name in a}
