"""Entry point of the ``consumption_billing`` module."""

from __future__ import annotations

from halo_integrator_core import ModuleSpec, hookimpl

MODULE = ModuleSpec(
    name="consumption_billing",
    title="Consumption billing",
    description="Azure usage of each customer into recurring-invoice lines",
    default_interval_minutes=24 * 60,
)


@hookimpl
def declare_modules() -> list[ModuleSpec]:
    return [MODULE]
