"""NearSwap (mergekit's nearswap): take the other model's value where it is already close to the base's.

w = clamp(t / max(|θ1 − θ0|, 1e-6), 0, 1), θ = w·θ1 + (1 − w)·θ0: entries that differ by at most t are
swapped in whole, larger differences are interpolated by t/|Δ|, shrinking with the distance.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import model_validator

from fda_core.errors import ConfigError
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class NearswapParams(Params):
    t: float  # no default, as in mergekit: the similarity threshold is the whole method

    @model_validator(mode="before")
    @classmethod
    def _t_given(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("t") is None:  # a ConfigError passes pydantic as is: one line
            raise ConfigError(
                "nearswap needs parameters.t, the distance below which the other model's value is taken "
                "(mergekit has no default either), for every tensor: end a condition list with a catch-all"
            )
        return values


@register
class Nearswap(MergeMethod):
    name = "nearswap"
    reference_url = "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"
    params_type = NearswapParams
    min_models = 1
    max_models = 1

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, NearswapParams)
        base, other = inputs.base, inputs.experts[0]
        weight = (inputs.params.t / (base - other).abs_().clamp_min_(1e-6)).clamp_(0, 1)
        return weight * other + (1 - weight) * base
