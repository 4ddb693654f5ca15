"""A hot statement run on the driver's cursor: the submit's two statements without SQLAlchemy's
per-execution work.

Through `Session.execute` a statement costs ~145 µs of CPU here, of which psycopg's own execution is
~60: the rest is SQLAlchemy's compiled-cache lookup, execution context and result set-up, per call
(docs/benchmarks.md, issue 12). A `DriverStatement` is compiled once and executed on the
session's own DBAPI connection — in its transaction, or in autocommit when the session's connection
is — with SQLAlchemy's own bind and result processors of the statement's types applied, so the values
are those `Session.execute` would send and return. Driver errors come out as SQLAlchemy's
(`DBAPIError.instance`: IntegrityError, OperationalError, …, parameters hidden), and a disconnect
invalidates the connection and the pool's older ones as SQLAlchemy would. PostgreSQL with psycopg only;
other drivers go through `Session.execute`. Connection events (`before_cursor_execute`, `handle_error`)
do not see these statements.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable, SelectBase


class DriverStatement:
    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def rows(self, session: Session, values: Mapping[str, Any]) -> Sequence[Any]:
        """The statement's rows (attribute access by column name, as SQLAlchemy's Row) for these values."""
        connection = session.connection()
        if connection.dialect.driver != "psycopg":
            return session.execute(self.statement, values).all()
        compiled = self._compiled or self._compile(connection.dialect)
        params = compiled.params(values)
        driver = connection.connection.driver_connection
        try:
            with driver.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute(compiled.sql, params, prepare=True)
                fetched = cursor.fetchall() if cursor.description else []
        except connection.dialect.loaded_dbapi.Error as error:
            raise _as_sqlalchemy_error(connection, compiled.sql, params, error) from error
        return [compiled.row(raw) for raw in fetched]

    def _compile(self, dialect: Dialect) -> _Compiled:
        self._compiled = _Compiled(self.statement, dialect)
        return self._compiled


class _Compiled:
    """The SQL, the internal parameters' values (literals), and the processors of the statement's types."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
        self.sql = str(compiled)
        binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the name in the SQL
        self.defaults = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
        self.required = {name for name, bind in binds.items() if bind.required}
        self.binds = {
            name: processor
            for name, bind in binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        columns = list(statement.selected_columns) if isinstance(statement, SelectBase) else []
        self._results: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._row = namedtuple("Row", [column.key for column in columns], rename=True)  # type: ignore[misc]

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if values.keys() != self.required:  # as SQLAlchemy: every required value, and nothing unknown
            missing, unknown = sorted(self.required - values.keys()), sorted(values.keys() - self.required)
            raise exc.ArgumentError(f"parameters missing: {missing}; not in the statement: {unknown}")
        params = {**self.defaults, **values}
        for name, processor in self.binds.items():
            params[name] = processor(params[name])
        return params

    def row(self, raw: Sequence[Any]) -> Any:
        return self._row(*(value if p is None else p(value) for p, value in zip(self._results, raw, strict=True)))


def _as_sqlalchemy_error(connection: Connection, sql: str, params: dict[str, Any], error: Any) -> BaseException:
    """What SQLAlchemy raises for this driver error, the connection invalidated when it is a disconnect."""
    dialect = connection.dialect
    disconnect = dialect.is_disconnect(error, connection.connection.dbapi_connection, None)
    if disconnect:  # as SQLAlchemy: this connection, and every pooled one opened before (the server restarted)
        connection.invalidate(error)
        connection.engine.dispose(close=False)  # a new pool; the old one's connections are dropped, not reused
    return exc.DBAPIError.instance(
        sql, params, error, dialect.loaded_dbapi.Error, hide_parameters=True, connection_invalidated=disconnect,
        dialect=dialect, ismulti=False,
    )  # fmt: skip
