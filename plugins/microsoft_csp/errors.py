"""What Microsoft's refusals mean, and what to do about them (guide section 12.2).

The identity platform answers a token request it refuses with an ``AADSTS`` code; Partner
Center and Graph answer a call they refuse with their own codes. Each known code is a row of
a table giving the error type, its cause and its fix; the message names the tenant and the
app registration involved, so an MSP engineer reading a log line knows where to click.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from halo_integrator_core.errors import HttpError, PermissionDenied


class MicrosoftAuthError(Exception):
    """A refused token request or call, with its cause and fix."""

    def __init__(
        self,
        *,
        cause: str,
        fix: str,
        code: str | None,
        tenant: str | None,
        app: str | None,
        detail: str | None = None,
    ) -> None:
        self.cause = cause
        self.fix = fix
        self.code = code
        self.tenant = tenant
        self.app = app
        self.detail = detail
        code_text = f"{code}: " if code else ""
        # Every message names the tenant and the app registration involved.
        missing = [
            f"{label} {value}"
            for label, value in (("tenant", tenant), ("app", app))
            if value and value not in cause
        ]
        where = f" ({'; '.join(missing)})" if missing else ""
        super().__init__(f"{code_text}{cause}{where}. Fix: {fix}")


class ConsentMissing(MicrosoftAuthError):
    """The multi-tenant app has no service principal in the customer tenant."""


class ApplicationNotFound(MicrosoftAuthError):
    """The client ID is not known in the tenant asked for."""


class SecretExpired(MicrosoftAuthError):
    pass


class SecretInvalid(MicrosoftAuthError):
    pass


class RedirectUriMismatch(MicrosoftAuthError):
    pass


class ConsentRequired(MicrosoftAuthError):
    pass


class WrongPartnerCenterPermission(MicrosoftAuthError):
    """The app's permission is for another API than Partner Center (guide 12.2, first row)."""


class ClientInvalid(MicrosoftAuthError):
    pass


class ResellerRelationshipMissing(MicrosoftAuthError):
    """Partner Center's Forbidden: no (or an expired) reseller relationship, or no access."""


class InsufficientPrivileges(MicrosoftAuthError):
    """Graph's Authorization_RequestDenied."""


class TokenRequestFailed(MicrosoftAuthError):
    """A refusal with a code this table does not know; the message is Microsoft's own."""


@attrs.frozen
class Row:
    error: type[MicrosoftAuthError]
    cause: str
    fix: str


_CONSENT_FIX = (
    "grant admin consent for tenant {tenant} with an administrator native to that tenant "
    "(the Grant Admin Consent link), then check that the GDAP relationship with it is active, "
    "holds the roles the modules need, and that the AdminAgents group has access to them"
)

#: AADSTS code → what it means. Codes and meanings from the identity platform's error
#: reference and the guide's common-errors table.
AADSTS: Mapping[int, Row] = {
    7000229: Row(
        ConsentMissing,
        "app {app} has no service principal in tenant {tenant}: admin consent has not been "
        "granted there (the identity of the calling application could not be established)",
        _CONSENT_FIX,
    ),
    700016: Row(
        ApplicationNotFound,
        "app {app} was not found in the directory of tenant {tenant}: it was never consented "
        "there, or the client ID or tenant ID is wrong",
        "check the client ID and tenant ID in the connection; for a customer tenant, "
        + _CONSENT_FIX,
    ),
    7000222: Row(
        SecretExpired,
        "the client secret of app {app} has expired",
        "create a new client secret in the app registration (Certificates & secrets), put its "
        "Value where the connection's client_secret reference points; for the Partner Center "
        "app, run `halo-integrator csp disconnect` and authorize again",
    ),
    7000215: Row(
        SecretInvalid,
        "the client secret given for app {app} is wrong",
        "use the secret's Value, not its Secret ID, and check the environment variable or "
        "file the connection's client_secret reference points to",
    ),
    50011: Row(
        RedirectUriMismatch,
        "the redirect URI sent does not match the redirect URIs registered for app {app}",
        "add the redirect URI that `halo-integrator csp authorize` prints to the app "
        "registration (Authentication → Redirect URIs), exactly as printed",
    ),
    650057: Row(
        WrongPartnerCenterPermission,
        "app {app} asks for a permission its registration does not list: its user_impersonation "
        "permission is for another API than Microsoft Partner Center",
        "in the app registration, remove the wrong user_impersonation permission, then Add a "
        "permission → APIs my organization uses → search fa3d9a0c-3fb0-42cc-9193-47c7ecd2edbd → "
        "user_impersonation (its description is 'Access Partner Center'); grant consent and "
        "authorize again",
    ),
    65001: Row(
        ConsentRequired,
        "app {app} has not been consented for the permissions it asks for in tenant {tenant}",
        "grant consent again (admin consent is needed again after its API permissions change)",
    ),
}

_CODE = re.compile(r"AADSTS(\d+)")


def token_error(
    result: Mapping[str, Any], *, tenant: str | None, app: str | None
) -> MicrosoftAuthError:
    """The typed error of an MSAL error result (its ``error``, ``error_codes``, ...)."""
    codes = result.get("error_codes") or []
    match = _CODE.search(str(result.get("error_description", "")))
    code = int(codes[0]) if codes else int(match.group(1)) if match else None
    description = str(result.get("error_description") or "").split("\r\n")[0].split(" Trace ID:")[0]
    row = AADSTS.get(code) if code is not None else None
    where = {"tenant": tenant or "?", "app": app or "?"}
    if row is not None:
        return row.error(
            cause=row.cause.format(**where),
            fix=row.fix.format(**where),
            code=f"AADSTS{code}",
            tenant=tenant,
            app=app,
            detail=description,
        )
    error = str(result.get("error") or "error")
    if error == "invalid_client":
        return ClientInvalid(
            cause=f"the identity platform refused app {where['app']} for tenant {where['tenant']} "
            f"(invalid_client: {description or 'no description'})",
            fix="check the connection's client ID and client secret against the app registration",
            code=f"AADSTS{code}" if code else error,
            tenant=tenant,
            app=app,
            detail=description,
        )
    return TokenRequestFailed(
        cause=f"the identity platform refused a token for app {where['app']} in tenant "
        f"{where['tenant']}: {error}: {description or 'no description'}",
        fix="read Microsoft's description above; the request log has the call",
        code=f"AADSTS{code}" if code else error,
        tenant=tenant,
        app=app,
        detail=description,
    )


def call_error(error: HttpError, *, api: str, tenant: str | None, app: str | None) -> Exception:
    """A clearer error for the refusals of Partner Center (``api="partner_center"``) and
    Graph (``api="graph"``) that the guide lists; other errors are returned as they are."""
    if not isinstance(error, PermissionDenied):
        return error
    if api == "graph" and error.code in (
        "Authorization_RequestDenied",
        "Authentication_MSGraphPermissionMissing",
    ):
        return InsufficientPrivileges(
            cause=f"insufficient privileges for app {app or '?'} in tenant {tenant or '?'}",
            fix="give the GDAP app Application (not Delegated) permissions and grant admin "
            "consent; check the GDAP relationship with the tenant is active with the admin "
            "roles needed and that the AdminAgents group has access to them",
            code=error.code,
            tenant=tenant,
            app=app,
            detail=error.detail,
        )
    if api == "partner_center":
        return ResellerRelationshipMissing(
            cause=f"Partner Center refused the call for tenant {tenant or '?'} (Forbidden): the "
            "account authorized has no access to customers, or the reseller relationship with "
            "this customer is missing or has expired",
            fix="sign in to Partner Center as the authorized account and open the Customer "
            "list; if it loads, review the reseller relationship of this customer and sync "
            "again once it is re-established",
            code=error.code,
            tenant=tenant,
            app=app,
            detail=error.detail,
        )
    return error
