"""Entry point of the ``subscription_pricing`` module: Microsoft's new-commerce price sheet of
the configured marketplace onto each Microsoft CSP subscription (guide 5.2, 8.1).

The plugin fetches and translates; the core (`halo_integrator_core.pricing`) matches rows to
the stored subscriptions, sets cost and sell prices, and keeps the price history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from halo_integrator_core import ModuleContext, ModuleSpec, hookimpl
from halo_integrator_core.errors import AuthenticationFailed, BadRequest, NotFound, PermissionDenied

from .access import PERMISSION_FIX, partner_access
from .checks import config_problems
from .settings import SubscriptionPricingSettings
from .sheet import downloaded, read_sheet, request_headers, sheet_url

MODULE = ModuleSpec(
    name="subscription_pricing",
    title="Subscription pricing",
    description="NCE price sheet of the configured marketplace onto each subscription",
    settings_type=SubscriptionPricingSettings,
    default_interval_minutes=24 * 60,
)


@hookimpl
def declare_modules() -> list[ModuleSpec]:
    return [MODULE]


@hookimpl
def check_config(context: ModuleContext) -> list[str]:
    return list(config_problems(context))


@hookimpl
def fetch_prices(context: ModuleContext, market: str, timeline: str) -> Iterator[Any]:
    return _fetch(context, market.upper(), timeline)


def _fetch(context: ModuleContext, market: str, timeline: str) -> Iterator[Any]:
    access = partner_access(context)
    access.partner_api_token()  # refuses an app-only connection before anything is asked
    access.refuse_indirect()
    assert context.http is not None and context.endpoints is not None
    url = sheet_url(context.endpoints, market)
    for attempt in (1, 2):
        # A token refused is asked for anew once: the cached one may be older than the
        # API's last word on it (a new sign-in, a revoked session).
        bearer = access.partner_api_token(force_refresh=attempt > 1)
        try:
            with downloaded(
                context.http, url, params={"timeline": timeline}, headers=request_headers(bearer)
            ) as data:
                yield from read_sheet(data, market)
            return
        except AuthenticationFailed as exc:
            if attempt == 1:
                context.log.info("pricing.token_refused_once", connection=access.name)
                continue
            raise access.refused(
                f"the partner API refused the token of connection {access.name!r} for the "
                f"price sheet ({exc.detail}): price sheets accept only a delegated (App+User) "
                "token with the price-sheet permission; an app-only token is never accepted",
                f"run `halo-integrator csp authorize {access.name}` again; "
                + PERMISSION_FIX.format(connection=access.name),
                "401",
            ) from None
        except NotFound:
            if timeline == "future":
                # "If there are no changes expected for the new commerce licensed-based future
                # price list, there will be no future price list returned ... 404 Not Found."
                context.log.info("pricing.no_planned_changes", market=market)
                return
            raise access.refused(
                f"Microsoft has no {timeline} license-based price sheet for market {market}",
                "check [integrator] marketplace (GB or US)",
                "404",
            ) from None
        except PermissionDenied as exc:
            raise access.refused(
                f"the partner API refused the price sheet to the user who authorized "
                f"connection {access.name!r} ({exc.detail}): it needs a Partner Center user "
                "with the Admin Agent or Sales Agent role of a direct (Tier 1) partner; "
                "indirect (Tier 2) resellers get their prices from their indirect provider",
                f"give that user the Admin Agent or Sales Agent role in Partner Center, or run "
                f"`halo-integrator csp authorize {access.name}` as a user who has it",
                "403",
            ) from None
        except BadRequest as exc:
            raise access.refused(
                f"the partner API answered the price-sheet request of connection "
                f"{access.name!r} with 400 ({exc.detail}); the page says partners that get it "
                "should check their authentication",
                PERMISSION_FIX.format(connection=access.name),
                "400",
            ) from None


@hookimpl
def register_commands(cli) -> None:  # cli: click.Group
    """``halo-integrator pricing ...``: import, changes, unmatched."""
    from .commands import pricing  # the command line's code, kept out of a run's imports

    cli.add_command(pricing)
