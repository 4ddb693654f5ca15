"""`sigma: auto` (the paper's App. C.5): the scale of the Gaussian initial anchors, chosen by trial.

The same initial draw is tried at each candidate scale for a few construction steps on one block;
the scale whose anchors align best with the task vectors is kept for every block. The loss is
scale-invariant in X, so σ acts like Adam's relative step: too large and the anchors barely move
off their start, too small and the first steps overshoot (Tab. 4: 1e-2 best, 1e-4 and 10 worst).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fda_core.fda.construction import ConstructionSettings, construct_anchors
from fda_core.fda.objective import BlockFn, Params

SIGMA_CANDIDATES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TRIAL_STEPS = 25


def choose_sigma(
    block: BlockFn,
    theta0: Params,
    experts: list[Params],
    taus: dict[str, torch.Tensor],
    unit: torch.Tensor,
    settings: ConstructionSettings,
) -> tuple[float, dict[str, float]]:
    """(best σ, {σ: mean 1 − cos after TRIAL_STEPS}) for unit-scale initial anchors `unit` (N, n, …)."""
    trial = replace(settings, steps=TRIAL_STEPS, patience=TRIAL_STEPS + 1)  # every candidate runs every step
    scores = {}
    for sigma in SIGMA_CANDIDATES:
        result = construct_anchors(block, theta0, experts, taus, sigma * unit, trial)
        scores[f"{sigma:g}"] = float(result.loss.mean())
    best = min(scores, key=lambda s: scores[s])
    return float(best), scores
