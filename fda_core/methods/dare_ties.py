"""DARE-TIES (Yu et al., 2024): DARE's random drop and rescale, then TIES' sign election."""

from __future__ import annotations

import torch

from fda_core.methods.base import TensorInputs
from fda_core.methods.dare_linear import DareLinear, DareParams, dropped_task_vectors
from fda_core.methods.registry import register
from fda_core.methods.task_arithmetic_core import sign_elected_sum


@register
class DareTies(DareLinear):
    name = "dare_ties"

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, DareParams)
        return sign_elected_sum(inputs.base, list(dropped_task_vectors(inputs)), inputs.weights(), inputs.params)
