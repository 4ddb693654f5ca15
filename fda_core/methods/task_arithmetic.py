"""Task arithmetic (Ilharco et al., 2023): θ = θ0 + λ·Σ wᵢτᵢ."""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.task_arithmetic_core import ScaledParams, weighted_sum


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    reference_url = "https://arxiv.org/abs/2212.04089"
    params_type = ScaledParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, ScaledParams)
        return weighted_sum(inputs.base, inputs.lazy_task_vectors(), inputs.weights(), inputs.params)
