"""What the admin page and ``/healthz`` read from the store, and the admin page itself."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..export import EXPORTS
from ..models import TenantAccess
from ..store import Store, schema
from .pages import esc, page, table

#: Whether the module's app is consented in the tenant, as the access state the last sync
#: found says: a tenant's token is asked for only where a GDAP relationship is active.
CONSENT_BY_ACCESS = {
    TenantAccess.RESELLER_AND_GDAP: "consented",
    TenantAccess.GDAP_ONLY: "consented",
    TenantAccess.CONSENT_MISSING: "consent needed",
    TenantAccess.RESELLER_ONLY: "n/a",
    TenantAccess.GDAP_EXPIRED: "n/a",
}

RECENT_RUNS = 20
RECENT_FAILURES = 50


def last_runs(store: Store, modules: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The last sync run of each of ``modules`` (``None`` for one never run)."""
    runs = schema.sync_runs
    latest = (
        sa.select(sa.func.max(runs.c.id)).where(runs.c.module.in_(modules)).group_by(runs.c.module)
    )
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(modules)
    with store.read() as db:
        for row in db.execute(
            sa.select(
                runs.c.module, runs.c.id, runs.c.started_at, runs.c.finished_at, runs.c.outcome
            ).where(runs.c.id.in_(latest))
        ):
            found[row.module] = {
                "id": row.id,
                "started_at": _iso(row.started_at),
                "finished_at": _iso(row.finished_at),
                "outcome": row.outcome,
            }
    return found


def recent_runs(store: Store, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The newest sync runs, each with its counts summed over tenants, per entity kind."""
    runs, counts = schema.sync_runs, schema.sync_counts
    with store.read() as db:
        rows = [
            dict(row._mapping)
            for row in db.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit))
        ]
        ids = [row["id"] for row in rows]
        totals: dict[int, dict[str, dict[str, int]]] = {}
        columns = ("added", "updated", "unchanged", "deactivated", "skipped", "failed")
        if ids:
            for row in db.execute(
                sa.select(
                    counts.c.run_id,
                    counts.c.entity_kind,
                    *(sa.func.sum(getattr(counts.c, c)).label(c) for c in columns),
                )
                .where(counts.c.run_id.in_(ids))
                .group_by(counts.c.run_id, counts.c.entity_kind)
                .order_by(counts.c.run_id, counts.c.entity_kind)
            ):
                totals.setdefault(row.run_id, {})[row.entity_kind] = {
                    c: int(getattr(row, c) or 0) for c in columns
                }
    for row in rows:
        row["counts"] = totals.get(row["id"], {})
    return rows


def failed_requests(store: Store, limit: int = RECENT_FAILURES) -> list[dict[str, Any]]:
    """The newest requests, either way, that failed: status 400 or more, or no answer."""
    log = schema.request_log
    with store.read() as db:
        return [
            dict(row._mapping)
            for row in db.execute(
                sa.select(log)
                .where(
                    sa.or_(log.c.status >= 400, log.c.outcome.in_(("error", "connection_error")))
                )
                .order_by(log.c.at.desc(), log.c.id.desc())
                .limit(limit)
            )
        ]


def tenant_rows(store: Store, module: str | None = None) -> list[dict[str, Any]]:
    """Stored tenants (of ``module``, or all) with access, consent and mapping."""
    query = EXPORTS["tenants"]()  # the fields `export --what tenants` gives
    if module is not None:
        query = query.where(schema.tenants.c.module == module)
    with store.read() as db:
        rows = [dict(row._mapping) for row in db.execute(query)]
    for row in rows:
        if row["do_not_import"]:
            row["mapping"] = "do not import"
        elif row["customer_id"] is not None:
            row["mapping"] = f"customer {row['customer']}"
        else:
            row["mapping"] = "unmapped"
        row["consent"] = CONSENT_BY_ACCESS.get(row["access"], "unknown")
        row["connection"] = row["connection"] or None
    return rows


# -- the page ---------------------------------------------------------------------------------


def admin_page(
    store: Store,
    *,
    health: Mapping[str, Any] | None,
    module_links: Sequence[tuple[str, str]],
) -> Any:
    """The admin page: scheduler, modules' pages, sync runs, failures, tenants."""
    sections = [
        "<h2>Scheduler</h2>" + _scheduler(health),
        "<h2>Modules</h2>"
        + (
            "<ul>"
            + "".join(
                f"<li><a href='{esc(path)}'>{esc(title)}</a></li>" for title, path in module_links
            )
            + "</ul>"
            if module_links
            else "<p class='note'>No enabled module has an admin page.</p>"
        ),
        "<h2>Last sync runs</h2>" + _runs(recent_runs(store)),
        f"<h2>Recent failed requests (newest {RECENT_FAILURES})</h2>"
        + _failures(failed_requests(store)),
        "<h2>Tenants</h2>" + _tenants(tenant_rows(store)),
    ]
    return page("halo-integrator", "".join(sections))


def _scheduler(health: Mapping[str, Any] | None) -> str:
    if health is None:
        return "<p class='note'>No scheduler runs in this process.</p>"
    alive = health.get("alive")
    state = "<span class='good'>alive</span>" if alive else "<span class='bad'>not running</span>"
    items = "".join(
        f"<tr><th>{esc(key)}</th><td><code>{esc(json.dumps(value, default=str))}</code></td></tr>"
        for key, value in health.items()
        if key != "alive"
    )
    return f"<p>Scheduler: {state}</p>" + (f"<table>{items}</table>" if items else "")


def _runs(runs: list[dict[str, Any]]) -> str:
    def counts(by_kind: Mapping[str, Mapping[str, int]]) -> str:
        parts = []
        for kind, numbers in by_kind.items():
            shown = ", ".join(f"{name} {n}" for name, n in numbers.items() if n)
            parts.append(f"{esc(kind)}: {esc(shown or 'nothing')}")
        return "<br>".join(parts) or "-"

    return table(
        ("Run", "Module", "Started", "Finished", "Outcome", "Counts", "Error"),
        (
            (
                esc(run["id"]),
                esc(run["module"]),
                esc(_shown(run["started_at"])),
                esc(_shown(run["finished_at"])),
                _outcome(run["outcome"], ok=("succeeded", "running")),
                counts(run["counts"]),
                esc(run["error"]),
            )
            for run in runs
        ),
        empty="No sync has run yet.",
    )


def _failures(rows: list[dict[str, Any]]) -> str:
    return table(
        ("At", "Way", "Module", "Tenant", "Request", "Status", "Outcome", "Detail"),
        (
            (
                esc(_shown(row["at"])),
                esc(row["direction"]),
                esc(row["module"]),
                esc(row["tenant_id"]),
                f"{esc(row['method'])} <code>{esc(row['url'])}</code>",
                esc(row["status"]),
                esc(row["outcome"]),
                esc(row["detail"]),
            )
            for row in rows
        ),
        empty="No failed requests.",
    )


def _tenants(rows: list[dict[str, Any]]) -> str:
    return table(
        ("Tenant", "Module", "Connection", "Access", "Consent", "Mapping", "Last sync"),
        (
            (
                f"{esc(row['name'])}<br><code>{esc(row['tenant_id'])}</code>"
                + ("" if row["active"] else " <span class='note'>(inactive)</span>"),
                esc(row["module"]),
                esc(row["connection"]),
                esc(row["access"])
                + (
                    f"<br><span class='note'>{esc(row['access_detail'])}</span>"
                    if row["access_detail"]
                    else ""
                ),
                _outcome(row["consent"], ok=("consented", "n/a")),
                esc(row["mapping"]),
                esc(_shown(row["last_synced_at"]))
                + (
                    f"<br><span class='bad'>{esc(row['last_error'])}</span>"
                    if row["last_error"]
                    else ""
                ),
            )
            for row in rows
        ),
        empty="No tenants synced yet.",
    )


def _outcome(value: str | None, *, ok: Sequence[str]) -> str:
    return f"<span class='{'good' if value in ok else 'bad'}'>{esc(value)}</span>"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _shown(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else None
