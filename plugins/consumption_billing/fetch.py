"""``fetch_usage``: which exports a period asks for, over the CSP module's partner connections.

The billing module reads Microsoft as the CSP module's GDAP app, app-only in the partner
tenant (guide 3 and 11: the app needs Graph's ``PartnerBilling.Read.All`` application
permission there), and lists invoices through Partner Center with the connection's Partner
Center credentials. What a period means:

* ``current``, ``last``: the unbilled usage of that billing period, one export per currency
  (the configured ``currencies``, else those of the partner's recent invoices and the
  marketplace's); the exports are all started first and then read in turn, so Microsoft
  prepares them side by side.
* ``latest``: the usage billed on the invoices of the latest billing month.
* ``YYYY-MM``: the usage billed on that month's invoices; last month's unbilled usage while
  its invoice is not out yet.
* anything else: an invoice ID.

Every row of an export is billed in the export's month: the invoice's billing month (from
the partner's invoice list), or the unbilled period's (as the export's manifest names it,
else as this machine's clock has it). Never the row's ``ChargeStartDate``, which names an
earlier month for latent usage charged late (see `usage`).

An export Microsoft has no data for ("No data available") is a `Notice`, not a failure. An
export that cannot be had (refused, failed, still running at the time limit) is a
`RecordError` and the others go on, as long as none of its rows were yielded; a failure
while rows flow ends the stream (the core then writes nothing of the period). With more
than one connection, any failure makes the stream incomplete: the core never writes a
month's lines from part of the partners.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from halo_integrator_core import Checkpoint, ModuleContext, Notice, RecordError
from halo_integrator_core.billing import NO_DATA
from halo_integrator_core.billing.periods import MONTH, month_of, previous_month
from halo_integrator_core.config import (
    Config,
    ConfigError,
    ValueProblem,
    structure_module_settings,
)
from halo_integrator_core.errors import HttpError, PermissionDenied
from halo_integrator_core.pricing import MARKET_CURRENCIES

from .export import BadRecord, ExportError, NoData, PartnerBillingExports
from .invoices import Invoice, currencies, latest, list_invoices, of_month
from .settings import ConsumptionBillingSettings
from .usage import usage_line

log = structlog.get_logger(__name__)

MODULE = "consumption_billing"
CSP_MODULE = "microsoft_csp"


class SetupProblem(Exception):
    """The module cannot read Microsoft as configured; the message says the fix."""


def csp_settings(config: Config | None) -> Any | None:
    """The CSP module's settings, or ``None`` when it is not enabled (or its settings are
    wrong, which `config check` reports with them)."""
    if config is None or not config.module_enabled(CSP_MODULE):
        return None
    from halo_microsoft_csp.settings import MicrosoftCspSettings

    try:
        return structure_module_settings(config, CSP_MODULE, MicrosoftCspSettings)
    except ConfigError:
        return None


def connection_problems(settings: ConsumptionBillingSettings, csp: Any | None) -> list[str]:
    """Why the module cannot read partner billing with the CSP module's connections."""
    key = f"modules.{MODULE}"
    if csp is None:
        return [
            f"{key}: consumption billing reads Azure usage with the partner connection of the "
            f"{CSP_MODULE} module, which is not enabled: enable [modules.{CSP_MODULE}] with a "
            f"[[modules.{CSP_MODULE}.connections]] entry"
        ]
    connections = list(csp.connections)
    if not connections:
        return [
            f"{key}: the {CSP_MODULE} module has no connection to read partner billing with: "
            f"add a [[modules.{CSP_MODULE}.connections]] entry (its GDAP app needs the "
            "Microsoft Graph application permission PartnerBilling.Read.All)"
        ]
    names = {c.name for c in connections}
    unknown = [name for name in settings.connections if name not in names]
    if unknown:
        return [
            f"{key}.connections: {', '.join(map(repr, unknown))} is not a connection of the "
            f"{CSP_MODULE} module (its connections: {', '.join(sorted(map(repr, names)))})"
        ]
    return []


def partner_connections(context: ModuleContext, settings: ConsumptionBillingSettings) -> list[Any]:
    """The CSP module's connections this module reads, or `SetupProblem` saying why none."""
    csp = csp_settings(context.config)
    problems = connection_problems(settings, csp)
    if problems:
        raise SetupProblem("; ".join(problems))
    if not settings.connections:
        return list(csp.connections)
    by_name = {c.name: c for c in csp.connections}
    return [by_name[name] for name in settings.connections]


def fetch_usage(context: ModuleContext, period: str) -> Iterator[Any]:
    settings = context.settings
    if not isinstance(settings, ConsumptionBillingSettings):
        settings = ConsumptionBillingSettings()
    if context.http is None or context.endpoints is None:
        raise SetupProblem(
            "the consumption billing module needs the host's HTTP client and endpoints"
        )
    connections = partner_connections(context, settings)
    failures = 0
    for connection in connections:
        with structlog.contextvars.bound_contextvars(
            connection=connection.name, tenant=str(connection.tenant_id)
        ):
            reader = PartnerUsage(context, settings, connection)
            try:
                yield from reader.usage(period)
            except (HttpError, ExportError, ValueProblem) as exc:
                if reader.rows:
                    raise  # rows of it are out already: the period cannot be taken whole
                failures += 1
                yield RecordError(entity_id=f"connection {connection.name}", reason=str(exc))
            except Exception as exc:
                if reader.rows or not _is_auth_error(exc):
                    raise
                failures += 1
                yield RecordError(entity_id=f"connection {connection.name}", reason=str(exc))
            failures += reader.failures
    yield Checkpoint(bookmark=None, complete=not (failures and len(connections) > 1))


def _is_auth_error(exc: Exception) -> bool:
    from halo_microsoft_csp.errors import MicrosoftAuthError

    return isinstance(exc, MicrosoftAuthError)


class PartnerUsage:
    """The usage of one partner connection."""

    def __init__(
        self, context: ModuleContext, settings: ConsumptionBillingSettings, connection: Any
    ) -> None:
        from halo_microsoft_csp.auth import GRAPH_RESOURCE
        from halo_microsoft_csp.directory import ConnectionClients

        assert context.http is not None and context.endpoints is not None
        self.context = context
        self.settings = settings
        self.connection = connection
        self.partner = str(connection.tenant_id)
        self.http = context.http
        self.endpoints = context.endpoints
        self.clients = ConnectionClients(connection, context, context.http)
        self.exports = PartnerBillingExports(
            context.http,
            context.endpoints.url("graph"),
            lambda: self.clients.gdap.headers(self.partner, GRAPH_RESOURCE),
            timeout_seconds=settings.export_timeout_minutes * 60,
            poll_seconds=settings.poll_seconds,
        )
        self.rows = 0
        self.failures = 0
        self._invoices: list[Invoice] | None = None

    # -- what a period asks for -------------------------------------------------------------

    def usage(self, period: str) -> Iterator[Any]:
        this_month = month_of(datetime.now(UTC))
        if period in ("current", "last"):
            month = this_month if period == "current" else previous_month(this_month)
            yield from self.unbilled(period, month)
        elif period == "latest":
            chosen = latest(self.invoices())
            if not chosen:
                yield Notice(
                    code=NO_DATA,
                    message=f"connection {self.connection.name}: the partner has no invoice "
                    "billing Azure usage yet",
                )
            for invoice in chosen:
                yield from self.billed(invoice.id, invoice.billing_month)
        elif MONTH.match(period):
            invoices = of_month(self.invoices(), period)
            if invoices:
                for invoice in invoices:
                    yield from self.billed(invoice.id, period)
            elif period == previous_month(this_month):
                yield from self.unbilled("last", period)  # its invoice is not out yet
            elif period == this_month:
                yield from self.unbilled("current", period)
            else:
                yield Notice(
                    code=NO_DATA,
                    message=f"connection {self.connection.name}: no invoice bills {period}",
                )
        else:
            yield from self.billed(period, self.invoice_month(period))

    def unbilled(self, period: str, month: str) -> Iterator[Any]:
        """The unbilled usage of ``period`` (current or last), which this machine's clock
        says is ``month``; the export's manifest, when it names its month, has the last word
        (Microsoft's billing cycle, not our clock, says which month it is)."""
        wanted = list(self.settings.currencies)
        if not wanted:
            wanted = yield from self.billing_currencies()
        started = []
        for currency in wanted:
            label = f"unbilled usage in {currency} of the {period} period"
            try:
                started.append(
                    (
                        label,
                        self._start(
                            lambda c=currency: self.exports.start_unbilled(
                                c, period, self.settings.attribute_set.value
                            )
                        ),
                    )
                )
            except (HttpError, ExportError) as exc:
                self.failures += 1
                yield RecordError(entity_id=label, reason=str(exc))
        for label, operation in started:
            yield from self.read(label, operation, fallback_month=month)

    def billed(self, invoice_id: str, month: str | None) -> Iterator[Any]:
        """The usage billed on ``invoice_id``, all of it in the invoice's billing ``month``
        (``None`` when Partner Center does not list the invoice: the export's manifest says)."""
        label = f"usage billed on invoice {invoice_id}"
        try:
            operation = self._start(
                lambda: self.exports.start_billed(invoice_id, self.settings.attribute_set.value)
            )
        except (HttpError, ExportError) as exc:
            self.failures += 1
            yield RecordError(entity_id=label, reason=str(exc))
            return
        yield from self.read(label, operation, month=month, invoice_id=invoice_id)

    # -- one export ------------------------------------------------------------------------

    def read(
        self,
        label: str,
        operation: str,
        *,
        month: str | None = None,
        fallback_month: str | None = None,
        invoice_id: str | None = None,
    ) -> Iterator[Any]:
        """The rows of one export, each in one billing month: ``month`` if known, else the
        month the manifest names, else ``fallback_month``; and, for a billed export, each
        on its ``invoice_id`` (`usage_line`)."""
        try:
            outcome = self.exports.wait(operation)
            if isinstance(outcome, NoData):
                yield Notice(
                    code=NO_DATA,
                    message=f"connection {self.connection.name}: no {label} "
                    f"(Microsoft: {outcome.message})",
                )
                return
            manifest = self.exports.manifest(outcome)
        except (HttpError, ExportError) as exc:
            self.failures += 1
            yield RecordError(entity_id=label, reason=str(exc))
            return
        period = month or manifest.billing_month or fallback_month
        if period is None:
            self.failures += 1
            yield RecordError(
                entity_id=label,
                reason="the billing month of this export is unknown: the partner's invoice list "
                "(Partner Center) gives no billing period for the invoice, or does not list it, "
                "and the export's manifest names no month, so its usage is not imported. Fix: "
                "check the invoice ID, or import by month (`billing import YYYY-MM` or "
                "`latest`), which goes by the partner's listed invoices",
            )
            return
        log.info(
            "billing.export_ready",
            export=label,
            period=period,
            blobs=len(manifest.blobs),
            data_format=manifest.data_format,
        )
        for record in self.exports.records(manifest):
            if isinstance(record, BadRecord):
                yield RecordError(entity_id=f"{label}: {record.where}", reason=record.reason)
                continue
            line = usage_line(record.values, f"{label}: {record.where}", period, invoice_id)
            if not isinstance(line, RecordError):
                self.rows += 1
            yield line

    def _start(self, start: Any) -> str:
        try:
            return start()
        except PermissionDenied as exc:
            app = self.clients.gdap.app_name
            raise ExportError(
                f"Graph refused the partner billing export for {app} in partner tenant "
                f"{self.partner} ({exc.code or exc.status}: {exc.detail}). Fix: give the GDAP "
                "app the Microsoft Graph application permission PartnerBilling.Read.All (API "
                "permissions → Add a permission → Microsoft Graph → Application permissions) "
                "and grant admin consent in the partner tenant (guide 3 and 11)"
            ) from None

    # -- invoices and currencies -----------------------------------------------------------

    def invoices(self) -> list[Invoice]:
        if self._invoices is None:
            from halo_microsoft_csp.errors import call_error

            headers = self.clients.partner_center_headers()
            try:
                self._invoices = list_invoices(
                    self.http, self.endpoints.url("partner_center"), headers
                )
            except HttpError as exc:
                raise call_error(
                    exc,
                    api="partner_center",
                    tenant=self.partner,
                    app=self.clients.partner_center.app_name,
                ) from None
        return self._invoices

    def invoice_month(self, invoice_id: str) -> str | None:
        """The billing month of the partner's invoice ``invoice_id``, if Partner Center
        lists it with one."""
        wanted = invoice_id.strip().upper()
        for invoice in self.invoices():
            if invoice.id.upper() == wanted:
                return invoice.billing_month
        return None

    def billing_currencies(self) -> Iterator[Any]:
        """The currencies to export unbilled usage in (a generator: it may say it guessed)."""
        market = MARKET_CURRENCIES.get(str(self.context.integrator.marketplace), "USD")
        try:
            found = currencies(self.invoices())
        except Exception as exc:
            if not (isinstance(exc, HttpError) or _is_auth_error(exc)):
                raise
            yield Notice(
                code="currencies",
                message=f"connection {self.connection.name}: the partner's invoices could not "
                f"be listed to learn its billing currencies ({exc}); exporting {market} only "
                "(set modules.consumption_billing.currencies to choose)",
            )
            found = []
        return sorted({*found, market})


__all__ = [
    "SetupProblem",
    "connection_problems",
    "csp_settings",
    "fetch_usage",
    "partner_connections",
]
