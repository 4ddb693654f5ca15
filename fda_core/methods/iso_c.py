"""Iso-C (Marczak et al., 2025): flatten the spectrum of the summed task vector.

Δ = Σ τᵢ = UΣVᵀ, θ = θ0 + α·U(σ̄ I)Vᵀ with σ̄ the mean singular value; non-2-D tensors take
the mean task vector.
"""

from __future__ import annotations

import torch

from fda_core.linalg import thin_svd
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class IsoCParams(Params):
    alpha: float = 1.0


def isotropic(delta: torch.Tensor) -> torch.Tensor:
    u, s, vh = thin_svd(delta)
    return s.mean() * (u @ vh)


@register
class IsoC(MergeMethod):
    name = "iso_c"
    reference_url = "https://arxiv.org/abs/2502.04959"
    params_type = IsoCParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, IsoCParams)
        taus = torch.stack(inputs.task_vectors())  # (N, …)
        if inputs.base.dim() == 2:
            delta = isotropic(taus.sum(dim=0))
        else:
            delta = taus.mean(dim=0)
        return inputs.base + inputs.params.alpha * delta
