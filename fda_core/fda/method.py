"""`method: fda` in a merge config: a layer-wise method, run by fda_core.fda.runner rather than per tensor."""

from __future__ import annotations

import torch

from fda_core.fda.settings import FdaParams
from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register


@register
class FunctionalDualAnchors(MergeMethod):
    name = "fda"
    reference_url = "https://arxiv.org/abs/2510.21223"
    params_type = FdaParams
    layerwise = True

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        raise RuntimeError("fda merges whole blocks; run_merge dispatches it to fda_core.fda.runner")
