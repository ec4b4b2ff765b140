"""The core's part of subscription pricing (guide 5.2): a pricing module's plugin translates
a price sheet into `Price` rows (``fetch_prices``); the core matches them to the stored
subscriptions (`matching`), sets cost and sell prices by the module's rules (`rules`),
keeps every price and planned change (`history`) and records the run (`run`).
"""

from __future__ import annotations

from .history import PriceChange, list_changes
from .matching import PriceSheet, StoredSubscription, billing_plan, monthly_amount
from .rules import (
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
    "round_money",
]
