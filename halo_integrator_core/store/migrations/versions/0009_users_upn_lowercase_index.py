"""The users' UPN index on the lowercase UPN, which is how every lookup compares it.

A device's owner is found by ``lower(user_principal_name)`` among the tenant's users, one
query per batch of devices; the index on the UPN as written served none of them, so each
query read all of the tenant's users. The index on ``(tenant_ref, lower(upn))`` serves it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_users_upn", table_name="users")
    op.create_index("ix_users_upn", "users", ["tenant_ref", sa.text("lower(user_principal_name)")])


def downgrade() -> None:
    op.drop_index("ix_users_upn", table_name="users")
    op.create_index("ix_users_upn", "users", ["tenant_ref", "user_principal_name"])
