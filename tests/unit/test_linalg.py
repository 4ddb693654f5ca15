"""thin_svd: the SVD that methods use survives LAPACK's convergence failures."""

from __future__ import annotations

import pytest
import torch

import fda_core.linalg as linalg
from fda_core.linalg import thin_svd


def failing_in(dtypes: set[torch.dtype], real=torch.linalg.svd):
    """torch.linalg.svd as LAPACK behaves on a matrix it cannot converge on in these dtypes."""

    def svd(matrix: torch.Tensor, full_matrices: bool = True):
        if matrix.dtype in dtypes:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(matrix, full_matrices=full_matrices)

    return svd


@pytest.mark.parametrize("failing", [{torch.float32}, {torch.float32, torch.float64}])
def test_a_convergence_failure_falls_back_and_still_decomposes_the_matrix(monkeypatch, failing) -> None:
    matrix = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    calls = {"n": 0}
    real = torch.linalg.svd

    def flaky(m: torch.Tensor, full_matrices: bool = True):
        calls["n"] += 1
        if m.dtype in failing and not (calls["n"] == 3):  # the jittered float64 retry is the third call
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(m, full_matrices=full_matrices)

    monkeypatch.setattr(linalg.torch.linalg, "svd", flaky)
    u, s, vh = thin_svd(matrix)
    assert (u.dtype, u.shape, s.shape, vh.shape) == (torch.float32, (12, 7), (7,), (7, 7))
    torch.testing.assert_close(u @ torch.diag(s) @ vh, matrix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u.T @ u, torch.eye(7), atol=1e-5, rtol=1e-5)
    assert calls["n"] == 1 + len(failing)


def test_iso_cts_merges_through_a_convergence_failure(monkeypatch) -> None:
    from fda_core.methods.iso_cts import iso_cts_delta

    generator = torch.Generator().manual_seed(1)
    taus = [torch.randn(16, 16, generator=generator) for _ in range(2)]
    expected = iso_cts_delta(taus, 0.8)
    monkeypatch.setattr(linalg.torch.linalg, "svd", failing_in({torch.float32}))
    torch.testing.assert_close(iso_cts_delta(taus, 0.8), expected, atol=1e-4, rtol=1e-4)
