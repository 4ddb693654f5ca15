"""ACE-Merging (Xu et al., CVPR 2026): RegMean's closed form with input covariances estimated from
the task vectors themselves — data-free.

Under a local linear model the merge minimising Σ_t E‖(W − W_t)x‖² is W = (Σ_t W_t Σ_t)(Σ_t Σ_t)⁻¹
with Σ_t the task's input second moment; ACE estimates Σ_t from the rows of ΔW_t taken as samples.
Per 2-D tensor inside the repeated blocks (numbers are the paper's equations):
  gate (7): γ = Var_t(ℓ_t) / Mean_t(ℓ_t)², ℓ_t = log ‖ΔW_t‖²_F; heterogeneous when γ > `gate`;
  proxy (5–6): W̃_t = ΔW_t minus its mean row, S_t = W̃_tᵀW̃_t;
  normalisation (8–10): heterogeneous: Σ̃_t = S_t / tr S_t, ridge ε / tr S_t; else Σ̃_t = S_t, ridge ε;
  collective prior (11–13): C = 1cᵀ, c the column means of Σ_t Σ̃_t (÷ mean ‖ΔW_t‖² when heterogeneous);
  closed form (14): W_pre = (Σ_t W̃_t Σ_t^reg)(Σ_t Σ_t^reg + C)⁻¹;
  spectral refinement (15–19, heterogeneous only): F = W_pre + Σ_t ΔW_t(Σ̃_t − mean Σ^reg),
  W = W_pre + σ̄_k U_k V_kᵀ with k = ⌊k_frac · r⌋ of F's singular vectors and σ̄_k their mean.
θ = θ0 + λW. Other tensors (embeddings, norms, biases) take the mean task vector.

Memory: the sums run over tasks one at a time, so a tensor costs O(mn + n²) whatever the task count.
Orientation: the input side is the stored dim 1 (nn.Linear); GPT-2's Conv1D stores (in, out) and
is taken as stored, as the reference code does.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fda_core.linalg import thin_svd
from fda_core.merge.settings import layer_index
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register

TINY = 1e-12


class AceParams(Params):
    lambda_: float = Field(1.0, alias="lambda", allow_inf_nan=False)
    eps: float = Field(1e-2, gt=0, allow_inf_nan=False, description="ridge of each covariance (Eq. 9–10)")
    gate: float = Field(0.3, ge=0, allow_inf_nan=False, description="γ above which norms count as heterogeneous")
    k_frac: float = Field(0.3, ge=0, le=1, description="share of directions the spectral refinement lifts")


def heterogeneous(taus: list[torch.Tensor], gate: float) -> tuple[bool, float]:
    """Eq. 7: (γ > gate, mean ‖ΔW_t‖²) from the tasks' squared norms."""
    energies = torch.stack([tau.double().pow(2).sum() for tau in taus])
    if len(taus) < 2:
        return False, float(energies.mean())
    logs = torch.log(energies + TINY)
    gamma = float(logs.var() / (logs.mean().pow(2) + TINY))  # torch.var: the unbiased estimate, as published
    return gamma > gate, float(energies.mean())


def ace_delta(taus: list[torch.Tensor], params: AceParams) -> torch.Tensor:
    """W for one 2-D tensor from its task vectors (m, n) each."""
    flag, mean_energy = heterogeneous(taus, params.gate)
    n = taus[0].shape[1]
    eye = torch.eye(n, dtype=taus[0].dtype, device=taus[0].device)
    numerator = torch.zeros_like(taus[0])  # Σ W̃_t Σ_t^reg, (m, n)
    regularised = torch.zeros_like(eye)  # Σ Σ_t^reg, (n, n)
    normalised = torch.zeros_like(eye)  # Σ Σ̃_t
    weighted = torch.zeros_like(taus[0])  # Σ ΔW_t Σ̃_t, for the refinement
    total = torch.zeros_like(taus[0])  # Σ ΔW_t
    for tau in taus:
        centred = tau - tau.mean(dim=0, keepdim=True)  # W̃_t (Eq. 5)
        proxy = centred.T @ centred  # S_t (Eq. 6), (n, n)
        trace = float(proxy.diagonal().sum()) + TINY
        sigma = proxy / trace if flag else proxy  # Σ̃_t (Eq. 8)
        reg = sigma + (params.eps / trace if flag else params.eps) * eye  # Σ_t^reg (Eq. 9–10)
        numerator += centred @ reg
        regularised += reg
        normalised += sigma
        if flag:
            weighted += tau @ sigma
            total += tau
    prior = normalised.mean(dim=0, keepdim=True).expand(n, n)  # C = 1cᵀ, every row the column means (Eq. 11–12)
    if flag:
        prior = prior / (mean_energy + TINY)  # Eq. 13
    merged = solve_right(numerator, regularised + prior)  # W_pre (Eq. 14)
    if not flag:
        return merged
    residual = weighted - total @ (regularised / len(taus))  # Σ ΔW_t (Σ̃_t − Σ̄^reg) (Eq. 15–16)
    return merged + spectral_lift(merged + residual, params.k_frac)  # Eq. 17–19


def solve_right(numerator: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """numerator · matrix⁻¹, by the pseudo-inverse where the matrix is singular (as the reference code falls back)."""
    try:
        return torch.linalg.solve(matrix, numerator, left=False)
    except RuntimeError:  # torch.linalg.LinAlgError: singular
        return numerator @ torch.linalg.pinv(matrix)


def spectral_lift(matrix: torch.Tensor, k_frac: float) -> torch.Tensor:
    """σ̄_k U_k V_kᵀ: the top k = ⌊k_frac · r⌋ singular directions of `matrix` at their mean singular value."""
    u, s, vh = thin_svd(matrix)
    k = math.floor(k_frac * len(s))
    if k == 0:
        return torch.zeros_like(matrix)
    return s[:k].mean() * (u[:, :k] @ vh[:k])


@register
class AceMerging(MergeMethod):
    name = "ace"
    reference_url = "https://arxiv.org/abs/2603.02945"
    params_type = AceParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, AceParams)
        taus = inputs.task_vectors()
        if inputs.base.dim() == 2 and layer_index(inputs.name) is not None:
            delta = ace_delta(taus, inputs.params)
        else:
            delta = torch.stack(taus).mean(dim=0)
        return inputs.base + inputs.params.lambda_ * delta
