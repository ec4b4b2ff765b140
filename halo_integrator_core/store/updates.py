"""Small store updates made when a module has acted on Microsoft at a user's request.

A licence assigned or removed, a subscription's quantity changed: once Microsoft has accepted,
the store follows its answer at once rather than at the next sync. Plugins never write the
store themselves; their commands call these, each one unit of work, and only after Microsoft
said yes. The next sync remains the source of truth and writes the same values.
"""

from __future__ import annotations

import attrs
import sqlalchemy as sa

from . import Store, schema, utcnow


@attrs.frozen(kw_only=True)
class LicenceCounts:
    """A licence's units as Microsoft counts them (the columns a sync writes)."""

    total_units: int
    consumed_units: int
    suspended_units: int = 0
    warning_units: int = 0
    capability_status: str | None = None


def record_licence_assignment(
    store: Store,
    *,
    licence_id: int,
    user_id: int,
    assigned: bool,
    counts: LicenceCounts | None = None,
) -> None:
    """Mark ``user_id``'s assignment of ``licence_id`` active (``assigned``) or inactive, and
    set the licence's counts when given; together or not at all."""
    assignments, licences = schema.licence_assignments, schema.licences
    now = utcnow()
    with store.unit() as connection:
        row = connection.execute(
            sa.select(assignments.c.active).where(
                assignments.c.licence_id == licence_id, assignments.c.user_id == user_id
            )
        ).first()
        if row is None:
            if assigned:
                connection.execute(
                    sa.insert(assignments).values(
                        licence_id=licence_id,
                        user_id=user_id,
                        active=True,
                        created_at=now,
                        updated_at=now,
                    )
                )
        elif bool(row.active) != assigned:
            connection.execute(
                sa.update(assignments)
                .where(assignments.c.licence_id == licence_id, assignments.c.user_id == user_id)
                .values(active=assigned, inactive_since=None if assigned else now, updated_at=now)
            )
        if counts is not None:
            connection.execute(
                sa.update(licences)
                .where(licences.c.id == licence_id)
                .values(**attrs.asdict(counts), updated_at=now)
            )


def record_subscription_quantity(
    store: Store, *, subscription_id: int, quantity: int, status: str | None = None
) -> bool:
    """Set the stored subscription ``subscription_id``'s quantity (and status, when given) to
    what Microsoft answered. Returns whether the row changed."""
    table = schema.subscriptions
    values: dict[str, object] = {"quantity": quantity}
    if status is not None:
        values["status"] = status
    with store.unit() as connection:
        row = connection.execute(
            sa.select(table.c.quantity, table.c.status).where(table.c.id == subscription_id)
        ).first()
        if row is None:
            raise LookupError(f"no stored subscription with id {subscription_id}")
        if all(getattr(row, key) == value for key, value in values.items()):
            return False
        connection.execute(
            sa.update(table)
            .where(table.c.id == subscription_id)
            .values(**values, updated_at=utcnow())
        )
    return True


__all__ = ["LicenceCounts", "record_licence_assignment", "record_subscription_quantity"]
