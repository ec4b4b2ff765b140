"""Mapping rules: tenants to customers, and records to rows of the PSA model.

A tenant is imported for a customer when a tenant mapping names one (from the config, or
created from the tenant when `create_customers_from_tenants` is on); a mapping may instead
say *do not import*. Records of a mapped tenant land at the customer's main site until
site mappings say otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import Config
from ..models import DirectoryUser, EntityKind, Licence, ManagedDevice, Subscription, Tenant
from ..store import schema, utcnow
from ..store.prepared import prepared

MAIN_SITE = "Main"


@attrs.frozen
class TenantTarget:
    """Where a tenant's records go: its row, and its customer unless it is not imported."""

    tenant_ref: int
    tenant: Tenant
    customer_id: int | None
    main_site_id: int | None
    do_not_import: bool

    @property
    def importable(self) -> bool:
        return self.customer_id is not None and not self.do_not_import


def ensure_customer(connection: Connection, name: str, *, source: str) -> tuple[int, int]:
    """The customer called ``name`` and its main site, created if missing."""
    now = utcnow()
    customer_id = connection.execute(
        sa.select(schema.customers.c.id).where(schema.customers.c.name == name)
    ).scalar_one_or_none()
    if customer_id is None:
        customer_id = connection.execute(
            sa.insert(schema.customers).values(
                name=name, source=source, active=True, created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
    site_id = connection.execute(
        sa.select(schema.sites.c.id).where(
            schema.sites.c.customer_id == customer_id, schema.sites.c.is_main.is_(True)
        )
    ).scalar_one_or_none()
    if site_id is None:
        site_id = _insert_site(connection, customer_id, MAIN_SITE, is_main=True)
    return customer_id, site_id


def _insert_site(connection: Connection, customer_id: int, name: str, *, is_main: bool) -> int:
    now = utcnow()
    return connection.execute(
        sa.insert(schema.sites).values(
            customer_id=customer_id,
            name=name,
            is_main=is_main,
            active=True,
            created_at=now,
            updated_at=now,
        )
    ).inserted_primary_key[0]


class SiteFinder:
    """Sites of a customer by name, ignoring case, created on request; remembered for the
    run so that a name is looked up once."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, str], int] = {}

    def find(
        self, connection: Connection, customer_id: int, name: str, *, create: bool
    ) -> int | None:
        key = (customer_id, name.lower())
        if key not in self._ids:
            sites = schema.sites
            site_id = connection.execute(
                sa.select(sites.c.id)
                .where(sites.c.customer_id == customer_id, sa.func.lower(sites.c.name) == key[1])
                .order_by(sites.c.id)
                .limit(1)
            ).scalar_one_or_none()
            if site_id is None:
                if not create:
                    return None
                site_id = _insert_site(connection, customer_id, name, is_main=False)
            self._ids[key] = site_id
        return self._ids[key]


def record_getter(standard: Mapping[str, str], name: str) -> Callable[[Any], Any]:
    """The value of property ``name`` of a record as a function of the record: the record's
    field when ``standard`` maps the name to one, else its ``attributes`` entry. Rules
    resolve the names they read once, not for every record."""
    field = standard.get(name)
    if field is not None:
        return attrgetter(field)
    return lambda record: record.attributes.get(name)


def text_value(value: Any) -> str | None:
    """A source value as PSA text: blank is ``None``; a list is its first non-blank item."""
    if type(value) is str:  # the common case, first
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        # A loop, not next() over a generator: this runs for each list field of each record.
        for item in value:
            if item is not None and item != "":
                value = item
                break
        else:
            return None
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value).strip()
    return text or None


def apply_config_mappings(connection: Connection, config: Config) -> None:
    """Make the store's config-sourced tenant mappings exactly those of the config."""
    table = schema.tenant_mappings
    now = utcnow()
    wanted: dict[tuple[str, str], tuple[int | None, bool]] = {}
    for mapping in config.tenant_mappings:
        customer_id = None
        if mapping.customer and not mapping.do_not_import:
            customer_id, _ = ensure_customer(connection, mapping.customer, source="config")
        wanted[(str(mapping.tenant_id), mapping.module or "")] = (
            customer_id,
            mapping.do_not_import,
        )
    existing = {
        (row.tenant_id, row.module): row
        for row in connection.execute(sa.select(table).where(table.c.source == "config"))
    }
    for key, row in existing.items():
        if key not in wanted:
            connection.execute(sa.delete(table).where(table.c.id == row.id))
    for (tenant_id, module), (customer_id, do_not_import) in wanted.items():
        values = {"customer_id": customer_id, "do_not_import": do_not_import, "source": "config"}
        # A config mapping replaces one created from the tenant earlier.
        updated = connection.execute(
            sa.update(table)
            .where(table.c.tenant_id == tenant_id, table.c.module == module)
            .values(**values, updated_at=now)
        ).rowcount
        if not updated:
            connection.execute(
                sa.insert(table).values(
                    tenant_id=tenant_id, module=module, **values, created_at=now, updated_at=now
                )
            )


def resolve_tenant(
    connection: Connection,
    config: Config,
    module: str,
    tenant_ref: int,
    tenant: Tenant,
    *,
    stored: tuple[int | None, bool] | None = None,
) -> TenantTarget:
    """Apply the tenant mappings to one stored tenant, creating a customer if configured.

    ``stored``: the tenant row's customer ID and do-not-import flag as read, when the caller
    has them: the row is then written only if the mapping changed them."""
    table = schema.tenant_mappings
    rows = connection.execute(
        prepared(
            "tenant mappings",
            lambda: sa.select(table).where(
                table.c.tenant_id == sa.bindparam("b_tenant"),
                table.c.module.in_([sa.bindparam("b_all"), sa.bindparam("b_module")]),
            ),
        ),
        {"b_tenant": tenant.tenant_id, "b_all": "", "b_module": module},
    ).all()
    # A mapping for this module wins over one for every module.
    row = max(rows, key=lambda r: r.module != "", default=None)
    if row is None and config.integrator.create_customers_from_tenants:
        customer_id, _ = ensure_customer(connection, tenant.name, source="tenant")
        now = utcnow()
        connection.execute(
            sa.insert(table).values(
                tenant_id=tenant.tenant_id,
                module="",
                customer_id=customer_id,
                do_not_import=False,
                source="created",
                created_at=now,
                updated_at=now,
            )
        )
        row = connection.execute(
            sa.select(table).where(table.c.tenant_id == tenant.tenant_id, table.c.module == "")
        ).one()
    customer_id = row.customer_id if row is not None else None
    do_not_import = bool(row.do_not_import) if row is not None else False
    main_site_id = None
    if customer_id is not None:
        sites = schema.sites
        main_site_id = connection.execute(
            prepared(
                "main site",
                lambda: sa.select(sites.c.id).where(
                    sites.c.customer_id == sa.bindparam("b_customer"), sites.c.is_main.is_(True)
                ),
            ),
            {"b_customer": customer_id},
        ).scalar_one_or_none()
    if stored != (customer_id, do_not_import):
        connection.execute(
            sa.update(schema.tenants)
            .where(schema.tenants.c.id == tenant_ref)
            .values(customer_id=customer_id, do_not_import=do_not_import)
        )
    return TenantTarget(tenant_ref, tenant, customer_id, main_site_id, do_not_import)


def allow_sso(connection: Connection, target: TenantTarget) -> None:
    """Put an imported tenant on the SSO allowed-tenants list, once."""
    table = schema.sso_allowed_tenants
    tenant_id = target.tenant.tenant_id
    if (
        connection.execute(
            sa.select(table.c.tenant_id).where(table.c.tenant_id == tenant_id)
        ).first()
        is None
    ):
        connection.execute(
            sa.insert(table).values(
                tenant_id=tenant_id, customer_id=target.customer_id, added_at=utcnow()
            )
        )


def mapping_overrides(config: Config, module: str, tenant_id: str) -> dict[str, str]:
    """What the tenant's config mapping overrides for it (a module's own mapping first)."""
    mine = [m for m in config.tenant_mappings if str(m.tenant_id) == tenant_id.lower()]
    chosen = next((m for m in mine if m.module == module), None) or next(
        (m for m in mine if m.module is None), None
    )
    return chosen.overrides() if chosen else {}


# --- records → columns -------------------------------------------------------------------


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Types `_json_safe` keeps as they are (exactly these: a subclass may say otherwise).
_JSON_PLAIN = frozenset({str, int, float, bool, type(None)})


def _json_safe(value: Any) -> Any:
    kind = type(value)
    if kind in _JSON_PLAIN:
        return value
    if kind is list or kind is tuple:  # neither is a Mapping
        return [v if type(v) in _JSON_PLAIN else _json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {
            k if type(k) is str else str(k): v if type(v) in _JSON_PLAIN else _json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def tenant_columns(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "default_domain": tenant.default_domain,
        "access": str(tenant.access),
        "access_detail": tenant.access_detail,
        "attributes": _json_safe(tenant.attributes),
    }


def licence_columns(record: Licence, target: TenantTarget) -> dict[str, Any]:
    return {
        "sku_part_number": record.sku_part_number,
        "name": record.name,
        "total_units": record.total_units,
        "consumed_units": record.consumed_units,
        "suspended_units": record.suspended_units,
        "warning_units": record.warning_units,
        "capability_status": record.capability_status,
        "attributes": _json_safe(record.attributes),
    }


def subscription_columns(record: Subscription, target: TenantTarget) -> dict[str, Any]:
    return {
        "offer_id": record.offer_id,
        "name": record.name,
        "quantity": record.quantity,
        "unit_type": record.unit_type,
        "status": record.status,
        "billing_cycle": record.billing_cycle,
        "term_duration": record.term_duration,
        "auto_renew": record.auto_renew,
        "started_at": utc(record.created_at),
        "effective_start": utc(record.effective_start),
        "commitment_end": utc(record.commitment_end),
        "attributes": _json_safe(record.attributes),
    }


@attrs.frozen
class EntityRule:
    """How one entity kind is stored: its table, record type, hook and column mapping."""

    kind: EntityKind
    table: sa.Table
    record_type: type
    hook: str
    #: The row's columns for a record; ``None`` for kinds with rules of their own (users
    #: in `users`, assets in `assets`).
    columns: Callable[[Any, TenantTarget], dict[str, Any]] | None = None


ENTITY_RULES: dict[EntityKind, EntityRule] = {
    rule.kind: rule
    for rule in (
        EntityRule(
            EntityKind.LICENCES, schema.licences, Licence, "fetch_licences", licence_columns
        ),
        EntityRule(
            EntityKind.SUBSCRIPTIONS,
            schema.subscriptions,
            Subscription,
            "fetch_subscriptions",
            subscription_columns,
        ),
        EntityRule(EntityKind.USERS, schema.users, DirectoryUser, "fetch_users"),
        EntityRule(EntityKind.ASSETS, schema.assets, ManagedDevice, "fetch_assets"),
    )
}
