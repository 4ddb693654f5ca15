"""FDA over a whole model, one block at a time: read the block from every input, build (or reuse)
each task's anchors, adapt, write. Memory: one block of each model, plus the anchors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fda_core.checkpoints.reader import TensorReader
from fda_core.errors import ConfigError, MergeCancelled
from fda_core.fda.adaptation import AdaptationResult, adapt_coefficients, adapt_weights
from fda_core.fda.anchor_init import gaussian_anchors, weight_row_anchors
from fda_core.fda.anchors import AnchorKey, AnchorStore, write_anchors
from fda_core.fda.blocks import Block
from fda_core.fda.calibration_stream import CalibrationStream
from fda_core.fda.construction import construct_anchors
from fda_core.fda.objective import Params
from fda_core.fda.sdpa import second_order_attention
from fda_core.fda.settings import FdaParams
from fda_core.fda.sigma import choose_sigma
from fda_core.merge.plan import MergePlan, TensorTask
from fda_core.merge.progress import CancelCallback, MergeProgress, ProgressCallback
from fda_core.merge.seeding import named_generator, named_seed
from fda_core.methods.base import TensorInputs
from fda_core.methods.task_arithmetic_core import ScaledParams

Writer = Callable[[str, torch.Tensor], None]
AnchorSupplier = Callable[[int, Block, int], torch.Tensor]  # (layer, block, task) → that task's inputs (n, …)


@dataclass
class FdaRun:
    plan: MergePlan
    readers: list[TensorReader]  # base first, then experts
    device: torch.device
    digests: list[str]  # sha256 of base, then each expert
    store: AnchorStore | None
    anchors_dir: Path
    report: ProgressCallback
    should_cancel: CancelCallback | None
    cast: Callable[[TensorTask, torch.Tensor], torch.Tensor]
    config_digest: str = ""  # sha256 of the base's config.json: a changed block definition invalidates anchors
    seconds: dict[str, float] = field(default_factory=lambda: {"construct": 0.0, "adapt": 0.0})
    supplier: AnchorSupplier | None = None  # inputs given per (layer, task) replace construction entirely
    sigma_trial: dict[str, Any] | None = None  # sigma: auto — the choice and every candidate's score
    calibration: CalibrationStream | None = None  # models[].calibration, as inputs to the current block

    @property
    def settings(self) -> FdaParams:
        assert self.plan.fda is not None
        return self.plan.fda

    def cancelled(self) -> bool:
        return self.should_cancel is not None and self.should_cancel()


@dataclass
class Carried:
    """Block l's anchors as they leave block l, for chained adaptation of block l+1."""

    merged: torch.Tensor  # (N, n, …) f(θ_merged,l, X_l,i): what the merged model feeds block l+1
    experts: torch.Tensor  # (N, n, …) f(θi,l, X_l,i): what expert i feeds it


def merge_blocks(run: FdaRun, write: Writer) -> dict[str, Any]:
    """Adapt and write every block's tensors in plan order; returns FDA's metrics."""
    tasks = {task.name: task for task in run.plan.tasks}
    layers = []
    carried: Carried | None = None
    if any(found is not None for found in run.plan.calibration) and run.plan.blocks:
        first = run.plan.blocks[0].to(run.device)
        run.calibration = CalibrationStream.start(
            run.plan.calibration, run.plan.reference, run.readers[0], first, run.settings.blocks, run.device
        )
    for index, block in enumerate(run.plan.blocks):
        if run.cancelled():
            raise MergeCancelled(f"merge cancelled before block {index} of {len(run.plan.blocks)}")
        adapted, metrics, carried = merge_block(run, index, block, tasks, carried)
        for name in block.parameter_names:
            write(block.checkpoint_name(name), run.cast(tasks[block.checkpoint_name(name)], adapted[name]))
        layers.append(metrics)
    sigma = {"sigma": run.sigma_trial} if run.sigma_trial else {}
    seconds = {k: round(v, 3) for k, v in run.seconds.items()}
    return {"layers": layers, "seconds": seconds, **_budget(layers), **sigma}


def merge_block(
    run: FdaRun, index: int, block: Block, tasks: dict[str, TensorTask], carried: Carried | None = None
) -> tuple[Params, dict[str, Any], Carried | None]:
    block.to(run.device)
    theta0, experts = _read_block(run, block)
    taus = {n: torch.stack([e[n] - theta0[n] for e in experts]) for n in theta0}  # {name: (N, *shape)}
    started = time.perf_counter()
    anchors, construction = _anchors(run, index, block, theta0, experts, taus)
    run.seconds["construct"] += time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        targets = torch.stack([block(expert, anchors[i]) for i, expert in enumerate(experts)])  # (N, n, …)
    inputs, wanted = anchors.flatten(0, 1), targets.flatten(0, 1)
    if run.calibration is not None and run.settings.calibration_use == "augment":
        examples = [(i, h) for i, h in enumerate(run.calibration.hidden) if h is not None]
        with torch.no_grad():
            extra = [block.outputs(experts[i], h) for i, h in examples]
        inputs = torch.cat([inputs, *(h for _, h in examples)])
        wanted = torch.cat([wanted, *extra])
    if carried is not None:  # chained: the previous block's anchors as the merged model passes them on
        with torch.no_grad():
            onward = torch.stack([block(expert, carried.experts[i]) for i, expert in enumerate(experts)])
        inputs, wanted = torch.cat([inputs, carried.merged.flatten(0, 1)]), torch.cat([wanted, onward.flatten(0, 1)])
    result = _adapt(run, index, block, theta0, experts, inputs, wanted, tasks)
    run.seconds["adapt"] += time.perf_counter() - started
    metrics = {
        "layer": index,
        "block": block.prefix,
        "tasks": construction,
        "adaptation": {
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "epochs": len(result.history),
            "targets": wanted.numel(),
            "trained": result.trained,
            "targets_per_parameter": round(wanted.numel() / max(1, result.trained), 4),
        },
    }
    if run.calibration is not None:
        run.calibration.advance(block, theta0)
    if not run.settings.chained:
        return result.params, metrics, None
    with torch.no_grad():
        passed = torch.stack([block(result.params, anchors[i]) for i in range(len(experts))])
    return result.params, metrics, Carried(passed, targets)


def _budget(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The adaptation's determination over the whole merge: target values per trained value (docs/fda.md)."""
    targets = sum(layer["adaptation"]["targets"] for layer in layers)
    trained = sum(layer["adaptation"]["trained"] for layer in layers)
    return {"targets": targets, "trained": trained, "targets_per_parameter": round(targets / max(1, trained), 4)}


def _read_block(run: FdaRun, block: Block) -> tuple[Params, list[Params]]:
    """θ0 and every expert's block tensors, fp32 on the device: {module name: tensor}."""
    loaded = [
        {n: reader.read(block.checkpoint_name(n)).to(run.device, torch.float32) for n in block.parameter_names}
        for reader in run.readers
    ]
    return loaded[0], loaded[1:]


def _anchors(
    run: FdaRun, index: int, block: Block, theta0: Params, experts: list[Params], taus: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Each task's anchors (N, n, …): from the cache, else constructed together in one batch."""
    settings = run.settings
    shape = (settings.anchors, *block.anchor_shape)
    if run.supplier is not None:
        return _supplied(run, index, block, shape, len(experts))
    context = run.settings.cache_fields() | {"config_sha256": run.config_digest}
    keys = [
        AnchorKey(run.digests[0], run.digests[1 + i], block.prefix, shape, run.plan.config.seed, context | extra)
        for i, extra in enumerate(_calibration_keys(run, len(experts)))
    ]
    found = [run.store.load(key) if run.store else None for key in keys]
    missing = [i for i, hit in enumerate(found) if hit is None]
    built: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
    for hit in found:  # sigma: auto — a cached block says what the trial chose, so later blocks agree
        if hit is not None and run.sigma_trial is None and "sigma_trial" in hit[1]:
            run.sigma_trial = hit[1]["sigma_trial"]
    if missing:
        built = _construct(run, index, block, theta0, experts, taus, keys, missing)
    anchors, manifests = [], []
    for i in range(len(keys)):
        tensor, manifest = built[i] if i in built else found[i]  # type: ignore[misc]
        anchors.append(tensor.to(run.device, torch.float32))
        manifests.append({**manifest, "model": run.plan.experts[i].uri, "cached": i not in built})
    stacked = torch.stack(anchors)
    write_anchors(
        run.anchors_dir / f"block-{index:03d}.safetensors", {f"task{i}": a for i, a in enumerate(anchors)}, manifests
    )
    return stacked, manifests


def _supplied(
    run: FdaRun, index: int, block: Block, shape: tuple[int, ...], tasks: int
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Inputs given by the caller (e.g. real layer inputs, for the real-data ceiling); never cached."""
    assert run.supplier is not None
    anchors = []
    for task in range(tasks):
        given = run.supplier(index, block, task)
        if tuple(given.shape) != shape:
            raise ConfigError(
                f"supplied anchors for block {block.prefix} task {task} have shape {list(given.shape)}; "
                f"this merge's settings need {list(shape)} (anchors, *one anchor)"
            )
        anchors.append(given.to(run.device, torch.float32))
    manifests = [{"model": run.plan.experts[i].uri, "supplied": True} for i in range(tasks)]
    return torch.stack(anchors), manifests


def _construct(
    run, index, block, theta0, experts, taus, keys, missing
) -> dict[int, tuple[torch.Tensor, dict[str, Any]]]:
    settings = run.settings
    if settings.sigma == "auto" and settings.anchor_init == "gaussian" and run.sigma_trial is None:
        unit = torch.stack([_gaussian(keys[i], 1.0, run.device) for i in missing])
        sub_taus = {n: t[missing] for n, t in taus.items()}
        with second_order_attention():
            best, scores = choose_sigma(
                block, theta0, [experts[i] for i in missing], sub_taus, unit, settings.construction()
            )
        run.sigma_trial = {"chosen": best, "block": block.prefix, "scores": scores}
    initial = torch.stack([_initial(run, block, experts[i], keys[i], i) for i in missing])

    def on_step(step: int, gaps: list[float]) -> None:
        run.report(
            MergeProgress(
                "construct", index, len(run.plan.blocks), block.prefix, index, None, step, sum(gaps) / len(gaps)
            )
        )

    with second_order_attention():
        result = construct_anchors(
            block, theta0, [experts[i] for i in missing], {n: t[missing] for n, t in taus.items()}, initial,
            settings.construction(), on_step=on_step, should_stop=run.cancelled,
        )  # fmt: skip
    if result.stopped:  # never cache anchors of an interrupted construction
        raise MergeCancelled(f"merge cancelled while constructing anchors of block {index}")
    built = {}
    for row, i in enumerate(missing):
        manifest = {
            "base_sha256": keys[i].base_sha256,
            "expert_sha256": keys[i].expert_sha256,
            "block": block.prefix,
            "settings": settings.cache_fields(),
            "seed": keys[i].seed,
            **({"sigma_trial": run.sigma_trial} if run.sigma_trial else {}),
            "loss": float(result.loss[row]),
            "steps": result.steps[row],
            "cosines": {n: float(c[row]) for n, c in result.cosines.items() if bool(result.active[n][row])},
        }
        anchors = result.anchors[row].detach()
        if run.store is not None:
            run.store.save(keys[i], anchors, manifest)
        built[i] = (anchors, manifest)
    return built


def _calibration_keys(run: FdaRun, tasks: int) -> list[dict[str, str]]:
    """With calibration_use: init a task's anchors start from its examples: its key names them."""
    if run.settings.calibration_use != "init" or not run.plan.calibration:
        return [{} for _ in range(tasks)]
    return [{} if found is None else {"calibration_sha256": found.sha256} for found in run.plan.calibration]


def _initial(run: FdaRun, block: Block, expert: Params, key: AnchorKey, task: int) -> torch.Tensor:
    anchors = _drawn(run, expert, key)
    examples = run.calibration.hidden[task] if run.calibration is not None else None
    if examples is not None and run.settings.calibration_use == "init":  # the first n rows from real examples
        count = min(len(examples), len(anchors))
        anchors[:count] = examples[:count].to(anchors.device, anchors.dtype)
    return anchors


def _drawn(run: FdaRun, expert: Params, key: AnchorKey) -> torch.Tensor:
    if run.settings.anchor_init == "weights":
        generator = torch.Generator().manual_seed(key.generator_seed())
        rows = weight_row_anchors(key.anchor_shape, {n: v.cpu() for n, v in expert.items()}, generator)
        return rows.to(run.device)
    sigma = run.sigma_trial["chosen"] if run.sigma_trial else run.settings.sigma
    assert isinstance(sigma, float)
    return _gaussian(key, sigma, run.device)


def _gaussian(key: AnchorKey, sigma: float, device: torch.device) -> torch.Tensor:
    """This (layer, task)'s Gaussian draw at scale σ: the same draw whatever σ is."""
    generator = torch.Generator().manual_seed(key.generator_seed())
    return gaussian_anchors(key.anchor_shape, sigma, generator).to(device)


def _adapt(
    run: FdaRun,
    index: int,
    block: Block,
    theta0: Params,
    experts: list[Params],
    pooled: torch.Tensor,
    targets: torch.Tensor,
    tasks: dict[str, TensorTask],
) -> AdaptationResult:
    """Eq. 5 from θ0, or Eq. 6 coefficients on the init method's merge; inputs and targets pooled (M, …)."""
    settings = run.settings.adaptation()
    generator = torch.Generator().manual_seed(named_seed(run.plan.config.seed, "adapt", block.prefix))
    stop = run.cancelled
    init = run.settings.init
    if init == "pretrained":
        result = adapt_weights(block, theta0, pooled, targets, settings, generator, stop)
    elif init == "task_arithmetic":
        directions, starts = _task_arithmetic_start(block, theta0, experts, tasks)
        result = adapt_coefficients(block, theta0, directions, starts, pooled, targets, settings, generator, stop)
    else:
        directions, values = _merge_start(run, block, theta0, experts, tasks)
        result = adapt_coefficients(block, theta0, directions, values, pooled, targets, settings, generator, stop)
    if run.cancelled():
        raise MergeCancelled(f"merge cancelled while adapting block {index}")
    run.report(
        MergeProgress(
            "adapt", index + 1, len(run.plan.blocks), block.prefix, index, None, len(result.history), result.last_loss
        )
    )
    return result


def _merge_start(
    run: FdaRun, block: Block, theta0: Params, experts: list[Params], tasks: dict[str, TensorTask]
) -> tuple[list[Params], list[float]]:
    """Eq. 6 from a merge θm: D = θm − θ0 with α = 1, and with task_directions each τ_i with β_i = 0."""
    merged = _init_merge(run, block, theta0, experts, tasks)
    directions = [{n: merged[n] - theta0[n] for n in theta0}]
    if not run.settings.trains_task_directions():
        return directions, [1.0]
    return directions + [{n: e[n] - theta0[n] for n in theta0} for e in experts], [1.0] + [0.0] * len(experts)


def _task_arithmetic_start(
    block: Block, theta0: Params, experts: list[Params], tasks: dict[str, TensorTask]
) -> tuple[list[Params], list[dict[str, float]]]:
    """Eq. 6 from TA: directions τ_i, α_i = λ·w_i (÷ Σw when normalising) per tensor, as TA resolved them."""
    starts: list[dict[str, float]] = [{} for _ in experts]
    for name in theta0:
        task = tasks[block.checkpoint_name(name)]
        assert isinstance(task.params, ScaledParams)
        weights = [p.weight for p in task.model_params]
        total = sum(weights)
        scale = task.params.lambda_ / (total if task.params.normalize and abs(total) > 1e-8 else 1.0)
        for i, weight in enumerate(weights):
            starts[i][name] = scale * weight
    return [{n: e[n] - theta0[n] for n in theta0} for e in experts], starts


def _init_merge(
    run: FdaRun, block: Block, theta0: Params, experts: list[Params], tasks: dict[str, TensorTask]
) -> Params:
    """θm for the block: the init method applied tensor by tensor, as in a parameter-space merge."""
    merged = {}
    for name in theta0:
        task = tasks[block.checkpoint_name(name)]
        assert task.params is not None
        generator = (
            named_generator(run.plan.config.seed, task.name, run.device) if run.plan.method.uses_randomness else None
        )
        inputs = TensorInputs(
            task.name, theta0[name], [e[name] for e in experts], task.params, list(task.model_params), generator
        )
        merged[name] = run.plan.method.merge(inputs)
    return merged
