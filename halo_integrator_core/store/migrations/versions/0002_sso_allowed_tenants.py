"""The SSO allowed-tenants list (guide 4.2).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sso_allowed_tenants",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_sso_allowed_tenants_customer_id_customers"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_sso_allowed_tenants")),
    )


def downgrade() -> None:
    op.drop_table("sso_allowed_tenants")
