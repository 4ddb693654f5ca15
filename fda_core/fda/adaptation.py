"""Adaptation: fit the merged block to every expert's outputs on its anchors.

Eq. 5 trains the block's weights from θ0. Eq. 6 trains elementwise coefficients instead:
θ = θ0 + Σ_r α_r ⊙ D_r, with D_r = τ_r and α_r = λ·w_r for task arithmetic, or one direction
D = θm − θ0 with α = 1 for any other parameter-space merge θm; entries where D = 0 never move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from fda_core.fda.objective import BlockFn, Params

Loss = Literal["cosine", "mse"]


@dataclass(frozen=True)
class AdaptationSettings:
    loss: Loss = "cosine"
    epochs: int = 100
    lr: float = 1e-5
    batch_size: int = 128
    bf16: bool = False  # forward and backward under bfloat16 autocast; trainable tensors stay fp32


@dataclass
class AdaptationResult:
    params: Params  # the adapted block's tensors
    first_loss: float
    last_loss: float
    history: list[float] = field(default_factory=list)  # mean loss per epoch


def output_distance(output: torch.Tensor, target: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Mean over anchors of 1 − cos (each output flattened) or of the summed squared error."""
    if loss == "cosine":
        return (1 - F.cosine_similarity(output.flatten(1), target.flatten(1), dim=1, eps=1e-12)).mean()
    return (output - target).pow(2).flatten(1).sum(dim=1).mean()


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
    return AdaptationResult({k: v.detach() for k, v in weights.items()}, history[0], history[-1], history)


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
    """Eq. 6: θ = θ0 + Σ_r α_r ⊙ D_r with α_r (elementwise) initialised to initial[r] (one value, or one per tensor)."""
    starts: list[dict[str, float]] = [
        a if isinstance(a, dict) else dict.fromkeys(d, float(a)) for d, a in zip(directions, initial)
    ]
    alphas = [
        {k: torch.full_like(v, start[k], requires_grad=True) for k, v in d.items()}
        for d, start in zip(directions, starts)
    ]

    def compose() -> Params:
        return {k: theta0[k] + sum(alpha[k] * d[k] for alpha, d in zip(alphas, directions)) for k in theta0}

    trainable = [t for alpha in alphas for t in alpha.values()]
    history = _train(compose, trainable, block, anchors, targets, settings, generator, should_stop)
    with torch.no_grad():
        final = {k: v.detach() for k, v in compose().items()}
    return AdaptationResult(final, history[0], history[-1], history)


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
