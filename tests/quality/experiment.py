"""The multi-domain merge experiment: pretrain an MLP trunk, fine-tune one expert per domain, merge.

Merged trunks are scored with each task's own expert head. Checkpoints go through the product's
own path: fda_mlp safetensors folders merged by `run_merge`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fda_core.config import parse_config
from fda_core.fda.mlp import MLPStack
from fda_core.merge.run import MergeOptions, MergeResult, run_merge
from tests.quality.domains import Task, expert_tasks, pretraining_task

SIZES = [64, 128, 128]
CLASSES = 10
FDA_SETTINGS = {  # Eq. 5 (and Eq. 6 from TA) with the paper's elementwise coefficients: what this benchmark measures
    "init": "pretrained",
    "coefficients": "elementwise",
    "anchors": 64,
    "construction_steps": 1200,
    "patience": 100,
    "tolerance": 1e-3,
    "adaptation_lr": 1e-3,
    "adaptation_epochs": 100,
}


def _fit(
    params: list[torch.Tensor],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    task: Task,
    epochs: int,
    lr: float,
    seed: int,
) -> None:
    x, y = task.split("train")
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=generator).split(32):
            optimiser.zero_grad()
            loss_of(x[index], y[index]).backward()
            optimiser.step()


def pretrain(seed: int) -> MLPStack:
    torch.manual_seed(seed)
    trunk, head = MLPStack(SIZES), torch.nn.Linear(SIZES[-1], CLASSES)
    _fit(
        [*trunk.parameters(), *head.parameters()],
        lambda x, y: F.cross_entropy(head(trunk(x)), y),
        pretraining_task(seed),
        15,
        2e-3,
        seed,
    )
    return trunk


def finetune(pretrained: MLPStack, task: Task, seed: int) -> tuple[MLPStack, torch.nn.Linear]:
    """Linear probe on the frozen trunk, then trunk and head together."""
    torch.manual_seed(seed)
    trunk = MLPStack(SIZES)
    trunk.load_state_dict(pretrained.state_dict())
    head = torch.nn.Linear(SIZES[-1], CLASSES)
    with torch.no_grad():
        features = trunk(task.x)
    probe_task = Task(task.name, features, task.y)
    _fit(list(head.parameters()), lambda f, y: F.cross_entropy(head(f), y), probe_task, 20, 1e-2, seed)
    _fit(
        [*trunk.parameters(), *head.parameters()], lambda x, y: F.cross_entropy(head(trunk(x)), y), task, 10, 1e-3, seed
    )
    return trunk, head


def accuracy(trunk_state: dict[str, torch.Tensor], head: torch.nn.Linear, task: Task, part: str) -> float:
    trunk = MLPStack(SIZES)
    trunk.load_state_dict(trunk_state)
    x, y = task.split(part)
    with torch.no_grad():
        return float((head(trunk(x)).argmax(dim=1) == y).float().mean())


def save_trunk(trunk: MLPStack, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "fda_mlp", "layer_sizes": SIZES, "activation": "gelu"})
    )
    save_file({k: v.detach().contiguous() for k, v in trunk.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


class Experiment:
    """One seed: a pretrained trunk, four experts with their heads, and merges scored on every task."""

    def __init__(self, seed: int, workdir: Path) -> None:
        self.seed, self.workdir = seed, workdir
        self.tasks = expert_tasks(seed)
        pretrained = pretrain(seed)
        self.base = save_trunk(pretrained, workdir / "base")
        self.heads: list[torch.nn.Linear] = []
        self.experts: list[Path] = []
        self.expert_accuracy = []
        for task in self.tasks:
            trunk, head = finetune(pretrained, task, seed)
            self.heads.append(head)
            self.experts.append(save_trunk(trunk, workdir / f"expert-{task.name}"))
            self.expert_accuracy.append(accuracy(trunk.state_dict(), head, task, "test"))

    def merge(self, name: str, method: str, parameters: dict[str, Any], cache: bool = True) -> tuple[Path, MergeResult]:
        config = {
            "method": method,
            "base_model": str(self.base),
            "models": [{"model": str(e)} for e in self.experts],
            "parameters": parameters,
            "seed": self.seed,
        }
        out = self.workdir / f"merged-{name}"
        options = MergeOptions(anchor_cache=self.workdir / "anchor-cache" if cache else None)
        return out, run_merge(parse_config(config), out, options)

    def scores(self, merged: Path, part: str = "test") -> list[float]:
        state = load_file(str(merged / "model.safetensors"))
        return [accuracy(state, head, task, part) for head, task in zip(self.heads, self.tasks)]
