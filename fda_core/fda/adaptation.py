"""Adaptation: fit the merged block to every expert's outputs on its anchors.

Eq. 5 trains the block's weights from θ0. Eq. 6 trains coefficients instead:
θ = θ0 + Σ_r α_r ⊙ D_r, with D_r = τ_r and α_r = λ·w_r for task arithmetic, or one direction
D = θm − θ0 with α = 1 for any other parameter-space merge θm; entries where D = 0 never move.
The paper's α is elementwise (one per entry of D); `row` keeps one per output row and `tensor`
one per tensor, which the anchors determine far better (docs/fda.md, "how well determined").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from fda_core.fda.objective import BlockFn, Params

Loss = Literal["cosine", "mse"]
Granularity = Literal["elementwise", "row", "tensor"]


@dataclass(frozen=True)
class AdaptationSettings:
    loss: Loss = "cosine"
    epochs: int = 100
    lr: float = 1e-5
    batch_size: int = 128
    bf16: bool = False  # forward and backward under bfloat16 autocast; trainable tensors stay fp32
    granularity: Granularity = "elementwise"  # Eq. 6: one α per entry, per output row, or per tensor


@dataclass
class AdaptationResult:
    params: Params  # the adapted block's tensors
    first_loss: float
    last_loss: float
    history: list[float] = field(default_factory=list)  # mean loss per epoch
    trained: int = 0  # how many values adaptation trained (weights, or Eq. 6's coefficients)


def output_distance(output: torch.Tensor, target: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Mean over anchors of 1 − cos (each output flattened) or of the summed squared error."""
    if loss == "cosine":
        return (1 - F.cosine_similarity(output.flatten(1), target.flatten(1), dim=1, eps=1e-12)).mean()
    return (output - target).pow(2).flatten(1).sum(dim=1).mean()


def coefficient_shape(shape: torch.Size, granularity: Granularity) -> tuple[int, ...]:
    """The shape of one direction's α for a tensor of `shape`; it broadcasts against the tensor.

    A row is everything sharing the first (output) index: a weight's output unit, one entry of
    a bias or LayerNorm vector (so for 1-D tensors `row` is `elementwise`).
    """
    if granularity == "elementwise" or len(shape) == 0:
        return tuple(shape)
    if granularity == "row":
        return (shape[0], *([1] * (len(shape) - 1)))
    return (1,) * len(shape)


def adapt_weights(
    block: BlockFn,
    theta0: Params,
    anchors: torch.Tensor,
    targets: torch.Tensor,
    settings: AdaptationSettings,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None = None,
) -> AdaptationResult:
    """Eq. 5: min_θ Σ_ij Dist(f(θ, x_ij), f(θi, x_ij)) from θ = θ0; anchors and targets pooled (M, …)."""
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in theta0.items()}
    history = _train(lambda: weights, list(weights.values()), block, anchors, targets, settings, generator, should_stop)
    trained = sum(v.numel() for v in weights.values())
    return AdaptationResult({k: v.detach() for k, v in weights.items()}, history[0], history[-1], history, trained)


def adapt_coefficients(
    block: BlockFn,
    theta0: Params,
    directions: list[Params],
    initial: Sequence[float | dict[str, float]],
    anchors: torch.Tensor,
    targets: torch.Tensor,
    settings: AdaptationSettings,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None = None,
) -> AdaptationResult:
    """Eq. 6: θ = θ0 + Σ_r α_r ⊙ D_r, α_r initialised to initial[r] (one value, or one per tensor),
    shaped by settings.granularity (coefficient_shape)."""
    starts: list[dict[str, float]] = [
        a if isinstance(a, dict) else dict.fromkeys(d, float(a)) for d, a in zip(directions, initial)
    ]
    alphas = [
        {
            k: torch.full(
                coefficient_shape(v.shape, settings.granularity), start[k], dtype=v.dtype, device=v.device
            ).requires_grad_()
            for k, v in d.items()
        }
        for d, start in zip(directions, starts)
    ]

    def compose() -> Params:
        return {k: theta0[k] + sum(alpha[k] * d[k] for alpha, d in zip(alphas, directions)) for k in theta0}

    trainable = [t for alpha in alphas for t in alpha.values()]
    history = _train(compose, trainable, block, anchors, targets, settings, generator, should_stop)
    with torch.no_grad():
        final = {k: v.detach() for k, v in compose().items()}
    return AdaptationResult(final, history[0], history[-1], history, sum(t.numel() for t in trainable))


def _train(
    compose: Callable[[], Params],
    trainable: list[torch.Tensor],
    block: BlockFn,
    anchors: torch.Tensor,
    targets: torch.Tensor,
    settings: AdaptationSettings,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None,
) -> list[float]:
    optimiser = torch.optim.Adam(trainable, lr=settings.lr)
    history: list[float] = []
    if settings.epochs == 0:  # no training: report the starting loss
        with torch.no_grad():
            return [float(output_distance(block(compose(), anchors), targets, settings.loss))]
    for _ in range(settings.epochs):
        if should_stop is not None and should_stop():
            history.append(history[-1] if history else float("nan"))
            break
        order = torch.randperm(len(anchors), generator=generator).to(anchors.device)
        total, count = 0.0, 0
        for start in range(0, len(anchors), settings.batch_size):
            index = order[start : start + settings.batch_size]
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(anchors.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                output = block(compose(), anchors[index])
            loss = output_distance(output.float(), targets[index], settings.loss)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        history.append(total / count)
    return history
