"""Parameter values as mergekit writes them, resolved for one tensor.

A setting is a scalar (`0.5`), a gradient over layers (`[0, 0.5, 1]`, interpolated by the
tensor's relative layer position t), or a list of conditions (`[{filter: self_attn, value: …},
{value: …}]`, the first whose filter is a substring of the tensor name wins).
"""

from __future__ import annotations

import re
from typing import Any

Setting = Any
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    match = _LAYER_INDEX.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """mergekit's t: layer i of n sits at i / (n - 1); tensors outside the layers at 0."""
    index = layer_index(tensor_name)
    if index is None:
        return 0.0
    return (
        min(1.0, index / (num_layers - 1)) if num_layers > 1 else 1.0
    )  # clamped: odd stacks (vision towers) may run past


def resolve_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value of `setting` for `tensor_name` at layer position `t`; None if no condition matches."""
    if isinstance(setting, dict) and "value" in setting:
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(_is_scalar(item) for item in setting):
            return _gradient(setting, t)
        for condition in setting:
            if not isinstance(condition, dict) or "value" not in condition:
                raise ValueError(f"expected {{filter, value}} conditions, got {condition!r}")
            pattern = condition.get("filter")
            if pattern is not None and not isinstance(pattern, str):
                raise ValueError(f"filter must be a string, got {pattern!r}")
            if pattern in (None, "*") or pattern in tensor_name:
                return resolve_setting(condition["value"], tensor_name, t)
        return None
    return setting


def check_setting_shape(setting: Setting, where: str) -> None:
    """A setting is a scalar, a gradient (a list of scalars) or {filter, value} conditions whose values
    are settings themselves; anything else (a list of lists, …) is a ValueError naming `where`.
    Other dicts are a method's own structured parameters and are left to it."""
    if isinstance(setting, dict) and "value" in setting:
        conditions: list[Any] = [setting]
    elif isinstance(setting, list) and not all(_is_scalar(item) for item in setting):
        conditions = setting
    else:
        return
    for condition in conditions:
        if not isinstance(condition, dict) or "value" not in condition:
            raise ValueError(
                f"{where}: expected a gradient (a list of numbers) or {{filter, value}} conditions, got {condition!r}"[
                    :300
                ]
            )
        if condition.get("filter") is not None and not isinstance(condition["filter"], str):
            raise ValueError(f"{where}: filter must be a string, got {condition['filter']!r}"[:300])
        check_setting_shape(condition["value"], where)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _gradient(values: list[Any], t: float) -> Any:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    fraction = scaled - low
    return (1 - fraction) * values[low] + fraction * values[high]


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def num_layers_of(config: dict | None, tensor_names: list[str]) -> int:
    """Layer count from config.json, else from the largest layer index in the tensor names."""
    key = layer_count_key(config)
    if key is not None:
        return int(config[key])  # type: ignore[index]
    indices = [i for i in (layer_index(n) for n in tensor_names) if i is not None]
    return max(indices) + 1 if indices else 1


def layer_count_key(config: dict | None) -> str | None:
    """The config.json key num_layers_of reads, if there is one."""
    return next((k for k in LAYER_COUNT_KEYS if config and isinstance(config.get(k), int)), None)


def layer_count_source(config: dict | None) -> str:
    key = layer_count_key(config)
    return f"config.json {key}" if key else "counted from its tensor names"
