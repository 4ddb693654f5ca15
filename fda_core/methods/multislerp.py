"""Multi-SLERP (mergekit's multislerp): a weighted barycentre of N models (or task vectors) on the hypersphere.

Project each flattened vector to the unit sphere, take the weighted tangent-space mean at the normalised
weighted Euclidean mean, map it back with the exponential map, and rescale by the weighted mean norm. With a
base the task vectors are interpolated and added to it. Two antipodal inputs with cancelling weights fall
back to the weighted sum; more than two are refused.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.errors import ConfigError
from fda_core.methods.base import MergeMethod, Params, TensorInputs, stack
from fda_core.methods.registry import register


class MultislerpParams(Params):
    normalize_weights: bool = True
    eps: float = Field(1e-8, gt=0.0)


def multislerp(vectors: torch.Tensor, weights: torch.Tensor, eps: float, name: str) -> torch.Tensor:
    """(n,) barycentre of the (N, n) `vectors` with (N,) `weights`."""
    norms = vectors.norm(dim=-1, keepdim=True)  # (N, 1)
    units = vectors / (norms + eps)
    mean = (units * weights[:, None]).sum(dim=0)  # (n,)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if vectors.shape[0] == 2:
            return vectors[0] * weights[0] + vectors[1] * weights[1]
        raise ConfigError(
            f"tensor '{name}': multislerp: the weighted mean of the unit vectors is zero (antipodal inputs whose "
            "weights cancel); change the weights"
        )
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(dim=-1, keepdim=True) * mean  # (N, n), each ⟂ mean
    tangent = (tangents * weights[:, None]).sum(dim=0)
    length = tangent.norm() + eps
    on_sphere = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    return on_sphere * (norms.squeeze(-1) * weights).sum()


@register
class Multislerp(MergeMethod):
    name = "multislerp"
    reference_url = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"
    params_type = MultislerpParams
    requires_base = False  # a base, when given, is the origin of the task vectors

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert isinstance(inputs.params, MultislerpParams)
        if len(inputs.experts) == 1:
            return inputs.experts[0]
        shape = inputs.experts[0].shape
        vectors = stack(inputs.task_vectors() if inputs.base is not None else inputs.experts).reshape(
            len(inputs.experts), -1
        )  # (N, n)
        weights = inputs.weights()
        if inputs.params.normalize_weights:
            weights = weights / weights.sum()
        merged = multislerp(vectors, weights, inputs.params.eps, inputs.name).reshape(shape)
        return merged if inputs.base is None else merged.add_(inputs.base)
