"""TSV-M, Task Singular Vectors merge (Gargiulo et al., 2025).

Per 2-D tensor: τᵢ = UᵢΣᵢVᵢᵀ, keep each task's top k = ⌊r/N⌋ singular triplets, concatenate,
orthogonalise U and V (U⊥ = PQᵀ from svd U = PSQᵀ, the closest orthogonal matrix), and
Δ = U⊥ΣV⊥ᵀ. Other tensors take the mean task vector. θ = θ0 + αΔ.
"""

from __future__ import annotations

import torch

from fda_core.linalg import thin_svd
from fda_core.methods.base import MergeMethod, Params, TensorInputs
from fda_core.methods.registry import register


class TsvParams(Params):
    alpha: float = 1.0


def nearest_orthogonal(matrix: torch.Tensor) -> torch.Tensor:
    p, _, qh = thin_svd(matrix)
    return p @ qh


def tsv_delta(taus: list[torch.Tensor]) -> torch.Tensor:
    rank = min(taus[0].shape)
    k = max(1, rank // len(taus))
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = thin_svd(tau)  # (m, r), (r,), (r, n)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u_cat, s_cat, v_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=1)  # (m, Nk), (Nk,), (n, Nk)
    return nearest_orthogonal(u_cat) @ torch.diag(s_cat) @ nearest_orthogonal(v_cat).T


@register
class TaskSingularVectors(MergeMethod):
    name = "tsv"
    reference_url = "https://arxiv.org/abs/2412.00081"
    params_type = TsvParams

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        assert inputs.base is not None and isinstance(inputs.params, TsvParams)
        taus = inputs.task_vectors()
        if inputs.base.dim() == 2:
            delta = tsv_delta(taus)
        else:
            delta = torch.stack(taus).mean(dim=0)
        return inputs.base + inputs.params.alpha * delta
