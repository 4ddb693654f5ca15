"""Model Stock (Jang et al., 2024): interpolate the experts' mean towards the base.

c = mean pairwise cos(τᵢ, τⱼ), t = N·c / (1 + (N−1)·c), θ = t·mean(θᵢ) + (1−t)·θ0, per tensor.
For c ≤ 0 (experts pulling apart) t is 0: the formula would extrapolate away from the experts.
"""

from __future__ import annotations

import itertools

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register

EPS = 1e-8


def mean_pairwise_cosine(taus: list[torch.Tensor]) -> float:
    flat = [tau.reshape(-1) for tau in taus]
    cosines = [
        float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(EPS)) for a, b in itertools.combinations(flat, 2)
    ]
    return sum(cosines) / len(cosines)


@register
class ModelStock(MergeMethod):
    name = "model_stock"
    reference_url = "https://arxiv.org/abs/2403.19522"
    min_models = 2

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None
        n = len(inputs.experts)
        c = mean_pairwise_cosine(inputs.task_vectors())
        t = min(1.0, max(0.0, n * c / (1 + (n - 1) * c))) if c > 0 else 0.0  # disagreeing experts: stay at the base
        average = torch.stack(inputs.experts).mean(dim=0)
        return t * average + (1 - t) * inputs.base
