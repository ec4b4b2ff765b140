"""Price history: every cost price a subscription has had, and the changes planned for it.

One row per subscription and effective date (`schema.subscription_price_changes`):

* ``initial``: the first price an import found for the subscription;
* ``applied``: a new price seen in force (old and new price, and from when);
* ``planned``: a price the future price sheet announces, with the price it replaces; it
  becomes ``applied`` when the current sheet shows it in force, or ``withdrawn`` when the
  future sheet no longer announces it.

A price is never overwritten without its row here, so `pricing changes` can say what
changed, what will, and what the difference is a month at the subscription's quantity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import schema
from .matching import StoredSubscription, billing_plan, monthly_amount
from .rules import round_money

INITIAL, APPLIED, PLANNED, WITHDRAWN = "initial", "applied", "planned", "withdrawn"


def _same(a: Decimal | None, b: Decimal | None) -> bool:
    return a == b if a is not None and b is not None else a is b


class ChangeBook:
    """The price rows of the subscriptions one run prices: read once, written as found.

    Each ``record_*`` method returns what it did to the history (``added``, ``updated``,
    ``withdrawn``) or ``None`` when the history already says it.
    """

    def __init__(
        self,
        connection: Connection,
        subscription_ids: Iterable[int],
        *,
        market: str,
        run_id: int | None,
        now: datetime,
    ) -> None:
        self.connection = connection
        self.market = market
        self.run_id = run_id
        self.now = now
        self.table = schema.subscription_price_changes
        self.rows: dict[int, dict[datetime, SimpleNamespace]] = defaultdict(dict)
        ids = list(subscription_ids)
        for start in range(0, len(ids), 500):
            for row in connection.execute(
                sa.select(self.table).where(
                    self.table.c.subscription_id.in_(ids[start : start + 500])
                )
            ):
                self.rows[row.subscription_id][row.effective_at] = SimpleNamespace(**row._mapping)

    def _insert(
        self, subscription: StoredSubscription, effective_at: datetime, **values: Any
    ) -> str:
        row = {
            "old_cost": None,
            "old_currency": None,
            "old_sell_price": None,
            "new_sell_price": None,
            "subscription_id": subscription.id,
            "effective_at": effective_at,
            "market": self.market,
            "quantity": subscription.quantity,
            "run_id": self.run_id,
            "detected_at": self.now,
            "updated_at": self.now,
            **values,
        }
        [row_id] = self.connection.execute(sa.insert(self.table).values(row)).inserted_primary_key
        self.rows[subscription.id][effective_at] = SimpleNamespace(id=row_id, **row)
        return "added"

    def _update(self, row: SimpleNamespace, **values: Any) -> str:
        values |= {"updated_at": self.now, "run_id": self.run_id, "market": self.market}
        self.connection.execute(
            sa.update(self.table).where(self.table.c.id == row.id).values(values)
        )
        vars(row).update(values)
        return "updated"

    def record_current(
        self,
        subscription: StoredSubscription,
        *,
        effective_at: datetime,
        cost: Decimal,
        currency: str,
        sell: Decimal | None,
    ) -> str | None:
        """The price in force: history gains the first price or a change; a planned change
        now in force becomes applied."""
        row = self.rows[subscription.id].get(effective_at)
        if row is not None and row.status in (INITIAL, APPLIED) and row.currency != currency:
            # Another market's price (the marketplace was changed): a change from today,
            # not a correction of the row from that date.
            effective_at = self.now
            row = self.rows[subscription.id].get(effective_at)
        new = {"new_cost": cost, "currency": currency, "new_sell_price": sell}
        if row is not None and row.status in (PLANNED, WITHDRAWN):
            return self._update(row, status=APPLIED, quantity=subscription.quantity, **new)
        if row is not None:
            if _same(row.new_cost, cost) and row.currency == currency:
                return None
            return self._update(row, **new)  # the sheet corrected a price it had given
        if subscription.cost_price is None:
            return self._insert(subscription, effective_at, status=INITIAL, **new)
        if _same(subscription.cost_price, cost) and subscription.currency == currency:
            return None
        return self._insert(
            subscription,
            effective_at,
            status=APPLIED,
            old_cost=subscription.cost_price,
            old_currency=subscription.currency,
            old_sell_price=subscription.sell_price,
            **new,
        )

    def record_planned(
        self,
        subscription: StoredSubscription,
        *,
        effective_at: datetime,
        cost: Decimal,
        currency: str,
        sell: Decimal | None,
    ) -> str | None:
        """A price the future sheet announces from ``effective_at``."""
        if _same(subscription.cost_price, cost) and subscription.currency == currency:
            return None  # the sheet lists the price it has now: nothing changes
        row = self.rows[subscription.id].get(effective_at)
        new = {"new_cost": cost, "currency": currency, "new_sell_price": sell}
        old = {
            "old_cost": subscription.cost_price,
            "old_currency": subscription.currency,
            "old_sell_price": subscription.sell_price,
            "quantity": subscription.quantity,
        }
        if row is None:
            return self._insert(subscription, effective_at, status=PLANNED, **old, **new)
        if row.status == WITHDRAWN:
            self._update(row, status=PLANNED, **old, **new)
            return "added"
        if row.status != PLANNED:
            return None  # already seen in force
        if (
            _same(row.new_cost, cost)
            and row.currency == currency
            and _same(row.old_cost, subscription.cost_price)
        ):
            return None
        return self._update(row, **old, **new)

    def withdraw_planned(
        self, subscription: StoredSubscription, *, keep: Collection[datetime] = ()
    ) -> int:
        """Mark the subscription's planned changes other than those of ``keep`` withdrawn."""
        withdrawn = 0
        for effective_at, row in self.rows[subscription.id].items():
            if row.status == PLANNED and effective_at not in keep:
                self._update(row, status=WITHDRAWN)
                withdrawn += 1
        return withdrawn


@attrs.frozen(kw_only=True)
class PriceChange:
    """One line of `pricing changes`: a subscription whose cost changed or will change."""

    customer: str
    tenant_id: str
    subscription_id: str
    subscription: str
    status: str
    effective_at: datetime
    old_cost: Decimal | None
    old_currency: str | None
    new_cost: Decimal
    currency: str
    new_sell_price: Decimal | None
    quantity: int
    billing_cycle: str | None
    term_duration: str | None
    commitment_end: datetime | None

    @property
    def monthly_difference(self) -> Decimal | None:
        """(new − old) a unit a month, times the subscription's quantity today."""
        if self.old_cost is None or self.old_currency != self.currency:
            return None
        plan = billing_plan(self.billing_cycle)
        new, old = monthly_amount(self.new_cost, plan), monthly_amount(self.old_cost, plan)
        if new is None or old is None:
            return None
        return round_money((new - old) * self.quantity, self.currency)


def list_changes(
    connection: Connection, *, since: datetime, module: str | None = None
) -> list[PriceChange]:
    """Planned changes, and changes in force since ``since``, of active subscriptions."""
    ch, s, t, c = (
        schema.subscription_price_changes,
        schema.subscriptions,
        schema.tenants,
        schema.customers,
    )
    query = (
        sa.select(
            ch,
            c.c.name.label("customer_name"),
            t.c.tenant_id.label("tenant"),
            s.c.external_id,
            s.c.name.label("subscription_name"),
            s.c.quantity.label("current_quantity"),
            s.c.billing_cycle,
            s.c.term_duration,
            s.c.commitment_end,
        )
        .select_from(
            ch.join(s, s.c.id == ch.c.subscription_id)
            .join(t, t.c.id == s.c.tenant_ref)
            .join(c, c.c.id == s.c.customer_id)
        )
        .where(
            s.c.active.is_(True),
            sa.or_(
                ch.c.status == PLANNED,
                sa.and_(ch.c.status == APPLIED, ch.c.effective_at >= since),
            ),
        )
        .order_by(ch.c.effective_at, c.c.name, s.c.name, s.c.id)
    )
    if module is not None:
        query = query.where(t.c.module == module)
    return [
        PriceChange(
            customer=row.customer_name,
            tenant_id=row.tenant,
            subscription_id=row.external_id,
            subscription=row.subscription_name,
            status="changed" if row.status == APPLIED else row.status,
            effective_at=row.effective_at,
            old_cost=row.old_cost,
            old_currency=row.old_currency,
            new_cost=row.new_cost,
            currency=row.currency,
            new_sell_price=row.new_sell_price,
            quantity=row.current_quantity,
            billing_cycle=row.billing_cycle,
            term_duration=row.term_duration,
            commitment_end=row.commitment_end,
        )
        for row in connection.execute(query)
    ]
