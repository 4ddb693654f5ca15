"""WUDI merging (Cheng et al., 2025): fit one task vector that acts like each τᵢ on τᵢ's own span.

Per linear weight inside the repeated blocks, start from τm = Σ τᵢ and minimise
Σᵢ ‖(τm − τᵢ)τᵢᵀ‖²_F / ‖τᵢ‖²_F with Adam; other tensors (embeddings, heads, norms, biases) take the
mean task vector, as in the paper. θ = θ0 + τm. (Vocabulary-sized matrices are excluded for cost
too: one Adam step on a 32k×512 embedding is ~50 GFLOP.)
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


def wudi_delta(taus: list[torch.Tensor], params: WudiParams) -> torch.Tensor:
    rows, cols = taus[0].shape
    grams = [tau.T @ tau if rows > cols else None for tau in taus]  # keep the square product small
    tau_m = torch.stack(taus).sum(dim=0).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([tau_m], lr=params.lr)
    with torch.enable_grad():
        for _ in range(params.steps):
            optimiser.zero_grad(set_to_none=True)
            interference(tau_m, taus, grams).backward()
            optimiser.step()
    return tau_m.detach()


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
