"""Entry point of the ``microsoft_csp`` module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from halo_integrator_core import (
    AssetQuery,
    ModuleContext,
    ModuleSpec,
    Tenant,
    UserQuery,
    WebhookEvent,
    WebhookOutcome,
    WebRoute,
    hookimpl,
)

from . import auth, devices, directory, users
from .settings import MicrosoftCspSettings

MODULE = ModuleSpec(
    name="microsoft_csp",
    title="Microsoft CSP",
    description="Partner Center tenants, licences and subscriptions; Graph users and Intune devices",
    settings_type=MicrosoftCspSettings,
    default_interval_minutes=60,
)


@hookimpl
def declare_modules() -> list[ModuleSpec]:
    return [MODULE]


@hookimpl
def fetch_tenants(context: ModuleContext) -> Iterator[Any]:
    return directory.fetch_tenants(context)


@hookimpl
def fetch_licences(context: ModuleContext, tenant: Tenant, bookmark: str | None) -> Iterator[Any]:
    return directory.fetch_licences(context, tenant)


@hookimpl
def fetch_users(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: UserQuery
) -> Iterator[Any]:
    return users.fetch_users(context, tenant, bookmark, query)


@hookimpl
def fetch_assets(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: AssetQuery
) -> Iterator[Any]:
    return devices.fetch_assets(context, tenant, bookmark, query)


@hookimpl
def fetch_subscriptions(
    context: ModuleContext, tenant: Tenant, bookmark: str | None
) -> Iterator[Any]:
    return directory.fetch_subscriptions(context, tenant)


@hookimpl
def run_finished(context: ModuleContext) -> None:
    directory.run_finished(context)
    # The token files wait up to auth.SAVE_INTERVAL between writes: the next run reads them.
    auth.flush_all()


@hookimpl
def web_routes(context: ModuleContext) -> list[WebRoute]:
    """The Partner Center sign-in and admin-consent callbacks, and the module's admin page."""
    from .web import routes  # the server's code, kept out of a sync's imports

    return routes(context)


@hookimpl
def on_webhook(context: ModuleContext, event: WebhookEvent) -> WebhookOutcome:
    """Partner Center's events at ``/webhooks/microsoft_csp``, verified as Microsoft documents."""
    from . import webhooks  # the receiver's code, kept out of a sync's imports

    return webhooks.handle(context, event)


@hookimpl
def register_commands(cli) -> None:  # cli: click.Group
    """``halo-integrator csp ...``: authorize, status, disconnect, consent-url, consent,
    tenants, map, site-mappings, webhooks, licence, subscription."""
    # The command line's code, kept out of a sync's imports.
    from .commands import csp
    from .webhook_commands import webhooks

    csp.add_command(webhooks)
    cli.add_command(csp)
