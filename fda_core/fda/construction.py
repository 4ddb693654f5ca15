"""Anchor construction (Alg. 1): optimise X with AdamW so every task's similarity gradient aligns with τ.

All tasks of a layer share one batched second-order pass (objective.py). With `chunk_size` the
pass is exact and chunked: pass 1 accumulates g = Σ_c g_c without a graph and v = ∂L/∂g; pass 2
rebuilds each chunk's g_c with a graph and back-propagates ⟨g_c, v⟩ into X_c. L depends on X only
through g, so ∂L/∂X_c = ∂⟨g_c, v⟩/∂X_c, and memory is one chunk's graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fda_core.fda.objective import BlockFn, Params, Similarity, alignment_loss, per_tensor_cosines, similarity_gradients

ZERO = 1e-30


@dataclass(frozen=True)
class ConstructionSettings:
    steps: int = 1200  # the paper's budget; the plateau rule usually stops earlier
    lr: float = 1e-2  # AdamW, torch defaults otherwise (weight decay 0.01)
    chunk_size: int | None = None  # anchors per chunk of the second-order graph; None: all at once
    tolerance: float = 1e-4  # stop once the mean (1 − cos) improved by less than this …
    patience: int = 100  # … over this many steps
    similarity: Similarity = "cosine"  # S in Eq. 1; "mse" is −½‖·‖² (the closed form's setting)


@dataclass
class ConstructionResult:
    anchors: torch.Tensor  # (N, n, …) the best-loss anchors
    loss: float  # mean (1 − cos) over active (task, tensor) pairs, at the best step
    cosines: dict[str, torch.Tensor]  # {tensor: (N,)} at the best step
    active: dict[str, torch.Tensor]  # {tensor: (N,) bool} tensors that entered the loss
    steps: int
    history: list[float] = field(default_factory=list)


StepCallback = Callable[[int, float], None]  # (step, mean 1 − cos)


def active_tensors(grads: dict[str, torch.Tensor], taus: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Skip (task, tensor) pairs whose τ or whose gradient is identically zero (e.g. a key bias under softmax)."""
    return {
        name: (taus[name].flatten(1).abs().amax(dim=1) > ZERO) & (grad.flatten(1).abs().amax(dim=1) > ZERO)
        for name, grad in grads.items()
    }


def construct_anchors(
    block: BlockFn,
    theta0: Params,
    experts: list[Params],
    taus: dict[str, torch.Tensor],
    initial: torch.Tensor,
    settings: ConstructionSettings,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ConstructionResult:
    """Optimise anchors `initial` (N, n, …) for the N tasks; taus is {tensor: (N, *shape)}."""
    anchors = initial.detach().clone().requires_grad_(True)
    optimiser = torch.optim.AdamW([anchors], lr=settings.lr)
    first = _gradients(block, theta0, experts, anchors.detach(), settings)
    active = active_tensors(first, taus)
    pairs = max(1, int(sum(int(a.sum()) for a in active.values())))
    best = (math.inf, anchors.detach().clone(), per_tensor_cosines(first, taus), 0)
    history: list[float] = []
    for step in range(settings.steps):
        if should_stop is not None and should_stop():
            break
        optimiser.zero_grad(set_to_none=True)
        loss, grads = _loss_and_backward(block, theta0, experts, taus, active, anchors, settings)
        mean_gap = loss / pairs
        history.append(mean_gap)
        if mean_gap < best[0]:
            best = (mean_gap, anchors.detach().clone(), per_tensor_cosines(grads, taus), step)
        if on_step is not None:
            on_step(step, mean_gap)
        if _plateaued(history, settings):
            break
        optimiser.step()
    return ConstructionResult(best[1], best[0], best[2], active, len(history), history)


def _plateaued(history: list[float], settings: ConstructionSettings) -> bool:
    if len(history) <= settings.patience:
        return False
    return min(history[: -settings.patience]) - min(history) < settings.tolerance


def _chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    size = n if not chunk_size or chunk_size >= n else chunk_size
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def _gradients(
    block: BlockFn, theta0: Params, experts: list[Params], anchors: torch.Tensor, settings: ConstructionSettings
) -> dict[str, torch.Tensor]:
    """g = Σ_c (n_c / n) ∂S_c/∂θ without a graph: {tensor: (N, *shape)}."""
    n = anchors.shape[1]
    total: dict[str, torch.Tensor] = {}
    for start, end in _chunks(n, settings.chunk_size):
        weight = (end - start) / n
        part = similarity_gradients(
            block, theta0, experts, anchors[:, start:end], create_graph=False, weight=weight, kind=settings.similarity
        )
        for name, grad in part.items():
            total[name] = total[name] + grad if name in total else grad
    return total


def _loss_and_backward(
    block: BlockFn,
    theta0: Params,
    experts: list[Params],
    taus: dict[str, torch.Tensor],
    active: dict[str, torch.Tensor],
    anchors: torch.Tensor,
    settings: ConstructionSettings,
) -> tuple[float, dict[str, torch.Tensor]]:
    """L and ∂L/∂X accumulated into anchors.grad; exact whether or not the pass is chunked."""
    n = anchors.shape[1]
    chunks = _chunks(n, settings.chunk_size)
    if len(chunks) == 1:
        grads = similarity_gradients(block, theta0, experts, anchors, create_graph=True, kind=settings.similarity)
        loss = alignment_loss(grads, taus, active)
        loss.backward()
        return float(loss.detach()), {k: v.detach() for k, v in grads.items()}
    total = _gradients(block, theta0, experts, anchors.detach(), settings)
    leaves = {k: v.requires_grad_(True) for k, v in total.items()}
    loss = alignment_loss(leaves, taus, active)
    directions = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))  # v = ∂L/∂g
    for start, end in chunks:
        weight = (end - start) / n
        part = similarity_gradients(
            block, theta0, experts, anchors[:, start:end], create_graph=True, weight=weight, kind=settings.similarity
        )
        inner = sum((part[k] * directions[k]).sum() for k in part)
        inner.backward()  # type: ignore[union-attr]
    return float(loss.detach()), {k: v.detach() for k, v in total.items()}
