"""DELLA (Deep et al., 2024): MagPrune, a random drop whose keep probability rises with |τ|'s rank, then TIES.

Within each row (ranked along dim 1; a 1-D tensor is one row) the entry of rank r ∈ {0 … n−1} (0 = smallest
|τ|) is kept with probability p = (density − ε) + 2ε · r/(n − 1); the kept τ is rescaled to τ's L1 norm
(`rescale: l1`, mergekit's rescale), then merged by TIES' sign election and disjoint mean (`della`) or
summed as in task arithmetic (`della_linear`). θ = θ0 + λ · merge. Semantics of mergekit 0.1.5.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from fda_core.errors import ConfigError
from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.sparsify import rescale
from fda_core.methods.task_arithmetic_core import DensityModelParams, ScaledParams, sign_elected_sum, weighted_sum


class RescaledParams(ScaledParams):
    """Method-wide: λ, normalize, and whether a sparsified τ is scaled back to its L1 norm."""

    rescale: Literal["l1", "none"] = "l1"


class DellaParams(RescaledParams):
    normalize: bool = True


class DellaModelParams(DensityModelParams):
    epsilon: float = 0.15


def magprune_probabilities(tau: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """(…) float32 keep probabilities: density ∓ ε from the smallest to the largest |τ| of each row."""
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau  # (R, n, …), ranked along dim 1
    n = rows.shape[1]
    if n == 1:  # one entry per row: no ranks, keep it with probability density (mergekit fails here)
        return torch.full(tau.shape, density, dtype=torch.float32, device=tau.device)
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    positions = torch.arange(n, dtype=torch.float32, device=tau.device)
    positions = positions.reshape(1, n, *([1] * (rows.dim() - 2))).expand(order.shape)
    ranks = torch.empty(order.shape, dtype=torch.float32, device=tau.device).scatter_(1, order, positions)
    del order
    # rank/(n−1) first, then · 2ε + (density − ε): mergekit's order, so the same seed draws the same mask
    return ranks.div_(n - 1).mul_(2 * epsilon).add_(density - epsilon).reshape(tau.shape)


def magprune(
    tau: torch.Tensor, density: float, epsilon: float, mode: str, generator: torch.Generator | None, name: str
) -> torch.Tensor:
    """τ̂ = rescale(m ⊙ τ), m ~ Bernoulli(p) with p from `magprune_probabilities`."""
    if density >= 1:
        return tau
    if density <= 0:
        return torch.zeros_like(tau)
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise ConfigError(
            f"tensor '{name}': DELLA needs 0 < density - epsilon and density + epsilon < 1, got density {density} "
            f"and epsilon {epsilon}; lower epsilon"
        )
    keep = torch.bernoulli(magprune_probabilities(tau, density, epsilon), generator=generator)
    return rescale(tau, tau * keep, density, mode)


def pruned_task_vectors(inputs: TensorInputs) -> Iterator[torch.Tensor]:
    """Each τᵢ through MagPrune with its own density and ε, drawn from this tensor's generator in model order."""
    assert isinstance(inputs.params, RescaledParams)
    for tau, p in zip(inputs.lazy_task_vectors(), inputs.model_params):
        assert isinstance(p, DellaModelParams)
        yield magprune(tau, p.density, p.epsilon, inputs.params.rescale, inputs.generator, inputs.name)


@register
class DellaLinear(MergeMethod):
    name = "della_linear"
    reference_url = "https://arxiv.org/abs/2406.11617"
    params_type = RescaledParams  # normalize: false, as mergekit's della_linear
    model_params_type = DellaModelParams
    uses_randomness = True

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, RescaledParams)
        return weighted_sum(inputs.base, pruned_task_vectors(inputs), inputs.weights(), inputs.params)


@register
class Della(DellaLinear):
    name = "della"
    params_type = DellaParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, RescaledParams)
        return sign_elected_sum(inputs.base, list(pruned_task_vectors(inputs)), inputs.weights(), inputs.params)
