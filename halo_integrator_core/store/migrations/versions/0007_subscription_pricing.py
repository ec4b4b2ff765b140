"""Subscription pricing (guide 5.2): where a subscription's price came from, and its history.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

# Exact decimals: NUMERIC, or text on SQLite (see schema.Money).
MONEY = sa.Numeric(18, 6).with_variant(sa.String(40), "sqlite")

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("price_market", sa.String(length=2)))
        batch_op.add_column(sa.Column("price_effective_start", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("price_effective_end", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("sell_price_rule", sa.String(length=200)))
        batch_op.add_column(sa.Column("priced_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("price_note", sa.Text()))
    op.create_table(
        "subscription_price_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("market", sa.String(length=2), nullable=False),
        sa.Column("old_cost", MONEY),
        sa.Column("old_currency", sa.String(length=3)),
        sa.Column("new_cost", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("old_sell_price", MONEY),
        sa.Column("new_sell_price", MONEY),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer()),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_price_changes_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["sync_runs.id"],
            name=op.f("fk_subscription_price_changes_run_id_sync_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_price_changes")),
        sa.UniqueConstraint(
            "subscription_id",
            "effective_at",
            name=op.f("uq_subscription_price_changes_subscription_id"),
        ),
    )
    op.create_index(
        "ix_subscription_price_changes_status",
        "subscription_price_changes",
        ["status"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_subscription_price_changes_status", table_name="subscription_price_changes")
    op.drop_table("subscription_price_changes")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("price_note")
        batch_op.drop_column("priced_at")
        batch_op.drop_column("sell_price_rule")
        batch_op.drop_column("price_effective_end")
        batch_op.drop_column("price_effective_start")
        batch_op.drop_column("price_market")
