"""The stored subscriptions a pricing run prices, and the price columns it writes on them.

A subscription is priced while it is active in the store and not ended upstream (Partner
Center's ``deleted`` or ``expired``). Its product and SKU are the ``productId`` and ``skuId``
of its attributes, which the module that syncs it sets (the Microsoft CSP module, from the
new-commerce offer ID ``product:sku:availability``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import schema
from .matching import StoredSubscription

#: Statuses of subscriptions that are no longer billed: not priced.
ENDED = frozenset({"deleted", "expired"})
#: The price columns a pricing run writes (and only a pricing run).
PRICE_COLUMNS = (
    "cost_price",
    "sell_price",
    "currency",
    "sell_price_rule",
    "price_market",
    "price_effective_start",
    "price_effective_end",
    "price_note",
)


def load_subscriptions(connection: Connection, module: str | None) -> list[StoredSubscription]:
    """The subscriptions to price (of ``module``'s tenants, or every module's)."""
    s, t, c = schema.subscriptions, schema.tenants, schema.customers
    query = (
        sa.select(
            s,
            t.c.tenant_id.label("tenant"),
            c.c.name.label("customer_name"),
        )
        .select_from(s.join(t, t.c.id == s.c.tenant_ref).join(c, c.c.id == s.c.customer_id))
        .where(s.c.active.is_(True))
        .order_by(c.c.name, s.c.name, s.c.id)
    )
    if module is not None:
        query = query.where(t.c.module == module)
    found = []
    for row in connection.execute(query):
        if (row.status or "").casefold() in ENDED:
            continue
        attributes: dict[str, Any] = row.attributes or {}
        found.append(
            StoredSubscription(
                id=row.id,
                tenant_id=row.tenant,
                external_id=row.external_id,
                customer=row.customer_name,
                name=row.name,
                offer_id=row.offer_id,
                product_id=attributes.get("productId") or None,
                sku_id=attributes.get("skuId") or None,
                term_duration=row.term_duration,
                billing_cycle=row.billing_cycle,
                quantity=row.quantity,
                commitment_end=row.commitment_end,
                **{name: getattr(row, name) for name in PRICE_COLUMNS},
            )
        )
    return found


def products_of(subscriptions: Iterable[StoredSubscription]) -> set[tuple[str, str]]:
    return {key for sub in subscriptions if (key := sub.product_key) is not None}


def write_prices(
    connection: Connection,
    changed: list[tuple[int, dict[str, Any]]],
    confirmed: list[int],
    notes: list[tuple[int, str]],
    now: datetime,
) -> None:
    """Set the price columns of the ``changed`` subscriptions; record that the import
    confirmed the prices of the ``confirmed`` ones (``priced_at``); give the ones it could
    not price the reason (``notes``), leaving the price they had."""
    table = schema.subscriptions
    # The SET clause follows the parameters' keys (the columns); ``row_id`` picks the row.
    by_id = sa.update(table).where(table.c.id == sa.bindparam("row_id"))
    if changed:
        connection.execute(
            by_id,
            [
                {"row_id": row_id, **values, "priced_at": now, "updated_at": now}
                for row_id, values in changed
            ],
        )
    if notes:
        connection.execute(
            by_id, [{"row_id": row_id, "price_note": note} for row_id, note in notes]
        )
    for start in range(0, len(confirmed), 500):
        connection.execute(
            sa.update(table)
            .where(table.c.id.in_(confirmed[start : start + 500]))
            .values(priced_at=now)
        )
