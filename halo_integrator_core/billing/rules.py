"""The settings every billing module shares: how usage becomes invoice lines.

A billing module's settings type subclasses `BillingSettings`, so that its
``[modules.<name>]`` table holds these keys beside the module's own (how it reaches the
source). The core reads them: grouping, the description template, markups, the minimum
line charge, rounding, the periods a scheduled run imports and when a period closes.

Amounts and percentages are `decimal.Decimal` from the first: a TOML number is read through
its text (``12.5`` is exactly 12.5), never through binary floating point.
"""

from __future__ import annotations

import enum
import re
import string
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import attrs

from ..config import ValueProblem, converter

# --- value types -------------------------------------------------------------------------


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueProblem(f'expected {what} (a number, or a string such as "12.5"), got {value!r}')
    try:
        # str() of a float is its shortest exact spelling: 12.5 stays 12.5, 0.1 stays 0.1.
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueProblem(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueProblem(f"not a finite number: {value!r}")
    return number


class Amount(Decimal):
    """A sum of money in the line's currency, never negative."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Amount:
        number = _decimal(value, "an amount")
        if number < 0:
            raise ValueProblem(f"an amount cannot be negative, got {value!r}")
        return cls(number)


class Percent(Decimal):
    """A percentage (``15`` is 15 %); above -100, so a price never turns negative."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Percent:
        number = _decimal(value, "a percentage")
        if number <= -100:
            raise ValueProblem(f"a percentage must be above -100, got {value!r}")
        return cls(number)


_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


class CurrencyCode(str):
    """An ISO 4217 currency code, upper-case (``GBP``)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> CurrencyCode:
        if not isinstance(value, str) or not _CURRENCY.match(value.strip()):
            raise ValueProblem(f'not an ISO 4217 currency code: {value!r} (for example "GBP")')
        return cls(value.strip().upper())


#: What a description template may name. The usage fields take their Microsoft names; a field
#: that differs between the rows of one line reads as its values joined (up to three), else
#: "various".
TEMPLATE_FIELDS = {
    "period": "the billing month, 2025-12",
    "period_name": "the billing month in words, December 2025",
    "customer": "the customer's name",
    "currency": "the billing currency",
    "source": "the invoice ID, or 'unbilled'",
    "MeterCategory": "the Azure meter category (Virtual Machines)",
    "MeterName": "the meter (D2s v3)",
    "SubscriptionId": "the Azure subscription ID",
    "SubscriptionDescription": "the Azure subscription's name",
    "ResourceGroup": "the resource group",
    "Tag": "the value of the tag named by group_tag",
    "Unit": "the unit of measure",
}


class DescriptionTemplate(str):
    """A line description with ``{placeholders}`` from `TEMPLATE_FIELDS`."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> DescriptionTemplate:
        if not isinstance(value, str) or not value.strip():
            raise ValueProblem(f"expected a non-empty description template, got {value!r}")
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueProblem(f"not a valid template ({exc}): {value!r}") from None
        for _, field, spec, conversion in parts:
            if field is None:
                continue
            if field not in TEMPLATE_FIELDS or spec or conversion:
                known = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
                raise ValueProblem(
                    f"unknown placeholder {{{field}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} (known: {known})"
                )
        return cls(value)

    def render(self, values: dict[str, str]) -> str:
        return self.format(**{name: values.get(name, "") for name in TEMPLATE_FIELDS})


def _display_number(value: Decimal) -> int | float:
    # `config show` prints TOML, which has no decimal type: show the number as written.
    return int(value) if value == value.to_integral_value() else float(str(value))


for _type in (Amount, Percent, CurrencyCode, DescriptionTemplate):
    converter.register_structure_hook(_type, lambda value, cls: cls.parse(value))
converter.register_unstructure_hook(Amount, _display_number)
converter.register_unstructure_hook(Percent, _display_number)


# --- the rules ---------------------------------------------------------------------------


class GroupBy(enum.StrEnum):
    """What one invoice line of a customer holds (several combine: one line per pair)."""

    #: One line per customer (and currency): the other dimensions add to this one.
    CUSTOMER = "customer"
    SUBSCRIPTION = "subscription"
    METER_CATEGORY = "meter_category"
    METER = "meter"
    RESOURCE_GROUP = "resource_group"
    #: By the value of the tag ``group_tag`` (rows without it share one line).
    TAG = "tag"


class Rounding(enum.StrEnum):
    """How a price is rounded to the currency's minor unit."""

    HALF_UP = "half_up"
    HALF_EVEN = "half_even"

    @property
    def mode(self) -> str:
        return ROUND_HALF_UP if self is Rounding.HALF_UP else ROUND_HALF_EVEN


class ScheduledPeriod(enum.StrEnum):
    """What a scheduled (or an unqualified) import fetches, in the order given."""

    #: The usage billed on the latest invoice: replaces that month's estimate lines.
    LATEST = "latest"
    #: The unbilled usage of last month, until its invoice is imported.
    LAST = "last"
    #: The unbilled usage of this month so far: an estimate, updated by each run.
    CURRENT = "current"


@attrs.frozen(kw_only=True)
class MarkupRule:
    """``[[modules.<billing module>.markups]]``: a markup for a customer, a meter category,
    or the two together. The most specific rule wins: customer and category, then customer,
    then category; among equals, the first in the file."""

    percent: Percent
    customer: str | None = None
    meter_category: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.customer and not self.meter_category:
            raise ValueProblem(
                "a markup rule names a customer, a meter_category or both "
                "(the markup of everything else is default_markup_percent)"
            )

    @property
    def specificity(self) -> int:
        return (2 if self.customer else 0) + (1 if self.meter_category else 0)


DEFAULT_DESCRIPTION = DescriptionTemplate("Azure usage: {MeterCategory} ({period_name})")
_NO_MARKUP = Percent(0)
_NO_MINIMUM = Amount(0)


@attrs.frozen(kw_only=True)
class BillingSettings:
    """The keys every billing module's table has (see the README's billing section)."""

    group_by: tuple[GroupBy, ...] = (GroupBy.METER_CATEGORY,)
    #: The tag whose value ``group_by = ["tag"]`` groups by.
    group_tag: str | None = None
    description: DescriptionTemplate = DEFAULT_DESCRIPTION
    default_markup_percent: Percent = _NO_MARKUP
    markups: tuple[MarkupRule, ...] = ()
    #: A line with a cost above zero is charged at least this (in its own currency).
    minimum_line_charge: Amount = _NO_MINIMUM
    rounding: Rounding = Rounding.HALF_UP
    #: What a scheduled run (and `billing import` without a period) imports, in order.
    periods: tuple[ScheduledPeriod, ...] = (
        ScheduledPeriod.LATEST,
        ScheduledPeriod.LAST,
        ScheduledPeriod.CURRENT,
    )
    #: A billing month closes this many days after it ends (0: only `billing close` closes
    #: one). The lines of a closed month change only with ``--force``.
    close_after_days: int = 0

    def __attrs_post_init__(self) -> None:
        if GroupBy.TAG in self.group_by and not self.group_tag:
            raise ValueProblem(
                'group_by: "tag" groups by the value of one tag: name it with group_tag = "..."'
            )
        if self.close_after_days < 0:
            raise ValueProblem("close_after_days: expected a number of days ≥ 0")
        if "{Tag}" in self.description and not self.group_tag:
            raise ValueProblem("description: {Tag} needs group_tag to name the tag")

    def markup_for(self, customer: str, meter_category: str | None) -> Decimal:
        """The markup (a percentage) of a customer's usage in a meter category."""
        best: MarkupRule | None = None
        for rule in self.markups:
            if rule.customer and rule.customer.casefold() != customer.casefold():
                continue
            if rule.meter_category and (
                meter_category is None
                or rule.meter_category.casefold() != meter_category.casefold()
            ):
                continue
            if best is None or rule.specificity > best.specificity:
                best = rule
        return Decimal(best.percent if best else self.default_markup_percent)


__all__ = [
    "DEFAULT_DESCRIPTION",
    "TEMPLATE_FIELDS",
    "Amount",
    "BillingSettings",
    "CurrencyCode",
    "DescriptionTemplate",
    "GroupBy",
    "MarkupRule",
    "Percent",
    "Rounding",
    "ScheduledPeriod",
]
