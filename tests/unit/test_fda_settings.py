"""FDA's settings that decide quality and cost: Eq. 6 granularity, presets, sigma: auto, and the
construction backward that takes only the anchors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fda_core.fda.adaptation import AdaptationSettings, adapt_coefficients, coefficient_shape
from fda_core.fda.construction import ConstructionSettings, _loss_and_backward, active_tensors, probe_gradients
from fda_core.fda.settings import PRESETS, FdaParams
from fda_core.fda.sigma import SIGMA_CANDIDATES, choose_sigma
from tests.unit.test_fda_core import setup


@pytest.mark.parametrize(
    ("granularity", "shape", "expected"),
    [
        ("elementwise", (4, 3), (4, 3)),
        ("row", (4, 3), (4, 1)),
        ("row", (4,), (4,)),
        ("tensor", (4, 3), (1, 1)),
        ("tensor", (4,), (1,)),
    ],
)
def test_coefficient_shapes(granularity, shape, expected) -> None:
    assert coefficient_shape(torch.Size(shape), granularity) == expected


def refine(granularity: str, anchors: int = 6, epochs: int = 200):
    block, theta0, experts, taus = setup(d_in=8, d_out=6, tasks=1, bias=True)
    tau = {k: v[0] for k, v in taus.items()}
    x = torch.randn(anchors, 8, generator=torch.Generator().manual_seed(1))
    settings = AdaptationSettings(epochs=epochs, lr=1e-2, batch_size=64, loss="mse", granularity=granularity)
    result = adapt_coefficients(
        block, theta0, [tau], [0.5], x, block(experts[0], x).detach(), settings, torch.Generator()
    )
    return block, theta0, experts[0], tau, result


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_coarse_coefficients_scale_whole_rows_or_tensors(granularity: str) -> None:
    _, theta0, _, tau, result = refine(granularity)
    ratio = (result.params["weight"] - theta0["weight"]) / tau["weight"]  # α, broadcast over each row
    spread = ratio.std(dim=1) if granularity == "row" else ratio.std()
    assert float(spread.max()) < 1e-4
    assert float((ratio - 0.5).abs().max()) > 0.05  # and they did move from the start
    assert result.trained == {"row": 6 + 6, "tensor": 2}[granularity]


def test_with_few_anchors_row_coefficients_generalise_where_elementwise_ones_overfit() -> None:
    """One expert, 6 anchors for a 6×8 weight: α = 1 is the answer. Per row it is determined;
    elementwise (54 values) the anchors leave most of it free — the gap on fresh inputs shows it."""
    held_out = torch.randn(256, 8, generator=torch.Generator().manual_seed(9))
    errors = {}
    for granularity in ("elementwise", "row"):
        block, _, expert, _, result = refine(granularity, anchors=3, epochs=400)
        errors[granularity] = float((block(result.params, held_out) - block(expert, held_out)).pow(2).mean())
    assert errors["row"] < 0.1 * errors["elementwise"]


def test_elementwise_coefficients_count_every_entry() -> None:
    *_, result = refine("elementwise", epochs=1)
    assert result.trained == 6 * 8 + 6


def test_a_preset_fixes_the_budget_and_explicit_parameters_win() -> None:
    assert FdaParams().preset == "balanced"
    for name, budget in PRESETS.items():
        chosen = FdaParams(preset=name)
        assert {key: getattr(chosen, key) for key in budget} == budget
    mixed = FdaParams(preset="fast", anchors=7)
    assert mixed.anchors == 7 and mixed.construction_steps == PRESETS["fast"]["construction_steps"]
    assert FdaParams(preset="fast").cache_fields() != FdaParams(preset="thorough").cache_fields()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"chained": True, "ffn_only": True}, "chained"),
        ({"task_directions": True, "init": "task_arithmetic"}, "task_directions"),
        ({"sigma": 0}, "sigma"),
        ({"preset": "quick"}, "preset"),
        ({"preset": ["llm"]}, "preset"),  # not hashable: once a TypeError, a 500 in the service
        ({"preset": {"name": "llm"}}, "preset"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        FdaParams(**settings)


def test_sigma_auto_keeps_the_candidate_that_aligns_best() -> None:
    block, theta0, experts, taus = setup(d_in=6, d_out=5, tasks=2, rank=2)
    unit = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    best, scores = choose_sigma(block, theta0, experts, taus, unit, ConstructionSettings(similarity="mse"))
    assert set(scores) == {f"{s:g}" for s in SIGMA_CANDIDATES}
    assert scores[f"{best:g}"] == min(scores.values())
    assert max(scores.values()) > scores[f"{best:g}"]  # the scale matters under Adam


def test_construction_back_propagates_into_the_anchors_only() -> None:
    """Only ∂L/∂X is needed: the unused weight gradients of the double backward cost ~17 % of a step."""
    block, theta0, experts, taus = setup(d_in=64, d_out=64, tasks=2, bias=True)
    anchors = (0.01 * torch.randn(2, 16, 64)).requires_grad_(True)
    settings = ConstructionSettings()
    active = active_tensors(probe_gradients(block, theta0, experts, anchors.detach()), taus)
    with FlopCounterMode(display=False) as counted:
        _loss_and_backward(block, theta0, experts, taus, active, anchors, settings)
    ours = counted.get_total_flops()
    assert anchors.grad is not None and float(anchors.grad.abs().sum()) > 0
    from fda_core.fda.objective import alignment_loss, similarity_gradients

    with FlopCounterMode(display=False) as counted:
        grads = similarity_gradients(block, theta0, experts, anchors, create_graph=True)
        alignment_loss(grads, taus, active).sum().backward()  # every leaf: θ0's views too
    assert ours < 0.9 * counted.get_total_flops()


def test_the_default_refines_tsv_per_row_with_task_directions() -> None:
    default = FdaParams()
    assert (default.init, default.coefficients, default.trains_task_directions()) == ("tsv", "row", True)
    assert default.outside_method() == ("tsv", {})  # the tensors outside the blocks from the same merge


@pytest.mark.parametrize(
    ("given", "directions"),
    [
        ({"init": "pretrained"}, False),  # Eq. 5: no merge to correct
        ({"init": "task_arithmetic"}, False),  # TA's α are per task already
        ({"init": "wudi"}, True),
        ({"init": "wudi", "task_directions": False}, False),
    ],
)
def test_task_directions_follow_the_init_unless_set(given, directions) -> None:
    assert FdaParams(**given).trains_task_directions() is directions


def test_the_llm_preset_is_the_papers_llama_recipe() -> None:
    llm = FdaParams(preset="llm")
    assert (llm.ffn_only, llm.anchors, llm.tokens, llm.construction_steps) == (True, 8192, 1, 200)
    assert (llm.init, llm.init_parameters, llm.coefficients, llm.trains_task_directions()) == (
        "task_arithmetic", {"lambda": 0.5}, "elementwise", False,
    )  # fmt: skip
    assert (llm.adaptation_epochs, llm.batch_size, llm.adaptation().lr) == (50, 8192, 1e-2)


def test_the_decoder_preset_is_the_measured_ffn_only_row() -> None:
    from bench.quality_llm import FFN_BUDGET  # the SmolLM2 row whose figures docs/fda.md quotes for it

    decoder, measured = FdaParams(preset="decoder"), FdaParams(**FFN_BUDGET, ffn_only=True)
    assert decoder.model_dump(exclude={"preset"}) == measured.model_dump(exclude={"preset"})
    assert (decoder.ffn_only, decoder.init, decoder.coefficients) == (True, "tsv", "row")


@pytest.mark.parametrize("row", ["FDA (TIES, FFN only)", "FDA (WUDI, FFN only)"])
def test_the_decoder_preset_with_another_init_is_the_measured_row(row: str) -> None:
    """README and docs/fda.md advise `preset: decoder` with `init: ties` (LoRA) or `init: wudi`: the bench rows."""
    from bench.quality_llm import FDA_ROWS

    measured = FDA_ROWS[row]
    advised = FdaParams(preset="decoder", init=measured["init"], init_parameters=measured.get("init_parameters", {}))
    assert advised.model_dump(exclude={"preset"}) == FdaParams(**measured).model_dump(exclude={"preset"})


def test_a_preset_init_parameters_do_not_follow_a_different_init() -> None:
    assert FdaParams(preset="llm", init="wudi").init_parameters == {}
    assert FdaParams(preset="llm", anchors=64).anchors == 64  # what the config sets wins
