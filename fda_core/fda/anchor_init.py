"""Initial anchors (§2.2): scaled Gaussian noise, or rows of the expert's own weight matrices.

Energy the initial anchors put into the near-zero singular directions of ΔWᵀΔW barely moves
during optimisation and caps the achievable cosine (Prop. 2.1), hence small σ (0.01) or rows of
the expert's weights, which live in its row space.
"""

from __future__ import annotations

import math

import torch

from fda_core.fda.objective import Params


def gaussian_anchors(shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> torch.Tensor:
    """σ·N(0, I) of `shape` (n, …)."""
    return sigma * torch.randn(shape, generator=generator, device=generator.device)


def weight_row_anchors(shape: tuple[int, ...], expert: Params, generator: torch.Generator) -> torch.Tensor:
    """Rows of the expert block's 2-D weights whose input width equals the anchor width d.

    Sampled without replacement; when there are fewer rows than n·T vectors, the rest are
    midpoints of random row pairs. Falls back to N(0, 0.01²) if no weight has input width d.
    """
    width = shape[-1]
    rows = [w.detach().reshape(-1, width) for w in expert.values() if w.dim() == 2 and w.shape[1] == width]
    needed = math.prod(shape[:-1])
    if not rows:
        return gaussian_anchors(shape, 0.01, generator)
    pool = torch.cat(rows)  # (R, d)
    picked = pool[torch.randperm(len(pool), generator=generator, device=generator.device)[:needed]]
    if len(picked) < needed:
        missing = needed - len(picked)
        a = torch.randint(len(pool), (missing,), generator=generator, device=generator.device)
        b = torch.randint(len(pool), (missing,), generator=generator, device=generator.device)
        picked = torch.cat([picked, (pool[a] + pool[b]) / 2])
    return picked.reshape(shape).clone()
