"""The inbound and outbound request logs in the store (guide 12.1)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..http import RequestLogEntry
from ..logging import redact_text
from . import Store, schema


def record_inbound(
    store: Store,
    *,
    module: str,
    method: str,
    url: str,
    status: int,
    outcome: str | None,
    detail: str | None = None,
    tenant_id: str | None = None,
    connection: str | None = None,
    duration_ms: int | None = None,
    at: datetime | None = None,
) -> None:
    """Keep a request that reached us (a webhook, a sign-in or consent answer) in the
    inbound request log, its URL's and detail's secrets removed. Plugins record through this;
    they never write the store themselves."""
    with store.unit() as connection_:
        connection_.execute(
            sa.insert(schema.request_log).values(
                direction="inbound",
                at=at or datetime.now(UTC),
                module=module,
                connection=connection,
                tenant_id=tenant_id,
                method=method,
                url=redact_text(url),
                status=status,
                duration_ms=duration_ms,
                retries=0,
                outcome=outcome,
                detail=redact_text(detail)[:1000] if detail else None,
            )
        )


class StoreRequestLog:
    """Writes each outbound call of the HTTP client to ``request_log``.

    An entry is written in a small transaction of its own, outside any unit of work, so a
    call is logged even when the unit that made it is rolled back. On SQLite, which has one
    writer at a time, entries made while a unit holds the store wait in memory and are
    written as soon as the unit ends.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        store.after_unit(self.flush)

    def record(self, entry: RequestLogEntry) -> None:
        with self._lock:
            self._pending.append(
                {
                    "direction": "outbound",
                    "at": entry.at,
                    "module": entry.module,
                    "connection": entry.connection,
                    "tenant_id": entry.tenant_id,
                    "method": entry.method,
                    "url": entry.url,
                    "status": entry.status,
                    "duration_ms": entry.duration_ms,
                    "retries": entry.retries,
                    "outcome": entry.outcome,
                    "detail": entry.detail,
                }
            )
        self.flush()

    def flush(self) -> None:
        """Write what is pending, unless a unit holds the store (then the unit's end will)."""
        with self._lock:
            if not self._pending:
                return
            writing = self.store.try_write()
            if writing is None:
                return
            rows, self._pending = self._pending, []
        try:
            with writing as connection:
                connection.execute(sa.insert(schema.request_log), rows)
        except Exception:
            with self._lock:
                self._pending[:0] = rows  # keep them for the next try
            raise
