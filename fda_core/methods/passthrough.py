"""Passthrough (mergekit's passthrough): one model's tensors unchanged, or times `scale`.

With one model it copies that model; mergekit's layer-stacking use (several slices) is not supported yet.
"""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, ModelParams, TensorInputs
from fda_core.methods.registry import register


class PassthroughModelParams(ModelParams):
    scale: float | None = None


@register
class Passthrough(MergeMethod):
    name = "passthrough"
    reference_url = "https://github.com/arcee-ai/mergekit"
    model_params_type = PassthroughModelParams
    requires_base = False
    min_models = 1
    max_models = 1

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        (params,) = inputs.model_params
        assert isinstance(params, PassthroughModelParams)
        tensor = inputs.experts[0]
        return tensor if params.scale is None else tensor * params.scale
