"""A digest of what each synced user and asset was last written from.

A sync that fetches a record whose digest (of the record, the rules and what they read)
equals the row's leaves the row as it is without running the rules or comparing columns:
an unchanged directory costs reading it, not rewriting it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("users", "assets")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("source_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("source_digest")
