"""A pricing module's run: its plugin's price sheet onto the stored subscriptions.

For each timeline (``current``, then ``future`` when asked), the run reads which products
the stored subscriptions hold, streams the sheet through the module's ``fetch_prices``
keeping only those products' rows in the partner's billing currency (the module's
``currency``, else the market's own; rows in other currencies are not the partner's prices
and are passed over without a problem), then in one unit of work matches each subscription
(`matching`) and writes: from the current sheet, its cost price, currency, effective dates
and the sell price of the module's rules (`rules`), with each change kept in the price
history (`history`); from the future sheet, the changes planned. A subscription no row
prices keeps the price it had, gets the reason (``price_note``) and is counted as skipped
with it. A row the plugin cannot translate is counted as failed; a sheet that cannot be had
at all fails the run with the plugin's explanation, and nothing is written.

`import_prices` records the run as the sync engine records its own (``sync_runs``, counts
per kind and tenant, problems) and returns the same `RunResult`; it runs inside whatever
dry-run block its caller opened (`Store.dry_run`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.engine import Connection

from ..config import ConfigError
from ..context import module_context
from ..models import Notice, Price, RecordError
from ..plugins import ActiveModule
from ..store import utcnow
from ..sync.engine import (
    Change,
    Counts,
    Problem,
    RunResult,
    SyncEngine,
    begin_run,
    finish_run,
)
from .history import PLANNED, ChangeBook
from .matching import Miss, PriceSheet, StoredSubscription
from .rules import MARKET_CURRENCIES, PricingSettings
from .subscriptions import PRICE_COLUMNS, load_subscriptions, products_of, write_prices

log = structlog.get_logger(__name__)

CURRENT, FUTURE = "current", "future"
TIMELINES = (CURRENT, FUTURE)
#: The kinds a pricing run counts.
SUBSCRIPTIONS, CHANGES, SHEET = "subscriptions", "price changes", "price sheet"


def default_timelines(settings: Any) -> tuple[str, ...]:
    """The timelines a scheduled run reads: current, and future when the settings ask."""
    if isinstance(settings, PricingSettings) and settings.future_prices:
        return TIMELINES
    return (CURRENT,)


def import_prices(
    engine: SyncEngine,
    active: ActiveModule,
    *,
    market: str | None = None,
    timelines: Sequence[str] | None = None,
    dry_run: bool = False,
    as_of: datetime | None = None,
) -> RunResult:
    """Run the pricing module ``active`` once: ``market`` (the integrator's marketplace by
    default), ``timelines`` (`default_timelines` by default), prices in force on ``as_of``
    (now by default)."""
    market = (market or engine.config.integrator.marketplace.value).upper()
    timelines = tuple(timelines or default_timelines(active.settings))
    for timeline in timelines:
        if timeline not in TIMELINES:
            raise ValueError(f"timeline {timeline!r}: use {' or '.join(TIMELINES)}")
    currency = billing_currency(active, market)
    options = {
        "market": market,
        "currency": currency,
        "timelines": list(timelines),
        "dry_run": dry_run,
    }
    run_id = begin_run(engine.store, active.name, options)
    result = RunResult(module=active.name, run_id=run_id, dry_run=dry_run)
    run = _PricingRun(
        engine, active, result, market=market, currency=currency, as_of=as_of or utcnow()
    )
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(module=active.name, run_id=run_id):
        try:
            for timeline in timelines:
                with structlog.contextvars.bound_contextvars(timeline=timeline, market=market):
                    run.timeline(timeline)
            failed = any(counts.failed for counts in run.tenant_counts.values())
            result.outcome = "completed_with_errors" if failed else "succeeded"
        except Exception as exc:
            # A plugin's refusal says its cause and fix; the trace is for debugging only.
            result.outcome = "failed"
            result.error = f"{type(exc).__name__}: {exc}"
            log.error("pricing.failed", error=result.error)
            log.debug("pricing.failed_trace", exc_info=True)
        for (kind, _), counts in run.tenant_counts.items():
            result.count(kind).add(counts)
        result.note = "; ".join(run.notes) or None
        finish_run(engine.store, result, run.tenant_counts)
        log.info(
            "pricing.finished",
            outcome=result.outcome,
            seconds=round(time.monotonic() - started, 3),
            dry_run=dry_run,
            **{kind: counts.as_dict() for kind, counts in result.counts.items()},
        )
    return result


def billing_currency(active: ActiveModule, market: str) -> str:
    """The currency whose rows price the subscriptions: the module's ``currency``, else the
    market's own; a `ConfigError` when neither is known."""
    settings = active.settings
    if isinstance(settings, PricingSettings):
        currency = settings.billing_currency(market)
    else:
        currency = MARKET_CURRENCIES.get(market.upper())
    if currency is None:
        raise ConfigError(
            [
                f"modules.{active.name}.currency: market {market} has no known currency "
                f"(known: {', '.join(f'{c} for {m}' for m, c in MARKET_CURRENCIES.items())}): "
                'set it to the currency Microsoft bills you in, for example currency = "EUR"'
            ]
        )
    return currency


class _PricingRun:
    """One run's state: its context, counts (per kind and tenant), problems and notes."""

    def __init__(
        self,
        engine: SyncEngine,
        active: ActiveModule,
        result: RunResult,
        *,
        market: str,
        currency: str,
        as_of: datetime,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.result = result
        self.market = market
        self.currency = currency
        self.as_of = as_of
        #: The changes this run planned for each subscription (by its ID), by date: a new
        #: price held until a renewal, and the future sheet's (`hold`).
        self.held: dict[int, set[datetime]] = {}
        self.rules = active.settings if isinstance(active.settings, PricingSettings) else None
        self.module = self.rules.subscriptions_module if self.rules else None
        self.hooks = engine.host.hook_for(active.name)
        self.context = module_context(
            engine.config,
            active,
            dry_run=result.dry_run,
            http=engine.http(dry_run=result.dry_run),
        )
        self.tenant_counts: dict[tuple[str, str], Counts] = {}
        self.notes: list[str] = []

    def counts(self, kind: str, tenant_id: str) -> Counts:
        return self.tenant_counts.setdefault((kind, tenant_id), Counts())

    def problem(self, problem: Problem) -> None:
        self.result.add_problem(problem, event="pricing.record_")

    # -- one timeline ----------------------------------------------------------------------

    def timeline(self, timeline: str) -> None:
        with self.store.read() as connection:
            stored = load_subscriptions(connection, self.module)
        if not stored:
            self.notes.append(
                f"{timeline}: no subscription to price in the store (sync the subscriptions first)"
            )
            return
        products = products_of(stored)
        sheet = PriceSheet(self.market, timeline, products, currency=self.currency)
        if products:
            self.read_sheet(sheet)
        with self.store.unit() as connection:
            subscriptions = load_subscriptions(connection, self.module)
            book = ChangeBook(
                connection,
                [sub.id for sub in subscriptions],
                market=self.market,
                run_id=self.result.run_id,
                now=utcnow(),
            )
            if timeline == CURRENT:
                self.price(connection, sheet, subscriptions, book)
            else:
                self.plan(sheet, subscriptions, book)

    def read_sheet(self, sheet: PriceSheet) -> None:
        results = self.hooks.fetch_prices(
            context=self.context, market=self.market, timeline=sheet.timeline
        )
        for item in _stream(results):
            if isinstance(item, Price):
                sheet.add(item)
            elif isinstance(item, RecordError):
                self.counts(SHEET, "").failed += 1
                self.problem(Problem(SHEET, "", item.entity_id, "failed", item.reason))
            elif isinstance(item, Notice):
                self.problem(Problem(SHEET, "", None, "warning", item.message))
            else:
                self.counts(SHEET, "").failed += 1
                self.problem(
                    Problem(
                        SHEET,
                        "",
                        None,
                        "failed",
                        f"the plugin yielded {type(item).__name__}, which is not a price row",
                    )
                )
        log.info(
            "pricing.sheet_read",
            rows=sheet.read,
            kept=sheet.kept,
            currency=sheet.currency,
            other_currency=sheet.other_currency,
        )
        if sheet.timeline == FUTURE and not sheet.read:
            self.notes.append("future: no price changes are planned")
        elif not sheet.read:
            self.problem(
                Problem(SHEET, "", None, "warning", f"the {sheet.timeline} price sheet has no rows")
            )

    def price(
        self,
        connection: Connection,
        sheet: PriceSheet,
        subscriptions: list[StoredSubscription],
        book: ChangeBook,
    ) -> None:
        """The current sheet: each subscription's price, and its history."""
        changed: list[tuple[int, dict[str, Any]]] = []
        confirmed: list[int] = []
        notes: list[tuple[int, str]] = []
        past_dates = 0
        for sub in subscriptions:
            counts = self.counts(SUBSCRIPTIONS, sub.tenant_id)
            before = {name: getattr(sub, name) for name in PRICE_COLUMNS}
            found = sheet.current(sub, self.as_of)
            if isinstance(found, Miss):
                counts.skipped += 1
                self.problem(
                    Problem(
                        SUBSCRIPTIONS,
                        sub.tenant_id,
                        sub.external_id,
                        "skipped",
                        f"{sub.customer} / {sub.name}: no price: {found.reason}",
                    )
                )
                # The price it had stays, with why it was not confirmed: never lost silently.
                if sub.price_note != found.reason:
                    notes.append((sub.id, found.reason))
                continue
            price, currency = found.price, found.price.currency.upper()
            past_dates += not found.in_force
            sell = (
                self.rules.sell_price(sub.book_key(currency), price.unit_price)
                if self.rules
                else None
            )
            reaches = sub.price_reaches(price.effective_start or self.as_of)
            kept_cost = (
                sub.cost_price
                if reaches > self.as_of
                and sub.currency == currency
                and sub.cost_price != price.unit_price
                else None
            )
            if kept_cost is not None:
                # A new price within the subscription's term: it keeps the cost it has
                # until its renewal, when the new one is planned to reach it. Its sell
                # price still follows the rules (a markup changed meanwhile).
                self.hold(sub, reaches, price, sell, book)
                sell = (
                    self.rules.sell_price(sub.book_key(currency), kept_cost) if self.rules else None
                )
            after = {
                "cost_price": price.unit_price if kept_cost is None else kept_cost,
                "sell_price": sell.amount if sell else None,
                "currency": currency,
                "sell_price_rule": sell.rule if sell else None,
                "price_market": self.market,
                "price_effective_start": (
                    price.effective_start if kept_cost is None else sub.price_effective_start
                ),
                "price_effective_end": (
                    price.effective_end if kept_cost is None else sub.price_effective_end
                ),
                "price_note": None,
            }
            if kept_cost is None:
                # A change dated from when it reached the subscription (its renewal, for a
                # price that came in during the term before); a first price, from its row.
                is_change = sub.cost_price is not None and reaches <= self.as_of
                action = book.record_current(
                    sub,
                    effective_at=reaches if is_change else price.effective_start or self.as_of,
                    cost=price.unit_price,
                    currency=currency,
                    sell=after["sell_price"],
                )
                if action and sub.cost_price is not None:
                    _count(self.counts(CHANGES, sub.tenant_id), action)
            fields = tuple(name for name in PRICE_COLUMNS if after[name] != before[name])
            if not fields:
                confirmed.append(sub.id)
                counts.unchanged += 1
                continue
            changed.append((sub.id, after))
            first = sub.cost_price is None
            if first:
                counts.added += 1
            else:
                counts.updated += 1
            self.engine.reporter.change(
                Change(
                    SUBSCRIPTIONS,
                    sub.tenant_id,
                    sub.external_id,
                    "added" if first else "updated",
                    fields,
                )
            )
        write_prices(connection, changed, confirmed, notes, utcnow())
        if past_dates:
            log.info(
                "pricing.prices_past_their_dates",
                subscriptions=past_dates,
                as_of=self.as_of.isoformat(),
                why="the current sheet's newest row for them ended before that day",
            )

    def hold(
        self,
        sub: StoredSubscription,
        reaches: datetime,
        price: Price,
        sell: Any,
        book: ChangeBook,
    ) -> datetime | None:
        """Plan ``price`` for ``sub`` from ``reaches`` (`StoredSubscription.price_reaches`);
        the date of the planned change, ``None`` when there is none (it is the price the
        subscription has)."""
        action = book.record_planned(
            sub,
            effective_at=reaches,
            cost=price.unit_price,
            currency=price.currency.upper(),
            sell=sell.amount if sell else None,
        )
        if action:
            _count(self.counts(CHANGES, sub.tenant_id), action)
            self.engine.reporter.change(
                Change(
                    CHANGES,
                    sub.tenant_id,
                    sub.external_id,
                    action,
                    (f"planned from {reaches:%Y-%m-%d}",),
                )
            )
        row = book.rows[sub.id].get(reaches)
        if row is None or row.status != PLANNED:
            return None
        self.held.setdefault(sub.id, set()).add(reaches)
        return reaches

    def plan(
        self, sheet: PriceSheet, subscriptions: list[StoredSubscription], book: ChangeBook
    ) -> None:
        """The future sheet: the changes planned for each subscription's price, each from
        the day it reaches the subscription (its renewal, for a change within its term)."""
        for sub in subscriptions:
            keep = set(self.held.get(sub.id, ()))
            price = sheet.planned(sub)
            if price is not None and price.effective_start is not None:
                currency = price.currency.upper()
                sell = (
                    self.rules.sell_price(sub.book_key(currency), price.unit_price)
                    if self.rules
                    else None
                )
                planned = self.hold(
                    sub, sub.price_reaches(price.effective_start), price, sell, book
                )
                if planned is not None:
                    keep.add(planned)
            self.counts(CHANGES, sub.tenant_id).deactivated += book.withdraw_planned(sub, keep=keep)
        planned = sum(row.status == PLANNED for rows in book.rows.values() for row in rows.values())
        if planned:
            self.notes.append(
                f"future: {planned} planned price change{'s' if planned != 1 else ''} "
                "(`halo-integrator pricing changes` lists them)"
            )


def _count(counts: Counts, action: str) -> None:
    if action == "added":
        counts.added += 1
    elif action == "updated":
        counts.updated += 1


def _stream(results: Any) -> Iterator[Any]:
    for result in results:
        if result is not None:
            yield from result
