"""Admin consent of the GDAP app in a customer tenant (guide 4.3), and its record.

An administrator native to the customer tenant opens the tenant's admin-consent URL (the v2
endpoint, asking for the app's configured Graph permissions with ``/.default``), accepts, and
is sent back to our redirect URI with ``admin_consent=True&tenant=...`` or with an error,
which also carries ``admin_consent=True``: `parse_consent_callback` looks at ``error``
first. Each answer is kept as an inbound row of the request log (outcome ``consent_granted``
or ``consent_failed``, the AADSTS description as detail), so the store needs nothing new;
whether consent really holds is learnt on each sync, by asking for a token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import quote, urlencode

import attrs
import structlog

from halo_integrator_core.config import CLOUD_HOSTS, EndpointSettings
from halo_integrator_core.store import Store
from halo_integrator_core.store.request_log import record_inbound

log = structlog.get_logger(__name__)

MODULE = "microsoft_csp"
#: The redirect URI the emulator registers on every GDAP app; register it on yours too.
DEFAULT_CONSENT_REDIRECT_URI = "http://localhost:8400/consent/callback"
#: Tenant values the v2 admin-consent endpoint must not be given ("Do not use 'common'").
_NOT_A_TENANT = ("", "common", "consumers")


@attrs.frozen(kw_only=True)
class ConsentResult:
    """What an admin-consent answer says."""

    #: The tenant the consent was asked for (or, failing that, the one the answer names).
    tenant: str | None
    ok: bool
    #: ``error`` of the answer (``consent_required``, ``access_denied``, ...), or one of ours:
    #: ``state_mismatch``, ``tenant_mismatch``, ``invalid_response``.
    error: str | None = None
    #: The first line of ``error_description`` (``AADSTS65004: ...``), without trace IDs.
    description: str | None = None
    scope: str | None = None

    @property
    def code(self) -> str | None:
        """The ``AADSTS<n>`` code of the description, if any."""
        head = (self.description or "").split(":", 1)[0]
        return head if head.startswith("AADSTS") else None


def graph_default_scope(endpoints: EndpointSettings) -> str:
    """``/.default`` of the cloud's Graph: the permissions configured on the app."""
    return f"{CLOUD_HOSTS[endpoints.cloud]['graph']}/.default"


def consent_url(
    endpoints: EndpointSettings, gdap_client_id: str, tenant_id: str, redirect_uri: str, state: str
) -> str:
    """The v2 admin-consent URL of ``tenant_id`` for the GDAP app.

    ``tenant_id`` is the customer's tenant ID (or one of its domains), never ``common``.
    ``redirect_uri`` must be registered on the app exactly as given.
    """
    tenant = str(tenant_id).strip()
    if tenant.lower() in _NOT_A_TENANT:
        raise ValueError(
            f"admin consent needs the customer's tenant ID, not {tenant_id!r}: the v2 "
            "admin-consent endpoint refuses 'common'"
        )
    query = urlencode(
        {
            "client_id": str(gdap_client_id),
            "scope": graph_default_scope(endpoints),
            "redirect_uri": redirect_uri,
            "state": state,
        }
    )
    return (
        f"{endpoints.url('login').rstrip('/')}/{quote(tenant, safe='')}/v2.0/adminconsent?{query}"
    )


def parse_consent_callback(
    query: Mapping[str, str],
    *,
    expected_tenant: str | None = None,
    expected_state: str | None = None,
) -> ConsentResult:
    """What the query of a request to the consent redirect URI says.

    ``expected_state`` (the ``state`` of the URL handed out) and ``expected_tenant`` (the
    tenant ID it was for) are checked when given: the ``tenant`` of an answer is not to be
    trusted on its own. An ``error`` makes a failure whatever else the answer holds.
    """
    answered_tenant = query.get("tenant") or None
    tenant = expected_tenant or answered_tenant
    if expected_state is not None and query.get("state") != expected_state:
        return ConsentResult(
            tenant=tenant,
            ok=False,
            error="state_mismatch",
            description="the answer does not belong to the consent URL handed out (its state "
            "differs)",
        )
    error = query.get("error")
    if error:  # before admin_consent: error redirects carry admin_consent=True as well
        description = (query.get("error_description") or "").split("\r\n")[0].split("\n")[0]
        return ConsentResult(
            tenant=tenant, ok=False, error=error, description=description.strip() or None
        )
    if str(query.get("admin_consent", "")).lower() != "true" or not answered_tenant:
        return ConsentResult(
            tenant=tenant,
            ok=False,
            error="invalid_response",
            description="the answer holds neither admin_consent=True with a tenant nor an error",
        )
    if expected_tenant and answered_tenant.lower() != str(expected_tenant).lower():
        return ConsentResult(
            tenant=tenant,
            ok=False,
            error="tenant_mismatch",
            description=f"consent was given in tenant {answered_tenant}, not in tenant "
            f"{expected_tenant}: the administrator who signed in belongs to another tenant",
        )
    return ConsentResult(tenant=tenant, ok=True, scope=query.get("scope") or None)


#: AADSTS code of a failed consent → what to do about it.
_FIXES = {
    "AADSTS65004": "the administrator declined, or may not consent: sign in with a Global "
    "Administrator (or a role that may create enterprise apps) native to the customer tenant, "
    "and press Accept",
    "AADSTS50020": "the account that signed in is not native to the customer tenant, or the "
    "GDAP relationship with the tenant is not active: sign in with an administrator created "
    "in that tenant (not admin@your-msp), and check the relationship in Partner Center",
    "AADSTS90130": "the URL named 'common' instead of the tenant: use the URL "
    "`halo-integrator csp consent-url TENANT` prints",
    "AADSTS50011": "add the redirect URI to the GDAP app registration (Authentication → "
    "Redirect URIs) exactly as printed, and try again",
    "AADSTS700016": "the GDAP app's client ID is wrong, or the app is not multi-tenant: check "
    "the connection's gdap_app.client_id and the app registration's supported account types",
}


def consent_fix(result: ConsentResult) -> str:
    """What to do after a failed consent, in the guide's words where it has some."""
    fix = _FIXES.get(result.code or "")
    if fix:
        return fix
    if result.error == "tenant_mismatch":
        return "open the URL again in a private window and sign in with an administrator native to the customer tenant"
    if result.error == "state_mismatch":
        return "run `halo-integrator csp consent TENANT` again and use the URL it prints, once"
    return (
        "sign in with an administrator native to the customer tenant, who may create enterprise "
        "apps, complete MFA and accept; check the GDAP relationship with the tenant is active"
    )


def record_consent(
    store: Store,
    result: ConsentResult,
    *,
    url: str,
    connection: str | None = None,
    duration_ms: int | None = None,
    at: datetime | None = None,
) -> None:
    """Keep ``result`` as an inbound request-log row (``export --what requests``).

    ``url`` is the path and query the answer arrived with; its secrets are removed.
    """
    started = time.monotonic()
    detail = result.description
    if result.ok:
        detail = f"admin consent granted ({result.scope or 'the app permissions'})"
    elif detail is None:
        detail = result.error
    record_inbound(
        store,
        module=MODULE,
        method="GET",
        url=url,
        status=200 if result.ok else 400,
        outcome="consent_granted" if result.ok else "consent_failed",
        detail=detail,
        tenant_id=result.tenant,
        connection=connection,
        duration_ms=duration_ms
        if duration_ms is not None
        else round((time.monotonic() - started) * 1000),
        at=at,
    )
    log.info(
        "csp.consent_recorded",
        connection=connection,
        tenant=result.tenant,
        ok=result.ok,
        error=result.error,
        detail=detail,
    )
