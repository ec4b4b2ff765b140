"""Money with decimal arithmetic: costs kept exact, prices rounded to the minor unit.

A line's cost is the sum of its usage rows' pre-tax totals, kept to six decimal places
(what the store holds); its price is that cost with its markup, rounded once, at the end,
to the currency's minor unit (two places for most currencies, none for JPY, three for
KWD), and at least the minimum line charge when the cost is above zero. Floats never
touch money.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from decimal import Decimal

#: What the store keeps of a cost: six decimal places (``Numeric(18, 6)``).
COST_PLACES = Decimal("0.000001")

#: ISO 4217 currencies whose minor unit is not two decimal places (every other has two).
MINOR_UNITS: Mapping[str, int] = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}

_CONTEXT = decimal.Context(prec=38, rounding=decimal.ROUND_HALF_EVEN)


def minor_unit(currency: str) -> int:
    """Decimal places of the currency's minor unit."""
    return MINOR_UNITS.get(currency.upper(), 2)


def round_money(amount: Decimal, currency: str, mode: str = decimal.ROUND_HALF_UP) -> Decimal:
    """``amount`` rounded to the currency's minor unit."""
    return amount.quantize(
        Decimal(1).scaleb(-minor_unit(currency)), rounding=mode, context=_CONTEXT
    )


def exact_cost(amount: Decimal) -> Decimal:
    """A cost as the store keeps it (six places, half to even as a database rounds)."""
    return amount.quantize(COST_PLACES, rounding=decimal.ROUND_HALF_EVEN, context=_CONTEXT)


def sell_price(
    cost_by_markup: Mapping[Decimal, Decimal],
    *,
    currency: str,
    minimum: Decimal = Decimal(0),
    mode: str = decimal.ROUND_HALF_UP,
) -> Decimal:
    """The price of a line whose cost is split by markup percentage.

    A line may hold usage with different markups (a customer's line over several meter
    categories, each with its own): each part gets its own markup, and the sum is rounded
    once. ``minimum`` applies when the cost is above zero (credits are passed on as they are).
    """
    with decimal.localcontext(_CONTEXT):
        price = sum(
            (cost * (1 + percent / 100) for percent, cost in cost_by_markup.items()), Decimal(0)
        )
        cost = sum(cost_by_markup.values(), Decimal(0))
        if cost > 0 and price < minimum:
            price = Decimal(minimum)
    return round_money(price, currency, mode)


__all__ = ["COST_PLACES", "MINOR_UNITS", "exact_cost", "minor_unit", "round_money", "sell_price"]
