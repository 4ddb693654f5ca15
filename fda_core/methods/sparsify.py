"""Sparsifiers of a task vector τ: keep the largest, drop at random, or drop both tails.

Top-k selection uses a k-th value threshold (O(n)) rather than a full sort (O(n log n)).
"""

from __future__ import annotations

import torch


def smallest(values: torch.Tensor, count: int) -> torch.Tensor:
    """True on exactly `count` smallest entries; ties at the cut broken by position. O(n) via k-th value."""
    n = values.numel()
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if count >= n:
        return torch.ones_like(values, dtype=torch.bool)
    flat = values.reshape(-1)
    threshold = torch.kthvalue(flat.float(), count).values.to(flat.dtype)
    mask = flat < threshold
    missing = count - int(mask.sum())
    if missing > 0:  # entries equal to the threshold: take the first `missing` of them
        tied = torch.nonzero(flat == threshold).reshape(-1)[:missing]
        mask[tied] = True
    return mask.reshape(values.shape)


def magnitude_mask(tau: torch.Tensor, density: float) -> torch.Tensor:
    """True on the k = max(1, ⌊density·n⌋) entries of largest |τ| (TIES' trim step).

    When entries of equal |τ| straddle the cut (common in real fine-tunes: AdamW's first steps move many
    weights by the same amount), which of them survive is an ordering choice; mergekit's is its descending
    argsort, so that case sorts as mergekit does (O(n log n)) and gives its tensors. Otherwise O(n)."""
    n = tau.numel()
    if density >= 1:
        return torch.ones_like(tau, dtype=torch.bool)
    if density <= 0 or n == 0:
        return torch.zeros_like(tau, dtype=torch.bool)
    k = max(1, int(density * n))
    flat = tau.abs().reshape(-1).float()
    cut = torch.kthvalue(flat, n - k + 1).values  # the k-th largest |τ|
    keep = flat >= cut
    if int(keep.sum()) == k:  # no tie straddles the cut
        return keep.reshape(tau.shape)
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    keep[torch.argsort(flat, descending=True)[:k]] = True
    return keep.reshape(tau.shape)


def band_mask(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the top γ·n outliers and the smallest, keeping ⌊density·n⌋ entries."""
    n = tau.numel()
    if density >= 1:
        return torch.ones_like(tau, dtype=torch.bool)
    keep = int(density * n)
    top = int(gamma * n)
    bottom = max(0, n - keep - top)
    if keep == 0:
        return torch.zeros_like(tau, dtype=torch.bool)
    magnitude = tau.abs()
    return smallest(magnitude, bottom + keep) & ~smallest(magnitude, bottom)


def bernoulli_mask(tau: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's drop: keep each entry with probability `density`."""
    if density >= 1:
        return torch.ones_like(tau, dtype=torch.bool)
    probabilities = torch.full_like(tau, density, dtype=torch.float32)
    return torch.bernoulli(probabilities, generator=generator).bool()


def rescale(tau: torch.Tensor, kept: torch.Tensor, density: float, mode: str) -> torch.Tensor:
    """Restore the magnitude lost by dropping: 1/density (DARE paper), L1 norm (mergekit) or none."""
    if mode == "inverse_density" and 0 < density < 1:
        return kept / density
    if mode == "l1":
        before, after = tau.abs().sum(), kept.abs().sum()
        if before > 1e-7 and after > 1e-7:
            return kept * (before / after)
    return kept
