"""Opaque, prefixed object ids (`mj_…`, `tn_…`, `key_…`)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
