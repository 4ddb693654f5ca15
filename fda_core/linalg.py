"""A thin SVD that does not fail on the matrices merges make.

LAPACK's divide-and-conquer SVD (gesdd, torch's CPU default) can fail to converge on float32
matrices with many (nearly) repeated singular values — exactly what concatenated, orthogonalised
task subspaces are (Iso-CTS and TSV-M's [U₁ … U_N] has hundreds of singular values at √2). Such a
failure is not the user's input being wrong, so it must not end the merge: retry in float64, then,
as a last resort, on the matrix with a perturbation far below float32's resolution.
"""

from __future__ import annotations

import torch

JITTER = 1e-9  # relative to the largest entry; float32 resolves 6e-8


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vᴴ) with full_matrices=False, in the matrix's dtype."""
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        pass
    wide = matrix.double()
    try:
        u, s, vh = torch.linalg.svd(wide, full_matrices=False)
    except torch.linalg.LinAlgError:
        generator = torch.Generator(device=matrix.device).manual_seed(0)
        noise = torch.randn(wide.shape, generator=generator, device=matrix.device, dtype=wide.dtype)
        u, s, vh = torch.linalg.svd(wide + JITTER * wide.abs().max() * noise, full_matrices=False)
    return u.to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)
