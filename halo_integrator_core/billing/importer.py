"""Importing usage into invoice lines: map, group, price, write, supersede.

One run of a billing module asks its plugin's ``fetch_usage`` for each period in turn (the
module's scheduled ``periods``, or what the command line names). Rows stream through the
`Aggregator`: each is matched to a customer through its tenant's mapping (rows of tenants no
mapping claims, or mapped *do not import*, are counted per tenant and reported, never
billed), priced with its customer's and meter category's markup, and added to its line.
Nothing is written until the period's stream has ended complete; then each billing month,
source and currency it held (a *batch*) is written in one transaction:

* a line is keyed by (module, customer, month, source, currency, group key), so importing a
  period again updates its lines in place and never duplicates them; lines of the batch the
  new import no longer has are marked ``removed``;
* lines of an invoice supersede the estimate lines (source ``unbilled``) of their month and
  currency, which stay in the store marked ``superseded``, and an estimate never comes back
  for a month already billed;
* a closed month is left as it is unless ``force``;
* the batch's totals, and what no mapping claimed per tenant, are kept for the report.

Every run is recorded in ``sync_runs`` like a sync (with its counts and problems), so the
daemon's health, ``export --what runs`` and the logs show billing runs as they show syncs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from ..config import Config
from ..context import module_context
from ..http import HttpClient
from ..logging import redact_text
from ..models import Checkpoint, Notice, RecordError, Tenant, UsageLine
from ..plugins import ActiveModule, PluginHost
from ..store import Store, schema, utcnow
from ..store.request_log import RunClients
from ..sync.engine import (
    Change,
    Counts,
    Problem,
    Reporter,
    RunResult,
    SyncEngine,
    begin_run,
    finish_run,
)
from ..sync.mapping import apply_config_mappings, resolve_tenant
from .grouping import LineGroup, LineKey, describe, group_key
from .money import exact_cost, sell_price
from .periods import MONTH, PeriodRequest, closed_reason, period_request
from .rules import BillingSettings

log = structlog.get_logger(__name__)

#: The source of lines made from unbilled usage.
UNBILLED = "unbilled"
#: What a billing run counts, in ``sync_counts``: usage rows, and invoice lines.
USAGE, LINES = "usage", "invoice_lines"
#: `Notice.code` a plugin uses for "the source has no usage for this period".
NO_DATA = "no_data"
#: Problems kept per run in the store (the rest are logged and counted).
MAX_STORED_PROBLEMS = 1000


class BillingError(Exception):
    """A billing run cannot start (an unknown module, a bad period); the message says why."""


# --- mapping rows to customers --------------------------------------------------------------


@attrs.frozen
class TenantMatch:
    """Where a tenant's usage goes: a customer, or why nowhere."""

    customer_id: int | None
    customer: str | None
    #: ``None`` when billed; else ``unmapped`` or ``do_not_import``.
    reason: str | None


def tenant_matches(connection: Connection, module: str) -> dict[str, TenantMatch]:
    """Every tenant mapping that applies to ``module`` (its own first, then every module's)."""
    mappings, customers = schema.tenant_mappings, schema.customers
    rows = connection.execute(
        sa.select(
            mappings.c.tenant_id,
            mappings.c.module,
            mappings.c.customer_id,
            mappings.c.do_not_import,
            customers.c.name,
        )
        .select_from(mappings.outerjoin(customers, customers.c.id == mappings.c.customer_id))
        .where(mappings.c.module.in_(["", module]))
        .order_by(mappings.c.module)  # '' first, so the module's own mapping wins
    ).all()
    found: dict[str, TenantMatch] = {}
    for row in rows:
        if row.do_not_import or row.customer_id is None:
            found[row.tenant_id.lower()] = TenantMatch(None, None, "do_not_import")
        else:
            found[row.tenant_id.lower()] = TenantMatch(row.customer_id, row.name, None)
    return found


UNMAPPED = TenantMatch(None, None, "unmapped")


def map_stored_tenants(connection: Connection, config: Config, module: str) -> int:
    """Give each stored tenant without a mapping its customer, as a sync would when
    ``create_customers_from_tenants`` is on (the same rule: `resolve_tenant`). Returns how
    many it mapped. Tenants come from the sync modules' tenant listings; usage of a tenant
    no listing has brought in stays unmapped."""
    if not config.integrator.create_customers_from_tenants:
        return 0
    tenants, mappings = schema.tenants, schema.tenant_mappings
    mapped = {
        tenant_id.lower()
        for tenant_id in connection.execute(
            sa.select(mappings.c.tenant_id).where(mappings.c.module.in_(["", module]))
        ).scalars()
    }
    count = 0
    for row in connection.execute(
        sa.select(tenants.c.id, tenants.c.module, tenants.c.tenant_id, tenants.c.name)
        .where(tenants.c.active.is_(True))
        .order_by(tenants.c.name, tenants.c.tenant_id)
    ).all():
        if row.tenant_id.lower() in mapped:
            continue
        tenant = Tenant(tenant_id=row.tenant_id, name=row.name)
        target = resolve_tenant(connection, config, row.module, row.id, tenant)
        mapped.add(row.tenant_id.lower())
        count += target.customer_id is not None
    return count


# --- aggregation ----------------------------------------------------------------------------


@attrs.define
class Unmatched:
    """Usage of one tenant no mapping claims, in one batch."""

    tenant_id: str
    customer_name: str | None
    reason: str
    rows: int = 0
    cost: Decimal = Decimal(0)


@attrs.define
class Batch:
    """The rows of one billing month, source and currency, as lines in the making."""

    period: str
    source: str
    currency: str
    groups: dict[LineKey, LineGroup] = attrs.field(factory=dict)
    rows: int = 0
    cost: Decimal = Decimal(0)
    unmatched: dict[str, Unmatched] = attrs.field(factory=dict)
    billed_rows: dict[str, int] = attrs.field(factory=dict)

    @property
    def unmatched_rows(self) -> int:
        return sum(u.rows for u in self.unmatched.values())

    @property
    def unmatched_cost(self) -> Decimal:
        return sum((u.cost for u in self.unmatched.values()), Decimal(0))


class Aggregator:
    """Adds streamed rows to their batches and lines; holds no row once added."""

    def __init__(self, settings: BillingSettings, matches: Mapping[str, TenantMatch]) -> None:
        self.settings = settings
        self.matches = matches
        self.batches: dict[tuple[str, str, str], Batch] = {}
        self._markups: dict[tuple[str, str | None], Decimal] = {}

    def add(self, line: UsageLine) -> str | None:
        """Add a row; returns why it cannot be billed at all (a malformed row), if so."""
        problem = _malformed(line)
        if problem:
            return problem
        source = line.invoice_id.strip() if line.invoice_id else UNBILLED
        currency = line.currency.strip().upper()
        batch_key = (line.period, source, currency)
        batch = self.batches.get(batch_key)
        if batch is None:
            batch = self.batches[batch_key] = Batch(line.period, source, currency)
        batch.rows += 1
        batch.cost += line.cost
        tenant = line.tenant_id.strip().lower()
        match = self.matches.get(tenant, UNMAPPED)
        if match.customer_id is None:
            unmatched = batch.unmatched.get(tenant)
            if unmatched is None:
                unmatched = batch.unmatched[tenant] = Unmatched(
                    tenant, line.customer_name, match.reason or "unmapped"
                )
            unmatched.rows += 1
            unmatched.cost += line.cost
            return None
        assert match.customer is not None
        batch.billed_rows[tenant] = batch.billed_rows.get(tenant, 0) + 1
        key = LineKey(
            match.customer_id, line.period, source, currency, group_key(line, self.settings)
        )
        group = batch.groups.get(key)
        if group is None:
            group = batch.groups[key] = LineGroup(key, match.customer)
        group.add(line, self._markup(match.customer, line.meter_category), self.settings.group_tag)
        return None

    def _markup(self, customer: str, category: str | None) -> Decimal:
        key = (customer, category)
        if key not in self._markups:
            self._markups[key] = self.settings.markup_for(customer, category)
        return self._markups[key]


def _malformed(line: UsageLine) -> str | None:
    if not line.tenant_id or not line.tenant_id.strip():
        return "the row names no tenant (CustomerId)"
    if not MONTH.match(line.period or ""):
        return f"the row's billing month {line.period!r} is not YYYY-MM"
    if not line.currency or len(line.currency.strip()) != 3:
        return f"the row's currency {line.currency!r} is not a currency code"
    if not isinstance(line.cost, Decimal) or not line.cost.is_finite():
        return f"the row's cost {line.cost!r} is not a decimal amount"
    if not isinstance(line.quantity, Decimal) or not line.quantity.is_finite():
        return f"the row's quantity {line.quantity!r} is not a decimal number"
    if line.invoice_id is not None and len(line.invoice_id.strip()) > 40:
        return f"the row's invoice ID {line.invoice_id!r} is longer than 40 characters"
    return None


# --- results --------------------------------------------------------------------------------


@attrs.define
class ImportSummary:
    """What one batch (or one period that gave none) came to."""

    requested: str
    period: str | None
    source: str | None
    currency: str | None
    outcome: str
    rows: int = 0
    cost: Decimal = Decimal(0)
    unmatched_rows: int = 0
    unmatched_cost: Decimal = Decimal(0)
    lines: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    superseded: int = 0
    detail: str | None = None


@attrs.define
class BillingResult(RunResult):
    """A billing run's result: a `RunResult` (so the scheduler and the sync summary read it)
    with what each period came to, and, in a dry run, each line it would change."""

    imports: list[ImportSummary] = attrs.field(factory=list)
    changes: list[Change] = attrs.field(factory=list)


# --- the run --------------------------------------------------------------------------------


def billing_modules(host: PluginHost, modules: Mapping[str, ActiveModule]) -> list[str]:
    """The enabled modules whose plugin fetches usage."""
    return [name for name in sorted(modules) if host.implements(name, "fetch_usage")]


def module_settings(active: ActiveModule) -> BillingSettings:
    """The module's billing settings (the defaults when its settings type has none)."""
    settings = active.settings
    return settings if isinstance(settings, BillingSettings) else BillingSettings()


class BillingRunner:
    """Runs billing modules' imports. The command line and the scheduler both drive it."""

    def __init__(
        self,
        store: Store,
        config: Config,
        host: PluginHost,
        *,
        http: HttpClient | None = None,
        reporter: Reporter | None = None,
        clock: Callable[[], datetime] = utcnow,
        stop: threading.Event | None = None,
        modules: Mapping[str, ActiveModule] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.host = host
        self.reporter = reporter or Reporter()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.modules = dict(modules) if modules is not None else host.active_modules()
        self._clients = RunClients.for_config(store, config, http)

    def http(self, *, dry_run: bool) -> HttpClient:
        """The client plugins reach their source with; a dry run's leaves no request log."""
        return self._clients.get(dry_run=dry_run)

    def requests(self, module: str, periods: Sequence[str] | None) -> list[PeriodRequest]:
        """What ``periods`` (or the module's scheduled ones) ask for, checked."""
        active = self._module(module)
        wanted = list(periods) if periods else [p.value for p in module_settings(active).periods]
        now = self.clock()
        try:
            return [period_request(period, now) for period in wanted]
        except ValueError as exc:
            raise BillingError(str(exc)) from None

    def _module(self, module: str) -> ActiveModule:
        names = billing_modules(self.host, self.modules)
        if module not in names:
            enabled = ", ".join(names) or "none"
            raise BillingError(
                f"module {module!r} is not an enabled billing module (enabled billing modules: "
                f"{enabled})"
            )
        return self.modules[module]

    def run(
        self,
        module: str | None = None,
        *,
        periods: Sequence[str] | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> list[BillingResult]:
        """Import ``periods`` (default: each module's scheduled ones) for ``module`` or every
        enabled billing module."""
        names = [module] if module else billing_modules(self.host, self.modules)
        plans = [(name, self.requests(name, periods)) for name in names]
        results = []
        for name, requests in plans:
            if dry_run:
                with self.store.dry_run():
                    results.append(self._run_module(name, requests, force, True))
            else:
                results.append(self._run_module(name, requests, force, False))
        return results

    # -- one module --------------------------------------------------------------------------

    def _run_module(
        self, name: str, requests: list[PeriodRequest], force: bool, dry_run: bool
    ) -> BillingResult:
        active = self.modules[name]
        options = {
            "periods": [r.period for r in requests],
            "force": force,
            "dry_run": dry_run,
        }
        run_id = begin_run(self.store, name, options)
        result = BillingResult(module=name, run_id=run_id, dry_run=dry_run)
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(module=name, run_id=run_id):
            run = _ModuleImport(self, active, result, force=force, dry_run=dry_run)
            try:
                run.run(requests)
                result.outcome = (
                    "completed_with_errors"
                    if any(c.failed for c in run.counts.values())
                    else "succeeded"
                )
            except Exception as exc:
                log.exception("billing.module_failed", error=str(exc))
                result.outcome = "failed"
                result.error = _reason(exc)
            run.finish()
            log.info(
                "billing.finished",
                outcome=result.outcome,
                seconds=round(time.monotonic() - started, 3),
                dry_run=dry_run,
                **{kind: counts.as_dict() for kind, counts in result.counts.items()},
            )
        return result


def import_usage(
    engine: SyncEngine,
    active: ActiveModule,
    *,
    periods: Sequence[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> BillingResult:
    """Run billing module ``active`` once with ``engine``'s store, HTTP client, reporter and
    stop event: what the sync engine (and so the scheduler) calls for a module whose plugin
    fetches usage. ``periods`` default to the module's scheduled ones. Runs inside whatever
    dry-run block the caller opened (`Store.dry_run`)."""
    runner = BillingRunner(
        engine.store,
        engine.config,
        engine.host,
        http=engine.http(dry_run=dry_run),
        reporter=engine.reporter,
        stop=engine.stop,
        modules=engine.modules,
    )
    return runner._run_module(active.name, runner.requests(active.name, periods), force, dry_run)


class _ModuleImport:
    """One billing module's run: its periods, counts and problems."""

    def __init__(
        self,
        runner: BillingRunner,
        active: ActiveModule,
        result: BillingResult,
        *,
        force: bool,
        dry_run: bool,
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.active = active
        self.module = active.name
        self.settings = module_settings(active)
        self.result = result
        self.force = force
        self.dry_run = dry_run
        self.hooks = runner.host.hook_for(active.name)
        self.context = module_context(
            runner.config, active, dry_run=dry_run, http=runner.http(dry_run=dry_run)
        )
        self.counts: dict[tuple[str, str], Counts] = {}

    def count(self, kind: str, tenant_id: str = "") -> Counts:
        return self.counts.setdefault((kind, tenant_id), Counts())

    def problem(self, problem: Problem) -> None:
        self.result.add_problem(problem, event="billing.problem_")

    def change(self, change: Change) -> None:
        if self.dry_run:
            self.result.changes.append(change)
        self.runner.reporter.change(change)

    # -- the periods -------------------------------------------------------------------------

    def run(self, requests: list[PeriodRequest]) -> None:
        with self.store.unit() as connection:
            apply_config_mappings(connection, self.runner.config)
            created = map_stored_tenants(connection, self.runner.config, self.module)
            if created:
                log.info("billing.tenants_mapped", customers_from_tenants=created)
        for index, request in enumerate(requests):
            if self.runner.stop.is_set():
                left = ", ".join(r.period for r in requests[index:])
                self.result.note = f"stopped on request before importing: {left}"
                log.info("billing.stopped", left=left)
                return
            with structlog.contextvars.bound_contextvars(period=request.period):
                self.import_period(request)

    def import_period(self, request: PeriodRequest) -> None:
        now = self.runner.clock()
        if request.month and not self.force:
            with self.store.read() as connection:
                closed = closed_reason(
                    connection, self.module, request.month, self.settings.close_after_days, now
                )
                billed = request.period == "last" and _billed_and_no_estimates(
                    connection, self.module, request.month
                )
            if closed:
                self.skip(
                    request,
                    request.month,
                    "closed",
                    f"{request.month} is {closed}: its "
                    "lines are left as they are (--force imports it anyway)",
                )
                return
            if billed:
                self.skip(
                    request,
                    request.month,
                    "already_billed",
                    f"{request.month} is "
                    "billed already: its invoice's lines stand, no estimate is imported",
                )
                return
        with self.store.read() as connection:
            matches = tenant_matches(connection, self.module)
        aggregator = Aggregator(self.settings, matches)
        notices: list[Notice] = []
        complete = True
        try:
            for item in self._stream(
                self.hooks.fetch_usage(context=self.context, period=request.period)
            ):
                if isinstance(item, UsageLine):
                    problem = aggregator.add(item)
                    if problem:
                        self.count(USAGE, item.tenant_id or "").failed += 1
                        self.problem(Problem(USAGE, item.tenant_id or "", None, "failed", problem))
                elif isinstance(item, Notice):
                    notices.append(item)
                    if item.code == NO_DATA:  # an outcome of the period, not a problem
                        log.info("billing.no_data", message=item.message)
                    else:
                        self.problem(Problem(USAGE, "", None, "warning", item.message))
                elif isinstance(item, RecordError):
                    self.count(USAGE).failed += 1
                    self.problem(Problem(USAGE, "", item.entity_id, "failed", item.reason))
                elif isinstance(item, Checkpoint):
                    complete = item.complete
                else:
                    self.count(USAGE).failed += 1
                    self.problem(
                        Problem(
                            USAGE,
                            "",
                            None,
                            "failed",
                            f"the plugin yielded {type(item).__name__}, not a usage row",
                        )
                    )
        except Exception as exc:
            # Nothing of this period is written: its lines stay as the last import left them.
            reason = _reason(exc)
            self.count(USAGE).failed += 1
            self.problem(Problem(USAGE, "", None, "failed", f"{request.describe()}: {reason}"))
            self.record(request, None, "failed", detail=reason)
            return
        if not complete:
            reason = (
                f"{request.describe()}: the module could not read all of it; nothing of it is "
                "written, so that no line holds part of its usage"
            )
            self.count(USAGE).failed += 1
            self.problem(Problem(USAGE, "", None, "failed", reason))
            self.record(request, None, "incomplete", detail=reason)
            return
        with self.store.unit() as connection:
            for key in sorted(aggregator.batches):
                self.write_batch(connection, request, aggregator.batches[key], now)
            for notice in notices:
                if notice.code == NO_DATA:
                    self.record(request, connection, "no_data", detail=notice.message)
            if not aggregator.batches and not any(n.code == NO_DATA for n in notices):
                self.record(
                    request, connection, "no_data", detail="the module returned no usage rows"
                )

    def skip(self, request: PeriodRequest, month: str, outcome: str, reason: str) -> None:
        # Expected, not a problem: a closed month, or one its invoice has billed already.
        log.info("billing.period_skipped", month=month, outcome=outcome, reason=reason)
        self.record(request, None, outcome, detail=reason, period=month)

    # -- writing ---------------------------------------------------------------------------

    def write_batch(
        self, connection: Connection, request: PeriodRequest, batch: Batch, now: datetime
    ) -> None:
        summary = ImportSummary(
            requested=request.period,
            period=batch.period,
            source=batch.source,
            currency=batch.currency,
            outcome="imported",
            rows=batch.rows,
            cost=exact_cost(batch.cost),
            unmatched_rows=batch.unmatched_rows,
            unmatched_cost=exact_cost(batch.unmatched_cost),
            lines=len(batch.groups),
        )
        where = f"{batch.period} ({batch.source}, {batch.currency})"
        closed = closed_reason(
            connection, self.module, batch.period, self.settings.close_after_days, now
        )
        if closed and not self.force:
            summary.outcome = "closed"
            summary.detail = (
                f"{batch.period} is {closed}: its lines are left as they are "
                "(--force imports it anyway)"
            )
            self.count(LINES).skipped += len(batch.groups)
            log.info("billing.batch_skipped", batch=where, outcome=summary.outcome)
            self._save_summary(connection, summary, batch)
            return
        if closed:
            self.problem(
                Problem(
                    LINES, "", where, "warning", f"{batch.period} is {closed}: changed (--force)"
                )
            )
        if batch.source == UNBILLED and _billed(
            connection, self.module, batch.period, batch.currency
        ):
            summary.outcome = "already_billed"
            summary.detail = (
                f"{batch.period} is billed already in {batch.currency}: its invoice's lines "
                "stand, so the unbilled estimate is not imported"
            )
            self.count(LINES).skipped += len(batch.groups)
            log.info("billing.batch_skipped", batch=where, outcome=summary.outcome)
            self._save_summary(connection, summary, batch)
            return
        self._write_lines(connection, batch, summary)
        if batch.source != UNBILLED:
            self._supersede(connection, batch, summary)
        for tenant, billed in batch.billed_rows.items():
            self.count(USAGE, tenant).added += billed
        for unmatched in batch.unmatched.values():
            self.count(USAGE, unmatched.tenant_id).skipped += unmatched.rows
            fix = (
                "the tenant mapping says do not import"
                if unmatched.reason == "do_not_import"
                else "no tenant mapping: add a [[tenant_mappings]] entry with tenant_id = "
                f'"{unmatched.tenant_id}" and customer = "...", or run the tenant sync '
                "(with integrator.create_customers_from_tenants) first"
            )
            self.problem(
                Problem(
                    USAGE,
                    unmatched.tenant_id,
                    unmatched.customer_name,
                    "skipped",
                    f"{unmatched.rows} usage rows of {where} costing "
                    f"{exact_cost(unmatched.cost).normalize():f} {batch.currency} not billed: {fix}",
                )
            )
        self._save_summary(connection, summary, batch)
        log.info(
            "billing.batch",
            period=batch.period,
            source=batch.source,
            currency=batch.currency,
            rows=batch.rows,
            lines=len(batch.groups),
            unmatched_rows=summary.unmatched_rows,
        )

    def _write_lines(self, connection: Connection, batch: Batch, summary: ImportSummary) -> None:
        table, now = schema.invoice_lines, utcnow()
        status = "estimate" if batch.source == UNBILLED else "billed"
        existing = {
            (row.customer_id, row.group_key): row
            for row in connection.execute(
                sa.select(table).where(
                    table.c.module == self.module,
                    table.c.period == batch.period,
                    table.c.source == batch.source,
                    table.c.currency == batch.currency,
                )
            )
        }
        counts = self.count(LINES)
        ordered = sorted(
            batch.groups.values(), key=lambda g: (g.customer.casefold(), g.key.group_key)
        )
        for group in ordered:
            quantity, unit = group.line_quantity
            values = {
                "description": describe(group, self.settings),
                "quantity": quantity,
                "unit": unit[:100] if unit else None,
                "cost": exact_cost(group.cost),
                "price": sell_price(
                    group.cost_by_markup,
                    currency=batch.currency,
                    minimum=self.settings.minimum_line_charge,
                    mode=self.settings.rounding.mode,
                ),
                "markup_percent": group.markup_percent,
                "usage_rows": group.rows,
                "status": status,
                "superseded_by": None,
                "active": True,
                "inactive_since": None,
            }
            entity = f"{batch.period}/{batch.source}/{group.key.group_key}"
            row = existing.pop((group.key.customer_id, group.key.group_key), None)
            if row is None:
                connection.execute(
                    sa.insert(table).values(
                        customer_id=group.key.customer_id,
                        module=self.module,
                        period=batch.period,
                        source=batch.source,
                        currency=batch.currency,
                        group_key=group.key.group_key,
                        run_id=self.result.run_id,
                        created_at=now,
                        updated_at=now,
                        **values,
                    )
                )
                counts.added += 1
                summary.added += 1
                self.change(Change(LINES, group.customer, entity, "added"))
                continue
            changed = tuple(k for k, v in values.items() if getattr(row, k) != v)
            if not changed:
                counts.unchanged += 1
                summary.unchanged += 1
                continue
            connection.execute(
                sa.update(table)
                .where(table.c.id == row.id)
                .values(**values, run_id=self.result.run_id, updated_at=now)
            )
            counts.updated += 1
            summary.updated += 1
            self.change(Change(LINES, group.customer, entity, "updated", changed))
        # What the batch held before and holds no longer (a mapping changed, the grouping
        # changed): not in force any more.
        gone = [row for row in existing.values() if row.active]
        if gone:
            connection.execute(
                sa.update(table)
                .where(table.c.id.in_([row.id for row in gone]))
                .values(status="removed", active=False, inactive_since=now, updated_at=now)
            )
            counts.deactivated += len(gone)
            summary.removed += len(gone)
            names = _customer_names(connection, {row.customer_id for row in gone})
            for row in gone:
                self.change(
                    Change(
                        LINES,
                        names.get(row.customer_id, str(row.customer_id)),
                        f"{row.period}/{row.source}/{row.group_key}",
                        "deactivated",
                        ("status",),
                    )
                )

    def _supersede(self, connection: Connection, batch: Batch, summary: ImportSummary) -> None:
        table, now = schema.invoice_lines, utcnow()
        where = (
            table.c.module == self.module,
            table.c.period == batch.period,
            table.c.currency == batch.currency,
            table.c.source == UNBILLED,
            table.c.active.is_(True),
        )
        estimates = connection.execute(
            sa.select(table.c.customer_id, table.c.group_key).where(*where)
        ).all()
        if not estimates:
            return
        connection.execute(
            sa.update(table)
            .where(*where)
            .values(
                status="superseded",
                superseded_by=batch.source,
                active=False,
                inactive_since=now,
                updated_at=now,
            )
        )
        self.count(LINES).deactivated += len(estimates)
        summary.superseded += len(estimates)
        names = _customer_names(connection, {row.customer_id for row in estimates})
        for row in estimates:
            self.change(
                Change(
                    LINES,
                    names.get(row.customer_id, str(row.customer_id)),
                    f"{batch.period}/{UNBILLED}/{row.group_key}",
                    "deactivated",
                    ("superseded_by",),
                )
            )

    # -- what each period came to ----------------------------------------------------------

    def record(
        self,
        request: PeriodRequest,
        connection: Connection | None,
        outcome: str,
        *,
        detail: str | None = None,
        period: str | None = None,
    ) -> None:
        summary = ImportSummary(
            requested=request.period,
            period=period or request.month,
            source=UNBILLED if request.unbilled else None,
            currency=None,
            outcome=outcome,
            detail=redact_text(detail) if detail else None,
        )
        if connection is not None:
            self._save_summary(connection, summary, None)
            return
        with self.store.unit() as own:
            self._save_summary(own, summary, None)

    def _save_summary(
        self, connection: Connection, summary: ImportSummary, batch: Batch | None
    ) -> None:
        self.result.imports.append(summary)
        import_id = connection.execute(
            sa.insert(schema.billing_imports).values(
                module=self.module,
                run_id=self.result.run_id,
                requested=summary.requested[:40],
                period=summary.period,
                source=summary.source,
                currency=summary.currency,
                outcome=summary.outcome,
                usage_rows=summary.rows,
                cost=summary.cost,
                unmatched_rows=summary.unmatched_rows,
                unmatched_cost=summary.unmatched_cost,
                lines=summary.lines,
                detail=summary.detail,
                at=utcnow(),
            )
        ).inserted_primary_key[0]
        if batch is not None and batch.unmatched:
            connection.execute(
                sa.insert(schema.billing_unmatched),
                [
                    {
                        "import_id": import_id,
                        "tenant_id": u.tenant_id[:64],
                        "customer_name": (u.customer_name or "")[:255] or None,
                        "reason": u.reason,
                        "usage_rows": u.rows,
                        "cost": exact_cost(u.cost),
                    }
                    for u in sorted(batch.unmatched.values(), key=lambda u: u.tenant_id)
                ],
            )

    def finish(self) -> None:
        for (kind, _), counts in self.counts.items():
            self.result.count(kind).add(counts)
        finish_run(self.store, self.result, self.counts)

    def _stream(self, results: Iterable[Any]) -> Iterator[Any]:
        for found in results:
            if found is not None:
                yield from found


def _customer_names(connection: Connection, ids: set[int]) -> dict[int, str]:
    customers = schema.customers
    return dict(
        connection.execute(
            sa.select(customers.c.id, customers.c.name).where(customers.c.id.in_(ids))
        ).all()
    )


def _billed(connection: Connection, module: str, period: str, currency: str) -> bool:
    table = schema.invoice_lines
    return (
        connection.execute(
            sa.select(table.c.id)
            .where(
                table.c.module == module,
                table.c.period == period,
                table.c.currency == currency,
                table.c.status == "billed",
                table.c.active.is_(True),
            )
            .limit(1)
        ).first()
        is not None
    )


def _billed_and_no_estimates(connection: Connection, module: str, period: str) -> bool:
    """Whether ``period`` has billed lines and no estimate in force: nothing left to estimate."""
    table = schema.invoice_lines
    statuses = set(
        connection.execute(
            sa.select(table.c.status)
            .where(table.c.module == module, table.c.period == period, table.c.active.is_(True))
            .distinct()
        ).scalars()
    )
    return "billed" in statuses and "estimate" not in statuses


def _reason(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


__all__ = [
    "LINES",
    "NO_DATA",
    "UNBILLED",
    "USAGE",
    "Aggregator",
    "BillingError",
    "BillingResult",
    "BillingRunner",
    "ImportSummary",
    "TenantMatch",
    "billing_modules",
    "import_usage",
    "module_settings",
    "tenant_matches",
]
