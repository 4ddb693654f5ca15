"""Fleet totals kept as jobs change state, so /metrics reads a few rows instead of every job.

Each increment happens in the transaction of the transition it counts (a succeeded job's phases,
bytes and cache uses in finish_job's; a failure's code in the failing UPDATE's), so a counter can
never count a transition that did not commit, or miss one that did.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import FleetCounter


def totals_of_result(result: dict[str, Any], uploaded: float = 0.0) -> dict[tuple[str, str], float]:
    """What one succeeded job adds: seconds per phase, bytes each way (uploaded: its artifacts' sizes),
    checkpoint-cache uses."""
    totals: dict[tuple[str, str], float] = {}
    for phase, seconds in (result.get("seconds") or {}).items():
        totals[("phase_seconds", str(phase)[:64])] = float(seconds)
    cache = result.get("checkpoint_cache") or {}
    totals[("bytes", "downloaded")] = float(cache.get("bytes_downloaded", 0))
    totals[("bytes", "uploaded")] = float(uploaded)
    totals[("checkpoint_cache", "hit")] = float(cache.get("hits", 0))
    totals[("checkpoint_cache", "miss")] = float(cache.get("misses", 0))
    return totals


def add(session: Session, increments: dict[tuple[str, str], float]) -> None:
    """Add to the counters inside the caller's transaction (an upsert on PostgreSQL and SQLite alike)."""
    if not increments:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    for (name, label), value in sorted(increments.items()):
        statement = insert(FleetCounter).values(name=name, label=label, value=value)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["name", "label"], set_={"value": FleetCounter.value + statement.excluded.value}
            )
        )


def read(session: Session, name: str) -> dict[str, float]:
    rows = session.execute(select(FleetCounter.label, FleetCounter.value).where(FleetCounter.name == name))
    return {label: float(value) for label, value in rows}
