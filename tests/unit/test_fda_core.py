"""FDA's mathematics on a Linear layer, where the answers are known (method doc §7, items 1–5)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.func import functional_call

from fda_core.fda.adaptation import AdaptationSettings, adapt_coefficients, adapt_weights
from fda_core.fda.construction import ConstructionSettings, construct_anchors
from fda_core.fda.objective import alignment_loss, similarity_gradients


def linear_block(d_in: int, d_out: int, bias: bool = True):
    layer = torch.nn.Linear(d_in, d_out, bias=bias)
    return lambda params, x: functional_call(layer, params, (x,))


def setup(d_in=6, d_out=5, tasks=2, rank=None, bias=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    theta0 = {"weight": torch.randn(d_out, d_in, generator=g, dtype=dtype)}
    if bias:
        theta0["bias"] = torch.randn(d_out, generator=g, dtype=dtype)
    taus = []
    for _ in range(tasks):
        tau = {k: 0.1 * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in theta0.items()}
        if rank is not None:
            u, s, vh = torch.linalg.svd(tau["weight"], full_matrices=False)
            tau["weight"] = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
        taus.append(tau)
    experts = [{k: theta0[k] + t[k] for k in theta0} for t in taus]
    stacked = {k: torch.stack([t[k] for t in taus]) for k in theta0}
    return linear_block(d_in, d_out, bias), theta0, experts, stacked


def test_second_order_objective_passes_gradcheck_in_float64() -> None:
    block, theta0, experts, taus = setup(d_in=3, d_out=2, tasks=2, bias=True, dtype=torch.float64)
    active = {k: torch.ones(2, dtype=torch.bool) for k in taus}

    def objective(anchors: torch.Tensor) -> torch.Tensor:
        return alignment_loss(
            similarity_gradients(block, theta0, experts, anchors, create_graph=True), taus, active
        ).sum()

    anchors = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(objective, (anchors,), eps=1e-6, atol=1e-5)


def best_cosine_with(n: int, tau: torch.Tensor) -> float:
    """The closed form for a linear layer: sqrt(Σ_{r≤n} s_r²) / ‖ΔW‖_F (method doc §1)."""
    s = torch.linalg.svdvals(tau)
    return float(s[:n].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())


def construct(block, theta0, experts, taus, n, steps=600, chunk_size=None, sign=1.0, seed=0, similarity="mse"):
    tasks = len(experts)
    d = theta0["weight"].shape[1]
    initial = 0.01 * torch.randn(tasks, n, d, generator=torch.Generator().manual_seed(seed))
    flipped = {k: sign * v for k, v in taus.items()}
    settings = ConstructionSettings(steps=steps, lr=1e-2, chunk_size=chunk_size, patience=steps, similarity=similarity)
    return construct_anchors(block, theta0, experts, flipped, initial, settings)


def test_descent_direction_sign_reaches_full_alignment_when_anchors_cover_the_rank() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, rank=2)
    result = construct(block, theta0, experts, taus, n=4)
    assert result.cosines["weight"].min() >= 0.999


def test_with_the_products_cosine_similarity_the_sign_decides_too() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, rank=2)
    right = construct(block, theta0, experts, taus, n=4, similarity="cosine")
    literal = construct(block, theta0, experts, taus, n=4, similarity="cosine", sign=-1.0)
    assert right.cosines["weight"].min() >= 0.99
    assert literal.cosines["weight"].max() <= 0.05  # measured against −τ: it cannot align


def test_the_loss_sums_one_cosine_per_tensor_not_one_over_the_layer() -> None:
    grads = {"w": torch.tensor([[[1.0, 0.0]]]), "b": torch.tensor([[0.0, 1.0]])}
    taus = {"w": torch.tensor([[[1.0, 1.0]]]), "b": torch.tensor([[0.0, 2.0]])}
    active = {"w": torch.tensor([True]), "b": torch.tensor([True])}
    expected = (1 - 2**-0.5) + 0.0
    torch.testing.assert_close(alignment_loss(grads, taus, active), torch.tensor([expected]))


def test_with_fewer_anchors_than_the_rank_the_cosine_matches_the_closed_form() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=1, rank=None)
    result = construct(block, theta0, experts, taus, n=2, steps=1500)
    assert abs(float(result.cosines["weight"][0]) - best_cosine_with(2, taus["weight"][0])) < 2e-3


def test_the_literal_sign_of_eq_1_cannot_align() -> None:
    """Aligning +∇Dist (= −g) with τ: for a linear layer ⟨−ΔW·XXᵀ, ΔW⟩ ≤ 0, so cos stays ≤ 0."""
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, rank=2)
    result = construct(block, theta0, experts, taus, n=4, steps=300, sign=-1.0)
    assert result.cosines["weight"].max() <= 1e-6  # reported against the target it was given: cos(g, −τ)


def test_chunked_gradient_with_respect_to_the_anchors_equals_the_full_batch() -> None:
    from fda_core.fda.construction import _loss_and_backward

    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, bias=True)
    active = {k: torch.ones(2, dtype=torch.bool) for k in taus}
    base = 0.3 * torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(4))
    grads, losses = [], []
    for chunk in (None, 3):
        anchors = base.clone().requires_grad_(True)
        loss, _ = _loss_and_backward(
            block, theta0, experts, taus, active, anchors, ConstructionSettings(chunk_size=chunk)
        )
        grads.append(anchors.grad)
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_chunked_construction_equals_the_full_batch() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, bias=True)
    runs = [construct(block, theta0, experts, taus, n=8, steps=5, chunk_size=c, similarity="cosine") for c in (None, 3)]
    torch.testing.assert_close(torch.tensor(runs[0].history), torch.tensor(runs[1].history), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[0].anchors, runs[1].anchors, atol=1e-5, rtol=1e-5)


def test_linear_mse_adaptation_converges_to_regmean_on_the_anchors() -> None:
    """Eq. 5 with MSE for y = Wx: W* = (Σ W_i G_i)(Σ G_i)⁺ with G_i = X_iᵀX_i (RegMean on anchor Grams)."""
    block, theta0, experts, _ = setup(d_in=4, d_out=3, tasks=2)
    g = torch.Generator().manual_seed(1)
    anchors = [torch.randn(16, 4, generator=g), 0.5 * torch.randn(16, 4, generator=g)]
    targets = torch.cat([block(e, x) for e, x in zip(experts, anchors)]).detach()
    settings = AdaptationSettings(loss="mse", epochs=3000, lr=1e-2, batch_size=64)
    result = adapt_weights(block, theta0, torch.cat(anchors), targets, settings, torch.Generator().manual_seed(0))
    grams = [x.T @ x for x in anchors]
    expected = sum(e["weight"] @ gram for e, gram in zip(experts, grams)) @ torch.linalg.pinv(sum(grams))
    torch.testing.assert_close(result.params["weight"], expected, atol=2e-3, rtol=2e-3)


def test_coefficient_refinement_starts_at_task_arithmetic_and_never_moves_where_tau_is_zero() -> None:
    block, theta0, experts, taus = setup(d_in=5, d_out=4, tasks=2)
    tau_list = [{"weight": taus["weight"][i].clone()} for i in range(2)]
    for tau in tau_list:
        tau["weight"][0] = 0.0  # row 0 unchanged by every expert
    anchors = torch.randn(32, 5, generator=torch.Generator().manual_seed(2))
    targets = torch.cat(
        [block({"weight": theta0["weight"] + t["weight"]}, anchors[i::2]) for i, t in enumerate(tau_list)]
    )
    targets = targets.detach()
    still = AdaptationSettings(epochs=1, lr=0.0)
    start = adapt_coefficients(
        block, theta0, tau_list, [0.3, 0.3], anchors, targets, still, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(start.params["weight"], theta0["weight"] + 0.3 * sum(t["weight"] for t in tau_list))
    moved = adapt_coefficients(
        block,
        theta0,
        tau_list,
        [0.3, 0.3],
        anchors,
        targets,
        AdaptationSettings(epochs=50, lr=1e-2),
        torch.Generator().manual_seed(0),
    )
    assert not torch.allclose(moved.params["weight"][1:], start.params["weight"][1:])
    assert torch.equal(moved.params["weight"][0], theta0["weight"][0])


def test_a_tasks_anchors_do_not_depend_on_which_tasks_are_built_with_it() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=3, bias=True)
    g = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    initial = torch.stack([0.01 * torch.randn(4, 6, generator=gen) for gen in g])
    settings = ConstructionSettings(steps=300, patience=20, tolerance=1e-3)
    together = construct_anchors(block, theta0, experts, taus, initial, settings)
    pair = [0, 2]
    apart = construct_anchors(
        block, theta0, [experts[i] for i in pair], {k: v[pair] for k, v in taus.items()}, initial[pair], settings
    )
    torch.testing.assert_close(together.anchors[pair], apart.anchors, atol=1e-6, rtol=1e-5)
    assert [together.steps[i] for i in pair] == apart.steps
    assert len(set(together.steps)) > 1, "each task stops at its own plateau"


def test_bf16_adaptation_trains_fp32_weights_and_lowers_the_loss() -> None:
    block, theta0, experts, _ = setup(d_in=8, d_out=6, tasks=2)
    anchors = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    targets = torch.cat([block(e, anchors[i::2]) for i, e in enumerate(experts)]).detach()
    order = torch.cat([torch.arange(0, 64, 2), torch.arange(1, 64, 2)])
    settings = AdaptationSettings(loss="mse", epochs=200, lr=1e-2, batch_size=64, bf16=True)
    result = adapt_weights(block, theta0, anchors[order], targets, settings, torch.Generator().manual_seed(0))
    assert result.params["weight"].dtype == torch.float32
    assert result.last_loss < 0.5 * result.first_loss


def test_coefficients_can_start_from_a_value_per_tensor() -> None:
    block, theta0, experts, taus = setup(d_in=4, d_out=3, tasks=1, bias=True)
    tau = {k: v[0] for k, v in taus.items()}
    anchors = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    targets = block(experts[0], anchors).detach()
    still = AdaptationSettings(epochs=1, lr=0.0)
    start = adapt_coefficients(
        block, theta0, [tau], [{"weight": 0.3, "bias": 0.7}], anchors, targets, still, torch.Generator()
    )
    torch.testing.assert_close(start.params["weight"], theta0["weight"] + 0.3 * tau["weight"])
    torch.testing.assert_close(start.params["bias"], theta0["bias"] + 0.7 * tau["bias"])


def test_a_task_that_has_plateaued_leaves_the_batched_pass() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=3, bias=True)
    initial = torch.stack([0.01 * torch.randn(4, 6, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    calls = 0

    def counting_block(params, x):
        nonlocal calls
        calls += 1
        return block(params, x)

    settings = ConstructionSettings(steps=300, patience=20, tolerance=1e-3)
    result = construct_anchors(counting_block, theta0, experts, taus, initial, settings)
    assert len(set(result.steps)) > 1, "the tasks plateau at different steps"
    # two block calls (θ0 and the expert) per task per pass: the first and probe passes, then one
    # pass per step a task ran — not per step the slowest task ran
    assert calls == 2 * 3 * 2 + 2 * sum(result.steps)
    for task in range(3):  # each task's anchors are those it gets when built alone
        alone = construct_anchors(
            block, theta0, [experts[task]], {k: v[[task]] for k, v in taus.items()}, initial[[task]], settings
        )
        torch.testing.assert_close(result.anchors[task], alone.anchors[0], atol=1e-6, rtol=1e-5)
        assert result.steps[task] == alone.steps[0]


def test_chunked_construction_matches_the_full_batch_after_tasks_plateau() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=3, bias=True)
    initial = torch.stack([0.01 * torch.randn(4, 6, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    settings = ConstructionSettings(steps=300, patience=20, tolerance=1e-3)
    full = construct_anchors(block, theta0, experts, taus, initial, settings)
    chunked = construct_anchors(block, theta0, experts, taus, initial, replace(settings, chunk_size=2))
    assert len(set(chunked.steps)) > 1 and chunked.steps == full.steps
    torch.testing.assert_close(chunked.anchors, full.anchors, atol=1e-5, rtol=1e-4)
