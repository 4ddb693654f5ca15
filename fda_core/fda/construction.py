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
STRUCTURAL_ZERO = 1e-6  # ‖g_k‖ / max_k ‖g_k‖ at the probe below which tensor k gets no gradient by structure
PROBE_ANCHORS = 4


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
    """Per task i: its best anchors, their mean (1 − cos) and per-tensor cosines, and steps run."""

    anchors: torch.Tensor  # (N, n, …)
    loss: torch.Tensor  # (N,) mean (1 − cos) over task i's active tensors, at its best step
    cosines: dict[str, torch.Tensor]  # {tensor: (N,)} at each task's best step
    active: dict[str, torch.Tensor]  # {tensor: (N,) bool}: pairs that entered the loss
    steps: list[int]  # steps each task ran before its plateau (or the budget)
    history: list[list[float]] = field(default_factory=list)  # per step, per task mean (1 − cos)
    stopped: bool = False  # interrupted by should_stop: the anchors are not final


StepCallback = Callable[[int, list[float]], None]  # (step, per-task mean 1 − cos)


def active_tensors(grads: dict[str, torch.Tensor], taus: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Skip (task, tensor) pairs whose τ is zero or whose gradient is zero *by structure*.

    `grads` come from unit-scale probe anchors (`probe_gradients`). A key projection's bias
    never receives gradient through softmax, but in floating point its gradient is rounding
    noise (~1e-8 of the block's largest), not zero: aligning that noise with τ would put a
    huge, meaningless ∂L/∂X into Adam. Real gradients at unit-scale inputs sit within a few
    orders of the largest (MiniLM: ≥ 3e-2), so the cut at STRUCTURAL_ZERO is far from both.
    """
    largest = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()]).amax(dim=0)  # (N,)
    return {
        name: (taus[name].flatten(1).abs().amax(dim=1) > ZERO)
        & (grad.flatten(1).norm(dim=1) > STRUCTURAL_ZERO * largest.clamp_min(ZERO))
        for name, grad in grads.items()
    }


def probe_gradients(
    block: BlockFn, theta0: Params, experts: list[Params], anchors: torch.Tensor, kind: Similarity = "cosine"
) -> dict[str, torch.Tensor]:
    """g_i at PROBE_ANCHORS unit-scale Gaussian inputs shaped like `anchors` (fixed seed, no graph)."""
    generator = torch.Generator(device=anchors.device).manual_seed(0)
    shape = (anchors.shape[0], min(PROBE_ANCHORS, anchors.shape[1]), *anchors.shape[2:])
    probe = torch.randn(shape, generator=generator, device=anchors.device, dtype=anchors.dtype)
    return similarity_gradients(block, theta0, experts, probe, create_graph=False, kind=kind)


class _Tracker:
    """Per task: best loss, its anchors and cosines, and whether the task has plateaued.

    A task's result depends only on its own trajectory (the loss is separable and AdamW is
    elementwise), so constructing tasks together or apart gives the same anchors.
    """

    def __init__(self, anchors: torch.Tensor, cosines: dict[str, torch.Tensor], settings: ConstructionSettings) -> None:
        tasks = anchors.shape[0]
        self.settings = settings
        self.best = torch.full((tasks,), math.inf)
        self.anchors = anchors.detach().clone()
        self.cosines = {k: v.clone() for k, v in cosines.items()}
        self.done = [False] * tasks
        self.steps = [0] * tasks
        self.history: list[list[float]] = []

    def record(self, step: int, gaps: torch.Tensor, anchors: torch.Tensor, cosines: dict[str, torch.Tensor]) -> None:
        self.history.append(gaps.tolist())
        for i in range(len(self.done)):
            if self.done[i]:
                continue
            self.steps[i] = step + 1
            if gaps[i] < self.best[i]:
                self.best[i] = gaps[i]
                self.anchors[i] = anchors[i].detach()
                for name, value in cosines.items():
                    self.cosines[name][i] = value[i]
            self.done[i] = self._plateaued(i)

    def _plateaued(self, task: int) -> bool:
        patience = self.settings.patience
        if len(self.history) <= patience:
            return False
        series = [row[task] for row in self.history]
        return min(series[:-patience]) - min(series) < self.settings.tolerance


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
    active = active_tensors(probe_gradients(block, theta0, experts, anchors.detach(), settings.similarity), taus)
    pairs = torch.stack(list(active.values())).sum(dim=0).clamp_min(1).float().cpu()  # (N,), once
    tracker = _Tracker(anchors, per_tensor_cosines(first, taus), settings)
    tracker.best = (alignment_loss(first, taus, active).cpu() / pairs).detach()  # step 0: the initial anchors
    stopped = False
    for step in range(settings.steps):
        if all(tracker.done):
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        optimiser.zero_grad(set_to_none=True)
        live = [i for i, done in enumerate(tracker.done) if not done]
        losses, live_cosines = _step_live_tasks(block, theta0, experts, taus, active, anchors, settings, live)
        gaps = tracker.best.clone()  # a plateaued task repeats its best
        gaps[live] = losses / pairs[live]
        cosines = {name: value.clone() for name, value in tracker.cosines.items()}
        for name, value in live_cosines.items():
            cosines[name][live] = value.to(cosines[name].device)
        tracker.record(step, gaps, anchors, cosines)
        if on_step is not None:
            on_step(step, gaps.tolist())
        optimiser.step()
    return ConstructionResult(
        tracker.anchors, tracker.best, tracker.cosines, active, tracker.steps, tracker.history, stopped
    )


def _step_live_tasks(
    block: BlockFn,
    theta0: Params,
    experts: list[Params],
    taus: dict[str, torch.Tensor],
    active: dict[str, torch.Tensor],
    anchors: torch.Tensor,
    settings: ConstructionSettings,
    live: list[int],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step of the `live` tasks only: their losses (len(live),) and per-tensor cosines.

    A task that has plateaued leaves the pass (its gradient rows stay zero; its best anchors are
    already kept), so the remaining tasks' steps cost what they would alone — and their anchors
    are unchanged, since tasks are independent (see _Tracker). In the history and the progress
    callback a finished task repeats its best loss.
    """
    rows = None
    if len(live) < anchors.shape[0]:
        rows = torch.tensor(live, device=anchors.device)
        experts = [experts[i] for i in live]
        taus = {name: value[rows] for name, value in taus.items()}
        active = {name: value[rows] for name, value in active.items()}
    losses, grads = _loss_and_backward(block, theta0, experts, taus, active, anchors, settings, rows)
    return losses.cpu(), per_tensor_cosines(grads, taus)


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
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-task L and ∂ΣL/∂X accumulated into anchors.grad; exact whether or not the pass is chunked.

    With `rows`, only those tasks' anchors take part; each graph indexes the leaf afresh (an index
    node's saved indices are freed by the first backward through it), so the gradient lands in
    those rows of anchors.grad.
    """

    def taking_part() -> torch.Tensor:
        return anchors if rows is None else anchors[rows]

    n = anchors.shape[1]
    chunks = _chunks(n, settings.chunk_size)
    if len(chunks) == 1:
        grads = similarity_gradients(block, theta0, experts, taking_part(), create_graph=True, kind=settings.similarity)
        loss = alignment_loss(grads, taus, active)
        loss.sum().backward(inputs=[anchors])  # only ∂L/∂X: no unused weight gradients
        return loss.detach(), {k: v.detach() for k, v in grads.items()}
    total = _gradients(block, theta0, experts, taking_part().detach(), settings)
    leaves = {k: v.requires_grad_(True) for k, v in total.items()}
    loss = alignment_loss(leaves, taus, active)
    directions = dict(zip(leaves, torch.autograd.grad(loss.sum(), list(leaves.values()))))  # v = ∂L/∂g
    for start, end in chunks:
        weight = (end - start) / n
        part = similarity_gradients(
            block,
            theta0,
            experts,
            taking_part()[:, start:end],
            create_graph=True,
            weight=weight,
            kind=settings.similarity,
        )
        inner = sum((part[k] * directions[k]).sum() for k in part)
        inner.backward(inputs=[anchors])  # type: ignore[union-attr]
    return loss.detach(), {k: v.detach() for k, v in total.items()}
