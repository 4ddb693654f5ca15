"""Spherical linear interpolation between the base and one other model, per tensor.

Ω = arccos⟨v0/‖v0‖, v1/‖v1‖⟩, θ = sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1, and plain
lerp when |cos Ω| > 0.9995 (nearly collinear: the formula is 0/0 there).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register

DOT_THRESHOLD = 0.9995
EPS = 1e-8


class SlerpParams(Params):
    t: float = Field(0.5, ge=0.0, le=1.0)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    a, b = v0.reshape(-1), v1.reshape(-1)
    norm_a, norm_b = float(a.norm()), float(b.norm())
    norm_a = norm_a if norm_a > EPS else 1.0
    norm_b = norm_b if norm_b > EPS else 1.0
    dot = max(-1.0, min(1.0, float(torch.dot(a / norm_a, b / norm_b))))
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    omega = math.acos(dot)
    sin_omega = math.sin(omega)
    return (math.sin((1 - t) * omega) / sin_omega) * v0 + (math.sin(t * omega) / sin_omega) * v1


@register
class Slerp(MergeMethod):
    name = "slerp"
    reference_url = "https://en.wikipedia.org/wiki/Slerp"
    params_type = SlerpParams
    min_models = 1
    max_models = 1

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, SlerpParams)
        return slerp(inputs.params.t, inputs.base, inputs.experts[0])
