"""DARE (Yu et al., 2024): drop τ entries at random, rescale, then sum (task arithmetic).

Default rescale is the paper's 1/density; `rescale: l1` matches the L1 norm as mergekit does
(a mergekit YAML gets that automatically).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.sparsify import bernoulli_mask, rescale
from fda_core.methods.task_arithmetic_core import (
    DensityModelParams,
    ScaledParams,
    weighted_sum,
)


class DareParams(ScaledParams):
    rescale: Literal["inverse_density", "l1", "none"] = "inverse_density"


def dropped_task_vectors(inputs: TensorInputs) -> Iterator[torch.Tensor]:
    """τ̂ᵢ = rescale(mᵢ ⊙ τᵢ), mᵢ ~ Bernoulli(densityᵢ), from this tensor's own generator, in model order."""
    assert isinstance(inputs.params, DareParams)
    for tau, p in zip(inputs.lazy_task_vectors(), inputs.model_params):
        density = p.density  # type: ignore[attr-defined]
        kept = tau * bernoulli_mask(tau, density, inputs.generator)
        yield rescale(tau, kept, density, inputs.params.rescale)


@register
class DareLinear(MergeMethod):
    name = "dare_linear"
    reference_url = "https://arxiv.org/abs/2311.03099"
    params_type = DareParams
    model_params_type = DensityModelParams
    uses_randomness = True

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, DareParams)
        return weighted_sum(inputs.base, dropped_task_vectors(inputs), inputs.weights(), inputs.params)
