"""Grouping usage rows into invoice lines, as they stream past.

A line is one customer's usage for one billing month, source (an invoice, or unbilled) and
currency, split further by the configured dimensions (subscription, meter category, meter,
resource group, a tag). Rows are added to their line as they arrive and then dropped: a
line keeps running sums, its cost split by markup, and at most three distinct values of
each field its description may name, so memory grows with the number of lines, never with
the number of rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import attrs

from ..models import UsageLine
from .rules import BillingSettings, GroupBy

#: The store's limit on a group key; longer keys are shortened with a hash.
MAX_KEY = 500
#: The distinct values of a field a description lists before it says "various".
MAX_LISTED = 3
#: A separator left with nothing after it: before another, a parenthesis or the end.
_DANGLING = re.compile(r"\s*[—:,]+\s*(?=[—:,(]|$)")


@attrs.define
class Distinct:
    """Up to `MAX_LISTED` distinct values of a field, in the order first seen."""

    values: list[str] = attrs.field(factory=list)
    overflow: bool = False

    def add(self, value: str | None) -> None:
        if not value or self.overflow or value in self.values:
            return
        if len(self.values) == MAX_LISTED:
            self.overflow = True
        else:
            self.values.append(value)

    @property
    def single(self) -> str | None:
        return self.values[0] if len(self.values) == 1 and not self.overflow else None

    def text(self) -> str:
        return "various" if self.overflow else ", ".join(self.values)


@attrs.frozen
class LineKey:
    """What identifies a line: the store's unique key of an invoice line."""

    customer_id: int
    period: str
    source: str
    currency: str
    group_key: str


@attrs.define
class LineGroup:
    """One invoice line in the making."""

    key: LineKey
    customer: str
    rows: int = 0
    cost_by_markup: dict[Decimal, Decimal] = attrs.field(factory=dict)
    quantity: Decimal = Decimal(0)
    unit: str | None = None
    mixed_units: bool = False
    fields: dict[str, Distinct] = attrs.field(factory=dict)

    @property
    def cost(self) -> Decimal:
        return sum(self.cost_by_markup.values(), Decimal(0))

    @property
    def markup_percent(self) -> Decimal | None:
        """The line's markup when one applies to all of it; ``None`` when parts differ."""
        return next(iter(self.cost_by_markup)) if len(self.cost_by_markup) == 1 else None

    def add(self, line: UsageLine, markup: Decimal, tag: str | None) -> None:
        self.rows += 1
        self.cost_by_markup[markup] = self.cost_by_markup.get(markup, Decimal(0)) + line.cost
        unit = (line.unit or "").strip()
        if self.rows == 1:
            self.unit = unit or None
        elif not self.mixed_units and (unit or None) != self.unit:
            self.mixed_units = True
        self.quantity += line.quantity
        for name, value in row_fields(line, tag).items():
            self.fields.setdefault(name, Distinct()).add(value)

    @property
    def line_quantity(self) -> tuple[Decimal | None, str | None]:
        """Quantity and unit, when the line's rows share one unit."""
        if self.mixed_units or self.unit is None:
            return None, None
        return self.quantity, self.unit

    def template_values(self) -> dict[str, str]:
        year, month = (int(part) for part in self.key.period.split("-"))
        values = {name: distinct.text() for name, distinct in self.fields.items()}
        return values | {
            "period": self.key.period,
            "period_name": date(year, month, 1).strftime("%B %Y"),
            "customer": self.customer,
            "currency": self.key.currency,
            "source": self.key.source,
        }


def row_fields(line: UsageLine, tag: str | None) -> dict[str, str | None]:
    """The fields of a row a description may name, by their template names."""
    return {
        "MeterCategory": line.meter_category,
        "MeterName": line.meter_name,
        "SubscriptionId": line.subscription_id,
        "SubscriptionDescription": line.subscription_description,
        "ResourceGroup": line.resource_group,
        "Tag": tag_value(line, tag) if tag else None,
        "Unit": line.unit,
    }


def tag_value(line: UsageLine, tag: str) -> str | None:
    """The value of tag ``tag`` on the row (tag names ignore case, as Azure's do)."""
    wanted = tag.casefold()
    for name, value in line.tags.items():
        if name.casefold() == wanted:
            return str(value) if value is not None else None
    return None


def group_key(line: UsageLine, settings: BillingSettings) -> str:
    """The key of the row's line within its customer, month, source and currency."""
    parts: list[str] = []
    for dimension in dict.fromkeys(settings.group_by):  # each once, in the order given
        parts.extend(_dimension(line, dimension, settings.group_tag))
    key = "|".join(parts) or "customer"
    if len(key) > MAX_KEY:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        key = f"{key[: MAX_KEY - 66]}…#{digest}"
    return key


def _dimension(line: UsageLine, dimension: GroupBy, tag: str | None) -> Iterator[str]:
    if dimension is GroupBy.SUBSCRIPTION:
        yield f"subscription={(line.subscription_id or '').lower()}"
    elif dimension is GroupBy.METER_CATEGORY:
        yield f"meter_category={(line.meter_category or '').strip()}"
    elif dimension is GroupBy.METER:
        yield f"meter={(line.meter_category or '').strip()}/{(line.meter_name or '').strip()}"
    elif dimension is GroupBy.RESOURCE_GROUP:
        # Resource group names are unique within a subscription and ignore case.
        subscription = (line.subscription_id or "").lower()
        yield f"resource_group={subscription}/{(line.resource_group or '').strip().lower()}"
    elif dimension is GroupBy.TAG:
        assert tag is not None
        yield f"tag:{tag.casefold()}={tag_value(line, tag) or ''}"


def describe(group: LineGroup, settings: BillingSettings) -> str:
    """The line's description from the template, tidied where a field was empty."""
    text = settings.description.render(group.template_values())
    # A field the rows left empty leaves no "()", doubled spaces or dangling separator.
    text = " ".join(text.split()).replace("()", "").replace("[]", "")
    text = _DANGLING.sub(" ", " ".join(text.split()))
    text = " ".join(text.split()).strip(" —-:,")
    return text[:500] or f"Azure usage ({group.key.period})"


__all__ = [
    "Distinct",
    "LineGroup",
    "LineKey",
    "describe",
    "group_key",
    "row_fields",
    "tag_value",
]
