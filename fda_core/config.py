"""The merge configuration: one pydantic schema for the CLI's YAML and the REST job body.

Parameter values may be scalars, per-layer gradients or filtered conditions (mergekit's
syntax, see fda_core.merge.settings). Method-specific checks run in `check_method_fit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fda_core.errors import ConfigError

DTypeName = Literal["float32", "float16", "bfloat16", "float64"]


class ModelInput(BaseModel):
    """One expert: where it is, its weight, and per-model method parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, description="Local path, file:// or s3:// URI of a model folder or .safetensors file"
    )
    weight: float | None = Field(None, description="Shorthand for parameters.weight")
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


class MergeConfig(BaseModel):
    """What to merge and how. The same object is the body of a REST merge job."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="A registered merge method, e.g. task_arithmetic, ties, slerp")
    base_model: str | None = Field(None, description="The pretrained model the experts were fine-tuned from")
    models: list[ModelInput] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Method parameters")
    dtype: DTypeName | None = Field(None, description="Output dtype of floating tensors; default: the base's")
    seed: int = Field(0, ge=0, description="Seeds every random choice (DARE masks); same seed, same output")
    layers: int | None = Field(
        None,
        ge=1,
        description="How many layers the config covers (a mergekit slice's layer_range end); a base model"
        " with another count is refused rather than merged in full",
    )

    @model_validator(mode="after")
    def _fits_method(self) -> MergeConfig:
        from fda_core.merge.params import check_method_fit  # the registry imports every method

        check_method_fit(self)  # raises ValueError, reported by pydantic with the field
        return self

    def input_locations(self) -> list[str]:
        """The base (if any) then each model, in order."""
        return ([self.base_model] if self.base_model else []) + [m.model for m in self.models]


def load_config(path: Path) -> MergeConfig:
    """Read a merge YAML: our schema, or a mergekit file (recognised by `merge_method`)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({_one_line(str(exc))})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with method, base_model and models")
    if "merge_method" in doc:
        from fda_core.mergekit_compat import from_mergekit

        doc = from_mergekit(doc, where=str(path))
    return parse_config(doc, where=str(path))


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
