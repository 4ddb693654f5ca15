"""RAM and RAM+ (Reinforced Agent Merging, 2026; mergekit's ram / ramplus_tl, tensor-local).

An expert contributes to an entry where |τᵢ| > ε. RAM: each entry is the mean of the contributing τᵢ (a lone
contributor's value, unshrunk; 0 where none contributes). RAM+ also scales each expert's lone contributions
by λᵢ = 1 + r · clamp(ρᵢ, 0, α), ρᵢ = (its shared entries) / max(its lone entries, ε), counted in the tensor.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.methods.base import MergeMethod, Params, TensorInputs, stack
from fda_core.methods.registry import register


class RamParams(Params):
    epsilon: float = Field(1e-5, ge=0.0)


class RamPlusParams(RamParams):
    epsilon: float = Field(1e-5, gt=0.0)  # mergekit allows 0: an expert without entries makes the tensor NaN
    r: float = 0.1
    alpha: float = 0.2


def contributions(inputs: TensorInputs, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, n) flattened τ zeroed where it does not contribute, (N, n) its mask, (n,) contributors per entry."""
    taus = stack(inputs.task_vectors()).reshape(len(inputs.experts), -1)  # (N, n)
    contributes = taus.abs() > epsilon
    return taus.mul_(contributes), contributes, contributes.sum(dim=0)


def ram_delta(taus: torch.Tensor, counts: torch.Tensor, lone_scale: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) Σᵢ τᵢ / count on shared entries, plus Σᵢ (lone_scaleᵢ ·) τᵢ on entries with one contributor."""
    lone = counts == 1  # (n,)
    shared = taus * (counts > 1) / counts.clamp(min=1)
    alone = taus * lone if lone_scale is None else taus * lone * lone_scale[:, None]
    return (alone + shared).sum(dim=0)


@register
class Ram(MergeMethod):
    name = "ram"
    reference_url = "https://arxiv.org/abs/2601.13572"
    params_type = RamParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, RamParams)
        taus, _, counts = contributions(inputs, inputs.params.epsilon)
        return inputs.base + ram_delta(taus, counts).reshape(inputs.base.shape)


@register
class RamPlusTl(MergeMethod):
    name = "ramplus_tl"
    reference_url = "https://arxiv.org/abs/2601.13572"
    params_type = RamPlusParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, RamPlusParams)
        p = inputs.params
        taus, contributes, counts = contributions(inputs, p.epsilon)
        shared_entries = (contributes & (counts > 1)).sum(dim=1)  # (N,)
        lone_entries = (contributes & (counts == 1)).sum(dim=1)
        rho = shared_entries / lone_entries.clamp(min=p.epsilon)
        scale = 1 + p.r * rho.clamp(min=0, max=p.alpha)  # (N,) λᵢ
        return inputs.base + ram_delta(taus, counts, scale.to(taus.dtype)).reshape(inputs.base.shape)
