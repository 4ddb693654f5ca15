"""Iso-CTS (Marczak et al., ICML 2025): an isotropic spectrum over a common subspace plus
task-specific subspaces, so tasks the sum under-represents keep directions of their own.

Per 2-D tensor (Alg. 2): Δ = Σ τ_t = UΣVᵀ (r = min(m, n)); the common part is its top k
directions, k ≈ `common_fraction`·r with the rest split evenly, s = (r − k)/T per task; each
task contributes the top s directions of (I − U_kU_kᵀ)τ_t; the stacked left and right vectors are
orthogonalised (the nearest orthogonal matrix, as in TSV) and every direction gets the mean σ̄ of
the selected singular values: Δ_CTS = σ̄ U* V*ᵀ. Other tensors take the mean task vector;
θ = θ0 + αΔ (α multiplies every tensor; the paper tunes it on validation data, 1.5–1.9 at 8 tasks).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fda_core.linalg import thin_svd
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register
from fda_core.methods.tsv import nearest_orthogonal


class IsoCtsParams(Params):
    alpha: float = Field(1.0, allow_inf_nan=False)
    common_fraction: float = Field(0.8, ge=0, le=1, description="share of the rank given to the common subspace")


def subspace_sizes(rank: int, tasks: int, common_fraction: float) -> tuple[int, int]:
    """(k common, s per task) with k + T·s = rank (the reference rounds the task budget to a multiple of T)."""
    specific = round((rank - math.floor(common_fraction * rank)) / tasks) * tasks
    specific = min(specific, rank - rank % tasks if rank >= tasks else 0)
    return rank - specific, specific // tasks


def iso_cts_delta(taus: list[torch.Tensor], common_fraction: float) -> torch.Tensor:
    u, s, vh = thin_svd(sum(taus[1:], taus[0]))  # Σ τ_t, (m, r), (r,), (r, n)
    k, per_task = subspace_sizes(len(s), len(taus), common_fraction)
    lefts, values, rights = [u[:, :k]], [s[:k]], [vh[:k]]
    common = u[:, :k]
    for tau in taus if per_task else []:
        specific = tau - common @ (common.T @ tau)  # (I − U_kU_kᵀ) τ_t
        ut, st, vt = thin_svd(specific)
        lefts.append(ut[:, :per_task])
        values.append(st[:per_task])
        rights.append(vt[:per_task])
    left = nearest_orthogonal(torch.cat(lefts, dim=1))  # (m, r)
    right = nearest_orthogonal(torch.cat(rights, dim=0).T).T  # (r, n)
    return torch.cat(values).mean() * (left @ right)


@register
class IsoCts(MergeMethod):
    name = "iso_cts"
    reference_url = "https://arxiv.org/abs/2502.04959"
    params_type = IsoCtsParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, IsoCtsParams)
        taus = inputs.task_vectors()
        if inputs.base.dim() == 2:
            delta = iso_cts_delta(taus, inputs.params.common_fraction)
        else:
            delta = torch.stack(taus).mean(dim=0)
        return inputs.base + inputs.params.alpha * delta
