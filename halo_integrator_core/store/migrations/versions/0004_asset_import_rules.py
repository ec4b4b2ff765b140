"""Asset import rules (guide 7): statuses, assets of other integrations, the matching key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.alter_column("tenant_ref", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("external_id", existing_type=sa.String(length=200), nullable=True)
        batch_op.add_column(sa.Column("status", sa.String(length=100)))
        batch_op.add_column(
            sa.Column("source", sa.String(length=40), nullable=False, server_default="intune")
        )
        batch_op.add_column(sa.Column("match_key", sa.String(length=255)))
        batch_op.add_column(
            sa.Column("custom_fields", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.create_index("ix_assets_match", ["customer_id", "match_key"], unique=False)
    # The defaults only filled the rows already there; new rows get theirs from the code.
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.alter_column("source", server_default=None)
        batch_op.alter_column("custom_fields", server_default=None)


def downgrade() -> None:
    # Assets of other integrations, not linked to a device, cannot live in the older schema.
    op.execute("DELETE FROM assets WHERE tenant_ref IS NULL OR external_id IS NULL")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_index("ix_assets_match")
        batch_op.drop_column("custom_fields")
        batch_op.drop_column("match_key")
        batch_op.drop_column("source")
        batch_op.drop_column("status")
        batch_op.alter_column("external_id", existing_type=sa.String(length=200), nullable=False)
        batch_op.alter_column("tenant_ref", existing_type=sa.Integer(), nullable=False)
