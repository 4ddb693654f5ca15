"""SVC, Singular Value Calibration (Li et al., ICML 2026): rescale the spectrum of any merge so no
direction carries more than its tasks asked for.

Per 2-D tensor inside the blocks, on the merged update ΔW_m = UΣVᵀ of the `on` method: for each
direction r, task t's response along u_r is a_t = u_rᵀτ_t and its share of the merged response
s_t^r = ⟨σ_r v_r, a_t⟩ / ‖a_t‖²; the direction is divided by η_r = mean_t max(s_t^r, α), so a
direction that several tasks each pushed to full strength (summed twice over) comes back to one
task's size. α defaults to 1/T (the paper's choice for TA, TIES and Iso), 1 on top of TSV. Other
tensors (embeddings, norms, biases) keep the `on` method's values.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from fda_core.linalg import thin_svd
from fda_core.merge.settings import layer_index
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import get_method, register


class SvcParams(Params):
    on: str = Field("iso_cts", description="the merge whose spectrum is calibrated")
    on_parameters: dict[str, Any] = Field(default_factory=dict, description="that method's parameters")
    alpha: float | None = Field(None, ge=0, allow_inf_nan=False, description="floor of s; default 1/T (1 for tsv)")

    @model_validator(mode="after")
    def _inner_method_fits(self) -> SvcParams:
        inner = get_method(self.on)
        if inner.layerwise or inner.name == "svc" or not inner.requires_base:
            raise ValueError(f"on: '{self.on}' cannot be calibrated; pick a task-vector method such as iso_cts or ties")
        inner.params_type.model_validate(self.on_parameters)
        return self

    def inner_params(self) -> Params:
        return get_method(self.on).params_type.model_validate(self.on_parameters)


def calibrate(merged: torch.Tensor, taus: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """The merged update (m, n) with each singular value σ_r divided by η_r."""
    u, s, vh = thin_svd(merged)  # (m, r), (r,), (r, n)
    responses = torch.stack([u.T @ tau for tau in taus])  # a_t^r = u_rᵀτ_t, (T, r, n)
    shares = s[None, :] * (responses * vh[None]).sum(dim=2) / responses.pow(2).sum(dim=2).clamp_min(1e-12)
    eta = shares.clamp_min(alpha).mean(dim=0)  # (r,)
    return (u * (s / eta)) @ vh


@register
class SingularValueCalibration(MergeMethod):
    name = "svc"
    reference_url = "https://arxiv.org/abs/2602.05536"
    params_type = SvcParams
    uses_randomness = True  # the calibrated method may (DARE); a generator is cheap

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, SvcParams)
        inner = get_method(inputs.params.on)
        model_params = [inner.model_params_type.model_validate(p.model_dump()) for p in inputs.model_params]
        merged = inner.merge(
            TensorInputs(
                inputs.name, inputs.base, inputs.experts, inputs.params.inner_params(), model_params, inputs.generator
            )
        )
        if inputs.base.dim() != 2 or layer_index(inputs.name) is None:
            return merged
        default = 1.0 if inner.name == "tsv" else 1.0 / len(inputs.experts)
        alpha = default if inputs.params.alpha is None else inputs.params.alpha
        return inputs.base + calibrate(merged - inputs.base, inputs.task_vectors(), alpha)
