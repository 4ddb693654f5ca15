"""A number written as a string ("1e309", "nan": YAML 1.1 reads an unquoted 1e309 as a string) is still a
number to pydantic's lax mode: it must be refused as non-finite naming the field, not coerced to inf and
merged (found from a fresh `fdamerge up`: the job failed only in the worker, as non_finite)."""

from __future__ import annotations

import pytest

from fda_core.config import parse_config
from fda_core.errors import ConfigError


@pytest.mark.parametrize("value", ["1e309", "-1e309", "nan", "inf"])
def test_a_non_finite_number_spelled_as_a_string_is_refused_naming_the_field(value: str) -> None:
    doc = {
        "method": "task_arithmetic",
        "base_model": "/b",
        "models": [{"model": "/m"}],
        "parameters": {"lambda": value},
    }
    with pytest.raises(ConfigError, match="parameters.lambda"):
        parse_config(doc)
