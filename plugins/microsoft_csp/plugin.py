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
    hookimpl,
)

from . import devices, directory, users
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
def register_commands(cli) -> None:  # cli: click.Group
    """``halo-integrator csp ...``: authorize, status, disconnect, consent-url, consent,
    tenants, map, site-mappings."""
    from .commands import csp  # the command line's code, kept out of a sync's imports

    cli.add_command(csp)
