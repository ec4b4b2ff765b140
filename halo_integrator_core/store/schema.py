"""The store's tables: the PSA model and the integrator's own state.

Synced entities share one shape (`_synced`): the tenant they came from, their upstream ID,
the customer (and site) the mapping rules gave them, and an active flag with the time it was
cleared. A sync never deletes a row; what disappears upstream is marked inactive.

The schema is versioned by Alembic (`store/migrations`); a test checks that the migrations
build exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


#: How SQLAlchemy's SQLite ``DATETIME`` writes a timestamp (its default storage format).
_SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are stored as UTC and always come back timezone-aware.

    SQLite keeps no zone; without this, a value read back would never equal the aware value
    a plugin yields, and every row would look changed on every sync.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Any:
        """On SQLite, `process_bind_param` and SQLite's own text format in one step: the
        text ``DATETIME`` writes (``2026-01-31 09:05:00.000000``, in UTC), made by
        ``isoformat`` rather than by the two processors in turn, which took about 4 µs a
        value, a third of the cost of inserting a device. Elsewhere, and should SQLite's
        format ever be another, the two in turn."""
        if (
            dialect.name != "sqlite"
            or getattr(self.impl_instance.dialect_impl(dialect), "_storage_format", None)
            != _SQLITE_DATETIME_FORMAT
        ):
            return super().bind_processor(dialect)
        to_utc = self.process_bind_param

        def process(value: datetime | None) -> str | None:
            naive_utc = to_utc(value, dialect)
            return None if naive_utc is None else naive_utc.isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """Exact decimals: NUMERIC where the database has it, text on SQLite (no floats)."""

    impl = Numeric(18, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(18, 6))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


def _audit() -> list[Column[Any]]:
    return [
        Column("active", Boolean, nullable=False, default=True),
        Column("inactive_since", UtcDateTime),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
    ]


def _synced(*, linked: bool = True) -> list[Any]:
    """Columns every entity synced per tenant carries.

    ``linked=False`` for an entity the PSA may hold before any sync links it to a tenant.
    """
    return [
        Column("id", Integer, primary_key=True),
        Column("tenant_ref", ForeignKey("tenants.id"), nullable=not linked),
        Column("external_id", String(200), nullable=not linked),
        Column("customer_id", ForeignKey("customers.id"), nullable=False),
        *_audit(),
        Column("seen_run_id", Integer),
        Column("attributes", JSON, nullable=False, default=dict),
        UniqueConstraint("tenant_ref", "external_id"),
    ]


# --- the PSA model -----------------------------------------------------------------------

customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("source", String(40), nullable=False),
    *_audit(),
)

sites = Table(
    "sites",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_id", ForeignKey("customers.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("is_main", Boolean, nullable=False, default=False),
    *_audit(),
    UniqueConstraint("customer_id", "name"),
)

users = Table(
    "users",
    metadata,
    # A PSA user: linked to a directory user (tenant_ref and external_id, the object ID) once
    # a sync imports or matches it; a user the PSA has from elsewhere has neither yet.
    *_synced(linked=False),
    Column("site_id", ForeignKey("sites.id")),
    Column("user_principal_name", String(320)),
    Column("display_name", String(255)),
    Column("first_name", String(255)),
    Column("surname", String(255)),
    Column("email", String(320)),
    Column("network_login", String(320)),
    Column("job_title", String(255)),
    Column("department", String(255)),
    Column("office_location", String(255)),
    Column("phone", String(100)),
    Column("mobile", String(100)),
    Column("employee_id", String(100)),
    Column("account_enabled", Boolean),
    Column("user_type", String(40)),
    Column("is_service_account", Boolean, nullable=False, default=False),
    Column("last_sign_in_at", UtcDateTime),
    Column("role", String(255)),
    #: The site mapping that placed the user (its description, or its place in the file).
    Column("site_mapping", String(255)),
    Column("custom_fields", JSON, nullable=False, default=dict),
    #: What the row was last written from (`sync.digest`): a record with this digest
    #: changes nothing, so the sync leaves the row without running the rules.
    Column("source_digest", String(64)),
)
# Every lookup by UPN compares it lowercased (device owners, matching): so does the index.
Index("ix_users_upn", users.c.tenant_ref, func.lower(users.c.user_principal_name))
Index("ix_users_customer_id", users.c.customer_id)

asset_types = Table(
    "asset_types",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
)

assets = Table(
    "assets",
    metadata,
    # An asset of the PSA: linked to an Intune device (tenant_ref and external_id, the Intune
    # device ID) once a sync imports or matches it; one another integration brought in
    # (``source``) has neither until then.
    *_synced(linked=False),
    Column("site_id", ForeignKey("sites.id")),
    Column("user_id", ForeignKey("users.id")),
    Column("asset_type_id", ForeignKey("asset_types.id")),
    Column("status", String(100)),
    Column("source", String(40), nullable=False, default="intune"),
    #: The global matching field's value, trimmed and case-folded; NULL when it identifies
    #: nothing (blank, or a placeholder serial such as "To Be Filled By O.E.M.").
    Column("match_key", String(255)),
    Column("device_name", String(255)),
    Column("serial_number", String(255)),
    Column("manufacturer", String(255)),
    Column("model", String(255)),
    Column("operating_system", String(100)),
    Column("os_version", String(100)),
    Column("compliance_state", String(40)),
    Column("last_sync_at", UtcDateTime),
    Column("enrolled_at", UtcDateTime),
    Column("imei", String(40)),
    Column("wifi_mac", String(40)),
    Column("azure_ad_device_id", String(64)),
    Column("management_agent", String(100)),
    Column("custom_fields", JSON, nullable=False, default=dict),
    #: What the row was last written from (`sync.digest`), as for users.
    Column("source_digest", String(64)),
)
Index("ix_assets_serial", assets.c.serial_number)
Index("ix_assets_match", assets.c.customer_id, assets.c.match_key)

licences = Table(
    "licences",
    metadata,
    *_synced(),
    Column("sku_part_number", String(200), nullable=False),
    Column("name", String(255)),
    Column("total_units", Integer, nullable=False, default=0),
    Column("consumed_units", Integer, nullable=False, default=0),
    Column("suspended_units", Integer, nullable=False, default=0),
    Column("warning_units", Integer, nullable=False, default=0),
    Column("capability_status", String(40)),
)

licence_assignments = Table(
    "licence_assignments",
    metadata,
    Column("licence_id", ForeignKey("licences.id"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    *_audit(),
)
Index("ix_licence_assignments_user", licence_assignments.c.user_id)

subscriptions = Table(
    "subscriptions",
    metadata,
    *_synced(),
    Column("offer_id", String(200)),
    Column("name", String(255), nullable=False),
    Column("quantity", Integer, nullable=False, default=0),
    Column("unit_type", String(40)),
    Column("status", String(40)),
    Column("billing_cycle", String(40)),
    Column("term_duration", String(20)),
    Column("auto_renew", Boolean),
    Column("started_at", UtcDateTime),
    Column("effective_start", UtcDateTime),
    Column("commitment_end", UtcDateTime),
    Column("cost_price", Money),
    Column("sell_price", Money),
    Column("currency", String(3)),
    # Set by a pricing module's import (`halo_integrator_core.pricing`); a sync leaves them.
    #: The marketplace whose price sheet gave ``cost_price``.
    Column("price_market", String(2)),
    #: The effective dates of the price-sheet row ``cost_price`` came from.
    Column("price_effective_start", UtcDateTime),
    Column("price_effective_end", UtcDateTime),
    #: Which rule set ``sell_price`` ("markup 20%", "price book: ..."); NULL for none.
    Column("sell_price_rule", String(200)),
    Column("priced_at", UtcDateTime),
    #: Why the last import found no price for the subscription; NULL once it has one.
    Column("price_note", Text),
)

subscription_price_changes = Table(
    "subscription_price_changes",
    metadata,
    # A subscription's cost price history: its first price, each change seen in force, and
    # the changes the source plans (kept as planned until seen in force, or withdrawn).
    Column("id", Integer, primary_key=True),
    Column("subscription_id", ForeignKey("subscriptions.id"), nullable=False),
    Column("effective_at", UtcDateTime, nullable=False),
    #: initial | applied | planned | withdrawn
    Column("status", String(20), nullable=False),
    Column("market", String(2), nullable=False),
    Column("old_cost", Money),
    Column("old_currency", String(3)),
    Column("new_cost", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("old_sell_price", Money),
    Column("new_sell_price", Money),
    #: The subscription's quantity when the change was last seen.
    Column("quantity", Integer, nullable=False),
    Column("run_id", ForeignKey("sync_runs.id")),
    Column("detected_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("subscription_id", "effective_at"),
)
Index("ix_subscription_price_changes_status", subscription_price_changes.c.status)

invoice_lines = Table(
    "invoice_lines",
    metadata,
    # A recurring-invoice line of a billing module: one customer's usage of one billing
    # month (``period``, YYYY-MM), from one source (an invoice ID, or "unbilled" for an
    # estimate), in one currency, for one group (``group_key``).
    Column("id", Integer, primary_key=True),
    Column("customer_id", ForeignKey("customers.id"), nullable=False),
    Column("module", String(100), nullable=False),
    Column("period", String(40), nullable=False),
    Column("source", String(40), nullable=False, default="unbilled"),
    #: estimate | billed | superseded (an estimate an invoice replaced) | removed (gone from
    #: a later import of its period and source).
    Column("status", String(20), nullable=False, default="estimate"),
    Column("group_key", String(500), nullable=False),
    Column("description", String(500), nullable=False),
    # NULL when the line's usage is in more than one unit.
    Column("quantity", Money),
    Column("unit", String(100)),
    Column("cost", Money, nullable=False),
    Column("price", Money, nullable=False),
    # NULL when parts of the line carry different markups.
    Column("markup_percent", Money),
    Column("currency", String(3), nullable=False),
    Column("usage_rows", Integer, nullable=False, default=0),
    Column("superseded_by", String(40)),
    Column("run_id", Integer),
    *_audit(),
    UniqueConstraint("module", "customer_id", "period", "source", "currency", "group_key"),
)
Index("ix_invoice_lines_period", invoice_lines.c.module, invoice_lines.c.period)

# --- the integrator's own state ----------------------------------------------------------

billing_periods = Table(
    "billing_periods",
    metadata,
    # Billing months closed (invoiced to customers) or reopened by hand; a month without a
    # row is open unless ``close_after_days`` has closed it.
    Column("module", String(100), primary_key=True),
    Column("period", String(40), primary_key=True),
    Column("closed_at", UtcDateTime),
    Column("closed_by", String(100)),
    Column("note", Text),
    Column("reopened_at", UtcDateTime),
)

billing_imports = Table(
    "billing_imports",
    metadata,
    # One per billing month, source and currency an import read (or per period it could
    # not read): what it held, what no tenant mapping claimed, what came of it.
    Column("id", Integer, primary_key=True),
    Column("module", String(100), nullable=False),
    Column("run_id", ForeignKey("sync_runs.id")),
    Column("requested", String(40), nullable=False),
    Column("period", String(40)),
    Column("source", String(40)),
    Column("currency", String(3)),
    #: imported | no_data | closed | already_billed | incomplete | failed
    Column("outcome", String(20), nullable=False),
    Column("usage_rows", Integer, nullable=False, default=0),
    Column("cost", Money),
    Column("unmatched_rows", Integer, nullable=False, default=0),
    Column("unmatched_cost", Money),
    Column("lines", Integer, nullable=False, default=0),
    Column("detail", Text),
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_billing_imports_period", billing_imports.c.module, billing_imports.c.period)

billing_unmatched = Table(
    "billing_unmatched",
    metadata,
    # Usage of an import that no tenant mapping claims, per tenant: reported, never billed.
    Column("import_id", ForeignKey("billing_imports.id"), primary_key=True),
    Column("tenant_id", String(64), primary_key=True),
    Column("customer_name", String(255)),
    #: unmapped | do_not_import
    Column("reason", String(40), nullable=False),
    Column("usage_rows", Integer, nullable=False),
    Column("cost", Money, nullable=False),
)


tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("module", String(100), nullable=False),
    # '' when the module has no connections: NULL would defeat the unique constraint.
    Column("connection", String(100), nullable=False, default=""),
    Column("tenant_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("default_domain", String(255)),
    Column("access", String(40), nullable=False),
    Column("access_detail", Text),
    Column("customer_id", ForeignKey("customers.id")),
    Column("do_not_import", Boolean, nullable=False, default=False),
    *_audit(),
    Column("seen_run_id", Integer),
    Column("last_synced_at", UtcDateTime),
    Column("last_error", Text),
    Column("attributes", JSON, nullable=False, default=dict),
    UniqueConstraint("module", "connection", "tenant_id"),
)

tenant_mappings = Table(
    "tenant_mappings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    # '' maps the tenant for every module.
    Column("module", String(100), nullable=False, default=""),
    Column("customer_id", ForeignKey("customers.id")),
    Column("do_not_import", Boolean, nullable=False, default=False),
    Column("source", String(40), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("tenant_id", "module"),
)

sso_allowed_tenants = Table(
    "sso_allowed_tenants",
    metadata,
    # The Azure tenants whose users may sign in to the PSA with single sign-on (guide 4.2).
    Column("tenant_id", String(64), primary_key=True),
    Column("customer_id", ForeignKey("customers.id"), nullable=False),
    Column("added_at", UtcDateTime, nullable=False),
)

bookmarks = Table(
    "bookmarks",
    metadata,
    Column("module", String(100), primary_key=True),
    Column("stream", String(100), primary_key=True),
    Column("tenant_key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("module", String(100), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("outcome", String(40), nullable=False),
    Column("options", JSON, nullable=False, default=dict),
    Column("error", Text),
)

sync_counts = Table(
    "sync_counts",
    metadata,
    Column("run_id", ForeignKey("sync_runs.id"), primary_key=True),
    Column("entity_kind", String(40), primary_key=True),
    Column("tenant_id", String(64), primary_key=True),
    Column("added", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("deactivated", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
)

sync_problems = Table(
    "sync_problems",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", ForeignKey("sync_runs.id"), nullable=False, index=True),
    Column("entity_kind", String(40), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("entity_id", String(200)),
    Column("outcome", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UtcDateTime, nullable=False),
)

request_log = Table(
    "request_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("direction", String(10), nullable=False),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("module", String(100)),
    Column("connection", String(100)),
    Column("tenant_id", String(64)),
    Column("method", String(10), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", Integer),
    Column("duration_ms", Integer),
    Column("retries", Integer, nullable=False, default=0),
    Column("outcome", String(40)),
    Column("detail", Text),
)

#: Webhook events already processed, by the sender's event ID: a repeated delivery of one
#: is answered without being processed again.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("module", String(100), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("received_at", UtcDateTime, nullable=False),
)
