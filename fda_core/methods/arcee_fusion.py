"""Arcee Fusion (mergekit's arcee_fusion): take the other model's change only where it matters most.

importance = |τ| · KL(softmax(θ1) ‖ softmax(θ0)) per row (softmax over the last dim, +1e-8); keep τ where the
importance reaches median + 1.5·IQR of the tensor's importances (quantiles at index ⌊q(n−1)⌋ of the sorted
values; over a 1,000,000-entry sample drawn with replacement for larger tensors, as mergekit).
θ = θ0 + τ · [importance ≥ threshold].
"""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register

SAMPLE_SIZE = 1_000_000
EPS = 1e-8


def importance(other: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(…) |θ1 − θ0| times the row's KL divergence between the two softmaxes."""
    p = torch.softmax(other, dim=-1).add_(EPS)
    q = torch.softmax(base, dim=-1).add_(EPS)
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)  # (…, 1)
    return (other - base).abs_().mul_(kl)


def outlier_threshold(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """median + 1.5·(q3 − q1) of `scores`, from a sample of SAMPLE_SIZE entries when there are more."""
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        flat = flat[torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=generator, device=flat.device)]
    last = flat.numel() - 1
    q1, median, q3 = (torch.kthvalue(flat, index + 1).values for index in (last // 4, last // 2, 3 * last // 4))
    return median + 1.5 * (q3 - q1)


@register
class ArceeFusion(MergeMethod):
    name = "arcee_fusion"
    reference_url = "https://arcee.ai"
    min_models = 1
    max_models = 1
    uses_randomness = True  # the quantile sample of tensors over SAMPLE_SIZE entries

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None
        base, other = inputs.base, inputs.experts[0]
        scores = importance(other, base)
        keep = scores >= outlier_threshold(scores, inputs.generator)
        return base + (other - base) * keep
