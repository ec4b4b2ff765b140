"""Entry point of the ``subscription_pricing`` module."""

from __future__ import annotations

from halo_integrator_core import ModuleSpec, hookimpl

MODULE = ModuleSpec(
    name="subscription_pricing",
    title="Subscription pricing",
    description="NCE price sheet of the configured marketplace onto each subscription",
    default_interval_minutes=24 * 60,
)


@hookimpl
def declare_modules() -> list[ModuleSpec]:
    return [MODULE]
