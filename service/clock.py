"""Time from one clock: the database's. Leases, the reaper, schedules and webhook retries compare
times written by different machines, so both sides of every comparison come from the database
(`now()` on PostgreSQL, `'now'` on SQLite), never from a worker's or a reaper's own clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from service.models import UTCDateTime


class _DatabaseTime(FunctionElement):
    """The database's current time plus a number of seconds (a bound parameter)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "database_time"


def db_now(plus_seconds: float = 0.0) -> Any:
    """A SQL expression: the database's time now (+ seconds), comparable with our datetime columns."""
    return _DatabaseTime(literal(float(plus_seconds), Float()))


@compiles(_DatabaseTime)
def _postgres(element: _DatabaseTime, compiler: Any, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(now() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(_DatabaseTime, "sqlite")
def _sqlite(element: _DatabaseTime, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): the same text form,
    # so comparisons of strings are comparisons of times ('%f' gives milliseconds; padded to micro).
    (seconds,) = element.clauses
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', {compiler.process(seconds, **kw)} || ' seconds')"


def database_time(session: Session) -> datetime:
    """The database's clock, read once (for code that computes with it, e.g. the next cron fire)."""
    moment = session.scalar(select(db_now()))
    assert isinstance(moment, datetime)
    return moment
