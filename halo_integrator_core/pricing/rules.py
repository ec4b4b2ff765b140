"""Sell-price rules: a markup on the cost price, or a fixed price from a price book.

A pricing module's settings type derives from `PricingSettings`, so that its TOML table
carries these keys (``markup_percent``, ``[[...price_book]]``) and the core sets each priced
subscription's sell price by them. Money is `decimal.Decimal` throughout: amounts come from
the TOML as strings or numbers (`Amount`) and sell prices are rounded half-up to the
currency's minor unit.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, ClassVar

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote

from ..config import ValueProblem, converter

#: Currencies whose minor unit is not the hundredth (ISO 4217); the rest round to 0.01.
MINOR_UNITS = {
    "BHD": 3, "CLP": 0, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "OMR": 3,
    "TND": 3, "UGX": 0, "VND": 0,
}  # fmt: skip
_TERM = re.compile(r"^P\d+[DWMY]$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
#: The currency a partner of each marketplace (``[integrator] marketplace``) is billed in.
MARKET_CURRENCIES = {"GB": "GBP", "US": "USD"}


class Amount(Decimal):
    """A decimal amount from the TOML: ``"36.00"``, ``36`` or ``36.5`` (a number is read
    as its shortest decimal form, never with a float's binary noise)."""

    @classmethod
    def parse(cls, value: Any) -> Amount:
        if isinstance(value, bool):
            raise ValueProblem(f"expected a number or a decimal string, got a boolean ({value})")
        if isinstance(value, int):
            return cls(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueProblem(f"expected a finite number, got {value}")
            return cls(repr(value))
        if isinstance(value, str):
            try:
                amount = cls(value.strip())
            except InvalidOperation:
                raise ValueProblem(f"not a decimal number: {value!r}") from None
            if not amount.is_finite():
                raise ValueProblem(f"expected a finite number, got {value!r}")
            return amount
        raise ValueProblem(
            f"expected a number or a decimal string, got {type(value).__name__} ({value!r})"
        )


converter.register_structure_hook(Amount, lambda value, _: Amount.parse(value))
converter.register_unstructure_hook(Amount, str)


class BillingPlan(enum.StrEnum):
    """How often a subscription is billed: Partner Center's billing cycle, the price
    sheet's billing plan."""

    MONTHLY = "monthly"
    ANNUAL = "annual"
    TRIENNIAL = "triennial"


def minor_unit(currency: str | None) -> Decimal:
    return Decimal(1).scaleb(-MINOR_UNITS.get((currency or "").upper(), 2))


def round_money(amount: Decimal, currency: str | None) -> Decimal:
    """``amount`` rounded half-up to ``currency``'s minor unit (0.01 for GBP and USD)."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def _at(exc: Exception, attribute: str) -> Exception:
    """``exc`` noted with its attribute, as cattrs notes its own errors, so the message
    names the key path (``modules.subscription_pricing.price_book[1].sell_price``)."""
    exc.__notes__ = [AttributeValidationNote(f"@ attribute {attribute}", attribute, object)]
    return exc


@attrs.frozen(kw_only=True)
class PriceBookEntry:
    """``[[modules.<pricing module>.price_book]]``: the sell price of a product, or of one
    SKU, term and billing plan of it: a fixed ``sell_price``, or a ``markup_percent`` of
    its own. The most specific entry that fits a subscription wins (ties: the first)."""

    product_id: str
    sku_id: str | None = None
    #: An ISO 8601 duration as Partner Center gives it: ``P1M``, ``P1Y``, ``P3Y``.
    term_duration: str | None = None
    billing_plan: BillingPlan | None = None
    sell_price: Amount | None = None
    markup_percent: Amount | None = None
    #: Apply only to prices in this currency (a fixed sell price is in one currency).
    currency: str | None = None
    description: str | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Exception] = []
        if not self.product_id.strip():
            problems.append(_at(ValueProblem("give the product ID (ProductId)"), "product_id"))
        if (self.sell_price is None) == (self.markup_percent is None):
            problems.append(
                ValueProblem(
                    "give exactly one of sell_price (a fixed price a unit, in the sheet's "
                    "billing period) or markup_percent"
                )
            )
        if self.sell_price is not None and self.sell_price < 0:
            problems.append(_at(ValueProblem("a price cannot be negative"), "sell_price"))
        if self.markup_percent is not None and self.markup_percent <= -100:
            problems.append(
                _at(ValueProblem("a markup of -100% or less leaves no price"), "markup_percent")
            )
        if self.term_duration is not None and not _TERM.match(self.term_duration):
            problems.append(
                _at(
                    ValueProblem(
                        f"not a term duration: {self.term_duration!r} (give P1M, P1Y or P3Y)"
                    ),
                    "term_duration",
                )
            )
        if self.currency is not None and not _CURRENCY.match(self.currency):
            problems.append(
                _at(
                    ValueProblem(f"not a currency code: {self.currency!r} (give GBP, USD, ...)"),
                    "currency",
                )
            )
        if problems:
            raise cattrs.ClassValidationError(
                "While structuring PriceBookEntry", problems, PriceBookEntry
            )

    @property
    def specificity(self) -> int:
        return sum(
            value is not None
            for value in (self.sku_id, self.term_duration, self.billing_plan, self.currency)
        )

    def label(self) -> str:
        if self.description:
            return self.description
        parts = [self.product_id, self.sku_id, self.term_duration]
        if self.billing_plan is not None:
            parts.append(f"billed {self.billing_plan.value}")
        return " ".join(part for part in parts if part)

    def fits(self, item: PriceBookKey) -> bool:
        return (
            _same(self.product_id, item.product_id)
            and (self.sku_id is None or _same(self.sku_id, item.sku_id))
            and (self.term_duration is None or _same(self.term_duration, item.term_duration))
            and (self.billing_plan is None or self.billing_plan.value == item.billing_plan)
            and (self.currency is None or _same(self.currency, item.currency))
        )


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


@attrs.frozen(kw_only=True)
class PriceBookKey:
    """What a price-book entry is matched against: a subscription at a price."""

    product_id: str | None
    sku_id: str | None
    term_duration: str | None
    #: A `BillingPlan` value, or ``None``.
    billing_plan: str | None
    currency: str | None


@attrs.frozen(kw_only=True)
class SellPrice:
    """A sell price and the rule that set it (shown in the store as ``sell_price_rule``)."""

    amount: Decimal
    rule: str


@attrs.frozen(kw_only=True)
class PricingSettings:
    """The core's part of a pricing module's settings: a module's settings type derives
    from it, so ``[modules.<name>]`` carries these keys next to the module's own."""

    #: Sell price = cost × (1 + markup / 100), rounded to the currency's minor unit; no
    #: sell price is set when neither this nor a price-book entry applies.
    markup_percent: Amount | None = None
    price_book: tuple[PriceBookEntry, ...] = ()
    #: Also read the prices the source plans (the future timeline) on each scheduled run.
    future_prices: bool = True
    #: The currency the partner is billed in: only the sheet's rows in it are prices (a
    #: European market's sheet prices each SKU in several). Unset: the market's own.
    currency: str | None = None
    #: Not a TOML key: the module whose stored subscriptions are priced (``None``: all).
    subscriptions_module: ClassVar[str | None] = None

    def __attrs_post_init__(self) -> None:
        problems: list[Exception] = []
        if self.markup_percent is not None and self.markup_percent <= -100:
            problems.append(
                _at(ValueProblem("a markup of -100% or less leaves no price"), "markup_percent")
            )
        if self.currency is not None and not _CURRENCY.match(self.currency):
            problems.append(
                _at(
                    ValueProblem(
                        f"not a currency code: {self.currency!r} (give the ISO 4217 code of "
                        'the currency Microsoft bills you in, upper-case: "GBP", "EUR", "USD")'
                    ),
                    "currency",
                )
            )
        if problems:
            raise cattrs.ClassValidationError(
                f"While structuring {type(self).__name__}", problems, type(self)
            )

    def billing_currency(self, market: str) -> str | None:
        """The currency whose prices count: ``currency``, else ``market``'s own (``None``
        when the market's currency is not known)."""
        return self.currency or MARKET_CURRENCIES.get(market.upper())

    def entries_for(self, item: PriceBookKey) -> Iterator[PriceBookEntry]:
        return (entry for entry in self.price_book if entry.fits(item))

    def sell_price(self, item: PriceBookKey, cost: Decimal) -> SellPrice | None:
        """The sell price of ``item`` at ``cost`` (a unit, in the sheet's billing period)."""
        entry = max(
            self.entries_for(item),
            key=lambda e: e.specificity,
            default=None,
        )
        if entry is not None and entry.sell_price is not None:
            return SellPrice(
                amount=round_money(entry.sell_price, item.currency),
                rule=f"price book: {entry.label()}",
            )
        markup = entry.markup_percent if entry is not None else self.markup_percent
        if markup is None:
            return None
        amount = round_money(cost * (1 + markup / 100), item.currency)
        where = f" (price book: {entry.label()})" if entry is not None else ""
        return SellPrice(amount=amount, rule=f"markup {_percent(markup)}%{where}")


def _percent(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
