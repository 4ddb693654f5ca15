"""The merge plan: every input's headers validated and every tensor's parameters resolved.

Building a plan reads only headers and small JSON files, so every error it can find (bad
checkpoint, mismatched shapes, bad parameter values) surfaces before any large read or download.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fda_core.checkpoints.header import DTYPE_NAMES
from fda_core.checkpoints.layout import CheckpointLayout, inspect_checkpoint
from fda_core.checkpoints.validate import check_compatible
from fda_core.checkpoints.writer import OutputTensor, plan_shards
from fda_core.config import MergeConfig
from fda_core.merge.params import ParameterResolver
from fda_core.merge.settings import num_layers_of
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

    @property
    def name(self) -> str:
        return self.output.name


@dataclass
class MergePlan:
    config: MergeConfig
    method: MergeMethod
    base: CheckpointLayout | None
    experts: list[CheckpointLayout]
    tasks: list[TensorTask]
    shards: list[list[OutputTensor]]

    @property
    def reference(self) -> CheckpointLayout:
        """The base, or the first model for base-free methods: source of config and tokenizer."""
        return self.base or self.experts[0]

    @property
    def inputs(self) -> list[CheckpointLayout]:
        return ([self.base] if self.base else []) + self.experts


def build_plan(config: MergeConfig, max_shard_bytes: int) -> MergePlan:
    method = get_method(config.method)
    layouts = [inspect_checkpoint(uri) for uri in config.input_locations()]
    base = layouts[0] if config.base_model else None
    experts = layouts[1:] if base else layouts
    reference = base or experts[0]
    check_compatible(reference, [layout for layout in layouts if layout is not reference])
    names = _read_order(reference)
    resolver = ParameterResolver(config, method, num_layers_of(reference.config, names))
    tasks = [_task(reference, name, resolver, config) for name in names]
    return MergePlan(config, method, base, experts, tasks, plan_shards([t.output for t in tasks], max_shard_bytes))


def _read_order(layout: CheckpointLayout) -> list[str]:
    """File order, then offset order: sequential reads of every input."""
    return sorted(layout.tensors, key=lambda n: (layout.tensors[n].file, layout.tensors[n].start))


def _task(reference: CheckpointLayout, name: str, resolver: ParameterResolver, config: MergeConfig) -> TensorTask:
    info = reference.tensors[name]
    if not info.is_float:
        return TensorTask(OutputTensor(name, info.dtype, info.shape), merged=False)
    dtype = DTYPE_NAMES[OUTPUT_DTYPES[config.dtype]] if config.dtype else info.dtype
    params, model_params = resolver.for_tensor(name)
    return TensorTask(OutputTensor(name, dtype, info.shape), True, params, tuple(model_params))
