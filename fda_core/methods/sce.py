"""SCE (Wan et al., 2024, FuseChat): Select by variance, Calculate weights by energy, Erase minority signs.

S: keep the ⌊select_topk · #nonzero⌋ positions where the experts' τ vary most (population variance over
experts). C: wᵢ = mean(τᵢ²) / Σⱼ mean(τⱼ²) (uniform when Σ < 1e-6, as mergekit). E: keep the entries whose
sign agrees with sign(Σ τᵢ). θ = θ0 + Σ wᵢ mᵢ τᵢ / max(Σ wᵢ mᵢ, 1e-6). Semantics of mergekit 0.1.5.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.methods.base import MergeMethod, Params, TensorInputs, broadcast_weights, stack
from fda_core.methods.registry import register
from fda_core.methods.sparsify import smallest

UNIFORM_BELOW = 1e-6  # mergekit: Σ mean(τᵢ²) under this gives every expert the same weight
MIN_DIVISOR = 1e-6


class SceParams(Params):
    select_topk: float = Field(1.0, ge=0.0, le=1.0)


def variance_mask(taus: torch.Tensor, fraction: float) -> torch.Tensor:
    """(…) True on the ⌊fraction · #nonzero⌋ positions of largest variance across experts (taus: (N, …))."""
    variance = taus.var(dim=0, unbiased=False)  # (…)
    k = int(int(torch.count_nonzero(variance)) * fraction)
    return ~smallest(variance, variance.numel() - k)


def energy_weights(taus: torch.Tensor) -> torch.Tensor:
    """(N,) each expert's mean squared τ, normalised to sum to 1."""
    energy = taus.square().reshape(taus.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < UNIFORM_BELOW:
        return torch.full_like(energy, 1 / taus.shape[0])
    return energy / total


@register
class Sce(MergeMethod):
    name = "sce"
    reference_url = "https://arxiv.org/abs/2408.07990"
    params_type = SceParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, SceParams)
        taus = stack(inputs.task_vectors())  # (N, …)
        if inputs.params.select_topk < 1:
            taus.mul_(variance_mask(taus, inputs.params.select_topk))
        elected = torch.where(taus.sum(dim=0) >= 0, 1.0, -1.0).to(taus.dtype)  # (…) unweighted vote
        kept = broadcast_weights(energy_weights(taus), taus) * (taus.sign() == elected)  # (N, …) wᵢ·mᵢ
        merged = (taus * kept).sum(dim=0) / kept.sum(dim=0).clamp_min(MIN_DIVISOR)
        return merged.add_(inputs.base)
