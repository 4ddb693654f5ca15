"""Base classes of method parameters (frozen pydantic models with the method's defaults)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Method-wide parameters; subclasses add fields with the method's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class ModelParams(Params):
    """Per-model parameters; `weight` is common to every method that weighs its inputs."""

    weight: float = 1.0
