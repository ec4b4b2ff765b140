"""The core's part of subscription pricing (guide 5.2): a pricing module's plugin translates
a price sheet into `Price` rows (``fetch_prices``), each ``unit_price`` a unit's charge for
one billing period of its plan (`period_price` makes it from the price of a whole term,
which is what Microsoft's sheet states); the core matches them to the stored
subscriptions (`matching`), sets cost and sell prices by the module's rules (`rules`),
keeps every price and planned change (`history`) and records the run (`run`).
"""

from __future__ import annotations

from .history import PriceChange, list_changes
from .matching import (
    PriceSheet,
    StoredSubscription,
    billing_plan,
    monthly_amount,
    period_price,
    renewal_day,
    term_months,
)
from .rules import (
    MARKET_CURRENCIES,
    Amount,
    BillingPlan,
    PriceBookEntry,
    PricingSettings,
    SellPrice,
    round_money,
)
from .run import CURRENT, FUTURE, TIMELINES, default_timelines, import_prices

__all__ = [
    "CURRENT",
    "FUTURE",
    "MARKET_CURRENCIES",
    "TIMELINES",
    "Amount",
    "BillingPlan",
    "PriceBookEntry",
    "PriceChange",
    "PriceSheet",
    "PricingSettings",
    "SellPrice",
    "StoredSubscription",
    "billing_plan",
    "default_timelines",
    "import_prices",
    "list_changes",
    "monthly_amount",
    "period_price",
    "renewal_day",
    "round_money",
    "term_months",
]
