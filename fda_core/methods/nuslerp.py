"""NuSLERP (mergekit's nuslerp): spherical interpolation of two models, or of their task vectors from a base.

t = w₂ / (w₁ + w₂) (0.5 when the weights sum to ~0). With a base the two task vectors are interpolated and
added to it, otherwise the models themselves. The sphere is the whole tensor (`nuslerp_flatten`, default),
each row (last dim), or each column (`nuslerp_row_wise`); nearly collinear pairs fall back to lerp.
"""

from __future__ import annotations

import torch

from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register

EPS = 1e-8  # collinear when 1 − cos² ≤ EPS²
NORM_FLOOR = 1e-7


class NuslerpParams(Params):
    nuslerp_row_wise: bool = False
    nuslerp_flatten: bool = True


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool) -> torch.Tensor:
    """Slerp from v0 (t = 0) to v1 (t = 1) on each vector along the last axis of the chosen view."""
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    unit_a = a / a.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
    unit_b = b / b.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
    cos = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= EPS**2
    theta = torch.acos(torch.where(collinear, 0.0, cos))
    result = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * a + t * b, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(v0.shape)


@register
class Nuslerp(MergeMethod):
    name = "nuslerp"
    reference_url = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md"
    params_type = NuslerpParams
    requires_base = False  # a base, when given, is the origin of both task vectors
    min_models = 2
    max_models = 2

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert isinstance(inputs.params, NuslerpParams)
        w0, w1 = (p.weight for p in inputs.model_params)
        t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
        row_wise, flatten = inputs.params.nuslerp_row_wise, inputs.params.nuslerp_flatten
        if inputs.base is None:
            return nuslerp(t, inputs.experts[0], inputs.experts[1], row_wise, flatten)
        tau0, tau1 = inputs.task_vectors()
        return inputs.base + nuslerp(t, tau0, tau1, row_wise, flatten)
