"""Weight averaging (Wortsman et al., 2022): θ = Σ wᵢθᵢ / Σ wᵢ."""

from __future__ import annotations

import torch

from fda_core.errors import ConfigError
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class LinearParams(Params):
    normalize: bool = True


@register
class Linear(MergeMethod):
    name = "linear"
    reference_url = "https://arxiv.org/abs/2203.05482"
    params_type = LinearParams
    requires_base = False

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert isinstance(inputs.params, LinearParams)
        weights = inputs.weights().tolist()
        result = torch.zeros_like(inputs.experts[0])
        for tensor, weight in zip(inputs.experts, weights):
            result.add_(tensor, alpha=weight)
        if inputs.params.normalize:
            if abs(sum(weights)) < 1e-8:
                raise ConfigError(
                    f"tensor '{inputs.name}': linear weights sum to 0, cannot normalise; set normalize: false"
                )
            result.div_(sum(weights))
        return result
