"""Consumption billing, the core's part: usage rows into recurring-invoice lines.

A billing module's plugin fetches usage and translates it into `UsageLine` records
(``fetch_usage``); the core does the rest, as it does for a sync: it maps each row to a
customer through its tenant's mapping, groups rows into lines, prices them with decimal
arithmetic, and writes the lines so that importing a period again updates them, an
invoice supersedes its month's estimate, and a closed month stays as it was.

- `rules`: the settings every billing module shares (grouping, markups, rounding, periods).
- `money`: costs and prices, rounded to the currency's minor unit.
- `grouping`: rows into lines as they stream past.
- `periods`: what ``current``, ``last``, ``latest``, ``YYYY-MM`` mean; closed months.
- `importer`: the run (`BillingRunner`).
- `report`: per-customer totals of a month.
"""

from .importer import (
    NO_DATA,
    UNBILLED,
    BillingError,
    BillingResult,
    BillingRunner,
    ImportSummary,
    billing_modules,
    import_usage,
)
from .periods import PeriodError, close_month, closed_reason, period_request, reopen_month
from .report import billing_report, report_periods
from .rules import (
    Amount,
    BillingSettings,
    CurrencyCode,
    DescriptionTemplate,
    GroupBy,
    MarkupRule,
    Percent,
    Rounding,
    ScheduledPeriod,
)

__all__ = [
    "NO_DATA",
    "UNBILLED",
    "Amount",
    "BillingError",
    "BillingResult",
    "BillingRunner",
    "BillingSettings",
    "CurrencyCode",
    "DescriptionTemplate",
    "GroupBy",
    "ImportSummary",
    "MarkupRule",
    "Percent",
    "PeriodError",
    "Rounding",
    "ScheduledPeriod",
    "billing_modules",
    "billing_report",
    "close_month",
    "closed_reason",
    "import_usage",
    "period_request",
    "reopen_month",
    "report_periods",
]
