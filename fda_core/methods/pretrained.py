"""The base model's tensors unchanged: FDA's Eq. 5 starting point, and mergekit's passthrough of the base."""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register


@register
class Pretrained(MergeMethod):
    name = "pretrained"
    reference_url = "https://arxiv.org/abs/2510.21223"

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None
        return inputs.base.clone()
