"""Layer stacking (mergekit's several slices with passthrough, the frankenmerge idiom).

The output's layers are the slices' layer ranges one after another, renumbered from 0; the tensors before
the layers (embeddings) come from the first slice's model and those after (final norm, head) from the
last slice's, as mergekit's planner takes them. The reference model's config.json gets the new layer
count (and per-layer lists, such as layer_types, rebuilt slice by slice); the head is written only when
the last slice's model has one, and `tie_word_embeddings` says which: a tied head stays tied.
"""

from __future__ import annotations

import re
from typing import Any

from fda_core.checkpoints.layout import CheckpointLayout
from fda_core.checkpoints.writer import OutputTensor
from fda_core.config import MergeConfig
from fda_core.errors import ConfigError, IncompatibleModelsError
from fda_core.merge.params import ParameterResolver
from fda_core.merge.settings import layer_count_key, num_layers_of
from fda_core.methods.base import MergeMethod

LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|layer|h|blocks|block))\.(?P<index>\d+)\.(?P<rest>.+)$")
BEFORE_LAYERS = ("embed", "wte", "wpe")  # name parts of the tensors taken from the first slice
HEADS = ("lm_head.weight",)  # a head tensor whose absence means tied embeddings


def stack_tasks(
    config: MergeConfig, reference: CheckpointLayout, experts: list[CheckpointLayout], method: MergeMethod,
    first_expert: int, output_dtype: Any,
) -> tuple[list[Any], dict[str, Any]]:  # fmt: skip
    """(the TensorTasks of the stacked model, the config.json changes)."""
    from fda_core.merge.plan import TensorTask

    stack = config.layer_stack or []
    prefix, template = _layer_template(reference)
    total = sum(end - start for part in stack for start, end in [part.layers])
    resolver = ParameterResolver(config, method, total)
    tasks: list[TensorTask] = []

    def task(out: str, model: int, name: str) -> TensorTask:
        info = experts[model].tensors[name]
        if not info.is_float:
            return TensorTask(OutputTensor(out, info.dtype, info.shape), False, reads=((first_expert + model, name),))
        params, model_params = resolver.for_tensor(out)
        dtype = output_dtype(info)
        return TensorTask(
            OutputTensor(out, dtype, info.shape), True, params, (model_params[model],), method,
            reads=((first_expert + model, name),),
        )  # fmt: skip

    first, last = stack[0].model, stack[-1].model
    for name in _outside_layers(experts[first], before=True):
        tasks.append(task(name, first, name))
    index = 0
    for position, part in enumerate(stack):
        _check_range(position, part.layers, experts[part.model])
        for layer in range(*part.layers):
            for rest, shape in template:
                name = _needed(experts, part.model, f"{prefix}.{layer}.{rest}", shape)
                tasks.append(task(f"{prefix}.{index}.{rest}", part.model, name))
            index += 1
    for name in _outside_layers(experts[last], before=False):  # a tied last model has no head: nor has the output
        tasks.append(task(name, last, name))
    heads = {t.name for t in tasks} & set(HEADS)
    return tasks, _config_changes(reference, stack, experts, total, tied=not heads)


def _outside_layers(layout: CheckpointLayout, before: bool) -> list[str]:
    """The tensors outside the layers that come before them (embeddings) or after (norm, head)."""
    outside = [n for n in _read_order(layout) if not LAYER.match(n)]
    return [n for n in outside if any(part in n for part in BEFORE_LAYERS) == before]


def _layer_template(reference: CheckpointLayout) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    """The layers' name prefix and layer 0's tensors (name after the index, shape), in read order."""
    prefixes, template = set(), []
    for name in _read_order(reference):
        if match := LAYER.match(name):
            prefixes.add(match["prefix"])
            if match["index"] == "0":
                template.append((match["rest"], reference.tensors[name].shape))
    if len(prefixes) != 1 or not template:
        found = ", ".join(sorted(prefixes)) or "none"
        raise ConfigError(f"{reference.uri}: layer_stack needs one stack of numbered layers; found {found}")
    return prefixes.pop(), template


def _check_range(position: int, layers: tuple[int, int], source: CheckpointLayout) -> None:
    count = num_layers_of(source.config, list(source.tensors))
    if layers[1] > count:
        raise ConfigError(
            f"layer_stack.{position}.layers: {list(layers)}, but {source.uri} has {count} layers; the range ends at most at {count}"
        )


def _needed(experts: list[CheckpointLayout], model: int, name: str, shape: tuple[int, ...] | None = None) -> str:
    source = experts[model]
    info = source.tensors.get(name)
    if info is None:
        raise IncompatibleModelsError(f"layer_stack: tensor '{name}' is missing from {source.uri}")
    if shape is not None and info.shape != shape:
        raise IncompatibleModelsError(
            f"layer_stack: tensor '{name}' is {list(info.shape)} in {source.describe(name)}, the reference's layers"
            f" have {list(shape)}: stacked layers must come from models of one architecture and width"
        )
    return name


def _read_order(layout: CheckpointLayout) -> list[str]:
    return sorted(layout.tensors, key=lambda n: (layout.tensors[n].file, layout.tensors[n].start))


def _config_changes(
    reference: CheckpointLayout, stack: list[Any], experts: list[CheckpointLayout], total: int, tied: bool
) -> dict[str, Any]:
    config = reference.config or {}
    changes: dict[str, Any] = {"tie_word_embeddings": tied}
    key = layer_count_key(config)
    if key is not None:
        changes[key] = total
        count = config[key]
        for name, value in config.items():  # per-layer lists: rebuilt from each slice's own model
            if isinstance(value, list) and len(value) == count and name not in ("architectures",):
                changes[name] = [
                    ((experts[part.model].config or {}).get(name) or value)[layer]
                    for part in stack
                    for layer in range(*part.layers)
                ]
    return changes
