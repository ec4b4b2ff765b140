"""The inbound and outbound request logs in the store (guide 12.1).

Entries are written by `record_inbound` (what reached us) and `StoreRequestLog` (every call
to Microsoft); `request_log_entries` reads them back with filters, in the field names of
``export --what requests``; `prune_request_log` deletes what is older than the retention.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from ..http import HttpClient, RequestLogEntry
from ..logging import redact_text
from ..pacing import Pacer
from . import Store, schema
from .bulk import insert_rows

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from ..config import Config


def logged_module(name: str) -> str:
    """A module name as the log keeps it: the name a request's path gave (an unknown
    module's, of any length) cut to the column's, which PostgreSQL enforces."""
    return name[: schema.request_log.c.module.type.length]


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
                module=logged_module(module),
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
                insert_rows(connection, schema.request_log, rows)
        except Exception:
            with self._lock:
                self._pending[:0] = rows  # keep them for the next try
            raise


# -- reading and pruning ----------------------------------------------------------------------

#: The directions an entry has.
DIRECTIONS = ("inbound", "outbound")
#: The fields of an entry, as ``export --what requests`` names them.
REQUEST_FIELDS = (
    "id",
    "direction",
    "at",
    "module",
    "connection",
    "tenant_id",
    "method",
    "url",
    "status",
    "duration_ms",
    "retries",
    "outcome",
    "detail",
)
#: Entries deleted per transaction when pruning: short units, so a sync's writes interleave.
PRUNE_BATCH = 5000


def _filters(
    *,
    direction: str | None,
    tenant_ids: Iterable[str] | None,
    module: str | None,
    since: datetime | None,
    status: tuple[int, int] | None,
) -> list[Any]:
    t = schema.request_log
    where: list[Any] = []
    if direction is not None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        where.append(t.c.direction == direction)
    if tenant_ids is not None:
        where.append(sa.func.lower(t.c.tenant_id).in_([i.lower() for i in tenant_ids]))
    if module is not None:
        where.append(t.c.module == module)
    if since is not None:
        where.append(t.c.at >= since)
    if status is not None:
        low, high = status
        where.append(t.c.status.between(low, high))
    return where


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def request_log_entries(
    store: Store,
    *,
    direction: str | None = None,
    tenant_ids: Iterable[str] | None = None,
    module: str | None = None,
    since: datetime | None = None,
    status: tuple[int, int] | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The entries matching every filter given, and how many match in all.

    ``tenant_ids`` matches any of those tenants (letter case ignored); ``since`` keeps
    entries at or after it; ``status`` is an inclusive range (``(404, 404)``, ``(500, 599)``),
    which entries without a status (a dropped connection) never match. With ``limit``, the
    newest ``limit`` entries. Either way they come oldest first, as dicts with the fields
    of ``export --what requests`` (timestamps in ISO 8601).
    """
    t = schema.request_log
    where = _filters(
        direction=direction, tenant_ids=tenant_ids, module=module, since=since, status=status
    )
    columns = [t.c[name] for name in REQUEST_FIELDS]
    query = sa.select(*columns).where(*where).order_by(t.c.at.desc(), t.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with store.read() as connection:
        total = connection.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar()
        rows = connection.execute(query).mappings().all()
    entries = [{key: _plain(value) for key, value in row.items()} for row in reversed(rows)]
    return entries, int(total or 0)


def retention_cutoff(older_than_days: int, now: datetime | None = None) -> datetime:
    """The moment before which entries are older than ``older_than_days``."""
    return (now or datetime.now(UTC)) - timedelta(days=older_than_days)


def count_request_log_before(store: Store, cutoff: datetime) -> int:
    t = schema.request_log
    with store.read() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.at < cutoff)
            ).scalar()
            or 0
        )


def prune_request_log(store: Store, older_than_days: int, *, now: datetime | None = None) -> int:
    """Delete the entries older than ``older_than_days`` days, and the webhook event IDs
    remembered as long; how many entries were deleted.

    ``0`` keeps everything (as ``[logging] request_log_retention_days = 0`` means) and
    deletes nothing. Deletes in batches, each its own unit of work, so a daemon's syncs are
    not held up behind one long transaction on SQLite.
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be 0 or more, not {older_than_days}")
    if older_than_days == 0:
        return 0
    cutoff = retention_cutoff(older_than_days, now)
    t = schema.request_log
    removed = 0
    while True:
        batch = sa.select(t.c.id).where(t.c.at < cutoff).limit(PRUNE_BATCH)
        with store.unit() as connection:
            deleted = connection.execute(sa.delete(t).where(t.c.id.in_(batch))).rowcount
        removed += deleted
        if deleted < PRUNE_BATCH:
            break
    # A webhook's event ID is remembered (to answer a repeated delivery without acting on
    # it again) as long as the log entry of its delivery; a sender retries for hours, not
    # for the weeks of a retention.
    events = schema.webhook_events
    with store.unit() as connection:
        forgotten = connection.execute(
            sa.delete(events).where(events.c.received_at < cutoff)
        ).rowcount
    if forgotten:
        log.info("webhook_events.pruned", removed=forgotten, older_than_days=older_than_days)
    return removed


class RunClients:
    """The HTTP clients of a runner (sync engine, billing runner): one that writes the
    outbound request log, and one for dry runs that leaves none. Made on first use.

    Both share ``pacer``: they reach the same Microsoft budget, so they keep one account of
    it. A client given as ``http`` keeps its own pacing (or none).
    """

    def __init__(
        self,
        store: Store,
        verify: Any,
        http: HttpClient | None = None,
        *,
        pacer: Pacer | None = None,
    ) -> None:
        self.store = store
        self.verify = verify
        self.pacer = pacer
        self._http = http
        self._dry_http: HttpClient | None = None

    @classmethod
    def for_config(
        cls,
        store: Store,
        config: Config,
        http: HttpClient | None = None,
        *,
        pacer: Pacer | None = None,
    ) -> RunClients:
        """The clients of a runner under ``config``: its CA bundle, and ``pacer`` (the
        process's, when it has one) or a Graph pacing of its own."""
        return cls(store, config.endpoints.verify, http, pacer=pacer or Pacer.from_config(config))

    def get(self, *, dry_run: bool) -> HttpClient:
        if dry_run:
            if self._dry_http is None:
                self._dry_http = HttpClient(verify=self.verify, pacer=self.pacer)
            return self._dry_http
        if self._http is None:
            self._http = HttpClient(
                verify=self.verify, request_log=StoreRequestLog(self.store), pacer=self.pacer
            )
        return self._http
