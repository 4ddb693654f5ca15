"""Plain MLP stacks (config.json `model_type: fda_mlp`): block l is act(W_l x + b_l).

config: {"model_type": "fda_mlp", "layer_sizes": [d0, d1, …], "activation": "gelu" | "relu" | "tanh"};
checkpoint tensors `layers.{l}.weight` (d_{l+1}, d_l) and `layers.{l}.bias`. Anything else in the
checkpoint (task heads, say) is not a block and follows the init method.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fda_core.errors import ConfigError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class MLPBlock(nn.Module):
    """act(W x + b), with parameters named as in the checkpoint: `weight`, `bias`."""

    def __init__(self, width_in: int, width_out: int, activation: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width_out, width_in))
        self.bias = nn.Parameter(torch.zeros(width_out))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.linear(x, self.weight, self.bias))


class MLPStack(nn.Module):
    """The whole trunk, for building and fine-tuning such models (tests, benchmarks)."""

    def __init__(self, layer_sizes: list[int], activation: str = "gelu") -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x):
        for layer in self.layers:
            x = self.activation(layer(x))
        return x


def mlp_blocks(config: dict[str, Any], tensor_names: list[str]) -> list:
    from fda_core.fda.blocks import Block

    sizes, activation = config.get("layer_sizes"), config.get("activation", "gelu")
    if not isinstance(sizes, list) or len(sizes) < 2 or activation not in ACTIVATIONS:
        raise ConfigError(f"fda_mlp config needs layer_sizes (≥ 2 ints) and activation in {sorted(ACTIVATIONS)}")
    blocks = [
        Block(f"layers.{i}.", MLPBlock(a, b, activation), (a,)) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]
    missing = [name for block in blocks for name in block.tensor_names() if name not in set(tensor_names)]
    if missing:
        raise ConfigError(f"fda_mlp checkpoint lacks tensor '{missing[0]}'")
    return blocks
