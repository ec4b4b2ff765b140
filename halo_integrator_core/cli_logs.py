"""``halo-integrator logs ...``: read the inbound and outbound request logs, prune old ones.

The guide's Inbound and Outbound Requests tabs (12.1): what reached the integrator (webhooks,
sign-in and consent answers) and every call it made to Microsoft, each with its time,
module, connection, tenant, method, URL (secrets removed), status, duration and outcome.
The store is only read here, never created; `logs prune` deletes what is older than the
retention, as the daemon does once a day.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import click
import sqlalchemy as sa

from .config import Guid, ValueProblem
from .store import Store, StoreError, schema
from .store.request_log import (
    count_request_log_before,
    prune_request_log,
    request_log_entries,
    retention_cutoff,
)

if TYPE_CHECKING:
    from .cli import App

EXIT_USAGE = 2
DEFAULT_LIMIT = 50

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_CLASS = re.compile(r"^\s*([1-5])xx\s*$", re.IGNORECASE)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """WHEN as the command line gives it: ``2h``, ``30m``, ``3d``, ``1w`` (that long ago), or
    an ISO 8601 date or time (``2025-01-31``, ``2025-01-31T09:00``, with a zone or UTC)."""
    match = _RELATIVE.match(text)
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2).lower()]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueProblem(
            f"not a time: {text!r} (give a relative time such as 30m, 2h, 3d or 1w, or an ISO "
            "8601 date or time such as 2025-01-31 or 2025-01-31T09:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_status(text: str) -> tuple[int, int]:
    """CODE as the command line gives it: ``404`` exactly, or a class (``4xx``, ``5xx``)."""
    match = _CLASS.match(text)
    if match:
        first = int(match.group(1)) * 100
        return first, first + 99
    try:
        code = int(text.strip())
    except ValueError:
        code = 0
    if not 100 <= code <= 599:
        raise ValueProblem(
            f"not an HTTP status: {text!r} (give a code such as 404, or a class: 2xx, 4xx, 5xx)"
        )
    return code, code


def _usage(message: str, fix: str | None = None) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    if fix:
        click.echo(f"fix: {fix}", err=True)
    sys.exit(EXIT_USAGE)


def _existing_store(app: App) -> Store | None:
    """The store a run has made, or ``None`` (after saying so); creates nothing."""
    config = app.config()
    try:
        store = Store.open_existing(config.store_url)
    except StoreError as exc:
        _usage(str(exc), f"check [store] url in {app.config_path}")
    if store is None:
        click.echo("nothing logged yet: no store has been written (run a sync first)", err=True)
    return store


def _tenant_ids(store: Store, value: str) -> list[str]:
    """The tenant IDs TENANT stands for: itself if a GUID, else the stored tenants of that
    name or default domain (any module)."""
    try:
        return [str(Guid.parse(value.strip()))]
    except ValueProblem:
        pass
    t = schema.tenants
    key = value.strip().lower()
    with store.read() as connection:
        rows = connection.execute(
            sa.select(t.c.tenant_id, t.c.name, t.c.default_domain).order_by(t.c.name)
        ).all()
    found = sorted(
        {
            row.tenant_id
            for row in rows
            if key in (row.name.lower(), (row.default_domain or "").lower())
        }
    )
    if not found:
        known = "; ".join(f"{row.name} ({row.tenant_id})" for row in rows[:20])
        _usage(
            f"no stored tenant named {value!r}"
            + (f" (tenants: {known}{'; ...' if len(rows) > 20 else ''})" if rows else ""),
            "give a tenant ID, or the name or default domain of a synced tenant",
        )
    return found


def _query_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option(
                "--tenant",
                help="Only this tenant: its ID, or a synced tenant's name or default domain.",
            ),
            click.option("--module", help="Only this module (for example microsoft_csp)."),
            click.option(
                "--since",
                metavar="WHEN",
                help="Only entries from then on: 30m, 2h, 3d, 1w ago, or an ISO 8601 date or "
                "time (UTC unless it names a zone).",
            ),
            click.option(
                "--status",
                metavar="CODE",
                help="Only this HTTP status (404), or class (4xx, 5xx).",
            ),
            click.option(
                "--limit",
                type=click.IntRange(min=0),
                metavar="N",
                default=DEFAULT_LIMIT,
                show_default=True,
                help="The newest N matching entries (shown oldest first); 0 for all.",
            ),
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["table", "json"]),
                default="table",
                show_default=True,
                help="table: readable columns; json: one object per line, with the fields of "
                "`export --what requests`.",
            ),
        )
    ):
        command = option(command)
    return command


@click.group("logs")
def logs() -> None:
    """Read the inbound and outbound request logs (guide 12.1); prune old entries."""


@logs.command("inbound")
@_query_options
@click.pass_obj
def logs_inbound(app: App, **options: Any) -> None:
    """Requests that reached the integrator: webhooks, sign-in and consent answers."""
    _show(app, "inbound", **options)


@logs.command("outbound")
@_query_options
@click.pass_obj
def logs_outbound(app: App, **options: Any) -> None:
    """Calls the integrator made to Microsoft, with Microsoft's answer."""
    _show(app, "outbound", **options)


def _show(
    app: App,
    direction: str,
    *,
    tenant: str | None,
    module: str | None,
    since: str | None,
    status: str | None,
    limit: int,
    fmt: str,
) -> None:
    try:
        since_at = parse_since(since) if since else None
        status_range = parse_status(status) if status else None
    except ValueProblem as exc:
        raise click.BadParameter(str(exc)) from None
    store = _existing_store(app)
    if store is None:
        return
    try:
        tenant_ids = _tenant_ids(store, tenant) if tenant else None
        entries, total = request_log_entries(
            store,
            direction=direction,
            tenant_ids=tenant_ids,
            module=module,
            since=since_at,
            status=status_range,
            limit=limit or None,
        )
    finally:
        store.close()
    if fmt == "json":
        for entry in entries:
            click.echo(json.dumps(entry, ensure_ascii=False))
    elif entries:
        _print_table(entries)
    if not entries:
        click.echo(f"no {direction} requests match", err=fmt == "json")
    elif total > len(entries):
        click.echo(
            f"{len(entries)} of {total} matching {direction} requests: the newest {len(entries)} "
            "(--limit N shows more, --limit 0 all)",
            err=fmt == "json",
        )
    elif fmt == "table":
        click.echo(f"{total} {direction} request{'s' if total != 1 else ''}")


_HEADERS = ("TIME (UTC)", "MODULE", "TENANT", "METHOD", "STATUS", "MS", "OUTCOME", "URL")


def _when(text: str) -> str:
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _outcome(entry: dict[str, Any]) -> str:
    outcome = entry["outcome"] or "-"
    retries = entry["retries"] or 0
    return f"{outcome} ({retries} retr{'y' if retries == 1 else 'ies'})" if retries else outcome


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n\t]\s*", " ", text)


def _print_table(entries: list[dict[str, Any]]) -> None:
    rows = [
        (
            _when(entry["at"]),
            entry["module"] or "-",
            entry["tenant_id"] or "-",
            entry["method"],
            str(entry["status"]) if entry["status"] is not None else "-",
            str(entry["duration_ms"]) if entry["duration_ms"] is not None else "-",
            _outcome(entry),
            entry["url"],
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in [_HEADERS, *rows]) for i in range(len(_HEADERS) - 1)]
    width = max(shutil.get_terminal_size((160, 24)).columns, 80)

    def line(cells: tuple[str, ...]) -> str:
        fixed = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=False))
        return f"{fixed}  {cells[-1]}"

    click.echo(line(_HEADERS))
    for entry, row in zip(entries, rows, strict=True):
        click.echo(line(row))
        if entry["detail"]:
            detail = _one_line(entry["detail"])
            limit = max(width - 4, 40)
            click.echo(f"    {detail if len(detail) <= limit else detail[: limit - 1] + '…'}")


@logs.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=0),
    metavar="DAYS",
    help="Delete entries older than DAYS days (default: [logging] request_log_retention_days; "
    "0 keeps everything).",
)
@click.option("--dry-run", is_flag=True, help="Say how many would be deleted; delete nothing.")
@click.pass_obj
def logs_prune(app: App, days: int | None, dry_run: bool) -> None:
    """Delete request-log entries older than the retention (the daemon does this daily)."""
    config = app.config()
    if days is None:
        days = config.logging.request_log_retention_days
        source = "[logging] request_log_retention_days"
    else:
        source = "--older-than"
    if days == 0:
        click.echo(f"{source} is 0: every entry is kept, nothing pruned")
        return
    store = _existing_store(app)
    if store is None:
        return
    now = datetime.now(UTC)
    cutoff = retention_cutoff(days, now)
    try:
        if dry_run:
            count = count_request_log_before(store, cutoff)
            verb = "would delete"
        else:
            count = prune_request_log(store, days, now=now)
            verb = "deleted"
    finally:
        store.close()
    click.echo(
        f"{verb} {count} request-log entr{'y' if count == 1 else 'ies'} older than {days} "
        f"day{'s' if days != 1 else ''} (before {cutoff.strftime('%Y-%m-%d %H:%M:%S')} UTC)"
    )
