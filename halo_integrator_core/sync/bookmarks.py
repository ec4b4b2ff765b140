"""Bookmarks (delta links and other cursors), one per (module, stream, tenant).

They are written in the same transaction as the records they cover, so a bookmark can
never run ahead of what is committed.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import schema, utcnow

table = schema.bookmarks


def get_bookmark(connection: Connection, module: str, stream: str, tenant_key: str) -> str | None:
    return connection.execute(
        sa.select(table.c.value).where(
            table.c.module == module, table.c.stream == stream, table.c.tenant_key == tenant_key
        )
    ).scalar_one_or_none()


def save_bookmark(
    connection: Connection, module: str, stream: str, tenant_key: str, value: str | None
) -> None:
    where = (table.c.module == module, table.c.stream == stream, table.c.tenant_key == tenant_key)
    if value is None:
        connection.execute(sa.delete(table).where(*where))
        return
    updated = connection.execute(
        sa.update(table).where(*where).values(value=value, updated_at=utcnow())
    ).rowcount
    if not updated:
        connection.execute(
            sa.insert(table).values(
                module=module,
                stream=stream,
                tenant_key=tenant_key,
                value=value,
                updated_at=utcnow(),
            )
        )


def reset_bookmarks(
    connection: Connection, module: str, *, stream: str | None = None, tenant_key: str | None = None
) -> int:
    """Forget bookmarks so the next run starts from a full listing (guide 8.2.1)."""
    statement = sa.delete(table).where(table.c.module == module)
    if stream is not None:
        statement = statement.where(table.c.stream == stream)
    if tenant_key is not None:
        statement = statement.where(table.c.tenant_key == tenant_key)
    return connection.execute(statement).rowcount
