"""TIES (Yadav et al., 2023): trim each τᵢ to its top-k |·|, elect signs, disjoint mean."""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.sparsify import magnitude_mask
from fda_core.methods.task_arithmetic_core import DensityModelParams, ScaledParams, sign_elected_sum


class TiesParams(ScaledParams):
    normalize: bool = True


@register
class Ties(MergeMethod):
    name = "ties"
    reference_url = "https://arxiv.org/abs/2306.01708"
    params_type = TiesParams
    model_params_type = DensityModelParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, ScaledParams)
        trimmed = [
            tau * magnitude_mask(tau, p.density)  # type: ignore[attr-defined]
            for tau, p in zip(inputs.task_vectors(), inputs.model_params)
        ]
        return sign_elected_sum(inputs.base, trimmed, inputs.weights(), inputs.params)
