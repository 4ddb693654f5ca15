"""WUDI merging (Cheng et al., 2025): fit one task vector that acts like each τᵢ on τᵢ's own span.

Per linear weight inside the repeated blocks, start from τm = Σ τᵢ and minimise
Σᵢ ‖(τm − τᵢ)τᵢᵀ‖²_F / ‖τᵢ‖²_F with Adam; other tensors (embeddings, heads, norms, biases) take the
mean task vector, as in the paper. θ = θ0 + τm. (Vocabulary-sized matrices are excluded for cost
too: one Adam step on a 32k×512 embedding is ~50 GFLOP.)

The objective is quadratic in τm, so its gradient is taken in closed form rather than by autograd:
∇ = 2 Σᵢ (τm − τᵢ) τᵢᵀτᵢ / ‖τᵢ‖² = 2 (τm·A − B), with A = Σᵢ τᵢᵀτᵢ / ‖τᵢ‖² (n × n) and
B = Σᵢ τᵢ τᵢᵀτᵢ / ‖τᵢ‖² (m × n) formed once — one m×n×n product per step instead of a forward and a
backward pass per task. Where A would outweigh the task vectors themselves (n > k·m, a very wide
matrix) the first term is taken per task through the small m × m products instead.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fda_core.merge.settings import layer_index
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class WudiParams(Params):
    lr: float = Field(1e-5, gt=0)
    steps: int = Field(300, ge=0)


def interference(tau_m: torch.Tensor, taus: list[torch.Tensor], grams: list[torch.Tensor | None]) -> torch.Tensor:
    """Σᵢ ‖(τm − τᵢ)τᵢᵀ‖²_F / ‖τᵢ‖²_F; for tall (m > n) tensors via the Gram: ‖Dτᵢᵀ‖² = ⟨D·τᵢᵀτᵢ, D⟩."""
    total = tau_m.new_zeros(())
    for tau, gram in zip(taus, grams):
        diff = tau_m - tau  # (m, n)
        term = (diff @ tau.T).pow(2).sum() if gram is None else (diff @ gram * diff).sum()  # (m, m) or (n, n)
        total = total + term / (tau.pow(2).sum() + 1e-12)
    return total


class InterferenceGradient:
    """∇ of `interference` at τm, in closed form (the objective is quadratic): 2 (τm·A − B). Holds no
    copy of the task vectors: A and B (or, per task, only the 1/‖τᵢ‖² weights)."""

    def __init__(self, taus: list[torch.Tensor]) -> None:
        rows, cols = taus[0].shape
        self.taus, self.weights = taus, [1.0 / (float(tau.pow(2).sum()) + 1e-12) for tau in taus]
        self.gram: torch.Tensor | None = None
        self.offset = torch.zeros_like(taus[0])  # B
        if cols <= len(taus) * rows:  # A no bigger than the inputs already held
            self.gram = taus[0].new_zeros((cols, cols))  # A
            for tau, weight in zip(taus, self.weights):
                gram = tau.T @ tau
                self.gram.add_(gram, alpha=weight)
                self.offset.add_(tau @ gram, alpha=weight)
        else:  # a very wide matrix: through the (m, m) products
            for tau, weight in zip(taus, self.weights):
                self.offset.add_((tau @ tau.T) @ tau, alpha=weight)

    def __call__(self, tau_m: torch.Tensor) -> torch.Tensor:
        if self.gram is not None:
            return 2 * (tau_m @ self.gram - self.offset)
        product = -self.offset
        for tau, weight in zip(self.taus, self.weights):
            product = product + ((tau_m @ tau.T) @ tau) * weight
        return 2 * product


def wudi_delta(taus: list[torch.Tensor], params: WudiParams) -> torch.Tensor:
    gradient = InterferenceGradient(taus)
    tau_m = torch.stack(taus).sum(dim=0)
    optimiser = torch.optim.Adam([tau_m], lr=params.lr)
    for _ in range(params.steps):
        tau_m.grad = gradient(tau_m)
        optimiser.step()
    return tau_m


@register
class Wudi(MergeMethod):
    name = "wudi"
    reference_url = "https://arxiv.org/abs/2503.08099"
    params_type = WudiParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, WudiParams)
        taus = inputs.task_vectors()
        if inputs.base.dim() == 2 and layer_index(inputs.name) is not None:
            return inputs.base + wudi_delta(taus, inputs.params)
        return inputs.base + torch.stack(taus).mean(dim=0)
