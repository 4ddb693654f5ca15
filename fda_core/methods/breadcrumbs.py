"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop τ's outliers and its smallest entries, then TA."""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.methods.base import MergeMethod, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.sparsify import band_mask
from fda_core.methods.task_arithmetic_core import DensityModelParams, ScaledParams, weighted_sum


class BreadcrumbsModelParams(DensityModelParams):
    density: float = Field(0.9, ge=0.0, le=1.0)
    gamma: float = Field(0.01, ge=0.0, le=1.0)


@register
class Breadcrumbs(MergeMethod):
    name = "breadcrumbs"
    reference_url = "https://arxiv.org/abs/2312.06795"
    params_type = ScaledParams
    model_params_type = BreadcrumbsModelParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, ScaledParams)
        masked = (
            tau * band_mask(tau, p.density, p.gamma)  # type: ignore[attr-defined]
            for tau, p in zip(inputs.lazy_task_vectors(), inputs.model_params)
        )
        return weighted_sum(inputs.base, masked, inputs.weights(), inputs.params)
