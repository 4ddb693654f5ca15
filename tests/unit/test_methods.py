"""Known answers and properties of every parameter-space method, on random tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fda_core.methods import get_method, method_names
from fda_core.methods.base import TensorInputs
from fda_core.methods.sparsify import band_mask, magnitude_mask

EXPECTED_METHODS = {
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp",
    "model_stock", "breadcrumbs", "tsv", "wudi", "iso_c",
}  # fmt: skip


def merge(method: str, base, experts, params=None, model_params=None, seed=0, name="w"):
    m = get_method(method)
    model_params = model_params or [{} for _ in experts]
    generator = torch.Generator().manual_seed(seed) if m.uses_randomness else None
    inputs = TensorInputs(
        name,
        base,
        experts,
        m.params_type.model_validate(params or {}),
        [m.model_params_type.model_validate(p) for p in model_params],
        generator,
    )
    return m.merge(inputs)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_every_issue_method_is_registered() -> None:
    assert set(method_names()) >= EXPECTED_METHODS


def test_task_arithmetic_with_lambda_zero_returns_the_base() -> None:
    base = rand(8, 8)
    assert torch.equal(merge("task_arithmetic", base, [rand(8, 8, seed=1), rand(8, 8, seed=2)], {"lambda": 0.0}), base)


def test_task_arithmetic_adds_weighted_task_vectors() -> None:
    base, a, b = rand(5), rand(5, seed=1), rand(5, seed=2)
    got = merge("task_arithmetic", base, [a, b], {"lambda": 0.5}, [{"weight": 2.0}, {"weight": -1.0}])
    torch.testing.assert_close(got, base + 0.5 * (2 * (a - base) - (b - base)))


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "model_stock", "breadcrumbs"])
def test_identical_experts_merge_to_that_expert(method: str) -> None:
    base, expert = rand(6, 4), rand(6, 4, seed=3)
    params = {"normalize": True} if method in ("breadcrumbs", "dare_ties") else {}
    model_params = [{"density": 1.0}] * 3 if method in ("ties", "dare_ties", "breadcrumbs") else None
    got = merge(method, base, [expert.clone() for _ in range(3)], params, model_params)
    torch.testing.assert_close(got, expert, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("t", "pick"), [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints_return_the_endpoint_models(t: float, pick: int) -> None:
    base, other = rand(16, 8), rand(16, 8, seed=5)
    torch.testing.assert_close(merge("slerp", base, [other], {"t": t}), [base, other][pick])


def test_slerp_midpoint_of_orthogonal_vectors_stays_on_the_circle() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(merge("slerp", a, [b], {"t": 0.5}), torch.tensor([0.5**0.5, 0.5**0.5]))


def test_linear_is_the_weighted_mean_of_the_models() -> None:
    a, b = rand(4), rand(4, seed=1)
    torch.testing.assert_close(
        merge("linear", None, [a, b], {}, [{"weight": 3.0}, {"weight": 1.0}]), 0.75 * a + 0.25 * b
    )


def test_ties_keeps_only_entries_that_agree_with_the_elected_sign() -> None:
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, -1.0, 0.5])
    # elected signs: +, -, +, + ; disjoint mean of agreeing entries
    torch.testing.assert_close(merge("ties", base, [a, b]), torch.tensor([1.5, -2.0, 3.0, 0.5]))


def test_dare_is_reproducible_per_seed_and_varies_across_seeds() -> None:
    base, experts = rand(64, 64), [rand(64, 64, seed=1), rand(64, 64, seed=2)]
    half = [{"density": 0.5}] * 2
    first, again = (merge("dare_linear", base, experts, {}, half, seed=7) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, merge("dare_linear", base, experts, {}, half, seed=8))


def test_dare_with_density_one_is_task_arithmetic() -> None:
    base, experts = rand(10), [rand(10, seed=1), rand(10, seed=2)]
    full = [{"density": 1.0}] * 2
    torch.testing.assert_close(merge("dare_linear", base, experts, {}, full), merge("task_arithmetic", base, experts))


def test_dare_inverse_density_rescale_preserves_the_task_vector_in_expectation() -> None:
    base, expert = torch.zeros(200_000), torch.ones(200_000)
    got = merge("dare_linear", base, [expert], {}, [{"density": 0.25}])
    assert set(got.unique().tolist()) <= {0.0, 4.0}
    assert abs(float(got.mean()) - 1.0) < 0.02


def test_tsv_with_one_expert_reproduces_it() -> None:
    base, expert = rand(12, 7), rand(12, 7, seed=9)
    torch.testing.assert_close(merge("tsv", base, [expert]), expert, atol=1e-5, rtol=1e-5)


def test_tsv_keeps_floor_rank_over_tasks_per_expert() -> None:
    base = torch.zeros(8, 8)
    experts = [rand(8, 8, seed=s) for s in range(4)]
    delta = merge("tsv", base, experts)
    assert int(torch.linalg.matrix_rank(delta)) == 8  # 4 tasks × ⌊8/4⌋ = 8 directions


def test_iso_c_flattens_the_spectrum_of_the_summed_task_vector() -> None:
    base = torch.zeros(10, 6)
    delta = merge("iso_c", base, [rand(10, 6, seed=1), rand(10, 6, seed=2)])
    singular = torch.linalg.svdvals(delta)
    expected = torch.linalg.svdvals(rand(10, 6, seed=1) + rand(10, 6, seed=2)).mean()
    torch.testing.assert_close(singular, torch.full_like(singular, float(expected)), atol=1e-4, rtol=1e-4)


def test_wudi_without_steps_is_the_sum_of_task_vectors() -> None:
    base, experts = rand(6, 3), [rand(6, 3, seed=1), rand(6, 3, seed=2)]
    got = merge("wudi", base, experts, {"steps": 0}, name="model.layers.0.self_attn.q_proj.weight")
    torch.testing.assert_close(got, base + sum(e - base for e in experts))


def test_wudi_takes_the_mean_task_vector_outside_the_blocks() -> None:
    base, experts = rand(6, 3), [rand(6, 3, seed=1), rand(6, 3, seed=2)]
    got = merge("wudi", base, experts, {"steps": 50, "lr": 1e-2}, name="model.embed_tokens.weight")
    torch.testing.assert_close(got, base + sum(e - base for e in experts) / 2)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6)])
def test_wudi_lowers_its_interference_objective(shape) -> None:
    from fda_core.methods.wudi import interference

    base, experts = torch.zeros(shape), [rand(*shape, seed=s) for s in (1, 2, 3)]
    taus = [e - base for e in experts]
    grams = [None] * 3
    start = interference(sum(taus), taus, grams)
    merged = merge("wudi", base, experts, {"steps": 200, "lr": 1e-2}, name="model.layers.0.mlp.up_proj.weight")
    assert interference(merged, taus, grams) < 0.5 * start


@pytest.mark.parametrize("shape", [(20, 6), (8, 20), (3, 40)])  # tall, wide (A formed), very wide (per task)
def test_wudi_closed_form_gradient_equals_autograd(shape) -> None:
    from fda_core.methods.wudi import InterferenceGradient, interference

    taus = [rand(*shape, seed=s) * s for s in (1, 2, 3)]
    tau_m = (sum(taus) + rand(*shape, seed=9)).requires_grad_(True)
    interference(tau_m, taus, [None] * 3).backward()
    torch.testing.assert_close(InterferenceGradient(taus)(tau_m.detach()), tau_m.grad, rtol=1e-4, atol=1e-4)


def test_model_stock_moves_towards_the_base_when_experts_disagree() -> None:
    base = torch.zeros(1000)
    a, b = rand(1000, seed=1), rand(1000, seed=2)  # nearly orthogonal task vectors: t ≈ 0
    got = merge("model_stock", base, [a, b])
    assert float(got.norm()) < 0.2 * float(((a + b) / 2).norm())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), density=st.floats(0.01, 0.99), seed=st.integers(0, 10**6))
def test_magnitude_mask_keeps_exactly_k_largest(n: int, density: float, seed: int) -> None:
    tau = rand(n, seed=seed)
    mask = magnitude_mask(tau, density)
    k = max(1, int(density * n))
    assert int(mask.sum()) == k
    if k < n:
        assert float(tau.abs()[mask].min()) >= float(tau.abs()[~mask].max())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 500), density=st.floats(0.1, 0.9), gamma=st.floats(0.0, 0.05), seed=st.integers(0, 10**6))
def test_breadcrumbs_band_drops_both_tails(n: int, density: float, gamma: float, seed: int) -> None:
    tau = rand(n, seed=seed)
    mask = band_mask(tau, density, gamma)
    assert int(mask.sum()) == int(density * n)
    order = tau.abs().argsort()
    bottom = max(0, n - int(density * n) - int(gamma * n))
    assert not mask[order[:bottom]].any()


@settings(max_examples=30, deadline=None)
@given(lam=st.floats(-2, 2), seed=st.integers(0, 10**6))
def test_task_arithmetic_is_linear_in_lambda(lam: float, seed: int) -> None:
    base, experts = rand(7, seed=seed), [rand(7, seed=seed + 1), rand(7, seed=seed + 2)]
    one = merge("task_arithmetic", base, experts, {"lambda": 1.0})
    torch.testing.assert_close(
        merge("task_arithmetic", base, experts, {"lambda": lam}), base + lam * (one - base), atol=1e-5, rtol=1e-5
    )


def test_top_k_keeps_exactly_k_entries_when_magnitudes_tie() -> None:
    tau = torch.tensor([1.0, -1.0, 1.0, 0.5, -1.0, 0.25, 1.0, 2.0])
    mask = magnitude_mask(tau, 0.5)  # k = 4: 2.0 and three of the five tied 1.0s
    assert int(mask.sum()) == 4 and bool(mask[7])


def test_breadcrumbs_band_keeps_exactly_density_n_when_magnitudes_tie() -> None:
    tau = torch.tensor([1.0] * 6 + [3.0, 0.1, 0.1, 0.1])
    assert int(band_mask(tau, 0.5, 0.1).sum()) == 5


def test_breadcrumbs_drops_the_top_gamma_outliers() -> None:
    tau = rand(100, seed=4)
    mask = band_mask(tau, 0.5, 0.05)
    assert not mask[tau.abs().argsort()[-5:]].any()


def test_tsv_keeps_each_tasks_top_singular_values() -> None:
    """Square case: U⊥ and V⊥ are orthogonal, so Δ's spectrum is exactly the kept singular values."""
    base = torch.zeros(8, 8)
    experts = [rand(8, 8, seed=s) for s in (1, 2)]
    kept = torch.cat([torch.linalg.svdvals(e)[:4] for e in experts]).sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(merge("tsv", base, experts)), kept, atol=1e-4, rtol=1e-4)


def test_model_stock_follows_its_interpolation_formula() -> None:
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])  # cos = 0.6 → t = 2·0.6 / 1.6 = 0.75
    torch.testing.assert_close(merge("model_stock", base, [a, b]), 0.75 * (a + b) / 2)


def test_model_stock_extrapolates_away_from_experts_that_point_apart() -> None:
    base = torch.ones(2)
    a, b = base + torch.tensor([1.0, 0.0]), base + torch.tensor([-0.6, 0.8])  # cos = −0.6 → t = −1.2 / 0.4 = −3
    torch.testing.assert_close(merge("model_stock", base, [a, b]), -3 * (a + b) / 2 + 4 * base)  # as mergekit


def test_model_stock_keeps_the_base_where_its_ratio_has_no_finite_value() -> None:
    base = torch.ones(2)
    got = merge("model_stock", base, [base + torch.tensor([1.0, 0.0]), base - torch.tensor([1.0, 0.0])])  # 1 + c = 0
    torch.testing.assert_close(got, base)


def test_model_stock_filter_wise_gives_each_row_its_own_ratio() -> None:
    base = torch.zeros(2, 2)
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # rows: cos 0.6 and 1
    got = merge("model_stock", base, [a, b], {"filter_wise": True})
    torch.testing.assert_close(got, torch.tensor([[0.75], [1.0]]) * (a + b) / 2)


def test_slerp_of_antiparallel_tensors_falls_back_to_lerp() -> None:
    v = rand(10, seed=2)
    torch.testing.assert_close(merge("slerp", v, [-v], {"t": 0.25}), 0.5 * v)


def test_dare_l1_rescale_restores_the_task_vectors_l1_norm() -> None:
    base, expert = rand(1000), rand(1000, seed=1)
    got = merge("dare_linear", base, [expert], {"rescale": "l1"}, [{"density": 0.3}])
    torch.testing.assert_close((got - base).abs().sum(), (expert - base).abs().sum(), rtol=1e-4, atol=1e-3)
    assert float(((got - base) == 0).float().mean()) > 0.5
