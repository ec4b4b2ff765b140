"""Consumption billing (guide 11): invoice lines by source and status, imports, closed months.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

# Exact decimals: NUMERIC, or text on SQLite (see schema.Money).
MONEY = sa.Numeric(18, 6).with_variant(sa.String(40), "sqlite")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_constraint("uq_invoice_lines_module", type_="unique")
        batch_op.add_column(
            sa.Column("source", sa.String(length=40), nullable=False, server_default="unbilled")
        )
        batch_op.add_column(
            sa.Column("status", sa.String(length=20), nullable=False, server_default="estimate")
        )
        batch_op.add_column(sa.Column("unit", sa.String(length=100)))
        batch_op.add_column(sa.Column("markup_percent", MONEY))
        batch_op.add_column(
            sa.Column("usage_rows", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("superseded_by", sa.String(length=40)))
        batch_op.add_column(sa.Column("run_id", sa.Integer()))
        batch_op.alter_column("quantity", existing_type=MONEY, nullable=True)
        batch_op.create_unique_constraint(
            "uq_invoice_lines_module",
            ["module", "customer_id", "period", "source", "currency", "group_key"],
        )
        batch_op.create_index("ix_invoice_lines_period", ["module", "period"], unique=False)
    # The defaults only filled the rows already there; new rows get theirs from the code.
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.alter_column("source", server_default=None)
        batch_op.alter_column("status", server_default=None)
        batch_op.alter_column("usage_rows", server_default=None)

    op.create_table(
        "billing_periods",
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=40), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reopened_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("module", "period", name=op.f("pk_billing_periods")),
    )
    op.create_table(
        "billing_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("requested", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=40), nullable=True),
        sa.Column("source", sa.String(length=40), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("usage_rows", sa.Integer(), nullable=False),
        sa.Column("cost", MONEY, nullable=True),
        sa.Column("unmatched_rows", sa.Integer(), nullable=False),
        sa.Column("unmatched_cost", MONEY, nullable=True),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_billing_imports_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_imports")),
    )
    op.create_index(
        "ix_billing_imports_period", "billing_imports", ["module", "period"], unique=False
    )
    op.create_table(
        "billing_unmatched",
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("customer_name", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("usage_rows", sa.Integer(), nullable=False),
        sa.Column("cost", MONEY, nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["billing_imports.id"],
            name=op.f("fk_billing_unmatched_import_id_billing_imports"),
        ),
        sa.PrimaryKeyConstraint("import_id", "tenant_id", name=op.f("pk_billing_unmatched")),
    )


def downgrade() -> None:
    op.drop_table("billing_unmatched")
    op.drop_index("ix_billing_imports_period", table_name="billing_imports")
    op.drop_table("billing_imports")
    op.drop_table("billing_periods")
    # The older schema has one line per customer, period and group: keep the lines in force
    # (estimates and billed lines), and no quantity is written as zero.
    op.execute("DELETE FROM invoice_lines WHERE status IN ('superseded', 'removed')")
    op.execute(
        "DELETE FROM invoice_lines WHERE status = 'estimate' AND EXISTS (SELECT 1 FROM "
        "invoice_lines AS billed WHERE billed.status = 'billed' AND billed.module = "
        "invoice_lines.module AND billed.customer_id = invoice_lines.customer_id AND "
        "billed.period = invoice_lines.period AND billed.group_key = invoice_lines.group_key)"
    )
    op.execute("UPDATE invoice_lines SET quantity = 0 WHERE quantity IS NULL")
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_lines_period")
        batch_op.drop_constraint("uq_invoice_lines_module", type_="unique")
        batch_op.alter_column("quantity", existing_type=MONEY, nullable=False)
        batch_op.drop_column("run_id")
        batch_op.drop_column("superseded_by")
        batch_op.drop_column("usage_rows")
        batch_op.drop_column("markup_percent")
        batch_op.drop_column("unit")
        batch_op.drop_column("status")
        batch_op.drop_column("source")
        batch_op.create_unique_constraint(
            "uq_invoice_lines_module", ["module", "customer_id", "period", "group_key"]
        )
