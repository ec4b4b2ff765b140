"""``[modules.consumption_billing]``: how Azure usage is read, and how it is billed.

The billing keys (grouping, description, markups, minimum line charge, rounding, periods,
closing) are the core's `BillingSettings`, shared by every billing module; this module adds
how it reads Microsoft: which of the CSP module's connections, which currencies, which
attribute set, and how long to wait for an export. The partner connection itself (tenant,
GDAP app and its secret) is the CSP module's: this module uses it, it does not repeat it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from halo_integrator_core.billing import BillingSettings, CurrencyCode
from halo_integrator_core.config import ValueProblem


class AttributeSet(enum.StrEnum):
    """Which usage attributes an export holds. ``basic`` lacks meter category, meter,
    resource group and tags, so only the customer and subscription groupings work with it."""

    FULL = "full"
    BASIC = "basic"


@attrs.frozen(kw_only=True)
class ConsumptionBillingSettings(BillingSettings):
    #: Names of ``[[modules.microsoft_csp.connections]]`` whose partner billing is read;
    #: every connection when empty.
    connections: tuple[str, ...] = ()
    #: Currencies of the unbilled exports (Microsoft exports unbilled usage one currency at
    #: a time). Empty: the currencies of the partner's recent invoices, and the marketplace's.
    currencies: tuple[CurrencyCode, ...] = ()
    attribute_set: AttributeSet = AttributeSet.FULL
    #: How long one run waits for Microsoft to prepare an export before giving up on it
    #: (the next run asks again).
    export_timeout_minutes: int = 30
    #: The wait between polls of an export when Microsoft gives no Retry-After.
    poll_seconds: int = 30

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.export_timeout_minutes < 1:
            raise ValueProblem("export_timeout_minutes: expected a whole number of minutes ≥ 1")
        if self.poll_seconds < 1:
            raise ValueProblem("poll_seconds: expected a whole number of seconds ≥ 1")
        # One listed twice is read twice, and every cost in it billed twice.
        _no_repeats("connections", self.connections, "that connection's usage")
        _no_repeats(
            "currencies",
            self.currencies,
            "the unbilled usage in that currency",
            note=" (currency codes are read whatever their case)",
            same=str.upper,
        )


def _no_repeats(
    key: str,
    values: tuple[str, ...],
    what: str,
    *,
    note: str = "",
    same: Callable[[str], str] = str,
) -> None:
    """Refuse a list that names one thing twice, as ``same`` compares them (currency codes
    whatever their case; connection names as written, as they are matched)."""
    first: dict[str, str] = {}
    repeated = []
    for value in values:
        if same(value) in first:
            repeated.append(value)
        first.setdefault(same(value), value)
    if repeated:
        once = ", ".join(f'"{v}"' for v in first.values())
        raise ValueProblem(
            f'{key}: "{repeated[0]}" is listed twice{note}, so {what} would be exported twice '
            f"and billed twice: list each once, {key} = [{once}]"
        )


__all__ = ["AttributeSet", "ConsumptionBillingSettings"]
