"""Seeds derived from names, so random draws do not depend on processing order or device count."""

from __future__ import annotations

import hashlib

import torch


def named_seed(seed: int, *names: object) -> int:
    digest = hashlib.sha256(":".join([str(seed), *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def named_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(named_seed(seed, name))
