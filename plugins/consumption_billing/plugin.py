"""Entry point of the ``consumption_billing`` module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from halo_integrator_core import ModuleContext, ModuleSpec, hookimpl

from .settings import ConsumptionBillingSettings

MODULE = ModuleSpec(
    name="consumption_billing",
    title="Consumption billing",
    description="Azure usage of each customer into recurring-invoice lines",
    settings_type=ConsumptionBillingSettings,
    default_interval_minutes=24 * 60,
)


@hookimpl
def declare_modules() -> list[ModuleSpec]:
    return [MODULE]


@hookimpl
def fetch_usage(context: ModuleContext, period: str) -> Iterator[Any]:
    """Unbilled or invoiced Azure usage from Graph's partner billing export (see `fetch`)."""
    from .fetch import fetch_usage as fetch

    return fetch(context, period)


@hookimpl
def check_config(context: ModuleContext) -> list[str]:
    """The CSP module's connection this module reads with; what the attribute set allows."""
    from .checks import config_problems

    return list(config_problems(context))


@hookimpl
def register_commands(cli) -> None:  # cli: click.Group
    """``halo-integrator billing ...``: import, report, periods, close, reopen."""
    from .commands import billing  # the command line's code, kept out of a run's imports

    cli.add_command(billing)
