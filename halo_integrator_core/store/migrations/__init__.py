"""Alembic migrations of the store; run on every start by `Store.migrate`."""
