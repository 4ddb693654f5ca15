"""Write the merge as a PEFT LoRA adapter of a chosen rank: per 2-D weight, the truncated SVD of its
merged task vector τ = θ_merged − θ_base ≈ B·A (B = U_r·S_r, A = V_rᵀ, lora_alpha = r so the scale is 1),
as `mergekit-extract-lora` does. Embeddings, the head and 1-D tensors (norms, biases) have no LoRA form
here and are left out; how much of τ that drops, and the SVD's own residual, are reported as warnings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fda_core.checkpoints.writer import OutputTensor
from fda_core.linalg import thin_svd
from fda_core.merge.plan import MergePlan, TensorTask

ADAPTER_PREFIX = "base_model.model."
NOT_LINEAR = ("embed_tokens", "lm_head", "wte", "wpe", "embeddings", "embed_positions", "shared")


def is_lora_target(task: TensorTask) -> bool:
    name = task.name
    return (
        task.merged
        and len(task.output.shape) == 2
        and name.endswith(".weight")
        and not any(part in NOT_LINEAR for part in name.split("."))
    )


def lora_outputs(tasks: list[TensorTask], rank: int) -> list[OutputTensor]:
    """lora_A (r, in) and lora_B (out, r) of every target, in task order."""
    outputs = []
    for task in tasks:
        if is_lora_target(task):
            rows, cols = task.output.shape
            r = min(rank, rows, cols)
            module = ADAPTER_PREFIX + task.name.removesuffix(".weight")
            outputs.append(OutputTensor(f"{module}.lora_A.weight", task.output.dtype, (r, cols)))
            outputs.append(OutputTensor(f"{module}.lora_B.weight", task.output.dtype, (rows, r)))
    return outputs


@dataclass
class LoraExtraction:
    """Running totals of what the adapter keeps of the merged task vector."""

    rank: int
    kept: float = 0.0  # Σ ‖B·A‖² over targets
    residual: float = 0.0  # Σ ‖τ − B·A‖²
    dropped: float = 0.0  # Σ ‖τ‖² of tensors with no LoRA form
    modules: set[str] = field(default_factory=set)

    def factors(self, task: TensorTask, merged: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau = merged.double() - base.double()  # (out, in)
        u, s, vh = thin_svd(tau)
        r = min(self.rank, *tau.shape)
        b, a = u[:, :r] * s[:r], vh[:r]  # (out, r), (r, in)
        self.kept += float((s[:r] ** 2).sum())
        self.residual += float((s[r:] ** 2).sum())
        self.modules.add(task.name.removesuffix(".weight").rsplit(".", 1)[-1])
        return a, b

    def skip(self, merged: torch.Tensor, base: torch.Tensor) -> None:
        self.dropped += float(((merged.double() - base.double()) ** 2).sum())

    def warnings(self) -> list[str]:
        total = self.kept + self.residual + self.dropped
        if total == 0:
            return ["the merged task vector is zero: the adapter changes nothing"]
        return [
            f"LoRA rank {self.rank}: the adapter keeps {math.sqrt(self.kept / total):.1%} of the merged task vector's"
            f" norm (SVD residual {math.sqrt(self.residual / total):.1%}, tensors without a LoRA form"
            f" {math.sqrt(self.dropped / total):.1%})"
        ]


def write_adapter_config(plan: MergePlan, directory: Path, extraction: LoraExtraction) -> None:
    config: dict[str, object] = {
        "peft_type": "LORA",
        "base_model_name_or_path": plan.config.base_model,
        "r": extraction.rank,
        "lora_alpha": extraction.rank,  # scale 1: B·A is the task vector
        "target_modules": sorted(extraction.modules),
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
