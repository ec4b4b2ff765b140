"""Billing months: what a period asked for means, and which months are closed.

A billing month is written ``YYYY-MM``. An import asks for ``current`` or ``last`` (the
unbilled usage of this or last month), ``latest`` (the usage on the latest invoice), a month
(``YYYY-MM``: this month's unbilled usage, or an earlier month's invoiced usage) or an
invoice ID.

A closed month is one the MSP has invoiced its customers for: its lines are not changed by
an import without ``--force``. A month is closed by `billing close`, or by itself
``close_after_days`` after it ends when that setting is on.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import schema, utcnow

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
INVOICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,39}$")
KEYWORDS = ("current", "last", "latest")


class PeriodError(ValueError):
    """A period or invoice the command line cannot mean; the message says what would do."""


def month_of(moment: datetime | date) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def first_day(month: str) -> date:
    year, number = (int(part) for part in month.split("-"))
    return date(year, number, 1)


def next_month(month: str) -> str:
    return month_of(first_day(month) + timedelta(days=32))


def previous_month(month: str) -> str:
    return month_of(first_day(month) - timedelta(days=1))


@attrs.frozen
class PeriodRequest:
    """One period an import asks the billing module for."""

    #: What the module's ``fetch_usage`` is called with.
    period: str
    #: The billing month it is known to be, before any row arrives (``None`` for invoices).
    month: str | None
    #: Whether it asks for unbilled usage (an estimate).
    unbilled: bool

    def describe(self) -> str:
        if self.period in ("current", "last"):
            return f"the unbilled usage of {self.month} ({self.period} period)"
        if self.period == "latest":
            return "the usage billed on the latest invoice"
        if self.month:
            return f"the usage of {self.month}"
        return f"the usage billed on invoice {self.period}"


def period_request(value: str, now: datetime | None = None) -> PeriodRequest:
    """What ``value`` (a keyword, ``YYYY-MM`` or an invoice ID) asks for, as of ``now``."""
    now = now or utcnow()
    this_month = month_of(now.astimezone(UTC))
    text = value.strip()
    lowered = text.lower()
    if lowered == "current":
        return PeriodRequest("current", this_month, True)
    if lowered == "last":
        return PeriodRequest("last", previous_month(this_month), True)
    if lowered == "latest":
        return PeriodRequest("latest", None, False)
    if MONTH.match(text):
        if text > this_month:
            raise PeriodError(f"{text} has not started yet (this month is {this_month})")
        if text == this_month:
            return PeriodRequest("current", this_month, True)
        # Last month or earlier: invoiced usage if the invoice exists (the module falls back
        # to last month's unbilled usage until it does).
        return PeriodRequest(text, text, False)
    if INVOICE_ID.match(text) and not re.match(r"^\d{4}-\d{1,2}$", text):
        return PeriodRequest(text, None, False)
    raise PeriodError(
        f"{value!r}: give current, last, latest, a month as YYYY-MM, or an invoice ID"
    )


# --- closed months ------------------------------------------------------------------------


def closed_reason(
    connection: Connection, module: str, month: str, close_after_days: int, now: datetime
) -> str | None:
    """Why ``month`` is closed for ``module``, or ``None`` while it is open."""
    table = schema.billing_periods
    row = connection.execute(
        sa.select(table).where(table.c.module == module, table.c.period == month)
    ).one_or_none()
    if row is not None and row.closed_at is not None:
        by = f" by {row.closed_by}" if row.closed_by else ""
        note = f" ({row.note})" if row.note else ""
        return f"closed on {row.closed_at:%Y-%m-%d %H:%M} UTC{by}{note}"
    if row is not None and row.reopened_at is not None:
        return None  # reopened by hand: the automatic closing no longer applies
    if close_after_days > 0:
        closes = datetime.combine(
            first_day(next_month(month)) + timedelta(days=close_after_days),
            datetime.min.time(),
            tzinfo=UTC,
        )
        if now >= closes:
            return (
                f"closed automatically on {closes:%Y-%m-%d} (close_after_days = {close_after_days})"
            )
    return None


def close_month(
    connection: Connection, module: str, month: str, *, by: str, note: str | None = None
) -> bool:
    """Close ``month``; whether it was open."""
    return _set_closed(connection, module, month, closed=True, by=by, note=note)


def reopen_month(connection: Connection, module: str, month: str, *, by: str) -> bool:
    """Reopen ``month``; whether it was closed by `close_month`."""
    return _set_closed(connection, module, month, closed=False, by=by, note=None)


def _set_closed(
    connection: Connection, module: str, month: str, *, closed: bool, by: str, note: str | None
) -> bool:
    table = schema.billing_periods
    now = utcnow()
    where = (table.c.module == module, table.c.period == month)
    row = connection.execute(sa.select(table).where(*where)).one_or_none()
    was_closed = row is not None and row.closed_at is not None
    values = (
        {"closed_at": now, "closed_by": by, "note": note, "reopened_at": None}
        if closed
        else {"closed_at": None, "closed_by": None, "note": None, "reopened_at": now}
    )
    if row is None:
        connection.execute(sa.insert(table).values(module=module, period=month, **values))
    elif was_closed != closed:
        connection.execute(sa.update(table).where(*where).values(**values))
    return was_closed != closed


__all__ = [
    "KEYWORDS",
    "MONTH",
    "PeriodError",
    "PeriodRequest",
    "close_month",
    "closed_reason",
    "first_day",
    "month_of",
    "next_month",
    "period_request",
    "previous_month",
    "reopen_month",
]
