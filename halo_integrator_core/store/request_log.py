"""The inbound and outbound request logs in the store (guide 12.1)."""

from __future__ import annotations

import sqlalchemy as sa

from ..http import RequestLogEntry
from . import Store, schema


class StoreRequestLog:
    """Writes each outbound call of the HTTP client to ``request_log``, at once.

    Each entry is its own small transaction, outside any unit of work, so a call is logged
    even when the unit that made it is rolled back.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, entry: RequestLogEntry) -> None:
        with self.store.engine.begin() as connection:
            connection.execute(
                sa.insert(schema.request_log).values(
                    direction="outbound",
                    at=entry.at,
                    module=entry.module,
                    connection=entry.connection,
                    tenant_id=entry.tenant_id,
                    method=entry.method,
                    url=entry.url,
                    status=entry.status,
                    duration_ms=entry.duration_ms,
                    retries=entry.retries,
                    outcome=entry.outcome,
                    detail=entry.detail,
                )
            )
