"""Merge methods by name."""

from __future__ import annotations

from fda_core.errors import ConfigError
from fda_core.methods.base import MergeMethod

_METHODS: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    if cls.name in _METHODS:
        raise ValueError(f"merge method '{cls.name}' is registered twice")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> MergeMethod:
    try:
        return _METHODS[name]()
    except KeyError:
        raise ConfigError(f"unknown merge method '{name}'; available: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)
