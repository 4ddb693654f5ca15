"""A PEFT LoRA adapter as a model: base + scale · B·A per target module, computed per tensor on read.

An adapter folder (adapter_config.json + adapter_model.safetensors) is accepted wherever a model is.
Its layout has the base's tensor names and shapes; reading a tensor reads the base's and, where the
adapter targets it, adds the low-rank update (rank-r factors are cheap to hold). What PEFT's
`merge_and_unload()` does, tensor by tensor:

- Linear: W + s·B·A with s = lora_alpha / r (rsLoRA: / √r), r and alpha per module from
  `rank_pattern` / `alpha_pattern` (PEFT's matching: the first pattern P with key ≡ (.*\\.)?P$);
  `fan_in_fan_out` (GPT-2's Conv1D) transposes the update; `lora_bias` adds s·B.bias to the bias.
- Embedding: W + s·(B·A)ᵀ.
- DoRA (`use_dora`): m / ‖W + s·B·A‖_row · (W + s·B·A), m the saved magnitude vector (linear only).
- Full tensors the adapter saves (`modules_to_save`, `bias: all`, resized embeddings) replace the base's.

Refused by name: adapters whose meaning needs a modified base (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA
before conversion), layer replication, Megatron, QALoRA, trainable tokens, target_parameters and the
other variants PEFT merges differently; an update of a head the base ties to its embeddings.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fda_core.checkpoints.header import TensorInfo
from fda_core.checkpoints.layout import CheckpointLayout, InputLimits, inspect_checkpoint, read_json
from fda_core.checkpoints.reader import TensorReader, all_finite
from fda_core.checkpoints.sources import open_source
from fda_core.config import split_lora
from fda_core.errors import CheckpointError, ConfigError, NonFiniteError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTOR = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)$")  # fmt: skip
BASE_LAYER = re.compile(r"^(?P<module>.+)\.base_layer\.weight$")
REFUSED_OPTIONS = {
    "layer_replication": "it stacks copies of base layers",
    "megatron_config": "Megatron-parallel layers",
    "use_qalora": "QALoRA pools the input before A",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on nn.Parameter targets (MoE experts)",
    "alora_invocation_tokens": "activated LoRA applies only after its invocation tokens",
    "arrow_config": "Arrow routing between adapters",
    "use_bdlora": "block-diagonal LoRA",
    "kasa_config": "KaSA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
}
MODIFIED_BASE_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")  # the adapter is relative to a changed base


@dataclass(frozen=True)
class Update:
    """The low-rank update of one base tensor."""

    a: str  # adapter tensor names
    b: str
    scale: float
    kind: str  # linear | embedding | bias
    transpose: bool = False  # fan_in_fan_out
    magnitude: str | None = None  # DoRA


@dataclass
class LoraAdapter:
    uri: str
    layout: CheckpointLayout  # adapter_model.safetensors
    config: dict[str, Any]
    updates: dict[str, Update] = field(default_factory=dict)  # base tensor → update
    replaced: dict[str, str] = field(default_factory=dict)  # base tensor → adapter tensor that replaces it

    @property
    def declared_base(self) -> str | None:
        found = self.config.get("base_model_name_or_path")
        return found if isinstance(found, str) and found else None


@dataclass(frozen=True)
class LoraInput:
    """What a LoRA model input reads: its adapter, applied to `base`."""

    adapter: LoraAdapter
    base: CheckpointLayout
    base_is_merge_base: bool


def is_adapter(location: str) -> bool:
    source = open_source(location)
    return not source.single_file and ADAPTER_CONFIG in source.list_files()


def open_adapter(uri: str, limits: InputLimits = InputLimits()) -> LoraAdapter:
    """The adapter's config (refusing what we do not merge as PEFT does) and validated weights header."""
    source = open_source(uri)
    config = read_json(source, ADAPTER_CONFIG)
    _check_config(uri, config)
    if ADAPTER_WEIGHTS not in source.list_files():
        raise CheckpointError(
            f"{uri}: no {ADAPTER_WEIGHTS} (a pickled adapter_model.bin is refused; save it with safe_serialization)"
        )
    layout = inspect_checkpoint(f"{uri.rstrip('/')}/{ADAPTER_WEIGHTS}", limits)
    adapter = LoraAdapter(uri, layout, config)
    _parse_tensors(adapter)
    return adapter


def _check_config(uri: str, config: dict[str, Any]) -> None:
    where = f"{uri}/{ADAPTER_CONFIG}"
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{where}: peft_type {config.get('peft_type')!r}; fda-merge merges LoRA adapters only")
    for option, what in REFUSED_OPTIONS.items():
        if config.get(option) not in (None, False, {}, [], 0):
            raise CheckpointError(f"{where}: {option} ({what}) is not supported; merge the adapter with PEFT first")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(MODIFIED_BASE_INITS) or config.get("loftq_config"):
        raise CheckpointError(
            f"{where}: init_lora_weights {init!r} makes the adapter relative to a modified base; convert it with"
            " PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) first"
        )
    for key in ("r", "lora_alpha"):
        if not _positive(config.get(key)):
            raise CheckpointError(f"{where}: {key} must be a positive number, got {config.get(key)!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(k, str) and _positive(v) for k, v in pattern.items()):
            raise CheckpointError(f"{where}: {key} must map module patterns to positive numbers")
        for regex in pattern:
            try:
                re.compile(regex)
            except re.error:
                raise CheckpointError(f"{where}: {key} pattern {regex[:100]!r} is not a regular expression") from None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _parse_tensors(adapter: LoraAdapter) -> None:
    parts: dict[str, dict[str, str]] = {}
    for name in adapter.layout.tensors:
        if not name.startswith(PREFIX):
            raise CheckpointError(f"{adapter.uri}: adapter tensor '{name[:200]}' does not start with {PREFIX!r}")
        key = name[len(PREFIX) :]
        if match := FACTOR.match(key):
            parts.setdefault(match["module"], {})[match["part"]] = name
        elif match := BASE_LAYER.match(key):
            adapter.replaced[f"{match['module']}.weight"] = name
        else:
            adapter.replaced[key] = name  # modules_to_save, trained biases
    for module, found in parts.items():
        _add_updates(adapter, module, found)


def _add_updates(adapter: LoraAdapter, module: str, found: dict[str, str]) -> None:
    config, tensors = adapter.config, adapter.layout.tensors
    embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
    a = found.get("lora_embedding_A" if embedding else "lora_A.weight")
    b = found.get("lora_embedding_B" if embedding else "lora_B.weight")
    if a is None or b is None:
        raise CheckpointError(f"{adapter.uri}: module '{module}' has only one of its LoRA factors A and B")
    rank = tensors[a].shape[0]
    if len(tensors[a].shape) != 2 or len(tensors[b].shape) != 2 or tensors[b].shape[1] != rank:
        raise CheckpointError(
            f"{adapter.uri}: module '{module}': A {list(tensors[a].shape)} and B {list(tensors[b].shape)} are not rank-r factors"
        )
    declared = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    if declared != rank:
        raise CheckpointError(
            f"{adapter.uri}: module '{module}': adapter_config.json says r = {declared}, its A has rank {rank}"
        )
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    magnitude = found.get("lora_magnitude_vector")
    if config.get("use_dora") and magnitude is None:
        raise CheckpointError(f"{adapter.uri}: use_dora is set but module '{module}' has no lora_magnitude_vector")
    if magnitude and (embedding or config.get("fan_in_fan_out")):
        raise CheckpointError(f"{adapter.uri}: DoRA on '{module}' (an embedding or a Conv1D) is not supported")
    kind = "embedding" if embedding else "linear"
    adapter.updates[f"{module}.weight"] = Update(a, b, scale, kind, bool(config.get("fan_in_fan_out")), magnitude)
    if "lora_B.bias" in found:
        adapter.updates[f"{module}.bias"] = Update(a, found["lora_B.bias"], scale, "bias")


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    for pattern, value in patterns.items():  # peft.utils.other.get_pattern_key: the first match wins
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def lora_input(location: str, merge_base: CheckpointLayout | None, limits: InputLimits) -> LoraInput | None:
    """The LoRA reading of a model location, or None when it is a plain checkpoint."""
    explicit, target = split_lora(location)
    if explicit is None and not is_adapter(target):
        return None
    adapter = open_adapter(target, limits)
    base_uri = explicit or _base_of(adapter, merge_base, location)
    same = merge_base is not None and _same_place(base_uri, merge_base.uri)
    base = merge_base if same and merge_base is not None else inspect_checkpoint(base_uri, limits)
    _check_fits(adapter, base)
    return LoraInput(adapter, base, same)


def _base_of(adapter: LoraAdapter, merge_base: CheckpointLayout | None, location: str) -> str:
    """The merge's base_model, checked against the adapter's declared base; or, with none, the declared
    base when it is a local folder (never a remote one: only locations the config lists are fetched)."""
    declared = adapter.declared_base
    local = declared is not None and "://" not in declared and Path(declared).expanduser().is_absolute()
    if merge_base is not None:
        if local and declared is not None and Path(declared).exists() and not _same_place(declared, merge_base.uri):
            raise ConfigError(
                f"{location}: the adapter was trained on {declared} (adapter_config.json base_model_name_or_path),"
                f" not on base_model {merge_base.uri}; give model: {merge_base.uri}+{location} to apply it there"
                " anyway, or fix base_model"
            )
        return merge_base.uri
    if local and declared is not None:
        return declared
    raise ConfigError(
        f"{location}: a LoRA adapter needs its base: set base_model, or write model: BASE+{location}"
        + (f" (the adapter names {declared!r}, which is not a local folder)" if declared else "")
    )


def _same_place(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(Path(a).expanduser()) == os.path.realpath(Path(b).expanduser())


def _check_fits(adapter: LoraAdapter, base: CheckpointLayout) -> None:
    tensors = adapter.layout.tensors
    for target, update in adapter.updates.items():
        info = base.tensors.get(target)
        if info is None:
            raise CheckpointError(_missing(adapter, base, target))
        a, b = tensors[update.a].shape, tensors[update.b].shape
        expected = {
            "linear": (a[1], b[0]) if update.transpose else (b[0], a[1]),
            "embedding": (a[1], b[0]),
            "bias": (b[0],),
        }[update.kind]
        if info.shape != expected:
            raise CheckpointError(
                f"{adapter.uri}: the update of '{target}' is {list(expected)} but {base.describe(target)} holds"
                f" {list(info.shape)}: the adapter was trained on another base"
            )
        if update.magnitude and tensors[update.magnitude].shape != (expected[0],):
            raise CheckpointError(f"{adapter.uri}: DoRA magnitude of '{target}' does not match its {expected[0]} rows")
    for target, name in adapter.replaced.items():
        info = base.tensors.get(target)
        if info is None:
            raise CheckpointError(_missing(adapter, base, target))
        if tensors[name].shape != info.shape:
            raise CheckpointError(
                f"{adapter.uri}: '{name}' is {list(tensors[name].shape)}, {base.describe(target)} holds {list(info.shape)}"
            )


def _missing(adapter: LoraAdapter, base: CheckpointLayout, target: str) -> str:
    if target.startswith("lm_head.") and (base.config or {}).get("tie_word_embeddings", True):
        return (
            f"{adapter.uri}: the adapter changes '{target}', which {base.uri} ties to its embeddings (no separate head);"
            " merging it would change the embeddings too — untie the head in the base first, or drop lm_head from"
            " the adapter"
        )
    return f"{adapter.uri}: the adapter changes '{target}', which {base.uri} does not have: trained on another base?"


def lora_layout(location: str, found: LoraInput) -> CheckpointLayout:
    """The model the adapter makes of its base: the base's names and shapes, read through `LoraReader`."""
    adapter, base = found.adapter, found.base
    tensors = {
        name: info if name not in adapter.replaced else _replaced_info(adapter, name, info)
        for name, info in base.tensors.items()
    }
    return CheckpointLayout(
        location, adapter.layout.source, adapter.layout.weight_files, tensors, {}, base.config, base.side_files, found
    )


def _replaced_info(adapter: LoraAdapter, name: str, info: TensorInfo) -> TensorInfo:
    stored = adapter.layout.tensors[adapter.replaced[name]]
    return TensorInfo(name, stored.file, stored.dtype, info.shape, stored.start, stored.end)


class LoraReader(TensorReader):
    """Reads the base's tensor and applies the adapter's update (fp32, fp64 for fp64 bases)."""

    def __init__(self, found: LoraInput, check_finite: bool = False) -> None:
        super().__init__(found.base, check_finite=check_finite)  # reads the base
        self.found = found
        self.adapter = TensorReader(found.adapter.layout, check_finite=check_finite)

    def read(self, name: str) -> torch.Tensor:
        adapter = self.found.adapter
        if name in adapter.replaced:
            weight = self.adapter.read(adapter.replaced[name])
        else:
            weight = super().read(name)
        update = adapter.updates.get(name)
        if update is None:
            return weight
        merged = apply_update(weight, update, self.adapter.read)
        if self.check_finite and not all_finite(merged):
            raise NonFiniteError(f"{adapter.uri}: the LoRA update of '{name}' gives NaN or infinite values")
        return merged

    def close(self) -> None:
        super().close()
        self.adapter.close()


def apply_update(weight: torch.Tensor, update: Update, read: Any) -> torch.Tensor:
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(compute)
    b = read(update.b).to(compute)
    if update.kind == "bias":
        return w + update.scale * b
    a = read(update.a).to(compute)
    delta = update.scale * (b @ a)  # (out, r) @ (r, in)
    if update.kind == "embedding" or update.transpose:
        delta = delta.T
    merged = w + delta
    if update.magnitude is not None:  # DoRA: PEFT's Linear.merge, weight norm per output row
        magnitude = read(update.magnitude).to(compute)
        merged = (magnitude / torch.linalg.norm(merged, dim=1)).view(-1, 1) * merged
    return merged
