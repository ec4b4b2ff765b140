"""What `config check` says about the module: it needs a direct partner's connection.

Subscription pricing is for direct (Tier 1) partners (guide 2.2, 5.1, 5.2): it prices the
subscriptions Partner Center sells them, with Microsoft's price sheet. The configuration
says which partner a connection is: "All Subscribed SKUs" (``licence_import_type =
"skus"``) is the type "all Tier 2 (Indirect) Partners must use", and imports no
subscription to price; "Your Subscriptions" (and "... and SKUs") are for direct partners.
So with no connection importing subscriptions the module cannot work, and the message says
why for an indirect partner and what a direct one changes. (Partner Center's own answer, the
indirect providers it lists for the partner, is asked at each download: see `access`.)
"""

from __future__ import annotations

from collections.abc import Iterator

from halo_integrator_core import ModuleContext

from .access import candidate_connections, csp_settings, is_direct
from .settings import CSP_MODULE, SubscriptionPricingSettings


def config_problems(context: ModuleContext) -> Iterator[str]:
    settings: SubscriptionPricingSettings = context.settings
    config = context.config
    key = f"modules.{context.module}"
    if config is None:
        return
    if not config.module_enabled(CSP_MODULE):
        yield (
            f"{key}: subscription pricing prices the subscriptions of the Microsoft CSP module "
            "and downloads Microsoft's price sheet with one of its connections: enable "
            f"[modules.{CSP_MODULE}] with a connection"
        )
        return
    csp = csp_settings(config)
    if csp is None:
        return  # the CSP module's own settings are wrong: reported with them
    if not csp.connections:
        yield (
            f"{key}: the Microsoft CSP module has no connection to download price sheets "
            f"with: add a [[modules.{CSP_MODULE}.connections]]"
        )
        return
    names = ", ".join(repr(c.name) for c in csp.connections)
    if settings.connection is not None:
        [named] = candidate_connections(settings, csp) or [None]
        if named is None:
            yield (
                f"{key}.connection: no Microsoft CSP connection is named "
                f"{settings.connection!r} (connections: {names})"
            )
        elif not is_direct(named):
            yield (
                f"{key}.connection: connection {named.name!r} imports licence type "
                '"skus" ("All Subscribed SKUs"), the type indirect (Tier 2) partners must use '
                "(guide 5.1): price sheets are for direct (Tier 1) partners. Name a direct "
                'partner\'s connection, or set its licence_import_type to "subscriptions" '
                'or "subscriptions_and_skus" if it is one'
            )
        return
    if not candidate_connections(settings, csp):
        yield (
            f"{key}: subscription pricing is for direct (Tier 1) partners: it prices the "
            "subscriptions Partner Center sells them, and no Microsoft CSP connection imports "
            f'subscriptions: {names} import licence type "skus" ("All Subscribed SKUs"), '
            "the type indirect (Tier 2) partners must use (guide 5.1). An indirect partner's "
            "prices come from its indirect provider: turn this module off "
            "(`halo-integrator modules disable subscription_pricing`). A direct partner sets "
            'licence_import_type = "subscriptions" or "subscriptions_and_skus" on its '
            "connection"
        )
