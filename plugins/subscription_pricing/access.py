"""Who downloads the price sheet: a direct partner's Microsoft CSP connection, as its
authorized Partner Center user.

Price sheets are served by the partner API (``api.partner.microsoft.com``, Entra app
``4990cffe-04e8-4e8b-808a-1175604b879f``, "Microsoft Partner") to App+User tokens only:
"This scenario only supports application user authentication. Application-only isn't yet
supported" (get-a-price-sheet.md), for users with the Admin Agent or Sales Agent role
(Global Admin too, in the 2023 copy). So the download uses the connection's delegated
authorization (`halo_microsoft_csp.delegated.DelegatedTokens`, from `csp authorize`) for the
scope ``https://api.partner.microsoft.com/user_impersonation``, which the connection's
Partner Center app must list (guide 2.2, "Permissions for Subscription Pricing"). A
connection with only its app's own (app-only) token is refused here, with the fix, before
anything is asked of Microsoft.

Price sheets are for direct (Tier 1) partners (guide 2.2, 5.1): an indirect (Tier 2)
reseller buys from its indirect provider, whose prices are its own. The configuration says
which connections are direct (their licence import type; see `checks`); Partner Center says
it too: an indirect reseller has indirect providers, which
``GET /v1/relationships?relationship_type=IsIndirectResellerOf`` lists
(retrieve-a-list-of-indirect-resellers.md: "If the partner is signed in as a reseller ...
use IsIndirectResellerOf"). Each download asks first, and an indirect reseller is refused
with the reason.
"""

from __future__ import annotations

import attrs
import structlog

from halo_integrator_core import ModuleContext
from halo_integrator_core.config import Config, ConfigError, structure_module_settings
from halo_integrator_core.errors import HttpError
from halo_microsoft_csp.auth import PARTNER_API_RESOURCE, PARTNER_CENTER_RESOURCE
from halo_microsoft_csp.delegated import DelegatedTokens, NotAuthorized
from halo_microsoft_csp.errors import MicrosoftAuthError
from halo_microsoft_csp.settings import Connection, LicenceImportType, MicrosoftCspSettings

from .settings import CSP_MODULE, SubscriptionPricingSettings

log = structlog.get_logger(__name__)

#: The Entra app behind api.partner.microsoft.com, whose user_impersonation permission the
#: Partner Center app needs for price sheets (guide 2.2).
PARTNER_API_APP = "4990cffe-04e8-4e8b-808a-1175604b879f"
PERMISSION_FIX = (
    "in the connection's Partner Center app registration, API permissions → Add a permission "
    f"→ APIs my organization uses → search {PARTNER_API_APP} (Microsoft Partner) → "
    "user_impersonation → Add permissions, grant admin consent, then run "
    "`halo-integrator csp authorize {connection}` again"
)


class PriceSheetRefused(MicrosoftAuthError):
    """The price sheet cannot be had for a reason the partner must fix."""


class IndirectPartner(PriceSheetRefused):
    """The connection is an indirect (Tier 2) reseller's: price sheets are not its prices."""


def csp_settings(config: Config | None) -> MicrosoftCspSettings | None:
    """The Microsoft CSP module's settings, or ``None`` when it is off or they are wrong
    (which its own checks report)."""
    if config is None or not config.module_enabled(CSP_MODULE):
        return None
    try:
        return structure_module_settings(config, CSP_MODULE, MicrosoftCspSettings)
    except ConfigError:
        return None


def is_direct(connection: Connection) -> bool:
    """What the configuration says: a connection that imports subscriptions is a direct
    partner's; "All Subscribed SKUs" is the type indirect partners must use (guide 5.1)."""
    return connection.licence_import_type is not LicenceImportType.SKUS


def candidate_connections(
    settings: SubscriptionPricingSettings, csp: MicrosoftCspSettings
) -> list[Connection]:
    """The connections that may download the sheet, best first."""
    if settings.connection is not None:
        return [c for c in csp.connections if c.name == settings.connection]
    return [c for c in csp.connections if is_direct(c)]


@attrs.define
class PartnerAccess:
    """The connection a run downloads with, and its delegated tokens."""

    connection: Connection
    tokens: DelegatedTokens
    context: ModuleContext

    @property
    def name(self) -> str:
        return self.connection.name

    def refused(self, cause: str, fix: str, code: str | None = None) -> PriceSheetRefused:
        return PriceSheetRefused(
            cause=cause,
            fix=fix,
            code=code,
            tenant=str(self.connection.tenant_id),
            app=self.tokens.app_name,
        )

    def partner_api_token(self, *, force_refresh: bool = False) -> str:
        """A delegated token for the partner API, or `PriceSheetRefused` saying why not.
        ``force_refresh`` asks for a new one (after the API refused the cached one)."""
        fix = PERMISSION_FIX.format(connection=self.name)
        try:
            return self.tokens.token(PARTNER_API_RESOURCE, force_refresh=force_refresh)
        except NotAuthorized as exc:
            raise self.refused(
                f"price sheets accept only a delegated (App+User) token, and connection "
                f"{self.name!r} has no Partner Center authorization ({exc.cause}): its app's "
                "own (app-only) token is not accepted for them",
                f"run `halo-integrator csp authorize {self.name}` and sign in as a Partner "
                "Center user with the Admin Agent or Sales Agent role; the app needs the "
                f"price-sheet permission too: {fix}",
                exc.code,
            ) from None
        except MicrosoftAuthError as exc:
            if exc.code in ("AADSTS65001", "AADSTS650057", "AADSTS500011"):
                raise self.refused(
                    f"the sign-in of connection {self.name!r} gives no token for the partner "
                    f"API of price sheets: its Partner Center app lacks the {PARTNER_API_APP} "
                    f"user_impersonation permission, or it is not consented ({exc.cause})",
                    fix,
                    exc.code,
                ) from None
            raise

    def refuse_indirect(self) -> None:
        """Ask Partner Center whether the partner is an indirect reseller; an answer other
        than a list leaves the question to the price sheet's own answer."""
        http, endpoints = self.context.http, self.context.endpoints
        assert http is not None and endpoints is not None
        url = f"{endpoints.url('partner_center').rstrip('/')}/v1/relationships"
        try:
            body = http.json(
                "GET",
                url,
                params={"relationship_type": "IsIndirectResellerOf"},
                headers={
                    **self.tokens.headers(PARTNER_CENTER_RESOURCE),
                    "Accept": "application/json",
                },
            )
        except (HttpError, MicrosoftAuthError) as exc:
            log.warning("pricing.partner_tier_unknown", connection=self.name, error=str(exc))
            return
        providers = [
            str(item.get("name") or item.get("id"))
            for item in (body.get("items") or [] if isinstance(body, dict) else [])
            if isinstance(item, dict) and str(item.get("state") or "active").lower() == "active"
        ]
        if providers:
            raise IndirectPartner(
                cause=f"connection {self.name!r} is an indirect (Tier 2) reseller: Partner "
                f"Center lists its indirect provider(s) {', '.join(providers)}; Microsoft's "
                "price sheets are for direct (Tier 1) partners, and an indirect reseller's "
                "prices are its provider's",
                fix="take subscription prices from your indirect provider (distributor) and "
                "turn this module off: `halo-integrator modules disable subscription_pricing`"
                "; if another connection is a direct partner's, name it in "
                "[modules.subscription_pricing] connection",
                code="IsIndirectResellerOf",
                tenant=str(self.connection.tenant_id),
                app=self.tokens.app_name,
            )


def partner_access(context: ModuleContext) -> PartnerAccess:
    """The first candidate connection that is authorized (the first candidate if none
    is), or a refusal saying what to do."""
    if context.http is None or context.endpoints is None or context.state_dir is None:
        raise RuntimeError("the subscription pricing module needs the host's HTTP client")
    settings: SubscriptionPricingSettings = context.settings
    csp = csp_settings(context.config)
    if csp is None:
        raise PriceSheetRefused(
            cause="subscription pricing downloads price sheets with a Microsoft CSP "
            "connection's Partner Center authorization, and the microsoft_csp module is not "
            "enabled (or its settings are wrong)",
            fix="enable [modules.microsoft_csp] with a connection and run "
            "`halo-integrator config check`",
            code=None,
            tenant=None,
            app=None,
        )
    candidates = candidate_connections(settings, csp)
    if not candidates:
        raise PriceSheetRefused(
            cause="no Microsoft CSP connection of a direct partner to download price sheets "
            "with (`halo-integrator config check` says why)",
            fix="run `halo-integrator config check`",
            code=None,
            tenant=None,
            app=None,
        )
    accesses = [
        PartnerAccess(
            connection=connection,
            tokens=DelegatedTokens(connection, context.endpoints, context.http, context.state_dir),
            context=context,
        )
        for connection in candidates
    ]
    return next((a for a in accesses if a.tokens.status().authorized), accesses[0])
