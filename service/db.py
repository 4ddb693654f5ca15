"""Engine and sessions for the job database: SQLite (embedded) or PostgreSQL, chosen by URL.

Every PostgreSQL connection carries a statement timeout, a lock timeout, an idle-in-transaction
timeout, a connect timeout and TCP keepalives with a user timeout: a hung server, a lost network
path or a held lock becomes an error within seconds rather than a worker stuck forever (its lease
then passes to another). SQLite waits for the file lock at most the lock timeout (busy_timeout).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """hide_parameters: SQL parameters (webhook secrets, key digests) never reach a log line or an
    exception message, which log.exception would write out. pooled=False: one connection per use
    (a Celery parent process, whose pooled connections its forked children would share)."""
    from service.settings import get_settings

    settings = get_settings()
    statement_ms, lock_ms = (
        int(settings.db_statement_timeout_seconds * 1000),
        int(settings.db_lock_timeout_seconds * 1000),
    )
    size = settings.db_pool_size  # the API admits `size` requests (each may open a dispatch's session too): the
    # last third is for what runs outside that gate (event-stream reads), so nobody waits on the pool for long
    extra: dict = {"pool_size": size, "max_overflow": 2 * size} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        return _sqlite_engine(url, lock_ms, extra)
    connect_args = {
        "connect_timeout": 1000,
        "options": f"-c statement_timeout={statement_ms} -c lock_timeout={lock_ms} "
        f"-c idle_in_transaction_session_timeout={max(statement_ms * 4, 60_000)}",
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        "tcp_user_timeout": max(statement_ms, 10_000),  # unacknowledged writes (a dead peer) fail too
    }  # fmt: skip
    if pooled:  # the connection used last is handed out first: under light load one stays warm, unpinged
        extra["pool_use_lifo"] = True
    engine = create_engine(url, hide_parameters=True, connect_args=connect_args, **extra)
    if pooled:
        _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """The pool's pre-ping, only for a connection that sat in the pool PING_AFTER_IDLE_SECONDS or longer
    (pgbouncer's `server_check_delay`, at 1 s rather than its 30): under load every checkout takes a
    connection used a moment ago, and a `SELECT 1` round trip per request was ~0.1 ms of client and server
    CPU per submit (docs/benchmarks.md, issue 12). A ping that fails discards the pool's connections and
    it opens a fresh one (SQLAlchemy's InvalidatePoolError), as pool_pre_ping does; a connection opened
    just now is not pinged. A connection used less than a
    second before a server restart fails its next statement once (OperationalError), and the pool's
    connections of before the restart are dropped with it: the API answers that request 503
    `database_unavailable` (api/problems.py; the Python client retries it), workers and the reaper
    retry it as a transient error (service/retry.py)."""
    from sqlalchemy import exc

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_connection, record) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
        checked_in_at = record.info.get("checked_in_at")  # None: opened just now (info is new per connection)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # dead: the pool drops every connection of before and checks out a new one
            raise exc.InvalidatePoolError(f"pool connection failed its ping: {type(error).__name__}") from error


def _sqlite_engine(url: str, lock_ms: int, extra: dict) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    else:  # one connection per thread (SingletonThreadPool): no queue to size
        extra = {k: v for k, v in extra.items() if k == "poolclass"}
    connect_args = {"timeout": max(lock_ms / 1000, 1.0), "check_same_thread": False}
    engine = create_engine(url, connect_args=connect_args, hide_parameters=True, **extra)

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:  # API and worker processes share the file
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={max(lock_ms, 1000)}")
        cursor.close()

    return engine


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
