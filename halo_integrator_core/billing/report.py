"""The billing report of a month: per customer, what the lines in force cost and charge.

For each customer (and currency): the number of lines in force (estimates, or the invoice's
lines once imported), their cost, their price and the margin between; then the usage no
tenant mapping claims, per tenant, from the imports those lines came from, and the totals
per currency. Sums are decimal, done here (a database would sum SQLite's text as floats).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import schema
from .importer import UNBILLED
from .money import round_money
from .periods import closed_reason


@attrs.frozen
class CustomerTotal:
    customer: str
    currency: str
    lines: int
    cost: Decimal
    price: Decimal
    #: Where the lines came from: invoice IDs, or "unbilled".
    sources: tuple[str, ...]

    @property
    def margin(self) -> Decimal:
        return self.price - self.cost


@attrs.frozen
class UnmatchedTotal:
    tenant_id: str
    customer_name: str | None
    reason: str
    currency: str
    source: str
    usage_rows: int
    cost: Decimal


@attrs.frozen
class ImportOutcome:
    """The latest import of the month that did not bring lines (no data, closed, ...)."""

    requested: str
    outcome: str
    detail: str | None
    at: datetime


@attrs.frozen
class BillingReport:
    module: str
    period: str
    closed: str | None
    customers: tuple[CustomerTotal, ...]
    unmatched: tuple[UnmatchedTotal, ...]
    notes: tuple[ImportOutcome, ...] = ()

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per currency: lines, cost, price, margin and the unmatched usage's cost."""
        totals: dict[str, dict[str, Any]] = {}
        for row in self.customers:
            total = totals.setdefault(row.currency, _empty_total())
            total["customers"] += 1
            total["lines"] += row.lines
            total["cost"] += row.cost
            total["price"] += row.price
        for row in self.unmatched:
            total = totals.setdefault(row.currency, _empty_total())
            total["unmatched_rows"] += row.usage_rows
            total["unmatched_cost"] += row.cost
        for total in totals.values():
            total["margin"] = total["price"] - total["cost"]
        return dict(sorted(totals.items()))


def _empty_total() -> dict[str, Any]:
    return {
        "customers": 0,
        "lines": 0,
        "cost": Decimal(0),
        "price": Decimal(0),
        "unmatched_rows": 0,
        "unmatched_cost": Decimal(0),
    }


def report_periods(connection: Connection, module: str) -> list[str]:
    """The months with lines or imports, newest first."""
    lines, imports = schema.invoice_lines, schema.billing_imports
    found = set(
        connection.execute(
            sa.select(lines.c.period).where(lines.c.module == module).distinct()
        ).scalars()
    ) | {
        period
        for period in connection.execute(
            sa.select(imports.c.period).where(imports.c.module == module).distinct()
        ).scalars()
        if period
    }
    return sorted(found, reverse=True)


def billing_report(
    connection: Connection,
    module: str,
    period: str,
    *,
    close_after_days: int = 0,
    now: datetime,
) -> BillingReport:
    lines, customers = schema.invoice_lines, schema.customers
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in connection.execute(
        sa.select(
            customers.c.name,
            lines.c.currency,
            lines.c.source,
            lines.c.cost,
            lines.c.price,
        )
        .select_from(lines.join(customers, customers.c.id == lines.c.customer_id))
        .where(lines.c.module == module, lines.c.period == period, lines.c.active.is_(True))
    ):
        total = totals.setdefault(
            (row.name, row.currency),
            {"lines": 0, "cost": Decimal(0), "price": Decimal(0), "sources": set()},
        )
        total["lines"] += 1
        total["cost"] += row.cost
        total["price"] += row.price
        total["sources"].add(row.source)
    customer_totals = tuple(
        CustomerTotal(
            customer=name,
            currency=currency,
            lines=t["lines"],
            cost=t["cost"],
            price=t["price"],
            sources=tuple(sorted(t["sources"])),
        )
        for (name, currency), t in sorted(
            totals.items(), key=lambda i: (i[0][0].casefold(), i[0][1])
        )
    )
    return BillingReport(
        module=module,
        period=period,
        closed=closed_reason(connection, module, period, close_after_days, now),
        customers=customer_totals,
        unmatched=tuple(_unmatched(connection, module, period)),
        notes=tuple(_notes(connection, module, period)),
    )


def _unmatched(connection: Connection, module: str, period: str) -> Iterable[UnmatchedTotal]:
    """Unmatched usage of the imports whose lines are in force: per currency, the latest
    import of each invoice once the month is billed in it, else the latest estimate."""
    imports, unmatched = schema.billing_imports, schema.billing_unmatched
    latest: dict[tuple[str, str], int] = {}
    for row in connection.execute(
        sa.select(imports.c.id, imports.c.source, imports.c.currency)
        .where(
            imports.c.module == module,
            imports.c.period == period,
            imports.c.outcome == "imported",
        )
        .order_by(imports.c.id)
    ):
        latest[(row.currency, row.source)] = row.id
    chosen: list[int] = []
    for currency in sorted({currency for currency, _ in latest}):
        billed = [i for (c, s), i in latest.items() if c == currency and s != UNBILLED]
        chosen += billed or [i for (c, s), i in latest.items() if c == currency and s == UNBILLED]
    if not chosen:
        return
    for row in connection.execute(
        sa.select(unmatched, imports.c.currency, imports.c.source)
        .join(imports, imports.c.id == unmatched.c.import_id)
        .where(unmatched.c.import_id.in_(chosen))
        .order_by(imports.c.currency, unmatched.c.tenant_id)
    ):
        yield UnmatchedTotal(
            tenant_id=row.tenant_id,
            customer_name=row.customer_name,
            reason=row.reason,
            currency=row.currency,
            source=row.source,
            usage_rows=row.usage_rows,
            cost=row.cost,
        )


def _notes(connection: Connection, module: str, period: str) -> Iterable[ImportOutcome]:
    """The month's latest import, when it could not bring its lines (no data, failed)."""
    imports = schema.billing_imports
    row = connection.execute(
        sa.select(imports)
        .where(imports.c.module == module, imports.c.period == period)
        .order_by(imports.c.id.desc())
        .limit(1)
    ).one_or_none()
    if row is not None and row.outcome in ("no_data", "failed", "incomplete"):
        yield ImportOutcome(row.requested, row.outcome, row.detail, row.at)


# --- rendering -----------------------------------------------------------------------------


def as_json(report: BillingReport) -> str:
    return json.dumps(as_data(report), ensure_ascii=False, indent=2)


def as_data(report: BillingReport) -> dict[str, Any]:
    """The report as JSON-ready data; amounts as exact decimal strings."""
    return {
        "module": report.module,
        "period": report.period,
        "closed": report.closed,
        "customers": [
            {
                "customer": row.customer,
                "currency": row.currency,
                "lines": row.lines,
                "cost": _text(row.cost),
                "price": _text(row.price),
                "margin": _text(row.margin),
                "sources": list(row.sources),
            }
            for row in report.customers
        ],
        "unmatched": [
            {
                "tenant_id": row.tenant_id,
                "customer_name": row.customer_name,
                "reason": row.reason,
                "currency": row.currency,
                "source": row.source,
                "usage_rows": row.usage_rows,
                "cost": _text(row.cost),
            }
            for row in report.unmatched
        ],
        "totals": {
            currency: {
                key: _text(value) if isinstance(value, Decimal) else value
                for key, value in total.items()
            }
            for currency, total in report.totals().items()
        },
        "notes": [
            {
                "requested": n.requested,
                "outcome": n.outcome,
                "detail": n.detail,
                "at": n.at.isoformat(),
            }
            for n in report.notes
        ],
    }


CSV_FIELDS = (
    "row",
    "customer",
    "tenant_id",
    "currency",
    "lines",
    "usage_rows",
    "cost",
    "price",
    "margin",
    "sources",
    "reason",
)


def as_csv(report: BillingReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report.customers:
        writer.writerow(
            {
                "row": "customer",
                "customer": row.customer,
                "currency": row.currency,
                "lines": row.lines,
                "cost": _text(row.cost),
                "price": _text(row.price),
                "margin": _text(row.margin),
                "sources": " ".join(row.sources),
            }
        )
    for row in report.unmatched:
        writer.writerow(
            {
                "row": "unmatched",
                "customer": row.customer_name or "",
                "tenant_id": row.tenant_id,
                "currency": row.currency,
                "usage_rows": row.usage_rows,
                "cost": _text(row.cost),
                "sources": row.source,
                "reason": row.reason,
            }
        )
    for currency, total in report.totals().items():
        writer.writerow(
            {
                "row": "total",
                "currency": currency,
                "lines": total["lines"],
                "usage_rows": total["unmatched_rows"],
                "cost": _text(total["cost"]),
                "price": _text(total["price"]),
                "margin": _text(total["margin"]),
                "reason": f"unmatched {_text(total['unmatched_cost'])}",
            }
        )
    return out.getvalue()


def as_table(report: BillingReport) -> str:
    state = f"closed: {report.closed}" if report.closed else "open"
    out = [f"{report.module} — {report.period} ({state})"]
    if not report.customers and not report.unmatched:
        out.append("  no invoice lines for this month")
    headers = ["customer", "currency", "lines", "cost", "price", "margin", "source"]
    rows = [
        [
            row.customer,
            row.currency,
            str(row.lines),
            _money(row.cost, row.currency),
            _money(row.price, row.currency),
            _money(row.margin, row.currency),
            ", ".join(row.sources),
        ]
        for row in report.customers
    ]
    totals = report.totals()
    for currency, total in totals.items():
        if total["customers"]:
            rows.append(
                [
                    "total",
                    currency,
                    str(total["lines"]),
                    _money(total["cost"], currency),
                    _money(total["price"], currency),
                    _money(total["margin"], currency),
                    "",
                ]
            )
    if rows:
        out += _aligned([headers, *rows], numeric={2, 3, 4, 5})
    if report.unmatched:
        out.append("usage no tenant mapping claims (not billed):")
        unmatched_rows = [
            [
                row.tenant_id,
                row.customer_name or "",
                row.currency,
                str(row.usage_rows),
                _money(row.cost, row.currency),
                "do not import" if row.reason == "do_not_import" else "no tenant mapping",
            ]
            for row in report.unmatched
        ]
        for currency, total in totals.items():
            if total["unmatched_rows"]:
                unmatched_rows.append(
                    [
                        "unmatched total",
                        "",
                        currency,
                        str(total["unmatched_rows"]),
                        _money(total["unmatched_cost"], currency),
                        "",
                    ]
                )
        out += _aligned(
            [["tenant", "name", "currency", "rows", "cost", "why"], *unmatched_rows],
            numeric={3, 4},
        )
    for note in report.notes:
        out.append(
            f"note: the last import ({note.requested}) was {note.outcome}: {note.detail or ''}".rstrip(
                ": "
            )
        )
    return "\n".join(out) + "\n"


def _aligned(rows: list[list[str]], numeric: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _money(amount: Decimal, currency: str) -> str:
    return f"{round_money(amount, currency):,f}"


def _text(amount: Decimal) -> str:
    """An exact amount without trailing zeros beyond the cent (12.500000 → 12.50)."""
    if amount == 0:
        return "0.00"
    whole, _, fraction = f"{amount.normalize():f}".partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


__all__ = [
    "BillingReport",
    "CustomerTotal",
    "UnmatchedTotal",
    "as_csv",
    "as_data",
    "as_json",
    "as_table",
    "billing_report",
    "report_periods",
]
