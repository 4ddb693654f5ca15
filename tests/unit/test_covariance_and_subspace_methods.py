"""Known answers for the 2025–26 data-free methods: ACE-Merging, Iso-CTS and SVC."""

from __future__ import annotations

import pytest
import torch

from fda_core.methods.ace import AceParams, ace_delta, heterogeneous
from fda_core.methods.iso_cts import iso_cts_delta, subspace_sizes
from fda_core.methods.svc import calibrate
from tests.unit.test_methods import merge, rand

BLOCK = "model.layers.0.mlp.up_proj.weight"


def literal_ace(taus: list[torch.Tensor], eps: float, gate: float, k_frac: float) -> torch.Tensor:
    """Eqs. 5–19 written out with every task's matrices held and an explicit inverse."""
    t = torch.stack(taus).double()  # (T, m, n)
    n = t.shape[2]
    eye = torch.eye(n, dtype=torch.float64)
    logs = torch.log(t.pow(2).sum(dim=(1, 2)) + 1e-12)
    flag = bool(logs.var() / (logs.mean() ** 2 + 1e-12) > gate)
    centred = t - t.mean(dim=1, keepdim=True)
    proxies = centred.transpose(1, 2) @ centred  # (T, n, n)
    traces = proxies.diagonal(dim1=1, dim2=2).sum(dim=1)[:, None, None] + 1e-12
    sigma = proxies / traces if flag else proxies
    reg = sigma + (eps / traces if flag else eps) * eye
    prior = torch.ones(n, 1, dtype=torch.float64) @ sigma.sum(0).mean(dim=0, keepdim=True)
    if flag:
        prior = prior / (t.pow(2).sum(dim=(1, 2)).mean() + 1e-12)
    pre = (centred @ reg).sum(0) @ torch.linalg.inv(reg.sum(0) + prior)
    if not flag:
        return pre.float()
    residual = (t @ (sigma - reg.mean(0))).sum(0)
    u, s, vh = torch.linalg.svd(pre + residual, full_matrices=False)
    k = int(k_frac * len(s))
    return (pre + s[:k].mean() * u[:, :k] @ vh[:k]).float()


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0), (1.0, 30.0, 0.05)], ids=["homogeneous", "heterogeneous"])
def test_ace_matches_its_equations_written_out(scales) -> None:
    taus = [scale * 0.1 * rand(12, 7, seed=s) for s, scale in enumerate(scales)]
    params = AceParams(eps=1e-3)
    assert heterogeneous(taus, params.gate)[0] == (scales[1] != 1.0)
    expected = literal_ace(taus, 1e-3, params.gate, params.k_frac)
    torch.testing.assert_close(ace_delta(taus, params), expected, atol=1e-4, rtol=1e-4)


def test_ace_without_refinement_has_no_mean_row_component() -> None:
    """The numerator uses centred task vectors, so the closed form's columns sum to zero (Eq. 14)."""
    taus = [0.1 * rand(9, 5, seed=s) + 0.3 for s in range(3)]
    assert not heterogeneous(taus, 0.3)[0]
    torch.testing.assert_close(ace_delta(taus, AceParams()).sum(dim=0), torch.zeros(5), atol=1e-5, rtol=0)


def test_ace_merges_block_weights_and_averages_the_rest() -> None:
    base, experts = rand(6, 4), [rand(6, 4, seed=s) for s in (1, 2)]
    taus = [e - base for e in experts]
    inside = merge("ace", base, experts, {"lambda": 0.5}, name=BLOCK)
    torch.testing.assert_close(inside, base + 0.5 * ace_delta(taus, AceParams()))
    outside = merge("ace", base, experts, {"lambda": 0.5}, name="model.embed_tokens.weight")
    torch.testing.assert_close(outside, base + 0.5 * (taus[0] + taus[1]) / 2)


def test_iso_cts_of_one_task_is_iso_c() -> None:
    base, expert = torch.zeros(10, 6), rand(10, 6, seed=3)
    torch.testing.assert_close(merge("iso_cts", base, [expert]), merge("iso_c", base, [expert]), atol=1e-5, rtol=1e-5)


def test_iso_cts_spectrum_is_flat_at_the_mean_of_the_selected_singular_values() -> None:
    taus = [rand(16, 16, seed=s) for s in range(4)]
    k, s = subspace_sizes(16, 4, 0.8)
    assert (k, s) == (12, 1)  # ⌊0.8·16⌋ = 12, the 4 remaining directions split one per task
    delta = iso_cts_delta(taus, 0.8)
    common = torch.linalg.svdvals(sum(taus))[:k]
    u = torch.linalg.svd(sum(taus))[0][:, :k]
    specific = [torch.linalg.svdvals(t - u @ (u.T @ t))[:s] for t in taus]
    expected = torch.cat([common, *specific]).mean()
    singular = torch.linalg.svdvals(delta)
    torch.testing.assert_close(singular, torch.full_like(singular, float(expected)), atol=1e-4, rtol=1e-4)


def test_svc_leaves_a_single_tasks_own_spectrum_alone() -> None:
    tau = rand(9, 7, seed=1)
    torch.testing.assert_close(calibrate(tau, [tau], alpha=1.0), tau, atol=1e-5, rtol=1e-5)


def test_svc_divides_a_direction_owned_by_one_task_by_the_mean_share() -> None:
    """Orthogonal tasks: along task 1's direction s = (1, 0), so η = (1 + max(0, α))/2 = 0.75 at α = ½."""
    a = torch.zeros(6, 6)
    b = torch.zeros(6, 6)
    a[0, 0], b[1, 1] = 2.0, 1.0
    calibrated = calibrate(a + b, [a, b], alpha=0.5)
    torch.testing.assert_close(calibrated, (a + b) / 0.75, atol=1e-5, rtol=1e-5)


def test_svc_brings_a_direction_summed_twice_back_to_one_tasks_size() -> None:
    """Two tasks pushing the same direction: TA's sum doubles it (s = 2 each); SVC restores it."""
    tau = torch.zeros(5, 5)
    tau[2, 3] = 1.5
    torch.testing.assert_close(calibrate(2 * tau, [tau, tau], alpha=0.5), tau, atol=1e-5, rtol=1e-5)


def test_svc_calibrates_another_method_and_keeps_its_values_outside_the_blocks() -> None:
    base, experts = rand(8, 8), [rand(8, 8, seed=s) for s in (1, 2, 3)]
    params = {"on": "task_arithmetic", "on_parameters": {"lambda": 1.0}}
    inside = merge("svc", base, experts, params, name=BLOCK)
    ta = merge("task_arithmetic", base, experts, {"lambda": 1.0}, name=BLOCK)
    expected = base + calibrate(ta - base, [e - base for e in experts], alpha=1 / 3)
    torch.testing.assert_close(inside, expected)
    outside = merge("svc", base, experts, params, name="model.norm.weight")
    torch.testing.assert_close(outside, merge("task_arithmetic", base, experts, {"lambda": 1.0}))


def test_svc_refuses_a_method_it_cannot_calibrate() -> None:
    from fda_core.methods.svc import SvcParams

    with pytest.raises(ValueError, match="cannot be calibrated"):
        SvcParams(on="fda")
