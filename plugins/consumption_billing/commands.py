"""``halo-integrator billing ...``: import usage into invoice lines, report a month, close and
reopen months.

Added by the plugin's `register_commands` hook, so present while the ``consumption_billing``
module is enabled. The work is the core's (`halo_integrator_core.billing`): these commands
parse the command line, run it and print what came of it. Exit 2 when the command line or
the configuration is wrong, 1 when an import had failures.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click
import sqlalchemy as sa

from halo_integrator_core.billing import (
    BillingError,
    BillingResult,
    BillingRunner,
    PeriodError,
    billing_report,
    close_month,
    closed_reason,
    period_request,
    reopen_month,
    report_periods,
)
from halo_integrator_core.billing.importer import module_settings
from halo_integrator_core.billing.money import round_money
from halo_integrator_core.billing.periods import MONTH, month_of
from halo_integrator_core.billing.report import as_csv, as_json, as_table
from halo_integrator_core.config import ConfigError
from halo_integrator_core.store import Store, StoreError, schema, utcnow

MODULE = "consumption_billing"
EXIT_FAILED = 1
EXIT_USAGE = 2


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _config_failed(exc: ConfigError) -> NoReturn:
    where = f"{exc.source}: " if exc.source else ""
    click.echo(f"{where}{len(exc.problems)} configuration problem(s)", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)
    sys.exit(EXIT_USAGE)


def _app() -> Any:
    return click.get_current_context().obj


def _existing_store(app: Any) -> Store | None:
    try:
        store = Store.open_existing(app.config().store_url)
    except StoreError as exc:
        _usage(f"{exc}; check [store] url in {app.config_path}")
    if store is not None:
        store.migrate()
    return store


def _settings(app: Any, module: str) -> Any:
    try:
        modules = app.host().active_modules()
    except ConfigError as exc:
        _config_failed(exc)
    active = modules.get(module)
    if active is None:
        _usage(
            f"module {module!r} is not enabled (enabled modules: {', '.join(sorted(modules)) or 'none'})"
        )
    return module_settings(active)


module_option = click.option(
    "--module",
    default=MODULE,
    show_default=True,
    help="The billing module (another plugin may provide one).",
)


@click.group("billing")
def billing() -> None:
    """Consumption billing (guide 11): Azure usage into recurring-invoice lines."""


@billing.command("import")
@click.option(
    "--period",
    metavar="current|last|YYYY-MM",
    help="The billing month: this month's or last month's unbilled usage (an estimate), or a "
    "month's invoiced usage. Default: the module's `periods`.",
)
@click.option(
    "--invoice",
    metavar="ID|latest",
    help="The usage billed on this invoice, or on the latest invoice(s).",
)
@click.option("--force", is_flag=True, help="Change the lines of a closed month too.")
@click.option("--dry-run", is_flag=True, help="Compute and print the changes; write nothing.")
@module_option
def import_command(
    period: str | None, invoice: str | None, force: bool, dry_run: bool, module: str
) -> None:
    """Import usage into invoice lines (the same run the daemon makes on its schedule)."""
    if period and invoice:
        raise click.UsageError("give --period or --invoice, not both")
    if period and not (period.lower() in ("current", "last") or MONTH.match(period)):
        raise click.UsageError(f"--period {period!r}: give current, last or a month as YYYY-MM")
    wanted = [period] if period else [invoice] if invoice else None
    if wanted:
        try:
            period_request(wanted[0], utcnow())
        except PeriodError as exc:
            raise click.UsageError(f"{'--period' if period else '--invoice'} {exc}") from None
    app = _app()
    config = app.config()
    host = app.host()
    store = app.store()
    try:
        runner = BillingRunner(store, config, host)
        results = runner.run(module, periods=wanted, force=force, dry_run=dry_run)
    except ConfigError as exc:
        _config_failed(exc)
    except BillingError as exc:
        _usage(str(exc))
    finally:
        store.close()
    for result in results:
        _print_result(result)
    if any(result.failed for result in results):
        sys.exit(EXIT_FAILED)


def _print_result(result: BillingResult) -> None:
    title = f"{result.module}: {result.outcome}" + (
        " (dry run: nothing written)" if result.dry_run else ""
    )
    click.echo(title)
    if result.error:
        click.echo(f"  error: {result.error}")
    if result.note:
        click.echo(f"  note: {result.note}")
    headers = ["asked", "month", "source", "currency", "outcome", "rows", "cost", "unmatched",
               "lines", "added", "updated", "unchanged", "removed", "superseded"]  # fmt: skip
    rows = []
    for item in result.imports:
        currency = item.currency or ""
        rows.append(
            [
                item.requested,
                item.period or "",
                item.source or "",
                currency,
                item.outcome,
                str(item.rows),
                _amount(item.cost, currency),
                f"{_amount(item.unmatched_cost, currency)} ({item.unmatched_rows} rows)"
                if item.unmatched_rows
                else "",
                str(item.lines),
                *(
                    str(n)
                    for n in (
                        item.added,
                        item.updated,
                        item.unchanged,
                        item.removed,
                        item.superseded,
                    )
                ),
            ]
        )
    if rows:
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            click.echo(
                "  "
                + "  ".join(
                    cell.rjust(width) if index >= 5 else cell.ljust(width)
                    for index, (cell, width) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
    for item in result.imports:
        if item.outcome != "imported" and item.detail:
            what = " ".join(filter(None, (item.period, item.source, item.currency)))
            click.echo(f"  {item.outcome}: {what or item.requested}: {item.detail}")
    for change in result.changes:
        verb = {"added": "add", "updated": "update", "deactivated": "retire"}[change.action]
        fields = f" ({', '.join(change.fields)})" if change.fields else ""
        click.echo(f"  would {verb} invoice line {change.entity_id} of {change.tenant_id}{fields}")
    for problem in result.problems[:20]:
        where = f" {problem.entity_id}" if problem.entity_id else ""
        tenant = f" tenant {problem.tenant_id}" if problem.tenant_id else ""
        click.echo(f"  {problem.outcome}: {problem.kind}{tenant}{where}: {problem.reason}")
    if result.problem_total > 20:
        click.echo(
            f"  … and {result.problem_total - 20} more (`halo-integrator export --what runs`, and the log)"
        )


def _amount(amount: Any, currency: str) -> str:
    if not currency:
        return "" if not amount else f"{amount:f}"
    return f"{round_money(amount, currency):,f}"


@billing.command("report")
@click.option(
    "--period",
    metavar="current|last|YYYY-MM",
    help="The billing month (default: the newest month imported).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@module_option
def report_command(period: str | None, fmt: str, module: str) -> None:
    """Per customer: cost, price, margin and lines of a month; and the usage no tenant
    mapping claims."""
    app = _app()
    settings = _settings(app, module)
    now = utcnow()
    month = _month(period, now) if period else None
    store = _existing_store(app)
    if store is None:
        click.echo("nothing imported yet: run `halo-integrator billing import`", err=True)
        return
    try:
        with store.read() as connection:
            if month is None:
                months = report_periods(connection, module)
                if not months:
                    click.echo(
                        "nothing imported yet: run `halo-integrator billing import`", err=True
                    )
                    return
                month = months[0]
            report = billing_report(
                connection, module, month, close_after_days=settings.close_after_days, now=now
            )
    finally:
        store.close()
    render = {"table": as_table, "csv": as_csv, "json": as_json}[fmt]
    click.echo(render(report), nl=fmt == "json")


def _month(value: str, now: Any) -> str:
    try:
        request = period_request(value, now)
    except PeriodError as exc:
        raise click.UsageError(f"--period {exc}") from None
    if request.month is None:
        raise click.UsageError(f"--period {value!r} is not a month: give current, last or YYYY-MM")
    return request.month


@billing.command("periods")
@module_option
def periods_command(module: str) -> None:
    """The months imported: open or closed, and their lines in force per currency."""
    app = _app()
    settings = _settings(app, module)
    store = _existing_store(app)
    if store is None:
        click.echo("nothing imported yet: run `halo-integrator billing import`")
        return
    now = utcnow()
    lines = schema.invoice_lines
    try:
        with store.read() as connection:
            months = report_periods(connection, module)
            if not months:
                click.echo("nothing imported yet: run `halo-integrator billing import`")
                return
            rows = []
            for month in months:
                closed = closed_reason(connection, module, month, settings.close_after_days, now)
                totals: dict[str, list[Any]] = {}
                for line in connection.execute(
                    sa.select(lines.c.currency, lines.c.status, lines.c.cost, lines.c.price).where(
                        lines.c.module == module, lines.c.period == month, lines.c.active.is_(True)
                    )
                ):
                    total = totals.setdefault(line.currency, [0, set(), 0, 0])
                    total[0] += 1
                    total[1].add(line.status)
                    total[2] += line.cost
                    total[3] += line.price
                state = "closed" if closed else "open"
                if not totals:
                    rows.append([month, state, "", "0", "", "", ""])
                for currency, (count, statuses, cost, price) in sorted(totals.items()):
                    rows.append(
                        [
                            month,
                            state,
                            currency,
                            str(count),
                            "/".join(sorted(statuses)),
                            f"{round_money(cost, currency):,f}",
                            f"{round_money(price, currency):,f}",
                        ]
                    )
    finally:
        store.close()
    headers = ["month", "state", "currency", "lines", "status", "cost", "price"]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        click.echo(
            "  ".join(
                cell.rjust(width) if index in (3, 5, 6) else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


@billing.command("close")
@click.argument("period", metavar="YYYY-MM")
@click.option("--note", help="Why, or the PSA invoice run it went into (kept with the month).")
@module_option
def close_command(period: str, note: str | None, module: str) -> None:
    """Close a billing month: imports leave its lines as they are (unless --force)."""
    month = _ended_month(period)
    _settings(app := _app(), module)
    store = app.store()
    try:
        with store.unit() as connection:
            changed = close_month(connection, module, month, by="billing close", note=note)
    finally:
        store.close()
    click.echo(f"{module}: {month} {'closed' if changed else 'was closed already'}")


@billing.command("reopen")
@click.argument("period", metavar="YYYY-MM")
@module_option
def reopen_command(period: str, module: str) -> None:
    """Reopen a closed billing month, so that imports update its lines again."""
    month = _ended_month(period)
    settings = _settings(app := _app(), module)
    store = app.store()
    now = utcnow()
    try:
        with store.unit() as connection:
            was = closed_reason(connection, module, month, settings.close_after_days, now)
            if was:
                reopen_month(connection, module, month, by="billing reopen")
    finally:
        store.close()
    click.echo(f"{module}: {month} {'reopened (it was ' + was + ')' if was else 'was open'}")


def _ended_month(value: str) -> str:
    if not MONTH.match(value):
        raise click.UsageError(f"{value!r}: give the month as YYYY-MM")
    if value >= month_of(utcnow()):
        raise click.UsageError(f"{value} has not ended yet: only a past month can be closed")
    return value


__all__ = ["billing"]
