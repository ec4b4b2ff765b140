"""Bookmarks (delta links and other cursors), one per (module, stream, tenant).

They are written in the same transaction as the records they cover, so a bookmark can
never run ahead of what is committed.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..models import LATEST_BOOKMARK
from ..store import schema, utcnow
from ..store.prepared import prepared

table = schema.bookmarks

#: A tenant's users: its delta link, and the time its last full listing ended.
USERS_STREAM = "users"
USERS_FULL_STREAM = "users.full"


def tenant_key(connection: str | None, tenant_id: str) -> str:
    """Whose bookmark: the tenant, through its connection when the module has connections."""
    return f"{connection}/{tenant_id}" if connection else tenant_id


def get_bookmark(connection: Connection, module: str, stream: str, tenant_key: str) -> str | None:
    statement = prepared(
        "bookmark",
        lambda: sa.select(table.c.value).where(
            table.c.module == sa.bindparam("b_module"),
            table.c.stream == sa.bindparam("b_stream"),
            table.c.tenant_key == sa.bindparam("b_tenant"),
        ),
    )
    return connection.execute(
        statement, {"b_module": module, "b_stream": stream, "b_tenant": tenant_key}
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


def reset_user_deltas(
    connection: Connection,
    module: str,
    *,
    latest: bool,
    tenant_keys: Collection[str] | None = None,
) -> list[str]:
    """A delta reset of ``module``'s users (guide 8.2.1); returns the tenant keys it reset.

    *Reset now* (``latest=False``) forgets the delta links and the time of the last full
    listing, so the next run lists everyone. *Get latest changes* (``latest=True``) sets each
    stored delta link to `LATEST_BOOKMARK`, so the next run starts a delta round from then:
    what changed in between is never imported. A tenant with no stored link is left alone:
    its next run lists everyone anyway, and skipping ahead would leave its users out for
    good. ``tenant_keys`` limits the reset to those tenants (all of the module's when None).
    """
    streams = [USERS_STREAM] if latest else [USERS_STREAM, USERS_FULL_STREAM]
    where = [table.c.module == module, table.c.stream.in_(streams)]
    if tenant_keys is not None:
        where.append(table.c.tenant_key.in_(list(tenant_keys)))
    keys = sorted(set(connection.execute(sa.select(table.c.tenant_key).where(*where)).scalars()))
    if not keys:
        return []
    if latest:
        connection.execute(
            sa.update(table).where(*where).values(value=LATEST_BOOKMARK, updated_at=utcnow())
        )
    else:
        connection.execute(sa.delete(table).where(*where))
    return keys
