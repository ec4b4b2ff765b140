"""Many-row inserts and updates at the DBAPI's own speed.

SQLAlchemy's ``connection.execute(statement, rows)`` rebuilds each row's parameters through
its compiled statement: per row, per column, a lookup, a default check and a type
processor. For the sync's batches of hundreds of rows that bookkeeping costs several times
what SQLite or PostgreSQL spends storing them. Here a statement is compiled once per table
and column set (per dialect), each column's bind processor is looked up once, a processor
is not called again for the value it has just processed (the batch's shared timestamps and
IDs), and the rows go to the driver's ``executemany`` through ``exec_driver_sql``: still
inside the caller's transaction, still seen by its events and logging.

On PostgreSQL (psycopg) inserts go by ``COPY ... FROM STDIN`` instead, in the same
transaction. An ``executemany`` of inserts costs the server a statement per row: the
27,000 users of a default-size benchmark full sync took 2.5 s of wall to insert that way,
0.6 to 0.7 s by COPY, and the whole sync went from 6.2 to 3.7-4.0 s (interleaved runs).
SQLAlchemy does not see a COPY (no cursor events, no statement in its echo); its errors
are raised as SQLAlchemy raises a statement's.

What is written is what ``connection.execute(sa.insert(table), rows)`` would write: the same
processed values, the same column defaults for columns a row leaves out (and, but for the
COPY, the same SQL).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

#: A prefix for the update statement's bind names: they must not clash with column names.
_BIND = "b_"


def insert_rows(connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts of column values) into ``table``."""
    for columns, group in _by_columns(rows):
        _statement(connection.dialect, table, columns, None).execute(connection, group)


def update_rows(
    connection: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str | tuple[str, ...] = "id",
) -> None:
    """Update the rows of ``table`` whose ``key`` column (or columns) equal each row's
    values of them, setting the row's other values."""
    keys = (key,) if isinstance(key, str) else key
    for columns, group in _by_columns(rows):
        _statement(connection.dialect, table, columns, keys).execute(connection, group)


def _by_columns(
    rows: Iterable[Mapping[str, Any]],
) -> Iterable[tuple[tuple[str, ...], list[Mapping[str, Any]]]]:
    """Rows grouped by their column set (one statement each), in first-seen order."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups.items()


class _Compiled:
    """One statement, compiled for one dialect, with how to build each row's parameters."""

    def __init__(
        self,
        dialect: Dialect,
        table: sa.Table,
        columns: tuple[str, ...],
        keys: tuple[str, ...] | None,
    ) -> None:
        if keys is None:
            statement: sa.Executable = sa.insert(table)
            compiled = statement.compile(dialect=dialect, column_keys=list(columns))
            # Columns the row leaves out but that have a Python-side default: SQLAlchemy
            # fills these per row; so must we.
            defaults = {
                column.key: _default_of(column)
                for column in (*compiled.insert_prefetch, *compiled.update_prefetch)
                if column.key not in columns
            }
            source = {name: name for name in columns} | {name: name for name in defaults}
        else:
            missing = [k for k in keys if k not in columns]
            if missing:
                raise ValueError(f"{table.name}: an update row lacks its key {missing}")
            statement = (
                sa.update(table)
                .where(*(table.c[k] == sa.bindparam(_BIND + k) for k in keys))
                .values({c: sa.bindparam(_BIND + c) for c in columns if c not in keys})
            )
            compiled = statement.compile(dialect=dialect)
            defaults = {}
            source = {_BIND + c: c for c in columns}
        self.sql = compiled.string
        names = compiled.positiontup if compiled.positional else list(compiled.binds)
        assert names is not None
        unknown = [n for n in names if n not in source]
        if unknown:
            raise ValueError(f"{table.name}: no value for bind parameter(s) {unknown}")
        self.positional = compiled.positional
        self.names = list(names)
        self.columns = [source[name] for name in names]
        processors = [
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        ]
        #: All of a row's values at once, then the processor of each column that has one.
        getter = operator.itemgetter(*self.columns)
        self.values = getter if len(self.columns) > 1 else lambda row: (getter(row),)
        self.processors = [
            (index, _column_processor(processor))
            for index, processor in enumerate(processors)
            if processor is not None
        ]
        self.defaults = defaults
        #: The insert as PostgreSQL's COPY of the same columns (psycopg only: COPY from
        #: Python is each driver's own API).
        self.copy_sql = (
            "COPY {} ({}) FROM STDIN".format(
                dialect.identifier_preparer.format_table(table),
                ", ".join(dialect.identifier_preparer.quote(table.c[c].name) for c in self.columns),
            )
            if keys is None and dialect.name == "postgresql" and dialect.driver == "psycopg"
            else None
        )

    def execute(self, connection: Connection, rows: list[Mapping[str, Any]]) -> None:
        defaults = self.defaults
        if defaults:
            rows = [{**{k: d() for k, d in defaults.items()}, **row} for row in rows]
        values: list[tuple[Any, ...]] = list(map(self.values, rows))
        if self.processors and values:
            # Column by column: a processor runs over its column in one loop, not called
            # once per row through a wrapper, and the rows are taken apart and put back
            # together by zip (in C).
            columns: list[Sequence[Any]] = list(zip(*values, strict=True))
            for index, process in self.processors:
                columns[index] = process(columns[index])
            values = list(zip(*columns, strict=True))
        if self.copy_sql is not None:
            _copy(connection, self.copy_sql, values)
            return
        parameters: list[Any] = (
            values
            if self.positional
            else [dict(zip(self.names, row, strict=True)) for row in values]
        )
        connection.exec_driver_sql(self.sql, parameters)


def _copy(connection: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` (processed values, in the statement's column order) into PostgreSQL by
    ``COPY ... FROM STDIN``, on the connection's own DBAPI connection: inside its
    transaction. A driver error is raised as SQLAlchemy raises it from a statement (an
    `sqlalchemy.exc.IntegrityError` for a duplicate key, and so on), and a lost server
    connection is invalidated as SQLAlchemy invalidates it."""
    dialect = connection.dialect
    raw = connection.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        with cursor.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, raw, cursor)
        if lost:
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
        ) from exc
    finally:
        if not cursor.closed:
            cursor.close()


_compiled_cache: dict[tuple[str, str, str, tuple[str, ...], tuple[str, ...] | None], _Compiled] = {}


def _statement(
    dialect: Dialect, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...] | None
) -> _Compiled:
    cache_key = (dialect.name, dialect.driver, table.name, columns, keys)
    compiled = _compiled_cache.get(cache_key)
    if compiled is None:
        compiled = _compiled_cache[cache_key] = _Compiled(dialect, table, columns, keys)
    return compiled


def _default_of(column: sa.Column[Any]) -> Callable[[], Any]:
    default = column.default
    if default is None or not (default.is_scalar or default.is_callable):  # type: ignore[attr-defined]
        raise ValueError(f"{column}: a server-side default cannot be filled in bulk")
    if default.is_scalar:  # type: ignore[attr-defined]
        value = default.arg  # type: ignore[attr-defined]
        return lambda: value
    function = default.arg  # type: ignore[attr-defined]
    return lambda: function(None)  # SQLAlchemy wraps a no-argument callable to take a context


def _column_processor(processor: Callable[[Any], Any]) -> Callable[[Sequence[Any]], list[Any]]:
    """``processor`` over a column's values, not called again for the very object it
    processed just before (the batch's shared timestamps and IDs), nor for ``None`` or an
    empty dict or list (a JSON column's usual value), whose results it knows already.
    Processors are pure functions of their value: the results are those of calling it
    for each."""
    known: dict[type, Any] = {}
    # A type that refuses None is called (and refuses) for each None instead.
    with contextlib.suppress(Exception):
        known[type(None)] = processor(None)

    def process(column: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        append = out.append
        last: Any = _NOTHING
        result: Any = None
        for value in column:
            if value is last:
                append(result)
                continue
            kind = type(value)
            if value is None and kind in known:
                append(known[kind])
                continue
            if (kind is dict or kind is list) and not value:
                if kind not in known:
                    known[kind] = processor(kind())
                append(known[kind])
                continue
            # The column's rows are all there at once: an object in two of them is the same
            # value in both, a dict too.
            result = processor(value)
            last = value
            append(result)
        return out

    return process


_NOTHING = object()

__all__ = ["insert_rows", "update_rows"]
