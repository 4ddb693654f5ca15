"""The merge configuration: one pydantic schema for the CLI's YAML and the REST job body.

Parameter values may be scalars, per-layer gradients or filtered conditions (mergekit's
syntax, see fda_core.merge.settings). Method-specific checks run in `check_method_fit`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fda_core.errors import ConfigError

DTypeName = Literal["float32", "float16", "bfloat16", "float64"]
MAX_INTEGER = 2**53  # integers beyond this do not survive JSON round trips (RFC 7493) nor int64 arithmetic
MAX_SETTING_DEPTH = 4  # a list of {filter, value} conditions whose value is a gradient list
MAX_SETTING_ITEMS = 1024  # gradient points or conditions in one setting


class ModelInput(BaseModel):
    """One expert: where it is, its weight, and per-model method parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        description="Local path, file:// or s3:// URI of a model folder, a .safetensors or .gguf file, or a PEFT"
        " LoRA adapter folder (applied to base_model, or to BASE in mergekit's BASE+ADAPTER)",
    )
    weight: float | None = Field(None, allow_inf_nan=False, description="Shorthand for parameters.weight")
    parameters: dict[str, Any] = Field(default_factory=dict)
    calibration: str | None = Field(
        None,
        min_length=1,
        description="FDA only: a few unlabelled examples of this expert's task — a .jsonl of texts or a"
        " .safetensors of model inputs (local path, file:// or s3://; docs/fda.md)",
    )

    def resolved_parameters(self) -> dict[str, Any]:
        if self.weight is None:
            return dict(self.parameters)
        return {**self.parameters, "weight": self.weight}


class LayerRange(BaseModel):
    """One slice of a layer stack: layers [start, end) of models[model], stacked after the previous slices."""

    model_config = ConfigDict(extra="forbid")

    model: int = Field(ge=0, lt=1024, description="Index into models")
    layers: tuple[int, int] = Field(description="[start, end): the source model's layers, end excluded")

    @model_validator(mode="after")
    def _ordered(self) -> LayerRange:
        start, end = self.layers
        if not 0 <= start < end <= 100_000:
            raise ValueError(f"layers {list(self.layers)}: need 0 ≤ start < end ≤ 100000")
        return self


class MergeConfig(BaseModel):
    """What to merge and how. The same object is the body of a REST merge job."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="A registered merge method, e.g. task_arithmetic, ties, slerp")
    base_model: str | None = Field(None, description="The pretrained model the experts were fine-tuned from")
    models: list[ModelInput] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Method parameters")
    dtype: DTypeName | None = Field(None, description="Output dtype of floating tensors; default: the base's")
    seed: int = Field(0, ge=0, lt=2**63, description="Seeds every random choice (DARE masks); same seed, same output")
    layers: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="How many layers the config covers (a mergekit slice's layer_range end); a base model"
        " with another count is refused rather than merged in full",
    )
    check_finite: bool = Field(
        True,
        description="Fail the merge, naming the tensor, when an input or the output holds NaN or infinite values",
    )
    layer_stack: list[LayerRange] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="passthrough only: the output's layers, slice by slice, each from one model's layer range"
        " (mergekit's several slices, the frankenmerge idiom); embeddings come from the first slice's model,"
        " the final norm and head from the last's",
    )
    tokenizer_source: str | None = Field(
        None,
        min_length=1,
        description="mergekit's tokenizer_source: base (default), union, or the base or one of the models; accepted"
        " when every input has the same vocabulary (embedding rows are not remapped)",
    )
    gguf: Literal["f32", "f16", "bf16", "q8_0"] | None = Field(
        None,
        description="Also write the merge as model.gguf (llama.cpp) of this type in the output folder; LLaMA-style"
        " models only",
    )
    lora_rank: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Write the merge as a PEFT LoRA adapter of this rank (truncated SVD of each 2-D weight's merged"
        " task vector, as mergekit-extract-lora) instead of a full model; needs base_model",
    )

    @model_validator(mode="after")
    def _fits_method(self) -> MergeConfig:
        from fda_core.merge.params import check_method_fit  # the registry imports every method

        for where, setting in self._settings():
            check_setting(setting, where)
        check_method_fit(self)  # raises ValueError, reported by pydantic with the field
        if self.lora_rank is not None and not self.base_model:
            raise ValueError("lora_rank: a LoRA adapter is relative to a base; set base_model")
        if self.lora_rank is not None and self.gguf is not None:
            raise ValueError("gguf: a LoRA adapter output has no GGUF form here; drop gguf or lora_rank")
        if self.layer_stack is not None:
            self._check_layer_stack()
        return self

    def _check_layer_stack(self) -> None:
        if self.method != "passthrough":
            raise ValueError(f"layer_stack: stacks layers with method passthrough, not {self.method}")
        if self.layers is not None:
            raise ValueError("layer_stack: give either layers or layer_stack")
        for index, part in enumerate(self.layer_stack or []):
            if part.model >= len(self.models):
                raise ValueError(f"layer_stack.{index}.model: {part.model}, but there are {len(self.models)} models")

    def _settings(self) -> list[tuple[str, Any]]:
        found = [(f"parameters.{key}", value) for key, value in self.parameters.items()]
        for index, model in enumerate(self.models):
            found += [(f"models.{index}.parameters.{key}", value) for key, value in model.parameters.items()]
        return found

    def inputs(self) -> list[tuple[str, str]]:
        """Every location this config reads, with the field naming it: the base, each model, each
        model's calibration file. The one list the service allowlists and the plan opens."""
        found = [("base_model", part) for part in _parts(self.base_model)] if self.base_model else []
        found += [(f"models[{i}].model", part) for i, m in enumerate(self.models) for part in _parts(m.model)]
        found += [(f"models[{i}].calibration", m.calibration) for i, m in enumerate(self.models) if m.calibration]
        return found

    def input_locations(self) -> list[str]:
        """The base (if any) then each model, in order, as written (BASE+ADAPTER stays one)."""
        return ([self.base_model] if self.base_model else []) + [m.model for m in self.models]


def split_lora(location: str) -> tuple[str | None, str]:
    """mergekit's `BASE+ADAPTER` → (BASE, ADAPTER); anything else → (None, location). As in mergekit, a
    location with one '+' between two non-empty parts is always read this way."""
    if location.count("+") == 1:
        base, adapter = location.split("+")
        if base and adapter:
            return base, adapter
    return None, location


def _parts(location: str) -> list[str]:
    base, target = split_lora(location)
    return [target] if base is None else [base, target]


def check_setting(value: Any, where: str, depth: int = 0) -> None:
    """A parameter value is a finite number, a bool, a string, a flat gradient list or {filter, value}
    conditions (fda_core.merge.settings), nested a few levels at most (ValueError naming `where`).
    Method-wide dicts (FDA's init_parameters) hold such values themselves."""
    if depth > MAX_SETTING_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_SETTING_DEPTH} levels deep")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INTEGER:
            raise ValueError(f"{where}: {value} is out of range (|n| ≤ 2^53)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be a finite number, got {value}")
        return
    if isinstance(value, list | dict):
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        if len(items) > MAX_SETTING_ITEMS:
            raise ValueError(f"{where}: more than {MAX_SETTING_ITEMS} entries")
        for key, item in items:
            check_setting(item, f"{where}.{key}", depth + 1)
        return
    raise ValueError(f"{where}: unsupported value {type(value).__name__}")


def load_config(path: Path) -> MergeConfig:
    """Read a merge YAML: our schema, or a mergekit file (recognised by `merge_method`).

    Relative local paths in it (base_model, models[].model, models[].calibration) are relative to
    the YAML's own folder, as in docker-compose files: the result does not depend on where it is run."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({_one_line(str(exc))})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with method, base_model and models")
    if "merge_method" in doc:
        from fda_core.mergekit_compat import from_mergekit

        doc = from_mergekit(doc, where=str(path))
    config = parse_config(doc, where=str(path))
    return relative_to(config, path.resolve().parent)


def relative_to(config: MergeConfig, folder: Path) -> MergeConfig:
    """The config with relative local input paths made absolute against `folder`."""

    def absolute(location: str | None) -> str | None:
        if location is None:
            return None
        base, target = split_lora(location)
        if base is not None:
            return f"{one(base)}+{one(target)}"
        return one(location)

    def one(location: str) -> str:
        if "://" in location or Path(location).expanduser().is_absolute():
            return location
        return str(folder / location)

    models = [
        model.model_copy(update={"model": absolute(model.model), "calibration": absolute(model.calibration)})
        for model in config.models
    ]
    tokenizer = config.tokenizer_source
    if tokenizer not in (None, "base", "union"):
        tokenizer = absolute(tokenizer)
    return config.model_copy(
        update={"base_model": absolute(config.base_model), "models": models, "tokenizer_source": tokenizer}
    )


def parse_config(doc: dict[str, Any], where: str = "config") -> MergeConfig:
    try:
        return MergeConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = _one_line(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{field + ': ' if field else ''}{message}{more}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
