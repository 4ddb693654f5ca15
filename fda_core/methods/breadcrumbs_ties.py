"""Model Breadcrumbs with TIES (mergekit's breadcrumbs_ties): drop τ's outliers and smallest entries, elect signs.

τ̂ᵢ = band(τᵢ) (the top γ·n and the smallest entries dropped, ⌊density·n⌋ kept; `rescale: l1` scales τ̂ᵢ back
to τᵢ's L1 norm), then TIES' sign election over Σ wᵢτ̂ᵢ and the agreeing entries' sum (÷ their weights with
`normalize`, off by default as in mergekit). θ = θ0 + λ · merge.
"""

from __future__ import annotations

from typing import Literal

import torch

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.breadcrumbs import BreadcrumbsModelParams
from fda_core.methods.della import RescaledParams
from fda_core.methods.registry import register
from fda_core.methods.sparsify import band_mask, rescale
from fda_core.methods.task_arithmetic_core import sign_elected_sum


class BreadcrumbsTiesParams(RescaledParams):
    rescale: Literal["l1", "none"] = "none"


@register
class BreadcrumbsTies(MergeMethod):
    name = "breadcrumbs_ties"
    reference_url = "https://arxiv.org/abs/2312.06795"
    params_type = BreadcrumbsTiesParams
    model_params_type = BreadcrumbsModelParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, RescaledParams)
        banded = []
        for tau, p in zip(inputs.lazy_task_vectors(), inputs.model_params):
            assert isinstance(p, BreadcrumbsModelParams)
            if p.density < 1:
                tau = rescale(tau, tau * band_mask(tau, p.density, p.gamma), p.density, inputs.params.rescale)
            banded.append(tau)
        return sign_elected_sum(inputs.base, banded, inputs.weights(), inputs.params)
