"""Known answers of the methods added for mergekit parity, worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fda_core.errors import ConfigError
from fda_core.methods.della import magprune_probabilities
from tests.unit.test_methods import merge, rand

MERGEKIT_METHODS = {
    "della", "della_linear", "breadcrumbs_ties", "sce", "nuslerp", "multislerp", "karcher", "nearswap",
    "arcee_fusion", "ram", "ramplus_tl", "passthrough",
}  # fmt: skip
ZERO = torch.zeros(5)


def close(got: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), atol=1e-5, rtol=1e-5)


def test_every_mergekit_method_is_registered() -> None:
    from fda_core.methods import method_names

    assert set(method_names()) >= MERGEKIT_METHODS


# DELLA


def test_magprune_keep_probability_rises_linearly_with_the_magnitude_rank_of_each_row() -> None:
    tau = torch.tensor([[0.1, -0.3, 0.2], [5.0, 4.0, -6.0]])
    close(magprune_probabilities(tau, density=0.5, epsilon=0.1), [[0.4, 0.6, 0.5], [0.5, 0.4, 0.6]])
    close(magprune_probabilities(torch.tensor([3.0, -1.0, 2.0]), 0.5, 0.1), [0.6, 0.4, 0.5])  # 1-D: one row


def test_magprune_keeps_a_lone_entry_with_probability_density() -> None:
    close(magprune_probabilities(torch.ones(4, 1), 0.3, 0.1), [[0.3]] * 4)


def test_della_keeps_each_entry_as_often_as_its_rank_says() -> None:
    base = torch.zeros(2000, 10)
    expert = torch.arange(1.0, 11.0).repeat(2000, 1)  # every row ranks its entries 0 … 9
    got = merge("della_linear", base, [expert], {"rescale": "none"}, [{"density": 0.5, "epsilon": 0.3}])
    kept = (got != 0).float().mean(dim=0)
    expected = 0.2 + 0.6 * torch.arange(10) / 9
    torch.testing.assert_close(kept, expected, atol=0.035, rtol=0)


def test_della_with_zero_epsilon_draws_the_masks_of_dare_ties_with_l1_rescale() -> None:
    base, experts = rand(16, 12), [rand(16, 12, seed=s) for s in (1, 2, 3)]
    model_params = [{"density": d, "weight": w} for d, w in ((0.3, 1.0), (0.6, 0.5), (0.5, 0.8))]
    dare = merge("dare_ties", base, experts, {"rescale": "l1", "normalize": True}, model_params, seed=4)
    della = merge("della", base, experts, {}, [p | {"epsilon": 0.0} for p in model_params], seed=4)
    torch.testing.assert_close(della, dare)
    dare = merge("dare_linear", base, experts, {"rescale": "l1"}, model_params, seed=4)
    della = merge("della_linear", base, experts, {}, [p | {"epsilon": 0.0} for p in model_params], seed=4)
    torch.testing.assert_close(della, dare)


def test_della_rescales_each_pruned_task_vector_to_its_l1_norm() -> None:
    base, expert = torch.zeros(64, 64), rand(64, 64, seed=1)
    got = merge("della_linear", base, [expert], {}, [{"density": 0.4, "epsilon": 0.2}], seed=2)
    assert (got == 0).float().mean() > 0.4
    torch.testing.assert_close(got.abs().sum(), expert.abs().sum())


def test_della_is_reproducible_per_seed() -> None:
    base, experts = rand(8, 8), [rand(8, 8, seed=1), rand(8, 8, seed=2)]
    run = lambda seed: merge("della", base, experts, {}, [{"density": 0.5}] * 2, seed=seed)  # noqa: E731
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_della_with_density_one_is_ties_without_trimming() -> None:
    base, experts = rand(6, 5), [rand(6, 5, seed=1), rand(6, 5, seed=2)]
    torch.testing.assert_close(merge("della", base, experts), merge("ties", base, experts))


def test_della_refuses_an_epsilon_that_leaves_the_unit_interval() -> None:
    with pytest.raises(ConfigError, match="tensor 'w': DELLA needs 0 < density - epsilon"):
        merge("della", ZERO, [torch.ones(5)], {}, [{"density": 0.9}])  # default ε 0.15


# Breadcrumbs-TIES


def test_breadcrumbs_ties_drops_both_tails_then_elects_signs() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # keeps 2, 3, 4
    b = torch.tensor([-5.0, -4.0, -1.0, -2.0, -3.0])  # keeps -4, -2, -3
    band = [{"density": 0.6, "gamma": 0.2, "weight": 1.0}, {"density": 0.6, "gamma": 0.2, "weight": 0.5}]
    close(merge("breadcrumbs_ties", ZERO, [a, b], {}, band), [0, 2, 3, 4, -1.5])  # Σ wτ̂ = [0, 0, 3, 3, -1.5]
    close(merge("breadcrumbs_ties", ZERO, [a, b], {"normalize": True}, band), [0, 2, 3, 4, -3])
    rescaled = [0, 2 * 15 / 9, 3 * 15 / 9, 4 * 15 / 9, -2.5]  # both L1 norms 15 → 9, ×15/9
    close(merge("breadcrumbs_ties", ZERO, [a, b], {"rescale": "l1"}, band), rescaled)


# SCE


def test_sce_weights_experts_by_energy_and_erases_minority_signs() -> None:
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -0.5])
    energy_a, energy_b = (1 + 4 + 0.25) / 3, (9 + 1 + 0.25) / 3  # mean τ²
    expected_first = (energy_a * 1 + energy_b * 3) / (energy_a + energy_b)
    close(merge("sce", torch.zeros(3), [a, b]), [expected_first, -2.0, 0.5])  # elected signs: +, -, + (Σ = 0)


def test_sce_selects_the_positions_where_experts_vary_most() -> None:
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -0.5])  # variances 1, 2.25, 0.25
    close(merge("sce", torch.zeros(3), [a, b], {"select_topk": 0.34}), [0.0, -2.0, 0.0])


def test_sce_weights_are_uniform_when_the_task_vectors_are_tiny_as_in_mergekit() -> None:
    a, b = torch.full((2,), 1e-4), torch.full((2,), 3e-4)  # Σ mean τ² = 1e-7 < 1e-6
    close(merge("sce", torch.zeros(2), [a, b]), [2e-4, 2e-4])


# NuSLERP


def test_nuslerp_takes_t_from_the_second_weight_and_slerps_the_task_vectors() -> None:
    base = torch.tensor([1.0, 1.0])
    a, b = base + torch.tensor([1.0, 0.0]), base + torch.tensor([0.0, 1.0])
    got = merge("nuslerp", base, [a, b], {}, [{"weight": 1.0}, {"weight": 3.0}])  # t = 0.75, Ω = π/2
    close(got, [1 + math.sin(math.pi / 8), 1 + math.sin(3 * math.pi / 8)])
    close(merge("nuslerp", None, [a - base, b - base]), [0.5**0.5, 0.5**0.5])  # no base: the models themselves


def test_nuslerp_spheres_are_rows_or_columns_when_not_flattened() -> None:
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    rows = merge("nuslerp", None, [a, b], {"nuslerp_flatten": False})
    close(rows, [[0.5**0.5, 0.5**0.5], [1.0, 0.0]])  # the second row is collinear: lerp
    columns = merge("nuslerp", None, [a, b], {"nuslerp_flatten": False, "nuslerp_row_wise": True})
    c = math.sin(math.pi / 8) / math.sin(math.pi / 4)  # column 0: (1, 1) → (0, 1), Ω = π/4
    close(columns, [[c, 0.5**0.5], [2 * c, 0.0]])  # column 1 starts at 0: half of (1, 0)'s arc


def test_nuslerp_with_weights_summing_to_zero_takes_the_midpoint() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    close(merge("nuslerp", None, [a, b], {}, [{"weight": 1.0}, {"weight": -1.0}]), [0.5**0.5, 0.5**0.5])


# Multi-SLERP


def test_multislerp_keeps_the_direction_of_the_barycentre_at_the_weighted_mean_norm() -> None:
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    close(merge("multislerp", None, [a, b]), [3 * 0.5**0.5, 3 * 0.5**0.5])
    base = torch.tensor([1.0, -1.0])
    close(merge("multislerp", base, [a + base, b + base]), [1 + 3 * 0.5**0.5, -1 + 3 * 0.5**0.5])


def test_multislerp_of_three_orthogonal_vectors_lands_on_the_sphere_towards_the_heavier() -> None:
    vectors = list(torch.eye(3))
    got = merge("multislerp", None, vectors, {}, [{"weight": w} for w in (2.0, 1.0, 1.0)])
    assert math.isclose(float(got.norm()), 1.0, rel_tol=1e-5) and got[0] > got[1] == got[2] > 0


def test_multislerp_of_two_antipodal_inputs_falls_back_to_the_weighted_sum() -> None:
    a = torch.tensor([1.0, 2.0])
    close(merge("multislerp", None, [a, -a]), [0.0, 0.0])
    with pytest.raises(ConfigError, match="multislerp: the weighted mean of the unit vectors is zero"):
        merge("multislerp", None, [a, -a, a, -a])


def test_multislerp_of_one_model_is_that_model() -> None:
    a = rand(3, 3)
    assert torch.equal(merge("multislerp", rand(3, 3, seed=1), [a]), a)


# Karcher


def test_karcher_mean_of_two_orthogonal_vectors_is_the_arc_midpoint_at_the_mean_norm() -> None:
    close(merge("karcher", None, [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])]), [3 * 0.5**0.5] * 2)


def test_karcher_iterates_from_the_euclidean_mean_to_the_mean_angle() -> None:
    at = lambda degrees: torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])  # noqa: E731
    units = [at(0), at(0), at(90)]
    close(merge("karcher", None, units, {"max_iter": 50, "tol": 1e-7}), at(30).tolist())  # the mean of the angles
    start = math.degrees(math.atan2(1, 2))  # the normalised Euclidean mean: 26.6°
    close(merge("karcher", None, units, {"max_iter": 0}), at(start).tolist())


def test_karcher_lets_a_zero_input_shrink_the_norm_but_not_turn_the_direction() -> None:
    close(merge("karcher", None, [torch.tensor([0.0, 2.0]), torch.zeros(2)]), [0.0, 1.0])


# NearSwap, Arcee Fusion, RAM, passthrough


def test_nearswap_swaps_close_entries_and_interpolates_far_ones_by_t_over_distance() -> None:
    other = torch.tensor([0.005, 0.02, -1.0])
    close(merge("nearswap", torch.zeros(3), [other], {"t": 0.01}), [0.005, 0.01, -0.01])


def test_nearswap_needs_t() -> None:
    with pytest.raises(ConfigError, match="nearswap needs parameters.t"):
        merge("nearswap", torch.zeros(3), [torch.ones(3)])


def test_arcee_fusion_keeps_only_the_outlying_changes() -> None:
    tau = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0]])  # q1, median, q3 = 0.2, 0.4, 0.6 (× KL)
    close(merge("arcee_fusion", torch.zeros(1, 8), [tau]), [[0, 0, 0, 0, 0, 0, 0, 5.0]])


def test_arcee_fusion_takes_the_quantiles_of_large_tensors_from_a_seeded_sample() -> None:
    from fda_core.methods.arcee_fusion import outlier_threshold

    scores = torch.rand(1_200_000, generator=torch.Generator().manual_seed(0))  # q1, median, q3 ≈ 0.25, 0.5, 0.75
    sampled = [float(outlier_threshold(scores, torch.Generator().manual_seed(s))) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert all(abs(value - 1.25) < 0.005 for value in sampled)


def test_ram_averages_the_contributing_task_vectors_only() -> None:
    a, b = torch.tensor([0.5, 0.5, 0.0, 1e-6]), torch.tensor([0.3, 0.0, 0.0, 0.0])
    close(merge("ram", torch.zeros(4), [a, b]), [0.4, 0.5, 0.0, 0.0])  # 1e-6 is under ε: not a contribution


def test_ramplus_boosts_each_experts_lone_entries_by_its_shared_to_lone_ratio() -> None:
    a, b = torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([0.3, 0.0, 0.0, 0.0])  # a: 1 shared, 3 lone
    lone = 0.5 * (1 + 0.5 * (1 / 3))  # λ = 1 + r·min(ρ, α), ρ = 1/3
    close(merge("ramplus_tl", torch.zeros(4), [a, b], {"r": 0.5, "alpha": 0.8}), [0.4, lone, lone, lone])
    capped = 0.5 * (1 + 0.5 * 0.2)
    close(merge("ramplus_tl", torch.zeros(4), [a, b], {"r": 0.5, "alpha": 0.2}), [0.4, capped, capped, capped])


def test_passthrough_copies_its_one_model_optionally_scaled() -> None:
    a = rand(3, 2)
    assert torch.equal(merge("passthrough", None, [a]), a)
    torch.testing.assert_close(merge("passthrough", None, [a], {}, [{"scale": 0.5}]), a * 0.5)


def test_ramplus_refuses_a_zero_epsilon_where_mergekit_returns_nan() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than 0"):
        merge("ramplus_tl", ZERO, [torch.ones(5), ZERO], {"epsilon": 0.0})
    close(merge("ram", torch.zeros(2), [torch.tensor([0.5, 0.0]), torch.zeros(2)], {"epsilon": 0.0}), [0.5, 0.0])


@pytest.mark.mergekit
def test_ties_trim_keeps_the_tied_entries_mergekit_keeps() -> None:
    """Equal |τ| straddling the cut (AdamW's first steps move many weights by the same amount): the k kept are
    mergekit's, not just any k (real SmolLM2 fine-tunes differed from mergekit by 1.9e-3 on a few entries)."""
    from mergekit.sparsify import magnitude

    from fda_core.methods.sparsify import magnitude_mask

    generator = torch.Generator().manual_seed(0)
    steps = torch.randint(-3, 4, (4096,), generator=generator).float() * 1e-4  # few distinct magnitudes
    kept = magnitude_mask(steps, 0.5)
    assert int(kept.sum()) == 2048
    assert torch.equal(steps * kept, magnitude(steps, 0.5))
