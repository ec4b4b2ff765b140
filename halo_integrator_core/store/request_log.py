"""The inbound and outbound request logs in the store (guide 12.1)."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from ..http import RequestLogEntry
from . import Store, schema


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
