"""What the store holds, one record per item, with stable field names.

This is how a user checks a sync (`halo-integrator export`), and how tests read the store.
The field names of each export are part of the public interface (see the README).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .store import schema

c = schema  # the tables, short for the queries below


def _customer_join(table: sa.Table) -> Any:
    return table.join(c.customers, c.customers.c.id == table.c.customer_id)


def _tenant_cols(table: sa.Table) -> list[Any]:
    return [
        c.tenants.c.module.label("module"),
        c.tenants.c.tenant_id.label("tenant_id"),
        table.c.external_id.label("external_id"),
        c.customers.c.name.label("customer"),
    ]


def _status_cols(table: sa.Table) -> list[Any]:
    return [
        table.c.active,
        table.c.inactive_since,
        table.c.created_at,
        table.c.updated_at,
    ]


def _customers() -> sa.Select[Any]:
    t = c.customers
    return sa.select(t.c.id, t.c.name, t.c.source, *_status_cols(t)).order_by(t.c.id)


def _sites() -> sa.Select[Any]:
    t = c.sites
    return (
        sa.select(
            t.c.id,
            t.c.customer_id,
            c.customers.c.name.label("customer"),
            t.c.name,
            t.c.is_main,
            *_status_cols(t),
        )
        .select_from(_customer_join(t))
        .order_by(t.c.id)
    )


def _tenants() -> sa.Select[Any]:
    t = c.tenants
    return (
        sa.select(
            t.c.module,
            t.c.connection,
            t.c.tenant_id,
            t.c.name,
            t.c.default_domain,
            t.c.access,
            t.c.access_detail,
            t.c.customer_id,
            c.customers.c.name.label("customer"),
            t.c.do_not_import,
            t.c.last_synced_at,
            t.c.last_error,
            *_status_cols(t),
        )
        .select_from(t.outerjoin(c.customers, c.customers.c.id == t.c.customer_id))
        .order_by(t.c.module, t.c.connection, t.c.name)
    )


def _users() -> sa.Select[Any]:
    t = c.users
    return (
        sa.select(
            t.c.id,
            *_tenant_cols(t),
            c.sites.c.name.label("site"),
            t.c.user_principal_name,
            t.c.display_name,
            t.c.first_name,
            t.c.surname,
            t.c.email,
            t.c.network_login,
            t.c.job_title,
            t.c.department,
            t.c.office_location,
            t.c.phone,
            t.c.mobile,
            t.c.employee_id,
            t.c.account_enabled,
            t.c.user_type,
            t.c.is_service_account,
            t.c.last_sign_in_at,
            t.c.role,
            t.c.site_mapping,
            t.c.custom_fields,
            *_status_cols(t),
        )
        .select_from(
            # A PSA user no sync has linked yet has no tenant.
            _customer_join(t)
            .outerjoin(c.tenants, c.tenants.c.id == t.c.tenant_ref)
            .outerjoin(c.sites, c.sites.c.id == t.c.site_id)
        )
        .order_by(t.c.id)
    )


def _assets() -> sa.Select[Any]:
    t = c.assets
    return (
        sa.select(
            t.c.id,
            *_tenant_cols(t),
            c.sites.c.name.label("site"),
            c.users.c.user_principal_name.label("user"),
            c.asset_types.c.name.label("asset_type"),
            t.c.status,
            t.c.source,
            t.c.device_name,
            t.c.serial_number,
            t.c.manufacturer,
            t.c.model,
            t.c.operating_system,
            t.c.os_version,
            t.c.compliance_state,
            t.c.last_sync_at,
            t.c.enrolled_at,
            t.c.imei,
            t.c.wifi_mac,
            t.c.azure_ad_device_id,
            t.c.management_agent,
            t.c.custom_fields,
            *_status_cols(t),
        )
        .select_from(
            # An asset another integration brought in, not matched yet, has no tenant.
            _customer_join(t)
            .outerjoin(c.tenants, c.tenants.c.id == t.c.tenant_ref)
            .outerjoin(c.sites, c.sites.c.id == t.c.site_id)
            .outerjoin(c.users, c.users.c.id == t.c.user_id)
            .outerjoin(c.asset_types, c.asset_types.c.id == t.c.asset_type_id)
        )
        .order_by(t.c.id)
    )


def _licences() -> sa.Select[Any]:
    t, a = c.licences, c.licence_assignments
    assigned = (
        sa.select(sa.func.count())
        .where(a.c.licence_id == t.c.id, a.c.active.is_(True))
        .scalar_subquery()
        .label("assigned_users")
    )
    return (
        sa.select(
            t.c.id,
            *_tenant_cols(t),
            t.c.sku_part_number,
            t.c.name,
            t.c.total_units,
            t.c.consumed_units,
            t.c.suspended_units,
            t.c.warning_units,
            t.c.capability_status,
            assigned,
            *_status_cols(t),
        )
        .select_from(_customer_join(t).join(c.tenants, c.tenants.c.id == t.c.tenant_ref))
        .order_by(t.c.id)
    )


def _subscriptions() -> sa.Select[Any]:
    t = c.subscriptions
    return (
        sa.select(
            t.c.id,
            *_tenant_cols(t),
            t.c.offer_id,
            t.c.name,
            t.c.quantity,
            t.c.unit_type,
            t.c.status,
            t.c.billing_cycle,
            t.c.term_duration,
            t.c.auto_renew,
            t.c.started_at,
            t.c.effective_start,
            t.c.commitment_end,
            t.c.cost_price,
            t.c.sell_price,
            t.c.currency,
            t.c.sell_price_rule,
            t.c.price_market,
            t.c.price_effective_start,
            t.c.price_effective_end,
            t.c.priced_at,
            t.c.price_note,
            *_status_cols(t),
        )
        .select_from(_customer_join(t).join(c.tenants, c.tenants.c.id == t.c.tenant_ref))
        .order_by(t.c.id)
    )


def _invoice_lines() -> sa.Select[Any]:
    t = c.invoice_lines
    return (
        sa.select(
            t.c.id,
            t.c.module,
            c.customers.c.name.label("customer"),
            t.c.period,
            t.c.source,
            t.c.status,
            t.c.group_key,
            t.c.description,
            t.c.quantity,
            t.c.unit,
            t.c.cost,
            t.c.price,
            t.c.markup_percent,
            t.c.currency,
            t.c.usage_rows,
            t.c.superseded_by,
            t.c.run_id,
            *_status_cols(t),
        )
        .select_from(_customer_join(t))
        .order_by(t.c.id)
    )


def _runs() -> sa.Select[Any]:
    t, n = c.sync_runs, c.sync_counts
    totals = [
        sa.select(sa.func.coalesce(sa.func.sum(getattr(n.c, name)), 0))
        .where(n.c.run_id == t.c.id)
        .scalar_subquery()
        .label(name)
        for name in ("added", "updated", "unchanged", "deactivated", "skipped", "failed")
    ]
    return sa.select(
        t.c.id,
        t.c.module,
        t.c.started_at,
        t.c.finished_at,
        t.c.outcome,
        t.c.error,
        t.c.options,
        *totals,
    ).order_by(t.c.id)


def _requests() -> sa.Select[Any]:
    t = c.request_log
    return sa.select(
        t.c.id,
        t.c.direction,
        t.c.at,
        t.c.module,
        t.c.connection,
        t.c.tenant_id,
        t.c.method,
        t.c.url,
        t.c.status,
        t.c.duration_ms,
        t.c.retries,
        t.c.outcome,
        t.c.detail,
    ).order_by(t.c.id)


def _sso_tenants() -> sa.Select[Any]:
    t = c.sso_allowed_tenants
    return (
        sa.select(t.c.tenant_id, c.customers.c.name.label("customer"), t.c.added_at)
        .select_from(_customer_join(t))
        .order_by(t.c.added_at, t.c.tenant_id)
    )


EXPORTS: dict[str, Callable[[], sa.Select[Any]]] = {
    "customers": _customers,
    "sites": _sites,
    "tenants": _tenants,
    "users": _users,
    "assets": _assets,
    "licences": _licences,
    "subscriptions": _subscriptions,
    "invoice-lines": _invoice_lines,
    "runs": _runs,
    "requests": _requests,
    "sso-tenants": _sso_tenants,
}


def export_fields(what: str) -> list[str]:
    return [column.name for column in EXPORTS[what]().selected_columns]


def export_rows(connection: Connection, what: str) -> Iterator[dict[str, Any]]:
    """Stream the records of ``what`` as plain dicts (JSON-ready values)."""
    result = connection.execution_options(yield_per=1000).execute(EXPORTS[what]())
    for row in result.mappings():
        yield {key: _plain(value) for key, value in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def write_export(connection: Connection, what: str, out: TextIO, format: str = "json") -> int:
    """Write ``what`` to ``out``: JSON lines, or CSV with a header. Returns the count."""
    count = 0
    if format == "csv":
        writer = csv.DictWriter(out, fieldnames=export_fields(what), lineterminator="\n")
        writer.writeheader()
        for row in export_rows(connection, what):
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
            )
            count += 1
    else:
        for row in export_rows(connection, what):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
