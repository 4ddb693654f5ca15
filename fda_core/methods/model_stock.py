"""Model Stock (Jang et al., 2024): interpolate the experts' mean towards the base, as mergekit 0.1.5 does.

c = mean pairwise cos(τᵢ, τⱼ), t = N·c / (1 + (N−1)·c), θ = t·mean(θᵢ) + (1−t)·θ0, per tensor or, with
`filter_wise`, per filter (each row along the last dim). t is not clamped: experts that pull apart (c < 0) give
t < 0, an extrapolation away from their mean. Only where 1 + (N−1)·c ≈ 0, which has no finite t, the base is kept.
"""

from __future__ import annotations

import itertools

import torch

from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register

NORM_FLOOR = 1e-6  # mergekit's floor on ‖τᵢ‖·‖τⱼ‖
SINGULAR = 1e-6  # |1 + (N−1)·c| below this: no finite t


class ModelStockParams(Params):
    filter_wise: bool = False


def as_filters(tensor: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """(…, d) → (rows, d): one row per filter, or the whole tensor as one row."""
    if not filter_wise:
        return tensor.reshape(1, -1)
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() else tensor.reshape(1, 1)


def mean_pairwise_cosine(taus: list[torch.Tensor]) -> torch.Tensor:
    """(rows, 1): each row's cosine between every pair of the N (rows, d) task vectors, averaged."""
    cosines = [
        ((a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(NORM_FLOOR)).clamp(-1, 1)
        for a, b in itertools.combinations(taus, 2)
    ]
    return torch.stack(cosines).mean(dim=0).unsqueeze(-1)


def interpolation_ratio(cosine: torch.Tensor, count: int) -> torch.Tensor:
    """t = N·c / (1 + (N−1)·c), unclamped; 0 (the base) where the denominator vanishes."""
    denominator = 1 + (count - 1) * cosine
    singular = denominator.abs() < SINGULAR
    ratio = count * cosine / torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(ratio), ratio)


@register
class ModelStock(MergeMethod):
    name = "model_stock"
    reference_url = "https://arxiv.org/abs/2403.19522"
    params_type = ModelStockParams
    min_models = 2

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, ModelStockParams)
        filter_wise = inputs.params.filter_wise
        base = as_filters(inputs.base, filter_wise)  # (rows, d)
        experts = [as_filters(expert, filter_wise) for expert in inputs.experts]  # N × (rows, d)
        t = interpolation_ratio(mean_pairwise_cosine([expert - base for expert in experts]), len(experts))
        average = torch.stack(experts).mean(dim=0)
        return (t * average + (1 - t) * base).reshape(inputs.base.shape)
