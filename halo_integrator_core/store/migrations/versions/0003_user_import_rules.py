"""User import rules (guide 6): PSA users not yet linked, service accounts, sign-ins, roles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("tenant_ref", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("external_id", existing_type=sa.String(length=200), nullable=True)
        batch_op.alter_column(
            "user_principal_name", existing_type=sa.String(length=320), nullable=True
        )
        batch_op.add_column(
            sa.Column("is_service_account", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("last_sign_in_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("role", sa.String(length=255)))
        batch_op.add_column(sa.Column("site_mapping", sa.String(length=255)))
        batch_op.add_column(
            sa.Column("custom_fields", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.create_index("ix_users_customer_id", ["customer_id"], unique=False)
    # The defaults only filled the rows already there; new rows get theirs from the code.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("is_service_account", server_default=None)
        batch_op.alter_column("custom_fields", server_default=None)


def downgrade() -> None:
    # Users the PSA holds unlinked cannot live in the older schema.
    op.execute("DELETE FROM users WHERE tenant_ref IS NULL OR external_id IS NULL")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_customer_id")
        batch_op.drop_column("custom_fields")
        batch_op.drop_column("site_mapping")
        batch_op.drop_column("role")
        batch_op.drop_column("last_sign_in_at")
        batch_op.drop_column("is_service_account")
        batch_op.execute(
            "UPDATE users SET user_principal_name = '' WHERE user_principal_name IS NULL"
        )
        batch_op.alter_column(
            "user_principal_name", existing_type=sa.String(length=320), nullable=False
        )
        batch_op.alter_column("external_id", existing_type=sa.String(length=200), nullable=False)
        batch_op.alter_column("tenant_ref", existing_type=sa.Integer(), nullable=False)
