"""One usage record of an export → a `UsageLine`.

Attribute names are those of the Graph page ``resources/partners-billing-attributeset.md``
(``CustomerId``, ``ChargeStartDate``, ``MeterCategory``, ``BillingPreTaxTotal``,
``BillingCurrency``, ...), read whatever their case (the records arrive with their keys
lower-cased). The ``basic`` attribute set lacks the meter category and name, the resource
group, the tags and ``Unit`` (it has ``UnitType``); what is missing is left empty, never
guessed. ``Tags`` may be a JSON object or a string holding one (the Recon sample's model
declares it a string). The cost is ``BillingPreTaxTotal``, in ``BillingCurrency``: what the
partner is billed, before tax.

A row's billing month is not its own: it is the month of the export it came from (the
invoice's billing month, or the unbilled period's), which the caller passes in.
``ChargeStartDate`` is the start of the billing cycle *except* for latent usage of an
earlier cycle charged late (``partner-center/daily-rated-usage-recon-files.md``): taken as
the month, it would put December's latent rows in November, a month that may be closed or
billed already. It is kept as an attribute of the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from halo_integrator_core import RecordError, UsageLine

_RESOURCE_GROUP = re.compile(r"/resourcegroups/([^/]+)", re.IGNORECASE)


class _Bad(ValueError):
    pass


def usage_line(
    values: Mapping[str, Any], where: str, period: str, invoice_id: str | None = None
) -> UsageLine | RecordError:
    """The record's `UsageLine` in billing month ``period`` (``YYYY-MM``, the month of the
    export it came from), or a `RecordError` naming where it is and what is wrong.
    ``invoice_id``: the invoice a billed export was asked for, whose usage every row of it
    is, so a row that leaves ``InvoiceNumber`` empty is billed on it rather than taken for
    an estimate of unbilled usage."""
    try:
        tenant = _text(values, "customerid")
        if tenant is None:
            raise _Bad("CustomerId is missing")
        cost = _decimal(values, "billingpretaxtotal", required=True)
        currency = _text(values, "billingcurrency")
        if currency is None:
            raise _Bad("BillingCurrency is missing")
        resource_group = _text(values, "resourcegroup")
        if resource_group is None:
            match = _RESOURCE_GROUP.search(_text(values, "resourceuri") or "")
            resource_group = match.group(1) if match else None
        return UsageLine(
            tenant_id=tenant.lower(),
            customer_name=_text(values, "customername"),
            period=period,
            invoice_id=_text(values, "invoicenumber") or invoice_id,
            usage_date=_date(values, "usagedate"),
            subscription_id=_text(values, "subscriptionid"),
            subscription_description=_text(values, "subscriptiondescription")
            or _text(values, "entitlementdescription"),
            meter_category=_text(values, "metercategory"),
            meter_name=_text(values, "metername") or _text(values, "skuname"),
            resource_group=resource_group,
            tags=_tags(values.get("tags")),
            quantity=_decimal(values, "quantity") or Decimal(0),
            unit=_text(values, "unit") or _text(values, "unittype"),
            cost=cost,
            currency=currency.upper(),
            attributes={
                key: value
                for key, value in (
                    ("MeterId", _text(values, "meterid")),
                    ("ChargeType", _text(values, "chargetype")),
                    ("ProductName", _text(values, "productname")),
                    ("ChargeStartDate", _text(values, "chargestartdate")),
                )
                if value
            },
        )
    except _Bad as exc:
        return RecordError(entity_id=where, reason=str(exc))


def _text(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _decimal(values: Mapping[str, Any], key: str, *, required: bool = False) -> Decimal | None:
    value = values.get(key)
    if value is None or value == "":
        if required:
            raise _Bad(f"{key} is missing")
        return None
    if isinstance(value, bool):
        raise _Bad(f"{key} is {value!r}, not a number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise _Bad(f"{key} is {value!r}, not a number") from None
    if not number.is_finite():
        raise _Bad(f"{key} is {value!r}, not a finite number")
    return number


def _date(values: Mapping[str, Any], key: str) -> date | None:
    text = _text(values, key)
    if text is None:
        return None
    try:
        # "2025-12-01T00:00:00", "2025-12-01T00:00:00Z", "2025-12-01", "12/1/2025 12:00:00 AM"
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    for layout in ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, layout).date()
        except ValueError:
            continue
    raise _Bad(f"{key} is {text!r}, not a date")


def _tags(value: Any) -> dict[str, str]:
    """Tags as a mapping: a JSON object, or a string holding one; anything else is none."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            return {}
    if not isinstance(value, Mapping):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


__all__ = ["usage_line"]
