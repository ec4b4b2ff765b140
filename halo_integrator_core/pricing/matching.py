"""Which price-sheet row prices a stored subscription.

Only rows in the partner's billing currency count: a European market's sheet prices each
SKU in several currencies, and the partner is billed in one of them. A row fits a
subscription when its product ID, SKU ID, term duration and billing plan are the
subscription's: a one-year term billed monthly is another price than one billed annually.
Among the rows that fit, a tiered price takes the tier whose seat range holds the
subscription's quantity; then the row whose effective dates hold the day of the import
(the latest to start, if several do). The current price list is "the prices of the current
month to the day it is asked for", so when no row's dates hold that day the latest row that
started before it is the price in force (a sheet whose dates lag the clock); a row that
starts only later prices nothing yet. Every subscription no row prices gets the reason.

Only the rows of products some stored subscription holds are kept (`PriceSheet.add`), so
memory follows the subscriptions, not the size of the sheet.
"""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs

from ..billing.money import COST_PLACES, exact_cost
from ..models import Price
from .rules import BillingPlan, PriceBookKey

#: Months in one billing period of each plan: what a unit price is divided by for a month.
MONTHS = {
    BillingPlan.MONTHLY.value: 1,
    BillingPlan.ANNUAL.value: 12,
    BillingPlan.TRIENNIAL.value: 36,
}
_PLANS = {
    "monthly": BillingPlan.MONTHLY.value,
    "month": BillingPlan.MONTHLY.value,
    "annual": BillingPlan.ANNUAL.value,
    "annually": BillingPlan.ANNUAL.value,
    "yearly": BillingPlan.ANNUAL.value,
    "triennial": BillingPlan.TRIENNIAL.value,
    "onetime": "one_time",
}
#: Partner Center's billing cycles that mean "no recurring plan".
_NO_PLAN = {"", "none", "unknown"}
_EARLIEST = datetime.min.replace(tzinfo=UTC)
#: From this year on, a commitment end is Partner Center's "date far, far away in the
#: future" of a subscription that does not renew (subscription-resources.md), not a term's.
FAR_AWAY_YEAR = 9000
#: An ISO 8601 duration in years and months, as Partner Center writes terms (P1M, P1Y, P3Y).
_TERM = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?", re.IGNORECASE)


def billing_plan(value: str | None) -> str | None:
    """The one spelling of a billing plan or cycle: Partner Center's ``monthly`` and the
    sheet's ``Monthly`` are both ``monthly``; ``None`` when there is none."""
    if value is None:
        return None
    folded = re.sub(r"[\s_-]", "", value).casefold()
    if folded in _NO_PLAN:
        return None
    return _PLANS.get(folded, folded)


def term_months(term: str) -> int:
    """Months of a term duration: ``P1M`` 1, ``P1Y`` 12, ``P3Y`` 36; `ValueError` when it is
    not a whole number of months or years."""
    match = _TERM.fullmatch(term.strip())
    months = int(match[1] or 0) * 12 + int(match[2] or 0) if match else 0
    if not months:
        raise ValueError(
            f"{term!r} is not a term of whole months or years (P1M, P1Y, P3Y), so the price "
            "of the term cannot be divided into billing periods"
        )
    return months


def period_price(term_price: Decimal, months: int, plan: str | None) -> Decimal:
    """A unit's charge for one billing period of ``plan``, from ``term_price``, the price of
    a whole term of ``months`` (what a price sheet states: "The UnitPrice amount is for the
    term being purchased"; an annual term billed monthly is billed a twelfth of it a month).

    A plan with no recurring charge (none, one-time) bills the whole term at once. The
    division is exact unless the quotient needs more than the six places the store keeps
    of a cost; then it is rounded to them, as consumption billing rounds its costs, so the
    price read back from the store is the price computed (no change seen on every run).
    `ValueError` for a plan that is not known, or that bills less often than the term runs.
    """
    normalized = billing_plan(plan)
    if normalized in (None, "one_time"):
        return term_price
    every = MONTHS.get(normalized)
    if every is None:
        known = ", ".join(value.capitalize() for value in MONTHS)
        raise ValueError(
            f"{plan!r} is not a billing plan ({known}; None for no recurring charge), so the "
            "price of the term cannot be divided into billing periods"
        )
    if every > months:
        raise ValueError(
            f"{plan!r} bills every {every} months, longer than the term of {months} "
            f"month{'s' if months != 1 else ''}"
        )
    amount = term_price * every / months
    if amount.as_tuple().exponent < COST_PLACES.as_tuple().exponent:  # type: ignore[operator]
        amount = exact_cost(amount)
    return amount


def monthly_amount(amount: Decimal | None, plan: str | None) -> Decimal | None:
    """A unit price of one billing period, as a month of it (``None`` when not recurring)."""
    months = MONTHS.get(plan or "")
    return None if amount is None or months is None else amount / months


def renewal_day(commitment_end: datetime) -> datetime:
    """The day a term renews: the one after its end date, which is its last day ("End
    dates are inclusive, meaning the end of the term is at the end of the full day",
    subscription-resources.md)."""
    end = commitment_end.astimezone(UTC)
    return datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)


def _add_months(moment: datetime, months: int) -> datetime:
    """``moment`` ``months`` later (earlier when negative), its day kept where the month
    has it, else the month's last."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return moment.replace(year=year, month=month + 1, day=min(moment.day, last))


def _fold(value: str | None) -> str:
    return (value or "").strip().casefold()


@attrs.frozen(kw_only=True)
class StoredSubscription:
    """A stored subscription as pricing sees it: what it is, and the price it has."""

    id: int
    tenant_id: str
    external_id: str
    customer: str
    name: str
    offer_id: str | None
    product_id: str | None
    sku_id: str | None
    term_duration: str | None
    billing_cycle: str | None
    quantity: int
    commitment_end: datetime | None = None
    cost_price: Decimal | None = None
    sell_price: Decimal | None = None
    currency: str | None = None
    sell_price_rule: str | None = None
    price_market: str | None = None
    price_effective_start: datetime | None = None
    price_effective_end: datetime | None = None
    price_note: str | None = None

    @property
    def plan(self) -> str | None:
        return billing_plan(self.billing_cycle)

    @property
    def product_key(self) -> tuple[str, str] | None:
        if not self.product_id or not self.sku_id:
            return None
        return (_fold(self.product_id), _fold(self.sku_id))

    def book_key(self, currency: str | None) -> PriceBookKey:
        return PriceBookKey(
            product_id=self.product_id,
            sku_id=self.sku_id,
            term_duration=self.term_duration,
            billing_plan=self.plan,
            currency=currency,
        )

    def describe(self) -> str:
        return f"{self.product_id} {self.sku_id} on term {self.term_duration} billed {self.plan}"

    def price_reaches(self, start: datetime) -> datetime:
        """When a price in force from ``start`` becomes this subscription's.

        New commerce holds a subscription's price for its term: "Price changes during the
        term don't affect billing plan charges for an existing subscription. Price changes
        are only relevant for renewals, transitions, and new subscriptions"
        (partner-center/pricing-and-offers.md). So a price that starts within the current
        term reaches it at the next renewal (or the first renewal after ``start``), and
        one in force when the term began, from that beginning. The term is the one ending
        on ``commitment_end`` (its last day: "End dates are inclusive, meaning the end of the
        term is at the end of the full day", subscription-resources.md); without one, or
        with a term not of whole months, ``start`` itself. So too for a subscription that does not
        renew, whose end "represents a date far, far away in the future" (the same page):
        it has no renewal for a price to wait for.
        """
        if self.commitment_end is None or not self.term_duration:
            return start
        if self.commitment_end.year >= FAR_AWAY_YEAR:
            return start
        try:
            months = term_months(self.term_duration)
        except ValueError:
            return start
        renewal = renewal_day(self.commitment_end)
        term_start = _add_months(renewal, -months)
        if start <= term_start:
            return term_start
        while renewal < start:
            renewal = _add_months(renewal, months)
        return renewal


@attrs.frozen
class Match:
    """The row that prices a subscription; ``in_force`` is false when its dates ended
    before the import's day (the newest price the sheet has)."""

    price: Price
    in_force: bool = True


@attrs.frozen
class Miss:
    """Why no row prices a subscription."""

    reason: str


def _start(price: Price) -> datetime:
    return price.effective_start or _EARLIEST


def _aware(value: datetime | None) -> datetime | None:
    """A row's date in UTC; a date without a zone is taken as UTC, as the sheet's are."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _holds(price: Price, when: datetime) -> bool:
    return (price.effective_start is None or price.effective_start <= when) and (
        price.effective_end is None or when <= price.effective_end
    )


def _covers(price: Price, quantity: int) -> bool:
    return (price.tier_minimum is None or quantity >= price.tier_minimum) and (
        price.tier_maximum is None or quantity <= price.tier_maximum
    )


def _tiers(rows: Iterable[Price]) -> str:
    ranges = sorted({(p.tier_minimum or 0, p.tier_maximum) for p in rows}, key=lambda r: r[0])
    return ", ".join(f"{low}+" if high is None else f"{low}–{high}" for low, high in ranges)


class PriceSheet:
    """The rows of one price sheet (a market and timeline) in the partner's billing
    ``currency`` that stored subscriptions may need, grouped by product, SKU, term duration
    and billing plan."""

    def __init__(
        self, market: str, timeline: str, products: set[tuple[str, str]], *, currency: str
    ) -> None:
        self.market = market
        self.timeline = timeline
        self.products = products
        self.currency = currency.strip().upper()
        self.read = 0
        self.kept = 0
        #: Rows in another currency: not the partner's price, so neither kept nor a problem.
        self.other_currency = 0
        self._rows: dict[tuple[str, str, str, str | None], list[Price]] = defaultdict(list)
        self._offers: dict[tuple[str, str], set[tuple[str, str | None]]] = defaultdict(set)
        self._currencies: dict[tuple[str, str], set[str]] = defaultdict(set)

    def add(self, price: Price) -> bool:
        """Keep ``price`` if it is in the sheet's currency and a stored subscription holds
        its product and SKU."""
        self.read += 1
        product = (_fold(price.product_id), _fold(price.sku_id))
        currency = price.currency.strip().upper()
        if currency != self.currency:
            self.other_currency += 1
            if product in self.products:
                self._currencies[product].add(currency)
            return False
        if product not in self.products:
            return False
        term, plan = _fold(price.term_duration), billing_plan(price.billing_plan)
        start, end = _aware(price.effective_start), _aware(price.effective_end)
        if (start, end) != (price.effective_start, price.effective_end):
            price = attrs.evolve(price, effective_start=start, effective_end=end)
        self._rows[(*product, term, plan)].append(price)
        self._offers[product].add((term, plan))
        self.kept += 1
        return True

    def _rows_of(self, subscription: StoredSubscription) -> list[Price] | Miss:
        product = subscription.product_key
        if product is None:
            return Miss(
                "not a new-commerce licence subscription: Partner Center gives no product and "
                f"SKU ID for it (offer {subscription.offer_id or 'unknown'}), so no price-sheet "
                "row can be its price"
            )
        if not subscription.term_duration or not subscription.plan:
            return Miss(
                "Partner Center gives no term duration or billing cycle for it "
                f"(term {subscription.term_duration!r}, billing cycle "
                f"{subscription.billing_cycle!r}): a price depends on both"
            )
        offers = self._offers.get(product)
        if not offers and product in self._currencies:
            return Miss(
                f"product {subscription.product_id} SKU {subscription.sku_id} has no "
                f"{self.currency} price on the {self.market} price sheet (only "
                f"{', '.join(sorted(self._currencies[product]))})"
            )
        if not offers:
            return Miss(
                f"product {subscription.product_id} SKU {subscription.sku_id} is not on the "
                f"{self.market} price sheet"
            )
        rows = self._rows.get((*product, _fold(subscription.term_duration), subscription.plan))
        if not rows:
            have = ", ".join(
                sorted(f"{term.upper()} billed {plan or 'with no plan'}" for term, plan in offers)
            )
            return Miss(
                f"no {self.market} price for {subscription.describe()} (the sheet prices "
                f"{subscription.product_id} {subscription.sku_id} at {have})"
            )
        covering = [row for row in rows if _covers(row, subscription.quantity)]
        if not covering:
            return Miss(
                f"no price tier of {subscription.describe()} covers quantity "
                f"{subscription.quantity} (tiers: {_tiers(rows)})"
            )
        return covering

    def current(self, subscription: StoredSubscription, as_of: datetime) -> Match | Miss:
        """The row pricing ``subscription`` on ``as_of``, or why there is none."""
        rows = self._rows_of(subscription)
        if isinstance(rows, Miss):
            return rows
        in_force = [row for row in rows if _holds(row, as_of)]
        if in_force:
            return Match(max(in_force, key=_start))
        started = [
            row for row in rows if row.effective_start is None or row.effective_start <= as_of
        ]
        if started:
            return Match(max(started, key=_start), in_force=False)
        first = min(_start(row) for row in rows)
        return Miss(
            f"the {self.market} price of {subscription.describe()} starts only on {first:%Y-%m-%d}"
        )

    def planned(self, subscription: StoredSubscription) -> Price | None:
        """The next row of ``subscription``'s price: the earliest to start after the row
        that prices it now (any row, when it has none)."""
        rows = self._rows_of(subscription)
        if isinstance(rows, Miss):
            return None
        after = subscription.price_effective_start
        later = [
            row
            for row in rows
            if row.effective_start is not None and (after is None or row.effective_start > after)
        ]
        return min(later, key=_start, default=None)
