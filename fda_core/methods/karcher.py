"""Karcher mean (mergekit's karcher): the Riemannian mean of the models' directions, at their mean norm.

Each of the N models (a mergekit file's base_model among them, as mergekit counts it) is split into its norm and its direction on the unit
sphere; the equally weighted Karcher (Fréchet) mean of the directions is found by fixed-point iteration,
mean ← exp_mean(Σ αᵢ log_mean(uᵢ)), for at most `max_iter` steps or until the step is under `tol`; the
result is that direction times Σ αᵢ‖θᵢ‖. Inputs whose norm is at most `tol` do not vote on the direction.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class KarcherParams(Params):
    max_iter: int = Field(10, ge=0)
    tol: float = Field(1e-5, ge=0.0)


def karcher_direction(units: list[torch.Tensor], alphas: list[float], max_iter: int, tol: float) -> torch.Tensor:
    """The weighted Karcher mean of unit vectors (same shape each), by fixed-point iteration."""
    mean = torch.zeros_like(units[0])
    for alpha, unit in zip(alphas, units):
        mean += alpha * unit
    mean_norm = mean.norm()
    mean = units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)  # Σ αᵢ log_mean(uᵢ)
        for alpha, unit in zip(alphas, units):
            cos = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += alpha * (theta / torch.sin(theta)) * (unit - cos * mean)
        step = tangent.norm()
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = mean.norm()
        if length.item() > tol:
            mean = mean / length
    return mean


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    alpha = 1.0 / len(tensors)
    norms = [tensor.norm() for tensor in tensors]
    voters = [(tensor / norm) for tensor, norm in zip(tensors, norms) if norm.item() > tol]
    if not voters:
        return torch.zeros_like(tensors[0])
    direction = karcher_direction(voters, [1.0 / len(voters)] * len(voters), max_iter, tol)
    return sum(alpha * norm for norm in norms) * direction


@register
class Karcher(MergeMethod):
    name = "karcher"
    reference_url = "https://arxiv.org/abs/2603.04972"
    params_type = KarcherParams
    requires_base = False  # mergekit averages every input, a base among them

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert isinstance(inputs.params, KarcherParams)
        return karcher_mean(inputs.experts, inputs.params.max_iter, inputs.params.tol)
