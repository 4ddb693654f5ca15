"""The construction objective (Eq. 1–2): anchors X whose similarity gradient points along τ.

For task i and a block f: S_i(X) = mean_j cos(f(θ0, x_j), f(θi, x_j)) and g_i = ∂S_i/∂θ at θ0.
g_i is the gradient of the *similarity*, i.e. the descent direction of the distance: read
literally, Eq. 1 aligns +∇Dist with τ, which can never score above zero (docs/fda.md, "sign").
The loss is L = Σ_i Σ_k (1 − cos(vec g_i,k, vec τ_i,k)) over each parameter tensor k separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]
BlockFn = Callable[[Params, torch.Tensor], torch.Tensor]  # f(θ, X (b, …)) → (b, …)


Similarity = Literal["cosine", "mse"]


def anchor_similarity(h0: torch.Tensor, hi: torch.Tensor, kind: Similarity = "cosine") -> torch.Tensor:
    """Per anchor, outputs flattened: cos(h0_j, hi_j), or −½‖h0_j − hi_j‖² (the paper's alternative). → (b,)."""
    if kind == "mse":
        return -0.5 * (h0 - hi).flatten(1).pow(2).sum(dim=1)
    return F.cosine_similarity(h0.flatten(1), hi.flatten(1), dim=1, eps=1e-12)


def similarity_gradients(
    block: BlockFn,
    theta0: Params,
    experts: list[Params],
    anchors: torch.Tensor,
    *,
    create_graph: bool,
    weight: float = 1.0,
    kind: Similarity = "cosine",
) -> dict[str, torch.Tensor]:
    """g_i = weight · ∂S_i/∂θ at θ0 for every task, stacked: {name: (N, *shape)}; anchors (N, b, …).

    Each task gets its own leaf view of θ0 (no copy), so one backward of Σ_i S_i yields every g_i
    at once. (One shared θ0 forward with a batched backward would cost N² per-task passes: the
    vmapped backward runs over all tasks' anchors for every task.)
    """
    names = list(theta0)
    leaves = [{n: theta0[n].detach().requires_grad_(True) for n in names} for _ in experts]
    sims = [
        anchor_similarity(block(leaves[i], anchors[i]), block(experts[i], anchors[i]), kind).mean()
        for i in range(len(experts))
    ]
    total = torch.stack(sims).sum() * weight
    grads = torch.autograd.grad(
        total, [leaf[n] for leaf in leaves for n in names], create_graph=create_graph, allow_unused=True
    )
    by_task = [grads[i * len(names) : (i + 1) * len(names)] for i in range(len(experts))]
    return {
        n: torch.stack([g[k] if g[k] is not None else torch.zeros_like(theta0[n]) for g in by_task])
        for k, n in enumerate(names)
    }


def alignment_loss(
    grads: dict[str, torch.Tensor], taus: dict[str, torch.Tensor], active: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Per task i, Σ_k active[k][i] · (1 − cos(g_i,k, τ_i,k)): grads and taus {name: (N, *shape)},
    active {name: (N,) bool} → (N,). Task i's loss depends on its own anchors X_i only."""
    first = next(iter(grads.values()))
    total = first.new_zeros(first.shape[0])
    for name, grad in grads.items():
        cos = F.cosine_similarity(grad.flatten(1), taus[name].flatten(1), dim=1, eps=1e-12)  # (N,)
        total = total + (1 - cos) * active[name]
    return total


def per_tensor_cosines(grads: dict[str, torch.Tensor], taus: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cos(g_i,k, τ_i,k) for reporting: {name: (N,)}."""
    return {
        n: F.cosine_similarity(g.flatten(1), taus[n].flatten(1), dim=1, eps=1e-12).detach() for n, g in grads.items()
    }
