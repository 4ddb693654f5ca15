"""all_finite compares exponent bits: it must agree with torch.isfinite on every bit pattern."""

from __future__ import annotations

import pytest
import torch

from fda_core.checkpoints.reader import all_finite

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
INTEGER_OF = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def random_bits(dtype: torch.dtype, count: int, seed: int) -> torch.Tensor:
    integer = INTEGER_OF[dtype.itemsize]
    info = torch.iinfo(integer)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(info.min, info.max, (count,), generator=generator, dtype=integer).view(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_all_finite_agrees_with_isfinite_on_random_bit_patterns(dtype) -> None:
    reference = lambda t: bool(torch.isfinite(t.to(torch.float32) if t.dtype.itemsize == 1 else t).all())  # noqa: E731
    for seed in range(200):
        values = random_bits(dtype, 16, seed)  # about one in 16–256 entries of a 16-bit pattern is not finite
        assert all_finite(values) == reference(values), (dtype, values)
        finite = values[torch.isfinite(values.to(torch.float32) if dtype.itemsize == 1 else values)]
        assert all_finite(finite)


@pytest.mark.parametrize("dtype", FLOATS[:4])
@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_entry_anywhere_is_found(dtype, special) -> None:
    info = torch.finfo(dtype)
    extremes = torch.tensor([info.max, -info.max, info.tiny, info.smallest_normal / 4, -0.0], dtype=dtype)
    values = torch.cat([extremes, torch.zeros(60, dtype=dtype)]).reshape(5, 13)
    assert all_finite(values)
    assert all_finite(values.T)  # strided views too
    for index in (0, 7, 64):
        broken = values.clone()
        broken.view(-1)[index] = special
        assert not all_finite(broken) and not all_finite(broken.T)


def test_an_empty_tensor_is_finite() -> None:
    assert all_finite(torch.empty(0, 3, dtype=torch.bfloat16))
