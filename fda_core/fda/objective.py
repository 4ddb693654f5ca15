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


def task_similarities(
    block: BlockFn, theta0: Params, experts: list[Params], anchors: torch.Tensor, kind: Similarity = "cosine"
) -> torch.Tensor:
    """S_i for every task at once: anchors (N, b, …) → (N,). θ0 runs one batched forward."""
    tasks, batch = anchors.shape[:2]
    h0 = block(theta0, anchors.flatten(0, 1)).unflatten(0, (tasks, batch))  # (N, b, …)
    sims = [anchor_similarity(h0[i], block(experts[i], anchors[i]), kind).mean() for i in range(tasks)]
    return torch.stack(sims)


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
    """g_i = weight · ∂S_i/∂θ at θ0 for every task, stacked: {name: (N, *shape)}.

    One forward of θ0 over all tasks' anchors and one batched backward (is_grads_batched) give
    every task's gradient without running N separate second-order graphs.
    """
    leaves = {name: value.detach().requires_grad_(True) for name, value in theta0.items()}
    sims = task_similarities(block, leaves, experts, anchors, kind) * weight  # (N,)
    names = list(leaves)
    eye = torch.eye(len(sims), dtype=sims.dtype, device=sims.device)
    grads = torch.autograd.grad(
        sims,
        [leaves[n] for n in names],
        grad_outputs=eye,
        is_grads_batched=True,
        create_graph=create_graph,
        allow_unused=True,
    )
    return {
        n: (g if g is not None else torch.zeros(len(sims), *leaves[n].shape, device=sims.device))
        for n, g in zip(names, grads)
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
