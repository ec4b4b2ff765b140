"""Entry point of the ``microsoft_csp`` module."""

from __future__ import annotations

from halo_integrator_core import ModuleSpec, hookimpl

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
