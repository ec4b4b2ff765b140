"""Statements built once, then run with bound values.

Building a SQLAlchemy statement and computing its cache key costs more than running it on
SQLite: a quarter of the writer's time in a sync of 500 small tenants went to building the
same dozen statements anew for each unit. A statement that runs once per unit or batch is
built here once, with `sa.bindparam` placeholders (named ``b_...``: an UPDATE reserves
its columns' names), and its cache key is computed once with it.

A list of IDs or keys is bound as one parameter (`in_list`), not as SQLAlchemy's expanding
``IN (?, ?, ...)``: that one renders a new statement text for each list length on every
execution, which cost about 7% of the writer's time in a full sync, and gave the driver a
new statement to prepare each time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from . import json_text

Statement = TypeVar("Statement", bound=sa.Executable)

_statements: dict[Hashable, sa.Executable] = {}


def prepared(key: Hashable, build: Callable[[], Statement]) -> Statement:
    """The statement ``build`` makes, made once per ``key`` (which names what varies in
    its text: the table, the optional clauses)."""
    found = _statements.get(key)
    if found is None:
        # Two threads may both build it: the same statement either way.
        found = _statements[key] = build()
    return found  # type: ignore[return-value]


def in_list(
    expression: sa.ColumnElement[Any], name: str = "b_ids", *, negate: bool = False
) -> sa.ColumnElement[bool]:
    """``expression IN`` (``NOT IN`` with ``negate``) the list of values bound as ``name``,
    as one parameter whatever the list's length: on SQLite the list's JSON text read by
    ``json_each``, on PostgreSQL an array compared with ``= ANY``. An empty list holds
    nothing, as with ``IN``. Other dialects get SQLAlchemy's expanding ``IN``."""
    return _InList(expression, name, negate)


class _ValueList(sa.types.TypeDecorator[Sequence[Any]]):
    """A list parameter as `_InList` binds it: JSON text for SQLite's ``json_each``,
    the list itself (an array to the driver) elsewhere."""

    impl = sa.types.NullType
    cache_ok = True

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> Any:
        if value is None:
            raise ValueError("in_list: bind a list of values, not None")
        if dialect.name == "sqlite":
            return json_text(list(value))
        return list(value)


class _InList(sa.ColumnElement[bool]):
    """See `in_list`."""

    __visit_name__ = "halo_in_list"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's own class-level declaration
        ("operand", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
        ("negated", InternalTraversal.dp_boolean),
    ]
    type = sa.Boolean()
    #: A test in itself, like ``a IN b``: without it a WHERE on SQLite would compare it
    #: with 1, which keeps SQLite from using the column's index.
    _is_implicitly_boolean = True

    def __init__(self, expression: sa.ColumnElement[Any], name: str, negate: bool) -> None:
        if isinstance(expression.type, sa.types.NullType):
            # PostgreSQL's array needs the element type (`sa.func.lower(c, type_=c.type)`).
            raise TypeError(f"in_list: {expression} has no type; give it one")
        self.operand = expression
        self.values = sa.bindparam(name, type_=_ValueList())
        self.negated = negate


@compiles(_InList, "sqlite")
def _in_json_each(element: _InList, compiler: SQLCompiler, **kw: Any) -> str:
    operator = "NOT IN" if element.negated else "IN"
    return (
        f"({compiler.process(element.operand, **kw)} {operator} "
        f"(SELECT value FROM json_each({compiler.process(element.values, **kw)})))"
    )


@compiles(_InList, "postgresql")
def _in_any_array(element: _InList, compiler: SQLCompiler, **kw: Any) -> str:
    # The cast gives an empty list (an array of unknown type to the driver) its type. Text
    # goes as TEXT[], never VARCHAR(n)[]: that cast would cut a longer value down to n
    # characters, and so match a row it is not.
    kind = element.operand.type
    if isinstance(kind, sa.String):
        array = "TEXT[]"
    else:
        array = compiler.dialect.type_compiler_instance.process(kind) + "[]"
    test = (
        f"{compiler.process(element.operand, **kw)} = "
        f"ANY(CAST({compiler.process(element.values, **kw)} AS {array}))"
    )
    return f"(NOT ({test}))" if element.negated else f"({test})"


@compiles(_InList)
def _in_expanding(element: _InList, compiler: SQLCompiler, **kw: Any) -> str:
    values = sa.bindparam(element.values.key, expanding=True)
    operand = element.operand
    test = operand.not_in(values) if element.negated else operand.in_(values)
    return compiler.process(test, **kw)


def by_external_id(table: sa.Table) -> sa.Select[tuple[object, ...]]:
    """The rows of ``table`` (users, assets, licences...) of the tenant ``b_tenant`` whose
    external IDs are among ``b_ids``."""
    return prepared(
        ("by external id", table.name),
        lambda: sa.select(table).where(
            table.c.tenant_ref == sa.bindparam("b_tenant"), in_list(table.c.external_id)
        ),
    )


def unseen(table: sa.Table) -> sa.ColumnElement[bool]:
    """Rows of ``table`` not seen in the run bound as ``b_run``: never seen, or last seen
    in another run (so no record of this run holds them, yet)."""
    return sa.or_(table.c.seen_run_id.is_(None), table.c.seen_run_id != sa.bindparam("b_run"))


def free_to_take(table: sa.Table) -> sa.ColumnElement[bool]:
    """Rows of ``table`` another record may be matched to: of no record (another
    integration's, ``external_id`` empty), or of the tenant ``b_tenant`` but of none of the
    batch's records (``b_ids``) and not seen in the run ``b_run`` (deleted upstream, or
    about to be)."""
    return sa.or_(
        table.c.external_id.is_(None),
        sa.and_(
            table.c.tenant_ref == sa.bindparam("b_tenant"),
            in_list(table.c.external_id, negate=True),
            unseen(table),
        ),
    )


__all__ = ["by_external_id", "free_to_take", "in_list", "prepared", "unseen"]
