"""The merge plan: every input's headers validated and every tensor's parameters resolved.

Building a plan reads only headers and small JSON files, so every error it can find (bad
checkpoint, mismatched shapes, bad parameter values) surfaces before any large read or download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fda_core.checkpoints.header import DTYPE_NAMES, TensorInfo
from fda_core.checkpoints.inputs import open_input
from fda_core.checkpoints.layout import CheckpointLayout, InputLimits
from fda_core.checkpoints.validate import check_compatible
from fda_core.checkpoints.writer import OutputTensor, plan_shards
from fda_core.config import MergeConfig
from fda_core.errors import ConfigError, InputLimitError
from fda_core.fda.blocks import Block, check_blocks, discover_blocks
from fda_core.fda.calibration import CalibrationSet, read_calibration
from fda_core.fda.settings import FdaParams
from fda_core.merge.params import ParameterResolver
from fda_core.merge.settings import layer_count_source, num_layers_of
from fda_core.merge.tokenizers import tokenizer_reference
from fda_core.methods import get_method
from fda_core.methods.base import MergeMethod, ModelParams, Params

OUTPUT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class TensorTask:
    output: OutputTensor
    merged: bool  # False: a non-float tensor (ids, masks), copied from the reference input
    params: Params | None = None
    model_params: tuple[ModelParams, ...] = ()
    method: MergeMethod | None = None  # what merges this tensor (FDA: init inside blocks, outside elsewhere)
    reads: tuple[tuple[int, str], ...] = ()  # (input index, tensor name) when not the same name from every input

    @property
    def name(self) -> str:
        return self.output.name


@dataclass
class MergePlan:
    config: MergeConfig
    method: MergeMethod  # the per-tensor method (for FDA: its init method, in the blocks)
    base: CheckpointLayout | None
    experts: list[CheckpointLayout]
    tasks: list[TensorTask]
    shards: list[list[OutputTensor]]
    fda: FdaParams | None = None  # set for method: fda
    blocks: list[Block] = field(default_factory=list)  # FDA's blocks; their tensors come first in `tasks`
    calibration: list[CalibrationSet | None] = field(default_factory=list)  # per expert, FDA only
    config_updates: dict[str, Any] = field(default_factory=dict)  # written into the output's config.json
    tokenizer: CheckpointLayout | None = None  # tokenizer_source: whose tokenizer files the output gets

    @property
    def reference(self) -> CheckpointLayout:
        """The base, or the first model for base-free methods: source of config and tokenizer."""
        return self.base or self.experts[0]

    @property
    def inputs(self) -> list[CheckpointLayout]:
        return ([self.base] if self.base else []) + self.experts


def build_plan(
    config: MergeConfig, max_shard_bytes: int, *, limits: InputLimits = InputLimits(), check_only: bool = False
) -> MergePlan:
    """The plan, or the first error any input or parameter has. With `check_only` (the service's
    submit-time check) FDA's blocks stay on the meta device: such a plan validates, it cannot run."""
    method, fda, tensor_config = _methods(config)
    outside, outside_config = _outside_method(config, fda) if fda else (method, tensor_config)
    base = open_input(config.base_model, None, limits) if config.base_model else None
    experts = [open_input(model.model, base, limits) for model in config.models]
    layouts = ([base] if base else []) + experts
    _check_input_bytes(layouts, limits)
    reference = base or experts[0]
    tokenizer = tokenizer_reference(config, layouts, reference)
    if config.gguf and (reference.config or {}).get("model_type") not in ("llama", "mistral"):
        raise ConfigError(
            f"gguf: {reference.uri} is model_type {(reference.config or {}).get('model_type')!r}; fda-merge writes"
            " GGUF for LLaMA-style models (llama, mistral) only"
        )
    if config.layer_stack:
        plan = _stacked_plan(config, method, base, experts, max_shard_bytes)
        plan.tokenizer = tokenizer
        return plan
    check_compatible(reference, [layout for layout in layouts if layout is not reference])
    names = _read_order(reference)
    blocks = _fda_blocks(fda, reference, names, check_only) if fda else []
    names = _blocks_first(blocks, names)
    layer_count = num_layers_of(reference.config, names)
    _check_layer_count(config, reference, layer_count)
    inside = ParameterResolver(tensor_config, method, layer_count)
    rest = ParameterResolver(outside_config, outside, layer_count)
    in_blocks = {name for block in blocks for name in block.tensor_names()}
    tasks = [_task(reference, name, inside if name in in_blocks else rest, config) for name in names]
    outputs = _lora_outputs(config, tasks) if config.lora_rank else [t.output for t in tasks]
    shards = plan_shards(outputs, 2**62 if config.lora_rank else max_shard_bytes)  # PEFT reads one adapter file
    calibration = _calibration(config, fda)
    return MergePlan(config, method, base, experts, tasks, shards, fda, blocks, calibration, tokenizer=tokenizer)


def _stacked_plan(
    config: MergeConfig, method: MergeMethod, base: CheckpointLayout | None, experts: list[CheckpointLayout],
    max_shard_bytes: int,
) -> MergePlan:  # fmt: skip
    from fda_core.merge.layer_stack import stack_tasks

    reference = base or experts[0]

    def dtype(info: TensorInfo) -> str:
        return DTYPE_NAMES[OUTPUT_DTYPES[config.dtype]] if config.dtype else info.dtype

    tasks, updates = stack_tasks(config, reference, experts, method, 1 if base else 0, dtype)
    outputs = _lora_outputs(config, tasks) if config.lora_rank else [t.output for t in tasks]
    shards = plan_shards(outputs, 2**62 if config.lora_rank else max_shard_bytes)
    return MergePlan(config, method, base, experts, tasks, shards, config_updates=updates)


def _lora_outputs(config: MergeConfig, tasks: list[TensorTask]) -> list[OutputTensor]:
    from fda_core.merge.lora_output import lora_outputs

    if get_method(config.method).layerwise:
        raise ConfigError("lora_rank: FDA merges cannot be written as a LoRA adapter yet; drop lora_rank")
    assert config.lora_rank is not None
    return lora_outputs(tasks, config.lora_rank)


def _calibration(config: MergeConfig, fda: FdaParams | None) -> list[CalibrationSet | None]:
    """Each expert's calibration examples, read and validated now (bounded), or None."""
    given = [(i, m.calibration) for i, m in enumerate(config.models) if m.calibration]
    if not given:
        return []
    where = f"models[{given[0][0]}].calibration"
    if fda is None:
        raise ConfigError(f"{where}: calibration inputs are used by method: fda only")
    if fda.ffn_only:
        raise ConfigError(f"{where}: calibration inputs are not supported with ffn_only yet; use whole blocks")
    sets: list[CalibrationSet | None] = [None] * len(config.models)
    for index, uri in given:
        sets[index] = read_calibration(uri, f"models[{index}].calibration")
    return sets


def _methods(config: MergeConfig) -> tuple[MergeMethod, FdaParams | None, MergeConfig]:
    """The per-tensor method, FDA's settings if any, and the config its parameters resolve from."""
    method = get_method(config.method)
    if not method.layerwise:
        return method, None, config
    fda = FdaParams.model_validate(config.parameters)
    init_config = config.model_copy(update={"parameters": fda.resolved_init_parameters()})
    return get_method(fda.init), fda, init_config


def _outside_method(config: MergeConfig, fda: FdaParams) -> tuple[MergeMethod, MergeConfig]:
    """FDA: the parameter-space method (and its config) for the tensors outside the blocks."""
    name, parameters = fda.outside_method()
    return get_method(name), config.model_copy(update={"parameters": parameters})


def _check_layer_count(config: MergeConfig, reference: CheckpointLayout, layer_count: int) -> None:
    if config.layers is not None and config.layers != layer_count:
        raise ConfigError(
            f"layers: the config covers {config.layers} layers (a mergekit slice's layer_range"
            f" [0, {config.layers}]), {reference.uri} has {layer_count} ({layer_count_source(reference.config)});"
            f" give layer_range [0, {layer_count}] (merging a subset of layers is not supported)"
        )


def _check_input_bytes(layouts: list[CheckpointLayout], limits: InputLimits) -> None:
    if limits.input_bytes is None:
        return
    total = sum(max(info.end for info in layout.tensors.values()) for layout in layouts)  # ≤ the weight files
    if total > limits.input_bytes:
        raise InputLimitError(
            f"the inputs hold {total:,} bytes of tensors; this service merges at most {limits.input_bytes:,} per job"
        )


def _fda_blocks(fda: FdaParams, reference: CheckpointLayout, names: list[str], check_only: bool) -> list[Block]:
    """Blocks checked on the meta device against the checkpoint first (config.json decides every size),
    then, to run, discovered for real."""
    if reference.config is None:
        raise ConfigError(f"{reference.uri}: FDA needs the base model's config.json to build its blocks")
    shapes = {name: reference.tensors[name].shape for name in names}
    try:
        blocks = check_blocks(reference.config, shapes, tokens=fda.tokens, blocks=fda.blocks, ffn_only=fda.ffn_only)
    except ConfigError as exc:  # name the input whose config.json it is
        text = str(exc)
        raise ConfigError(text if text.startswith(("tokens:", reference.uri)) else f"{reference.uri}: {text}") from None
    for block in blocks:
        for parameter, (_, value) in zip(block.parameter_names, block.module.named_parameters()):
            _check_block_tensor(reference, block.checkpoint_name(parameter), tuple(value.shape))
    if check_only:
        return blocks
    return discover_blocks(reference.config, names, tokens=fda.tokens, blocks=fda.blocks, ffn_only=fda.ffn_only)


def _check_block_tensor(reference: CheckpointLayout, name: str, shape: tuple[int, ...]) -> None:
    info = reference.tensors.get(name)
    if info is None:
        raise ConfigError(f"{reference.uri}: FDA block tensor '{name}' is missing; pass parameters.blocks")
    if info.shape != shape or not info.is_float:
        raise ConfigError(
            f"{reference.describe(name)}: FDA block tensor '{name}' is {info.dtype} {list(info.shape)}, the block expects {list(shape)}"
        )


def _blocks_first(blocks: list[Block], names: list[str]) -> list[str]:
    """Each block's tensors in parameter order, then every other tensor in read order."""
    in_blocks = [name for block in blocks for name in block.tensor_names()]
    taken = set(in_blocks)
    return in_blocks + [name for name in names if name not in taken]


def _read_order(layout: CheckpointLayout) -> list[str]:
    """File order, then offset order: sequential reads of every input."""
    return sorted(layout.tensors, key=lambda n: (layout.tensors[n].file, layout.tensors[n].start))


def _task(reference: CheckpointLayout, name: str, resolver: ParameterResolver, config: MergeConfig) -> TensorTask:
    info = reference.tensors[name]
    if not info.is_float:
        return TensorTask(OutputTensor(name, info.dtype, info.shape), merged=False)
    dtype = DTYPE_NAMES[OUTPUT_DTYPES[config.dtype]] if config.dtype else info.dtype
    params, model_params = resolver.for_tensor(name)
    return TensorTask(OutputTensor(name, dtype, info.shape), True, params, tuple(model_params), resolver.method)
