"""``halo-integrator pricing ...``: import the price sheet now, list the price changes, list
the subscriptions no price-sheet row prices.

Added by the plugin's `register_commands` hook, so present only while the module is
enabled. The import is the module's ordinary run (`halo_integrator_core.pricing`), the one
the daemon runs on its schedule; the lists read the store only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from halo_integrator_core.config import ConfigError
from halo_integrator_core.pricing import (
    TIMELINES,
    PriceChange,
    import_prices,
    list_changes,
    renewal_day,
)
from halo_integrator_core.pricing.subscriptions import load_subscriptions
from halo_integrator_core.store import Store, StoreError
from halo_integrator_core.sync.engine import SyncEngine, SyncError

from .settings import SubscriptionPricingSettings

MODULE = "subscription_pricing"
EXIT_FAILED = 1
EXIT_USAGE = 2
#: `pricing changes` lists the changes in force since this long ago, by default.
DEFAULT_SINCE = timedelta(days=30)


@click.group("pricing")
def pricing() -> None:
    """Subscription prices from Microsoft's price sheet (guide 5.2): import them now, list
    what changed or will, and what has no price."""


def _cli() -> Any:
    from halo_integrator_core import cli

    return cli


@pricing.command("import")
@click.option(
    "--market",
    type=click.Choice(["GB", "US"], case_sensitive=False),
    help="The marketplace whose prices to import (default: [integrator] marketplace).",
)
@click.option(
    "--timeline",
    type=click.Choice(TIMELINES),
    help="Only this price sheet: current (prices in force) or future (planned changes). "
    "Default: current, then future unless future_prices = false.",
)
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.pass_obj
def import_command(app: Any, market: str | None, timeline: str | None, dry_run: bool) -> None:
    """Download the price sheet and price each subscription now (what the daemon does on
    the module's schedule)."""
    cli = _cli()
    config = app.config()
    host = app.host()
    store = app.store()
    try:
        engine = SyncEngine(store, config, host, reporter=cli.TerminalReporter(dry_run=dry_run))
        active = engine.modules[MODULE]
        with store.dry_run() if dry_run else contextlib.nullcontext():
            result = import_prices(
                engine,
                active,
                market=market,
                timelines=[timeline] if timeline else None,
                dry_run=dry_run,
            )
    except ConfigError as exc:
        cli.fail_config(exc)
    except SyncError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        store.close()
    cli.print_summary(result)
    unmatched = sum(
        1 for p in result.problems if p.kind == "subscriptions" and p.outcome == "skipped"
    )
    if unmatched:
        click.echo(
            f"{unmatched} subscription{'s' if unmatched != 1 else ''} without a price: "
            "`halo-integrator pricing unmatched` lists them with the reason"
        )
    if result.failed:
        sys.exit(EXIT_FAILED)


def _open_store(app: Any) -> Store | None:
    config = app.config()
    try:
        store = Store.open_existing(config.store_url)
    except StoreError as exc:
        click.echo(f"error: {exc}\nfix: check [store] url in {config.source}", err=True)
        sys.exit(EXIT_USAGE)
    if store is not None:
        store.migrate()
    return store


@pricing.command("changes")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="List the changes in force since this day (default: the last 30 days); planned "
    "changes are always listed.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.pass_obj
def changes_command(app: Any, since: datetime | None, fmt: str) -> None:
    """Subscriptions whose cost price changed or will change: old and new price, from when,
    and the difference a month at the subscription's quantity today."""
    when = since.replace(tzinfo=UTC) if since is not None else datetime.now(UTC) - DEFAULT_SINCE
    store = _open_store(app)
    if store is None:
        click.echo("no price changes: nothing has been imported yet")
        return
    try:
        with store.read() as connection:
            found = list_changes(
                connection, since=when, module=SubscriptionPricingSettings.subscriptions_module
            )
    finally:
        store.close()
    rows = [_change_row(change) for change in found]
    if fmt != "table":
        _write(rows, fmt, CHANGE_FIELDS)
        return
    if not rows:
        click.echo(
            f"no price changes since {when:%Y-%m-%d}, and none planned "
            "(`halo-integrator pricing import` reads the current and future price sheets)"
        )
        return
    _table(
        ["effective", "status", "customer", "subscription", "qty", "old", "new", "a month"],
        [
            [
                row["effective"],
                row["status"],
                row["customer"],
                row["subscription"],
                str(row["quantity"]),
                _money(row["old_price"], row["old_currency"]),
                _money(row["new_price"], row["currency"]),
                _signed(row["monthly_difference"], row["currency"]),
            ]
            for row in rows
        ],
    )


CHANGE_FIELDS = [
    "effective",
    "status",
    "customer",
    "tenant_id",
    "subscription_id",
    "subscription",
    "quantity",
    "term_duration",
    "billing_cycle",
    "old_price",
    "old_currency",
    "new_price",
    "currency",
    "monthly_difference",
    "new_sell_price",
    "renews_on",
]


def _change_row(change: PriceChange) -> dict[str, Any]:
    return {
        "effective": f"{change.effective_at:%Y-%m-%d}",
        "status": change.status,
        "customer": change.customer,
        "tenant_id": change.tenant_id,
        "subscription_id": change.subscription_id,
        "subscription": change.subscription,
        "quantity": change.quantity,
        "term_duration": change.term_duration,
        "billing_cycle": change.billing_cycle,
        "old_price": _text(change.old_cost),
        "old_currency": change.old_currency,
        "new_price": _text(change.new_cost),
        "currency": change.currency,
        "monthly_difference": _text(change.monthly_difference),
        "new_sell_price": _text(change.new_sell_price),
        "renews_on": (
            f"{renewal_day(change.commitment_end):%Y-%m-%d}" if change.commitment_end else None
        ),
    }


@pricing.command("unmatched")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.pass_obj
def unmatched_command(app: Any, fmt: str) -> None:
    """Subscriptions the last import found no price for, and why (a price they had before
    is kept)."""
    store = _open_store(app)
    if store is None:
        click.echo("nothing has been imported yet")
        return
    try:
        with store.read() as connection:
            found = [
                sub
                for sub in load_subscriptions(
                    connection, SubscriptionPricingSettings.subscriptions_module
                )
                if sub.price_note
            ]
    finally:
        store.close()
    rows = [
        {
            "customer": sub.customer,
            "tenant_id": sub.tenant_id,
            "subscription_id": sub.external_id,
            "subscription": sub.name,
            "offer_id": sub.offer_id,
            "term_duration": sub.term_duration,
            "billing_cycle": sub.billing_cycle,
            "quantity": sub.quantity,
            "cost_price": _text(sub.cost_price),
            "currency": sub.currency,
            "reason": sub.price_note,
        }
        for sub in found
    ]
    if fmt != "table":
        _write(rows, fmt, UNMATCHED_FIELDS)
        return
    if not rows:
        click.echo("every subscription has a price (as of the last import)")
        return
    for row in rows:
        kept = f" (keeps {_money(row['cost_price'], row['currency'])})" if row["cost_price"] else ""
        click.echo(
            f"{row['customer']} / {row['subscription']} ({row['subscription_id']}){kept}: "
            f"{row['reason']}"
        )


UNMATCHED_FIELDS = [
    "customer",
    "tenant_id",
    "subscription_id",
    "subscription",
    "offer_id",
    "term_duration",
    "billing_cycle",
    "quantity",
    "cost_price",
    "currency",
    "reason",
]


# -- output ---------------------------------------------------------------------------------


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _money(text: str | None, currency: str | None) -> str:
    if text is None:
        return "—"
    amount = Decimal(text).normalize()  # the sheet's precision, never below the penny
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]
        amount = amount.quantize(Decimal("0.01"))
    return f"{amount} {currency or ''}".strip()


def _signed(text: str | None, currency: str | None) -> str:
    if text is None:
        return "—"
    amount = Decimal(text)
    return f"{'+' if amount > 0 else ''}{_money(text, currency)}"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _write(rows: Iterable[dict[str, Any]], fmt: str, fields: list[str]) -> None:
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    for row in rows:
        click.echo(json.dumps(row, ensure_ascii=False))
