"""Task arithmetic and its sparsified / sign-elected variants (TIES, DARE, Breadcrumbs).

θ = θ0 + λ · merge(w₁τ̂₁, …, w_Nτ̂_N), where τ̂ᵢ is the sparsified task vector and merge is
a sum (optionally divided by Σw) or TIES' disjoint mean over the entries that agree with the
elected sign γ = sign(Σ wᵢτ̂ᵢ). Semantics follow mergekit 0.1.5 so its YAML files merge the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field

from fda_core.methods.base import ModelParams, Params, broadcast_weights


class ScaledParams(Params):
    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = False


class DensityModelParams(ModelParams):
    density: float = Field(1.0, ge=0.0, le=1.0)


def weighted_sum(
    base: torch.Tensor, deltas: Iterable[torch.Tensor], weights: torch.Tensor, params: ScaledParams
) -> torch.Tensor:
    """θ0 + λ·Σ wᵢτᵢ (÷ Σ wᵢ when normalising).

    `deltas` are fresh tensors, consumed in place; pass a generator so one τᵢ exists at a time.
    """
    divisor = float(weights.sum()) if params.normalize else 1.0
    scale = params.lambda_ / (divisor if abs(divisor) >= 1e-8 else 1.0)
    mixed: torch.Tensor | None = None
    for delta, weight in zip(deltas, weights.tolist()):
        if mixed is None:
            mixed = delta.mul_(weight)
        else:
            mixed.add_(delta, alpha=weight)
    assert mixed is not None
    if scale != 1:
        mixed.mul_(scale)
    return mixed.add_(base)


def sign_elected_sum(
    base: torch.Tensor, deltas: list[torch.Tensor], weights: torch.Tensor, params: ScaledParams
) -> torch.Tensor:
    """TIES' elect + disjoint merge: keep entries whose sign agrees with sign(Σ wᵢτ̂ᵢ)."""
    weighted = torch.stack(deltas)  # (N, …)
    w = broadcast_weights(weights, weighted)
    weighted.mul_(w)
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)  # γ, (…)
    agrees = weighted.sign() == elected  # (N, …); zeros never agree
    mixed = (weighted * agrees).sum(dim=0)
    if params.normalize:
        divisor = (w * agrees).sum(dim=0)
        divisor[divisor == 0] = 1
        mixed.div_(divisor)
    if params.lambda_ != 1:
        mixed.mul_(params.lambda_)
    return base + mixed
