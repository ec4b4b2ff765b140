"""The partner's invoices (Partner Center ``GET /v1/invoices``): which to export, in which
currencies the partner is billed.

Page ``developer/get-a-collection-of-invoices.md`` (App and App+User credentials both work)
and ``developer/invoice-resources.md``: each invoice has an ``id``, an ``invoiceDate``, a
``billingPeriodStartDate``/``EndDate``, a ``currencyCode`` and a ``documentType``
(invoice, credit note, void note). Azure plan usage is billed on the modern commerce
invoices, whose IDs start with ``G``; when the partner has any, the others (legacy
licence-based invoices) are left out. An invoice's billing month is that of its billing
period's start, or, when the listing gives none (or one that cannot be read), the month
before the invoice's date.

The page says paging (``size``, ``offset``) applies to legacy invoices only: "For all modern
commercial purchases, pagesize & offset will be ignored", so the modern invoices may come
again on every page. The list is keyed by invoice ID, the first seen kept, so that no invoice
is exported twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

import attrs

from halo_integrator_core.http import HttpClient
from halo_integrator_core.paging import partner_center_pages
from halo_integrator_core.translation import parse_timestamp

#: How far back the partner's invoices tell which currencies it is billed in.
CURRENCY_MONTHS = 3


@attrs.frozen
class Invoice:
    id: str
    invoice_date: date | None
    billing_month: str | None
    currency: str | None
    document_type: str


def list_invoices(
    http: HttpClient, partner_center: str, headers: Mapping[str, str]
) -> list[Invoice]:
    """Every invoice of the partner, once each, in the order first listed (a few per month:
    small)."""
    found: dict[str, Invoice] = {}
    for page in partner_center_pages(http, partner_center, "/v1/invoices", headers=headers):
        for item in page.items:
            invoice = _invoice(item)
            if invoice is not None:
                found.setdefault(invoice.id.upper(), invoice)
    return list(found.values())


def _invoice(item: Any) -> Invoice | None:
    if not isinstance(item, Mapping) or not item.get("id"):
        return None
    # Each date on its own: an unreadable invoiceDate must not cost the billing period.
    issued = _timestamp(item.get("invoiceDate"))
    start = _timestamp(item.get("billingPeriodStartDate"))
    if start is not None:
        month = f"{start.year:04d}-{start.month:02d}"
    elif issued is not None:
        before = issued.date().replace(day=1) - timedelta(days=1)
        month = f"{before.year:04d}-{before.month:02d}"
    else:
        month = None
    currency = item.get("currencyCode")
    return Invoice(
        id=str(item["id"]),
        invoice_date=issued.date() if issued else None,
        billing_month=month,
        currency=str(currency).upper() if currency else None,
        document_type=str(item.get("documentType") or "invoice"),
    )


def _timestamp(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def usage_invoices(invoices: Iterable[Invoice]) -> list[Invoice]:
    """The invoices that can bill Azure usage: invoices (not credit or void notes), modern
    commerce ones (``G…``) when there are any."""
    billable = [
        invoice
        for invoice in invoices
        if invoice.document_type.replace(" ", "").replace("_", "").lower() == "invoice"
    ]
    modern = [invoice for invoice in billable if invoice.id.upper().startswith("G")]
    return modern or billable


def latest(invoices: Iterable[Invoice]) -> list[Invoice]:
    """The invoices of the latest billing month (one per currency, usually)."""
    candidates = [i for i in usage_invoices(invoices) if i.billing_month]
    if not candidates:
        return []
    month = max(i.billing_month for i in candidates if i.billing_month)
    return of_month(candidates, month)


def of_month(invoices: Iterable[Invoice], month: str) -> list[Invoice]:
    return sorted(
        (i for i in usage_invoices(invoices) if i.billing_month == month),
        key=lambda i: (i.currency or "", i.id),
    )


def currencies(invoices: Iterable[Invoice]) -> list[str]:
    """The currencies of the partner's invoices of its last `CURRENCY_MONTHS` billing months
    (counted back from its latest invoice, not from the clock)."""
    dated = [i for i in usage_invoices(invoices) if i.currency and i.billing_month]
    if not dated:
        return []
    newest = max(i.billing_month for i in dated if i.billing_month)
    year, month = (int(part) for part in newest.split("-"))
    first = date(year, month, 1)
    for _ in range(CURRENCY_MONTHS - 1):
        first = (first - timedelta(days=1)).replace(day=1)
    since = f"{first.year:04d}-{first.month:02d}"
    return sorted({i.currency for i in dated if i.currency and (i.billing_month or "") >= since})


__all__ = ["Invoice", "currencies", "latest", "list_invoices", "of_month", "usage_invoices"]
