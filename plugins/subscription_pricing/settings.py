"""``[modules.subscription_pricing]``: which connection downloads the price sheet, and the
sell-price rules (guide 5.2; the marketplace is ``[integrator] marketplace``, guide 8.1)."""

from __future__ import annotations

from typing import ClassVar

import attrs

from halo_integrator_core.pricing import Amount, BillingPlan, PriceBookEntry, PricingSettings

#: The module whose subscriptions are priced, and whose connections download the sheet.
CSP_MODULE = "microsoft_csp"


@attrs.frozen(kw_only=True)
class SubscriptionPricingSettings(PricingSettings):
    """The module's own keys, beside the core's sell-price rules (``markup_percent``,
    ``price_book``) and ``future_prices``."""

    #: The Microsoft CSP connection (a direct partner's) whose Partner Center authorization
    #: downloads the price sheet; unset, the first connection that imports subscriptions.
    connection: str | None = None

    subscriptions_module: ClassVar[str | None] = CSP_MODULE


__all__ = [
    "CSP_MODULE",
    "Amount",
    "BillingPlan",
    "PriceBookEntry",
    "SubscriptionPricingSettings",
]
