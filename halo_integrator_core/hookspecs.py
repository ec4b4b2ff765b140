"""The hook contract between the host and its plugins.

Each spec's docstring is its documentation (the README repeats it for plugin authors). The
host calls every hook with keyword arguments only, and only on the plugin that declared the
module being run: a plugin never sees another module's calls. Fetch hooks return an iterable
(usually a generator) of records that the core consumes as it goes, storing a batch at a
time, so a plugin streams pages rather than collecting them. The entity kinds a module syncs
are the fetch hooks its plugin implements.
"""

from __future__ import annotations

from collections.abc import Iterable

import click
import pluggy

from .context import ModuleContext
from .models import (
    AssetQuery,
    Checkpoint,
    DirectoryUser,
    Licence,
    ManagedDevice,
    ModuleSpec,
    Notice,
    Price,
    RecordError,
    Removed,
    Subscription,
    Tenant,
    UsageLine,
    UserQuery,
    WebhookEvent,
    WebhookOutcome,
    WebRoute,
)

PROJECT_NAME = "halo_integrator"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def declare_modules() -> Iterable[ModuleSpec]:
    """Declare the modules this plugin provides.

    Called once, right after the plugin is registered, before the configuration of its
    modules is read. Return one `ModuleSpec` per module (name, title, settings type, default
    interval). A plugin loaded from an entry point must declare a module with
    the entry point's own name: that is how the host leaves a disabled module's code
    unimported. Must not do I/O or read configuration.
    """


@hookspec
def fetch_tenants(context: ModuleContext) -> Iterable[Tenant | RecordError | Checkpoint]:
    """Yield every customer tenant the module can reach, with its access state.

    Called once per sync of the module, before anything per tenant. The host stores the
    tenants, applies the tenant mappings (tenant → customer, or do-not-import) and then calls
    the per-tenant hooks for each mapped tenant. A tenant missing from a complete listing is
    marked inactive. Must not write anywhere: return records and let the core store them.
    """


@hookspec
def fetch_licences(
    context: ModuleContext, tenant: Tenant, bookmark: str | None
) -> Iterable[Licence | Removed | RecordError | Checkpoint]:
    """Yield the tenant's licences (subscribed SKUs) with their unit counts.

    Called per mapped tenant. ``bookmark`` is
    the last `Checkpoint.bookmark` this stream committed for the tenant, or ``None``. Which
    users hold a licence is taken from `DirectoryUser.assigned_sku_ids`, not from here.
    """


@hookspec
def fetch_subscriptions(
    context: ModuleContext, tenant: Tenant, bookmark: str | None
) -> Iterable[Subscription | Removed | RecordError | Checkpoint]:
    """Yield the subscriptions the partner sells to the tenant (quantity, term, dates).

    Called per mapped tenant, after licences. Same bookmark and deactivation rules as `fetch_licences`.
    """


@hookspec
def fetch_users(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: UserQuery
) -> Iterable[DirectoryUser | Removed | RecordError | Notice | Checkpoint]:
    """Yield the tenant's directory users, in full or as changes since ``bookmark``.

    Called per mapped tenant, after subscriptions. With no bookmark,
    list every user and end with ``Checkpoint(bookmark=..., complete=True)``; with one, yield
    only what changed (`Removed` for deletions, its ``reason`` ``changed`` for a soft delete
    and ``deleted`` for a hard one) and end with ``complete=False``. A bookmark the source
    no longer accepts (expired) starts a full listing instead, ending ``complete=True``.
    `LATEST_BOOKMARK` asks for no records, only a checkpoint from which later rounds see
    what changes after now. ``query`` says which group memberships, extra properties and
    sign-in dates the core's user rules need (see `UserQuery`). A payload that cannot be
    translated is yielded as `RecordError`, never raised. Must not keep the directory in
    memory: yield page by page.
    """


@hookspec
def fetch_assets(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: AssetQuery
) -> Iterable[ManagedDevice | RecordError | Notice | Checkpoint]:
    """Yield every managed device of the tenant, then ``Checkpoint(bookmark=None, complete=True)``.

    Called per mapped tenant, after users, so that devices can be matched to the users just
    stored. Devices are always listed in full (no deltas); a device missing from a complete
    listing is taken as gone. ``query`` (see `AssetQuery`) names extra properties to carry
    in ``attributes`` and whether to read devices per user (the older "user method"). Set
    ``user_id``, ``user_principal_name`` and ``email_address`` as the source gives them, for
    the core to find the device's user. A payload that cannot be translated is yielded as
    `RecordError`. Yield page by page.
    """


@hookspec
def fetch_usage(
    context: ModuleContext, period: str
) -> Iterable[UsageLine | RecordError | Notice | Checkpoint]:
    """Yield metered usage rows of every tenant for a billing period.

    Called by a billing module's run (`halo_integrator_core.billing`). ``period`` is
    ``current`` or ``last`` (unbilled usage of that billing period, an estimate),
    ``latest`` (the usage billed on the latest invoice), ``YYYY-MM`` (the usage billed for
    that month) or an invoice ID. Each `UsageLine` carries its tenant, its billing month
    (``period``, ``YYYY-MM``) and the invoice that billed it (``None`` when unbilled); the
    core maps rows to customers through the tenant mappings, never bills an unmapped
    tenant's rows, groups and prices them. Say "no data for this period" with a `Notice`,
    not an error. Stream: never hold an export in memory. End with a `Checkpoint` only when
    every row of the period was yielded.
    """


@hookspec
def fetch_prices(
    context: ModuleContext, market: str, timeline: str
) -> Iterable[Price | RecordError | Notice]:
    """Yield the price-sheet rows of ``market`` (for example ``GB`` or ``US``).

    Called by a pricing module's run, once per ``timeline``: ``current`` (the prices in
    force) and, when asked, ``future`` (the prices the source plans, from their effective
    dates; yield nothing when none are planned). The core keeps only the rows of products
    its stored subscriptions hold, matches them to the subscriptions, sets cost and sell
    prices and keeps the history of price changes; the plugin only translates the sheet.
    A `Price`'s ``unit_price`` is a unit's charge for one billing period of its plan (a
    sheet that states a whole term's price is divided: `pricing.period_price`); rows in any
    currency may be yielded, the core keeps those in the partner's billing currency.
    A row that cannot be translated is yielded as `RecordError`. Stream: never hold the
    whole sheet in memory. Raise (with the cause and the fix in the message) when the
    sheet cannot be had at all: no authorization, a partner the source refuses.
    """


@hookspec
def run_finished(context: ModuleContext) -> None:
    """The module's run is over: put on disk what the plugin keeps between runs.

    Called once after each run of the module (a sync, a usage import, a price import), once
    its results are stored, whether it succeeded, completed with errors or failed, dry runs
    included (``context.dry_run``). A plugin that defers writes for speed (the Microsoft CSP
    module writes its token files at most every few seconds) writes them here, so that the
    next run, in this process or another, finds them. An exception is logged and changes
    nothing of the run's outcome. Must be quick: the next run may be waiting.
    """


@hookspec
def check_config(context: ModuleContext) -> Iterable[str]:
    """Say what in the configuration keeps this module from working, beyond the types of
    its own settings (which the host has checked already).

    Called whenever the enabled modules are loaded: by `config check`, and before any run.
    ``context.settings`` is the module's own settings and ``context.config`` the whole
    configuration, so a module can check its settings against another module's (a pricing
    module against the connections of the module whose subscriptions it prices). Return
    one line per problem, starting with the key path it is about and saying the cause and
    the fix. Must not do I/O (no network, no store) and must be quick.
    """


@hookspec
def on_webhook(context: ModuleContext, event: WebhookEvent) -> WebhookOutcome | None:
    """Handle a webhook addressed to this plugin's module and say what it meant.

    Called by the HTTP server for each request to ``/webhooks/<module>``. Verify the
    signature over ``event.body`` before trusting anything in it; answer a bad request with
    a 4xx `WebhookOutcome` rather than raising. The core logs the request and the outcome
    as an inbound request and syncs the kinds in ``WebhookOutcome.refresh``. Must not block
    for long: the sender is waiting.
    """


@hookspec
def web_routes(context: ModuleContext) -> Iterable[WebRoute]:
    """Pages and endpoints this module serves from the integrator's HTTP server.

    Called once when `halo-integrator run` starts its server. Each `WebRoute` path starts
    with ``/<module>/``: OAuth redirect targets (public, validated by the app), admin pages
    (behind the admin credential). ``context.public_url`` is where the server is reached,
    for building redirect URIs.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the command line.

    Called once at start-up, before the command line is parsed, only for plugins of enabled
    modules (a disabled module's plugin is never imported, so its commands are absent). Add
    commands or groups with ``cli.add_command(...)``; a command that needs the configuration
    gets it from click's context object (``click.get_current_context().obj.config()``), as
    the core commands do. Must not read the configuration or do I/O, and should be cheap:
    it runs on every invocation, whichever command is asked for.
    """
