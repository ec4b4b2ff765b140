"""Initial schema: the PSA model and the integrator's own state.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

# Exact decimals: NUMERIC, or text on SQLite (see schema.Money).
MONEY = sa.Numeric(18, 6).with_variant(sa.String(40), "sqlite")


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_types")),
        sa.UniqueConstraint("name", name=op.f("uq_asset_types_name")),
    )
    op.create_table(
        "bookmarks",
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("stream", sa.String(length=100), nullable=False),
        sa.Column("tenant_key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("module", "stream", "tenant_key", name=op.f("pk_bookmarks")),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("name", name=op.f("uq_customers_name")),
    )
    op.create_table(
        "request_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("direction", sa.String(length=10), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=True),
        sa.Column("connection", sa.String(length=100), nullable=True),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_log")),
    )
    with op.batch_alter_table("request_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_request_log_at"), ["at"], unique=False)

    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=40), nullable=False),
        sa.Column("group_key", sa.String(length=500), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("quantity", MONEY, nullable=False),
        sa.Column("cost", MONEY, nullable=False),
        sa.Column("price", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_invoice_lines_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint(
            "module", "customer_id", "period", "group_key", name=op.f("uq_invoice_lines_module")
        ),
    )
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("is_main", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_sites_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
        sa.UniqueConstraint("customer_id", "name", name=op.f("uq_sites_customer_id")),
    )
    op.create_table(
        "sync_counts",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("entity_kind", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("deactivated", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_sync_counts_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "entity_kind", "tenant_id", name=op.f("pk_sync_counts")),
    )
    op.create_table(
        "sync_problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("entity_kind", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_sync_problems_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_problems")),
    )
    with op.batch_alter_table("sync_problems", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_problems_run_id"), ["run_id"], unique=False)

    op.create_table(
        "tenant_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("do_not_import", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_tenant_mappings_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_mappings")),
        sa.UniqueConstraint("tenant_id", "module", name=op.f("uq_tenant_mappings_tenant_id")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("connection", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("default_domain", sa.String(length=255), nullable=True),
        sa.Column("access", sa.String(length=40), nullable=False),
        sa.Column("access_detail", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("do_not_import", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run_id", sa.Integer(), nullable=True),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_tenants_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("module", "connection", "tenant_id", name=op.f("uq_tenants_module")),
    )
    op.create_table(
        "licences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_ref", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run_id", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("sku_part_number", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("total_units", sa.Integer(), nullable=False),
        sa.Column("consumed_units", sa.Integer(), nullable=False),
        sa.Column("suspended_units", sa.Integer(), nullable=False),
        sa.Column("warning_units", sa.Integer(), nullable=False),
        sa.Column("capability_status", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_licences_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_ref"], ["tenants.id"], name=op.f("fk_licences_tenant_ref_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_licences")),
        sa.UniqueConstraint("tenant_ref", "external_id", name=op.f("uq_licences_tenant_ref")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_ref", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run_id", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("offer_id", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_type", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=40), nullable=True),
        sa.Column("billing_cycle", sa.String(length=40), nullable=True),
        sa.Column("term_duration", sa.String(length=20), nullable=True),
        sa.Column("auto_renew", sa.Boolean(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("effective_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("commitment_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cost_price", MONEY, nullable=True),
        sa.Column("sell_price", MONEY, nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_subscriptions_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_ref"], ["tenants.id"], name=op.f("fk_subscriptions_tenant_ref_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("tenant_ref", "external_id", name=op.f("uq_subscriptions_tenant_ref")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_ref", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run_id", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("user_principal_name", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("first_name", sa.String(length=255), nullable=True),
        sa.Column("surname", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("network_login", sa.String(length=320), nullable=True),
        sa.Column("job_title", sa.String(length=255), nullable=True),
        sa.Column("department", sa.String(length=255), nullable=True),
        sa.Column("office_location", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=100), nullable=True),
        sa.Column("mobile", sa.String(length=100), nullable=True),
        sa.Column("employee_id", sa.String(length=100), nullable=True),
        sa.Column("account_enabled", sa.Boolean(), nullable=True),
        sa.Column("user_type", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_users_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_users_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["tenant_ref"], ["tenants.id"], name=op.f("fk_users_tenant_ref_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("tenant_ref", "external_id", name=op.f("uq_users_tenant_ref")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_upn", ["tenant_ref", "user_principal_name"], unique=False)

    op.create_table(
        "assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_ref", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run_id", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("asset_type_id", sa.Integer(), nullable=True),
        sa.Column("device_name", sa.String(length=255), nullable=True),
        sa.Column("serial_number", sa.String(length=255), nullable=True),
        sa.Column("manufacturer", sa.String(length=255), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("operating_system", sa.String(length=100), nullable=True),
        sa.Column("os_version", sa.String(length=100), nullable=True),
        sa.Column("compliance_state", sa.String(length=40), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imei", sa.String(length=40), nullable=True),
        sa.Column("wifi_mac", sa.String(length=40), nullable=True),
        sa.Column("azure_ad_device_id", sa.String(length=64), nullable=True),
        sa.Column("management_agent", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_type_id"], ["asset_types.id"], name=op.f("fk_assets_asset_type_id_asset_types")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_assets_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_assets_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["tenant_ref"], ["tenants.id"], name=op.f("fk_assets_tenant_ref_tenants")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_assets_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("tenant_ref", "external_id", name=op.f("uq_assets_tenant_ref")),
    )
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.create_index("ix_assets_serial", ["serial_number"], unique=False)

    op.create_table(
        "licence_assignments",
        sa.Column("licence_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("inactive_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["licence_id"], ["licences.id"], name=op.f("fk_licence_assignments_licence_id_licences")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_licence_assignments_user_id_users")
        ),
        sa.PrimaryKeyConstraint("licence_id", "user_id", name=op.f("pk_licence_assignments")),
    )
    with op.batch_alter_table("licence_assignments", schema=None) as batch_op:
        batch_op.create_index("ix_licence_assignments_user", ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("licence_assignments", schema=None) as batch_op:
        batch_op.drop_index("ix_licence_assignments_user")

    op.drop_table("licence_assignments")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_index("ix_assets_serial")

    op.drop_table("assets")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_upn")

    op.drop_table("users")
    op.drop_table("subscriptions")
    op.drop_table("licences")
    op.drop_table("tenants")
    op.drop_table("tenant_mappings")
    with op.batch_alter_table("sync_problems", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_problems_run_id"))

    op.drop_table("sync_problems")
    op.drop_table("sync_counts")
    op.drop_table("sites")
    op.drop_table("invoice_lines")
    op.drop_table("sync_runs")
    with op.batch_alter_table("request_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_log_at"))

    op.drop_table("request_log")
    op.drop_table("customers")
    op.drop_table("bookmarks")
    op.drop_table("asset_types")
