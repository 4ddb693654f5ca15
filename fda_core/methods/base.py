"""The interface every merge method implements, and the per-tensor inputs it receives.

A method is a pure function of one tensor's inputs: the base tensor, the experts' tensors
(all in the compute dtype, on the compute device), the method's parameters resolved for this
tensor, each expert's parameters, and a generator seeded for this tensor alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from fda_core.params import ModelParams, Params


@dataclass
class TensorInputs:
    name: str
    base: torch.Tensor | None  # (…) the base model's tensor, None for base-free methods
    experts: list[torch.Tensor]  # N × (…) same shape as base
    params: Params
    model_params: list[ModelParams]
    generator: torch.Generator | None = None

    def task_vectors(self) -> list[torch.Tensor]:
        """τᵢ = θᵢ − θ0."""
        return list(self.lazy_task_vectors())

    def lazy_task_vectors(self) -> Iterator[torch.Tensor]:
        """τᵢ = θᵢ − θ0, computed one at a time as the caller asks."""
        assert self.base is not None
        return (expert - self.base for expert in self.experts)

    def weights(self) -> torch.Tensor:
        like = self.experts[0]
        return torch.tensor([p.weight for p in self.model_params], dtype=like.dtype, device=like.device)


class MergeMethod:
    """Subclass, set the class attributes, implement `merge`, and decorate with @register."""

    name: ClassVar[str]
    reference_url: ClassVar[str]
    params_type: ClassVar[type[Params]] = Params
    model_params_type: ClassVar[type[ModelParams]] = ModelParams
    requires_base: ClassVar[bool] = True
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    uses_randomness: ClassVar[bool] = False
    layerwise: ClassVar[bool] = False  # merges whole blocks (FDA), not one tensor at a time

    def merge(self, inputs: TensorInputs) -> torch.Tensor:
        raise NotImplementedError


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(N, …) from N tensors of shape (…)."""
    return torch.stack(tensors)


def broadcast_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) → (N, 1, …, 1) so it multiplies a stacked (N, …) tensor."""
    return weights.reshape(-1, *([1] * (like.dim() - 1)))
