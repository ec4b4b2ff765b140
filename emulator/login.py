"""The emulated Entra ID login service: ``login.microsoftonline.com``, served under ``/login``.

| method and path | does | follows |
|---|---|---|
| ``GET /login/{tenant}/v2.0/.well-known/openid-configuration`` | OIDC discovery | v2-protocols-oidc |
| ``GET /login/{tenant}/discovery/v2.0/keys`` | the (empty) signing key set | v2-protocols-oidc |
| ``POST /login/{tenant}/oauth2/v2.0/token`` | client credentials, code, refresh | v2-oauth2-*-flow |
| ``GET /login/{tenant}/oauth2/v2.0/authorize`` | signs in the partner's admin at once | v2-oauth2-auth-code-flow |
| ``GET /login/{tenant}/adminconsent`` | v1 admin consent | auth-v2-service (Graph) |
| ``GET /login/{tenant}/v2.0/adminconsent`` | v2 admin consent | v2-admin-consent |

``{tenant}`` is a tenant ID, the domain of a known tenant, ``organizations`` or ``common``.

Who may get what (the world's rules):

* App-only tokens (client credentials) are issued in an app's home tenant, and in a customer
  tenant only to the GDAP app of the customer's partner once the customer has consented
  (``Customer.consented``: the app has a service principal there); elsewhere a multi-tenant
  app gets AADSTS7000229 and a single-tenant app AADSTS700016. They carry the app's
  ``permissions`` as ``roles``.
* The one user who signs in is each partner's admin (a stable ID derived from the partner's
  tenant ID). Delegated tokens for a customer tenant (the Secure Application Model: one
  refresh token, any resource, any customer) need the multi-tenant GDAP app, an active GDAP
  relationship (else AADSTS50020) and the customer's consent (else AADSTS65001).
* Authorization codes are single use (AADSTS54005), live ten minutes (AADSTS70008), are
  bound to the ``redirect_uri`` of the authorize request (AADSTS50011) and to its S256
  ``code_challenge`` (AADSTS501481). Refresh tokens rotate: each answer carries a new one;
  the old one stays valid, as Entra's docs say ("Refresh tokens aren't revoked when used").

Every error comes from one table, `ERRORS` (AADSTS code → status, ``error``, description),
which the rules and the injected faults (`fault_token_error`) share. Tests change the
service through ``emulator.state["login"]``: ``codes`` (each with its ``expires`` epoch),
``deny_consent`` (admin consent answers AADSTS65004).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import attrs
from werkzeug.wrappers import Request, Response

from .app import GRAPH, RESOURCES, Emulator, entra_error, json_response
from .world import App, Customer, Partner, World

#: Authorization codes "typically expire after about 10 minutes" (v2-oauth2-auth-code-flow).
CODE_LIFETIME = 600
ACCESS_LIFETIME = 3599
ID_TOKEN_LIFETIME = 3600
#: Refresh tokens of web apps expire after 90 days of inactivity (configurable-token-lifetimes).
REFRESH_INACTIVITY = 90 * 24 * 3600
META_TENANTS = ("common", "organizations")
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
SUPPORTED_GRANTS = ("client_credentials", "authorization_code", "refresh_token")
PKCE_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
CLAIMS_SUPPORTED = [
    "sub",
    "iss",
    "cloud_instance_name",
    "cloud_instance_host_name",
    "cloud_graph_host_name",
    "msgraph_host",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "acr",
    "nonce",
    "preferred_username",
    "name",
    "tid",
    "ver",
    "at_hash",
    "c_hash",
    "email",
]

DOC_OIDC = "https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc"
DOC_CODE = "https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow"
DOC_TOKEN = "https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow"
DOC_CONSENT_V1 = "https://learn.microsoft.com/graph/auth-v2-service"
DOC_CONSENT_V2 = "https://learn.microsoft.com/entra/identity-platform/v2-admin-consent"


# -- errors -----------------------------------------------------------------------------------


@attrs.frozen
class AadError:
    """One AADSTS error: HTTP status and ``error`` at the token endpoint, description template."""

    status: int
    error: str
    text: str


#: AADSTS code → how Entra answers it. Wording from the error-code reference and captured
#: responses (microsoft-apis.md §5.3); ``{fields}`` are filled per request, or shown as
#: ``<field>`` when a fault is injected without a request to take them from.
ERRORS: dict[int, AadError] = {
    50011: AadError(
        400,
        "invalid_client",
        "The redirect URI '{redirect_uri}' specified in the request does not match the redirect "
        "URIs configured for the application '{client_id}'. Make sure the redirect URI sent in "
        "the request matches one added to your application in the Azure portal. Navigate to "
        "https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
    ),
    50020: AadError(
        400,
        "invalid_grant",
        "User account '{user}' from identity provider '{idp}' does not exist in tenant "
        "'{directory}' and cannot access the application '{client_id}'({app_name}) in that "
        "tenant. The account needs to be added as an external user in the tenant first. Sign "
        "out and sign in again with a different Azure Active Directory user account.",
    ),
    50147: AadError(
        400, "invalid_request", "The size of the code challenge parameter is not valid."
    ),
    50194: AadError(
        400,
        "invalid_request",
        "Application '{client_id}'({app_name}) is not configured as a multi-tenant application. "
        "Usage of the /common endpoint is not supported for such applications created after "
        "'10/15/2018'. Use a tenant-specific endpoint or configure the application to be "
        "multi-tenant.",
    ),
    54005: AadError(
        400,
        "invalid_grant",
        "OAuth2 Authorization code was already redeemed, please retry with a new valid code or "
        "use an existing refresh token.",
    ),
    65001: AadError(
        400,
        "invalid_grant",
        "The user or administrator has not consented to use the application with ID "
        "'{client_id}' named '{app_name}'. Send an interactive authorization request for this "
        "user and resource.",
    ),
    650057: AadError(
        400,
        "invalid_client",
        "Invalid resource. The client has requested access to a resource which is not listed in "
        "the requested permissions in the client's application registration. Client app ID: "
        "{client_id}({app_name}). Resource value from request: {resource}. Resource app ID: "
        "{resource_app}. List of valid resources from app registration: {valid}.",
    ),
    65004: AadError(
        400, "consent_required", "The resource owner or authorization server denied the request."
    ),
    70000: AadError(400, "invalid_grant", "Provided grant is invalid or malformed."),
    70002: AadError(
        401,
        "invalid_client",
        "Error validating credentials. The specified client_secret does not match the expected "
        "value for this client. Correct the client_secret and try again.",
    ),
    70003: AadError(
        400, "unsupported_grant_type", "The app requested an unsupported grant type '{grant_type}'."
    ),
    70005: AadError(
        400,
        "unsupported_response_type",
        "response_type '{response_type}' is not enabled for the application.",
    ),
    70008: AadError(
        400,
        "invalid_grant",
        "The provided authorization code or refresh token has expired due to inactivity. Send a "
        "new interactive authorization request for this user and resource.",
    ),
    70011: AadError(
        400,
        "invalid_scope",
        "The provided value for the input parameter 'scope' is not valid. The scope {scope} is "
        "not valid.",
    ),
    90002: AadError(
        400,
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud. Check with your subscription administrator, this may "
        "happen if there are no active subscriptions for the tenant.",
    ),
    90100: AadError(400, "invalid_request", "The parameter '{parameter}' is empty or not valid."),
    90130: AadError(
        400,
        "invalid_request",
        "The application is not supported over the /common or /consumers endpoints. Please use "
        "the /organizations or tenant-specific endpoint.",
    ),
    501481: AadError(
        400,
        "invalid_grant",
        "The Code_Verifier does not match the code_challenge supplied in the authorization "
        "request.",
    ),
    501491: AadError(400, "invalid_request", "Invalid size of Code_Challenge parameter."),
    700005: AadError(
        400,
        "invalid_grant",
        "Provided Authorization Code is intended to use against other tenant, thus rejected.",
    ),
    700016: AadError(
        400,
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{directory}'. "
        "This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You may have sent your "
        "authentication request to the wrong tenant.",
    ),
    700022: AadError(
        400,
        "invalid_scope",
        "The provided value for the input parameter scope is not valid because it contains more "
        "than one resource. Scope {scope} is not valid.",
    ),
    700082: AadError(
        400,
        "invalid_grant",
        "The refresh token has expired due to inactivity. The token was issued on {issued} and "
        "was inactive for {inactive}.",
    ),
    900023: AadError(
        400,
        "invalid_request",
        "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid "
        "external domain.",
    ),
    900144: AadError(
        400,
        "invalid_request",
        "The request body must contain the following parameter: '{parameter}'.",
    ),
    900561: AadError(
        400,
        "invalid_request",
        "The endpoint only accepts POST, OPTIONS requests. Received a {method} request.",
    ),
    900971: AadError(400, "invalid_request", "No reply address provided."),
    7000215: AadError(
        401,
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app "
        "'{client_id}'.",
    ),
    7000218: AadError(
        401,
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    ),
    7000222: AadError(
        401,
        "invalid_client",
        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
        "using certificate credentials for added security: https://aka.ms/certCreds.",
    ),
    7000229: AadError(
        401,
        "invalid_client",
        "The client application {client_id} is missing service principal in the tenant "
        "{tenant}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119",
    ),
    9001023: AadError(
        400,
        "invalid_request",
        "The grant type is not supported over the /common or /consumers endpoints. Please use "
        "the /organizations or tenant-specific endpoint.",
    ),
    9002313: AadError(400, "invalid_grant", "Invalid request. Request is malformed or invalid."),
}

#: Injectable fault kinds (``Fault.kind``) for the token endpoint → AADSTS code.
FAULT_KINDS: dict[str, int] = {
    "aadsts7000229": 7000229,
    "aadsts700016": 700016,
    "aadsts7000222": 7000222,
    "aadsts7000215": 7000215,
    "aadsts50011": 50011,
    "aadsts65001": 65001,
    # The guide's "wrong user_impersonation API": the app asks for a resource it was not given.
    "aadsts650057": 650057,
    "invalid_client": 70002,
}

#: The ``error`` an error carries when it goes back on a redirect rather than as JSON.
REDIRECT_ERRORS = {50020: "access_denied", 65001: "consent_required", 65004: "consent_required"}


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def describe(code: int, **fields: Any) -> str:
    """``AADSTS<code>: <description>`` with ``fields`` filled in."""
    return f"AADSTS{code}: " + ERRORS[code].text.format_map(_Fields(fields))


def token_error(code: int, *, error: str | None = None, **fields: Any) -> Response:
    """The token endpoint's JSON answer for AADSTS ``code`` (``error`` overrides the table's)."""
    entry = ERRORS[code]
    response = entra_error(
        entry.status, error or entry.error, code, entry.text.format_map(_Fields(fields))
    )
    if code == 65001:
        body = json.loads(response.get_data())
        body["suberror"] = "consent_required"
        response.set_data(json.dumps(body, separators=(",", ":")))
    response.headers["Cache-Control"] = "no-store, no-cache"
    response.headers["Pragma"] = "no-cache"
    return response


def fault_token_error(kind: str) -> Response:
    """The answer of an injected token-endpoint fault: the same as the rule-based error."""
    code = FAULT_KINDS.get(kind.lower())
    if code is None:
        raise ValueError(
            f"unknown login fault kind {kind!r}: use one of {', '.join(sorted(FAULT_KINDS))}"
        )
    return token_error(code)


class LoginError(Exception):
    """An AADSTS error raised while handling a request."""

    def __init__(self, code: int, error: str | None = None, **fields: Any) -> None:
        super().__init__(code)
        self.code = code
        self.error = error
        self.fields = fields

    def response(self) -> Response:
        return token_error(self.code, error=self.error, **self.fields)

    def description(self) -> str:
        return describe(self.code, **self.fields)

    def redirect_error(self) -> str:
        return self.error or REDIRECT_ERRORS.get(self.code, ERRORS[self.code].error)


# -- directories, apps, users -----------------------------------------------------------------


@attrs.frozen
class Directory:
    """The tenant a request names: a known tenant, or ``common``/``organizations``."""

    given: str
    tenant_id: str | None = None
    name: str = ""
    partner: Partner | None = None
    customer: Customer | None = None

    @property
    def meta(self) -> bool:
        return self.tenant_id is None


def find_directory(world: World, tenant: str) -> Directory | None:
    key = tenant.strip().lower()
    if key in META_TENANTS:
        return Directory(given=key, name=key)
    with world.lock:
        partner = world.partners.get(key) or next(
            (p for p in world.partners.values() if p.domain.lower() == key), None
        )
        if partner is not None:
            return Directory(key, partner.tenant_id, partner.name, partner=partner)
        customer = world.customers.get(key) or next(
            (c for c in world.customers.values() if c.domain.lower() == key), None
        )
        if customer is not None:
            return Directory(key, customer.tenant_id, customer.name, customer=customer)
    return None


def _home(world: World, app: App) -> Directory:
    partner = world.partners[app.home_tenant]
    return Directory(partner.tenant_id, partner.tenant_id, partner.name, partner=partner)


def _find_app(world: World, client_id: str) -> App | None:
    with world.lock:
        return world.apps.get(client_id.strip().lower()) or world.apps.get(client_id.strip())


def partner_admin(emulator: Emulator, partner: Partner) -> dict[str, str]:
    """The partner's admin, who signs in to every user flow: ``id``, ``upn``, ``name``, ``tenant``."""
    state = _state(emulator)
    with state["lock"]:
        return state["admins"].setdefault(
            partner.tenant_id,
            {
                "id": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"halo-emulator:admin:{partner.tenant_id}")
                ),
                "upn": f"admin@{partner.domain}",
                "name": f"{partner.name} Admin",
                "tenant": partner.tenant_id,
            },
        )


def _state(emulator: Emulator) -> dict[str, Any]:
    return emulator.state.setdefault(
        "login",
        {"lock": threading.Lock(), "codes": {}, "admins": {}, "deny_consent": False},
    )


def _app_fields(app: App, directory: Directory) -> dict[str, str]:
    return {"client_id": app.client_id, "app_name": app.name, "directory": directory.name}


def _app_only_access(world: World, app: App, directory: Directory) -> str:
    """The tenant an app-only token for ``directory`` is issued in, or `LoginError`."""
    if directory.meta:
        if directory.given == "common":
            raise LoginError(9001023)
        raise LoginError(900023, tenant=directory.given)
    tenant_id = directory.tenant_id
    assert tenant_id is not None
    if tenant_id == app.home_tenant:
        return tenant_id
    if not app.multitenant:
        raise LoginError(700016, **_app_fields(app, directory))
    customer = directory.customer
    with world.lock:
        if customer is not None:
            partner = world.partners.get(customer.partner_tenant)
            if partner is not None and partner.gdap_app is app and customer.consented:
                return tenant_id
    raise LoginError(7000229, client_id=app.client_id, tenant=tenant_id)


def _app_in_directory(app: App, directory: Directory) -> None:
    """Refuse a (delegated) request to a directory the app cannot be found in."""
    if directory.meta:
        if directory.given == "common" and not app.multitenant:
            raise LoginError(50194, client_id=app.client_id, app_name=app.name)
        return
    if directory.tenant_id != app.home_tenant and not app.multitenant:
        raise LoginError(700016, **_app_fields(app, directory))


def _delegated_access(world: World, app: App, directory: Directory, admin: dict[str, str]) -> str:
    """The tenant a delegated token of ``admin`` for ``directory`` is issued in, or `LoginError`."""
    _app_in_directory(app, directory)
    home = admin["tenant"]
    tenant_id = directory.tenant_id or home
    if tenant_id == home:
        if app.home_tenant == home:
            return home
        raise LoginError(65001, client_id=app.client_id, app_name=app.name)
    customer = directory.customer
    with world.lock:
        reachable = (
            customer is not None
            and customer.partner_tenant == home
            and customer.gdap_status == "active"
        )
        if not reachable:
            raise LoginError(
                50020,
                user=admin["upn"],
                idp=f"https://sts.windows.net/{home}/",
                **_app_fields(app, directory),
            )
        assert customer is not None
        partner = world.partners[home]
        if not (partner.gdap_app is app and customer.consented):
            raise LoginError(65001, client_id=app.client_id, app_name=app.name)
    return tenant_id


# -- scopes -----------------------------------------------------------------------------------


def _split(raw: str | None) -> list[str]:
    return [s for s in (raw or "").split() if s]


def _resource(scope: str) -> str | None:
    """The resource a scope names (Graph for a bare name such as ``User.Read``), or None."""
    if "://" not in scope:
        return GRAPH
    resource = scope.rsplit("/", 1)[0].rstrip("/").lower()
    return next((r for r in RESOURCES if r == resource), None)


def _full(scope: str) -> str:
    return scope if "://" in scope else f"{GRAPH}/{scope}"


def _app_only_scope(raw: str | None) -> tuple[str, str]:
    """(resource, scope) of a client-credentials request, or `LoginError`."""
    scopes = _split(raw)
    if not scopes:
        raise LoginError(900144, parameter="scope")
    resources = {_resource(s) for s in scopes}
    if len(scopes) > 1 and len(resources) > 1:
        raise LoginError(700022, scope=" ".join(scopes))
    scope = scopes[0]
    resource = _resource(scope)
    if len(scopes) > 1 or resource is None or not scope.endswith("/.default"):
        raise LoginError(70011, scope=" ".join(scopes))
    return resource, scope


def _delegated_scopes(requested: list[str], fallback: list[str]) -> tuple[str, tuple[str, ...]]:
    """(resource, scopes) for a user token: the resource of the first scope, as Entra does."""
    wanted = [s for s in requested if s.lower() not in OIDC_SCOPES] or [
        s for s in fallback if s.lower() not in OIDC_SCOPES
    ]
    if not wanted:
        return GRAPH, (f"{GRAPH}/User.Read",)
    for scope in wanted:
        if _resource(scope) is None:
            raise LoginError(70011, scope=scope)
    resource = _resource(wanted[0])
    assert resource is not None
    return resource, tuple(dict.fromkeys(_full(s) for s in wanted if _resource(s) == resource))


# -- tokens -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _issuer(emulator: Emulator, tenant_id: str) -> str:
    return emulator.url("login", f"/{tenant_id}/v2.0")


def _id_token(
    emulator: Emulator, app: App, admin: dict[str, str], tenant_id: str, nonce: str | None
) -> str:
    """An unsigned (``alg: none``) ID token, as the auth code flow page shows one."""
    now = int(time.time())
    pairwise = hashlib.sha256(f"{admin['id']}:{app.client_id}".encode()).digest()
    claims: dict[str, Any] = {
        "aud": app.client_id,
        "iss": _issuer(emulator, tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + ID_TOKEN_LIFETIME,
        "name": admin["name"],
        "oid": admin["id"],
        "preferred_username": admin["upn"],
        "sub": _b64(pairwise),
        "tid": tenant_id,
        "uti": _b64(secrets.token_bytes(16)),
        "ver": "2.0",
    }
    if nonce is not None:
        claims["nonce"] = nonce
    header = {"typ": "JWT", "alg": "none"}
    encode = lambda part: _b64(json.dumps(part, separators=(",", ":")).encode())  # noqa: E731
    return f"{encode(header)}.{encode(claims)}."


def _client_info(admin: dict[str, str]) -> str:
    return _b64(json.dumps({"uid": admin["id"], "utid": admin["tenant"]}).encode())


def _token_answer(body: dict[str, Any]) -> Response:
    return json_response(
        body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
    )


def _user_tokens(
    emulator: Emulator,
    *,
    app: App,
    admin: dict[str, str],
    tenant_id: str,
    requested: list[str],
    consented: list[str],
    nonce: str | None,
    want_client_info: bool,
) -> Response:
    resource, scopes = _delegated_scopes(requested, consented)
    token = emulator.tokens.issue(
        client_id=app.client_id,
        tenant=tenant_id,
        resource=resource,
        scopes=scopes,
        user=admin["id"],
        lifetime=ACCESS_LIFETIME,
    )
    asked = {s.lower() for s in requested + consented}
    oidc = [s for s in ("openid", "profile", "email") if s in asked]
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join([*scopes, *oidc]),
        "expires_in": ACCESS_LIFETIME,
        "ext_expires_in": ACCESS_LIFETIME,
        "access_token": token.value,
    }
    if "offline_access" in asked:
        value = "emu-rt." + secrets.token_urlsafe(48)
        now = time.time()
        with _state(emulator)["lock"]:
            emulator.tokens.refresh[value] = {
                "client_id": app.client_id,
                "user": admin["id"],
                "home_tenant": admin["tenant"],
                "scopes": sorted({*consented, *requested, *scopes}),
                "issued": now,
                "last_used": now,
            }
        body["refresh_token"] = value
    if "openid" in asked:
        body["id_token"] = _id_token(emulator, app, admin, tenant_id, nonce)
    if want_client_info:
        body["client_info"] = _client_info(admin)
    return _token_answer(body)


# -- pages and redirects ----------------------------------------------------------------------


def _error_page(code: int, **fields: Any) -> Response:
    """Entra's sign-in error page: shown in the browser, no redirect."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    text = html.escape(describe(code, **fields))
    body = (
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>"
        "<h1>Sorry, but we're having trouble signing you in.</h1>"
        f'<p id="error">{text}</p>'
        f"<p>Request Id: {uuid.uuid4()}<br>Correlation Id: {uuid.uuid4()}<br>"
        f"Timestamp: {now}</p></body></html>"
    )
    return Response(body, status=ERRORS[code].status, content_type="text/html; charset=utf-8")


def _redirect_to(
    uri: str, params: list[tuple[str, str]], *, mode: str = "query", tail: str = ""
) -> Response:
    """Answer at ``uri`` with ``params``: a 302 with them in the query or fragment, or a form post."""
    if mode == "form_post":
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
            for k, v in params
        )
        body = (
            '<html><head><title>Working...</title></head><body onload="document.forms[0].submit()">'
            f'<form method="POST" action="{html.escape(uri)}">{inputs}</form></body></html>'
        )
        return Response(body, status=200, content_type="text/html; charset=utf-8")
    parts = urlsplit(uri)
    encoded = urlencode(params)
    if mode == "fragment":
        location = urlunsplit(parts._replace(fragment=encoded))
    else:
        query = f"{parts.query}&{encoded}" if parts.query else encoded
        location = urlunsplit(parts._replace(query=query, fragment="")) + tail
    return _Redirect(
        status=302, headers={"Location": location, "Cache-Control": "no-store, no-cache"}
    )


class _Redirect(Response):
    """A redirect whose Location goes out verbatim: werkzeug's IRI clean-up would drop the
    empty fragment of v1 admin consent's ``...&state=12345#``."""

    def get_wsgi_headers(self, environ: Any) -> Any:
        headers = super().get_wsgi_headers(environ)
        headers["Location"] = self.headers["Location"]
        return headers


def _registered(app: App, redirect_uri: str) -> bool:
    return redirect_uri in app.redirect_uris


# -- routes -----------------------------------------------------------------------------------


def register(emulator: Emulator) -> None:
    world = emulator.world
    route = emulator.route
    _state(emulator)

    @route(
        "/login/<tenant>/v2.0/.well-known/openid-configuration",
        endpoint="login.openid_configuration",
        doc=DOC_OIDC,
    )
    def openid_configuration(emu: Emulator, request: Request, tenant: str) -> Response:
        directory = find_directory(world, tenant)
        if directory is None:
            return token_error(90002, error="invalid_tenant", tenant=tenant)
        authority = emu.url("login", f"/{directory.tenant_id or directory.given}")
        issuer_tenant = directory.tenant_id or "{tenantid}"
        document = {
            "token_endpoint": f"{authority}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{authority}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": emu.url("login", f"/{issuer_tenant}/v2.0"),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": emu.url("graph", "/oidc/userinfo"),
            "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{authority}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{authority}/oauth2/v2.0/logout",
            "claims_supported": CLAIMS_SUPPORTED,
            "kerberos_endpoint": f"{authority}/kerberos",
            "tenant_region_scope": None if directory.meta else "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return json_response(
            document,
            headers={"Cache-Control": "max-age=86400, private", "Access-Control-Allow-Origin": "*"},
        )

    @route("/login/<tenant>/discovery/v2.0/keys", endpoint="login.keys", doc=DOC_OIDC)
    def keys(emu: Emulator, request: Request, tenant: str) -> Response:
        # The emulator's ID tokens are unsigned and its access tokens opaque: no keys.
        if find_directory(world, tenant) is None:
            return token_error(90002, error="invalid_tenant", tenant=tenant)
        return json_response({"keys": []})

    @route(
        "/login/<tenant>/oauth2/v2.0/token",
        endpoint="login.token",
        methods=("GET", "POST"),
        doc=DOC_TOKEN,
    )
    def token(emu: Emulator, request: Request, tenant: str) -> Response:
        try:
            return _token(emu, request, tenant)
        except LoginError as failure:
            return failure.response()

    def _token(emu: Emulator, request: Request, tenant: str) -> Response:
        if request.method != "POST":
            raise LoginError(900561, method=request.method)
        form = request.form
        directory = find_directory(world, tenant)
        if directory is None:
            raise LoginError(90002, tenant=tenant)
        grant = form.get("grant_type")
        if not grant:
            raise LoginError(900144, parameter="grant_type")
        if grant not in SUPPORTED_GRANTS:
            raise LoginError(70003, grant_type=grant)
        basic_id, basic_secret = _basic_credentials(request)
        client_id = form.get("client_id") or basic_id
        if not client_id:
            raise LoginError(900144, parameter="client_id")
        app = _find_app(world, client_id)
        if app is None:
            raise LoginError(700016, client_id=client_id, directory=directory.name)
        if grant == "client_credentials":
            tenant_id = _app_only_access(world, app, directory)
        else:
            _app_in_directory(app, directory)
        _authenticate(app, form.get("client_secret") or basic_secret)
        want_client_info = form.get("client_info") == "1"
        if grant == "client_credentials":
            resource, scope = _app_only_scope(form.get("scope"))
            issued = emu.tokens.issue(
                client_id=app.client_id,
                tenant=tenant_id,
                resource=resource,
                scopes=(scope,),
                roles=tuple(app.permissions),
                lifetime=ACCESS_LIFETIME,
            )
            return _token_answer(
                {
                    "token_type": "Bearer",
                    "expires_in": ACCESS_LIFETIME,
                    "ext_expires_in": ACCESS_LIFETIME,
                    "access_token": issued.value,
                }
            )
        if grant == "authorization_code":
            return _redeem_code(emu, app, directory, form, want_client_info)
        return _refresh(emu, app, directory, form, want_client_info)

    def _redeem_code(
        emu: Emulator, app: App, directory: Directory, form: Any, want_client_info: bool
    ) -> Response:
        code = form.get("code")
        if not code:
            raise LoginError(900144, parameter="code")
        redirect_uri = form.get("redirect_uri")
        if not redirect_uri:
            raise LoginError(900144, parameter="redirect_uri")
        state = _state(emu)
        with state["lock"]:
            grant = state["codes"].get(code)
            if grant is None:
                raise LoginError(9002313)
            if grant["client_id"] != app.client_id:
                raise LoginError(70000)
            if grant["used"]:
                raise LoginError(54005)
            if grant["expires"] < time.time():
                raise LoginError(70008)
            if not directory.meta and directory.tenant_id != grant["tenant"]:
                raise LoginError(700005)
            if redirect_uri != grant["redirect_uri"]:
                raise LoginError(50011, redirect_uri=redirect_uri, client_id=app.client_id)
            verifier = form.get("code_verifier")
            if not verifier:
                raise LoginError(900144, parameter="code_verifier")
            if not hmac.compare_digest(
                _b64(hashlib.sha256(verifier.encode()).digest()), grant["challenge"]
            ):
                raise LoginError(501481)
            grant["used"] = True
        return _user_tokens(
            emu,
            app=app,
            admin=grant["admin"],
            tenant_id=grant["tenant"],
            requested=_split(form.get("scope")),
            consented=grant["scopes"],
            nonce=grant["nonce"],
            want_client_info=want_client_info,
        )

    def _refresh(
        emu: Emulator, app: App, directory: Directory, form: Any, want_client_info: bool
    ) -> Response:
        value = form.get("refresh_token")
        if not value:
            raise LoginError(900144, parameter="refresh_token")
        with _state(emu)["lock"]:
            grant = emu.tokens.refresh.get(value)
            if grant is None:
                raise LoginError(9002313)
            if grant["client_id"] != app.client_id:
                raise LoginError(70000)
            idle = time.time() - grant["last_used"]
            if grant.get("revoked") or idle > REFRESH_INACTIVITY:
                issued = datetime.fromtimestamp(grant["issued"], UTC)
                raise LoginError(
                    700082,
                    issued=issued.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
                    inactive=f"{int(idle // 86400)}.00:00:00",
                )
            grant["last_used"] = time.time()
            consented = list(grant["scopes"])
        partner = world.partners[grant["home_tenant"]]
        admin = partner_admin(emu, partner)
        tenant_id = _delegated_access(world, app, directory, admin)
        return _user_tokens(
            emu,
            app=app,
            admin=admin,
            tenant_id=tenant_id,
            requested=_split(form.get("scope")),
            consented=consented,
            nonce=None,
            want_client_info=want_client_info,
        )

    @route("/login/<tenant>/oauth2/v2.0/authorize", endpoint="login.authorize", doc=DOC_CODE)
    def authorize(emu: Emulator, request: Request, tenant: str) -> Response:
        args = request.args
        directory = find_directory(world, tenant)
        if directory is None:
            return _error_page(90002, tenant=tenant)
        client_id = args.get("client_id")
        if not client_id:
            return _error_page(900144, parameter="client_id")
        app = _find_app(world, client_id)
        if app is None:
            return _error_page(700016, client_id=client_id, directory=directory.name)
        redirect_uri = args.get("redirect_uri")
        if not redirect_uri:
            return _error_page(900971)
        if not _registered(app, redirect_uri):
            return _error_page(50011, redirect_uri=redirect_uri, client_id=app.client_id)
        try:
            _app_in_directory(app, directory)
        except LoginError as failure:
            return _error_page(failure.code, **failure.fields)
        state = args.get("state")
        mode = args.get("response_mode") or "query"

        def fail(failure: LoginError) -> Response:
            params = [("error", failure.redirect_error())]
            params.append(("error_description", _with_trace(failure.description())))
            if state is not None:
                params.append(("state", state))
            return _redirect_to(redirect_uri, params, mode=mode)

        try:
            response_type = args.get("response_type")
            if not response_type:
                raise LoginError(900144, parameter="response_type")
            if response_type != "code":
                raise LoginError(70005, response_type=response_type)
            scopes = _split(args.get("scope"))
            if not scopes:
                raise LoginError(900144, parameter="scope")
            for scope in scopes:
                if scope.lower() not in OIDC_SCOPES and _resource(scope) is None:
                    raise LoginError(70011, scope=scope)
            challenge = args.get("code_challenge")
            if not challenge:
                raise LoginError(900144, parameter="code_challenge")
            if args.get("code_challenge_method") != "S256":
                raise LoginError(90100, parameter="code_challenge_method")
            if not PKCE_CHALLENGE.match(challenge):
                raise LoginError(501491)
            signed_in = (
                directory.partner if directory.partner is not None else _home(world, app).partner
            )
            assert signed_in is not None
            admin = partner_admin(emu, signed_in)
            tenant_id = _delegated_access(world, app, directory, admin)
        except LoginError as failure:
            return fail(failure)
        code = secrets.token_urlsafe(48)
        codes = _state(emu)["codes"]
        with _state(emu)["lock"]:
            for stale in [k for k, v in codes.items() if v["expires"] < time.time() - 3600]:
                del codes[stale]
            codes[code] = {
                "client_id": app.client_id,
                "redirect_uri": redirect_uri,
                "tenant": tenant_id,
                "admin": admin,
                "scopes": scopes,
                "nonce": args.get("nonce"),
                "challenge": challenge,
                "expires": time.time() + CODE_LIFETIME,
                "used": False,
            }
        params = [("code", code)]
        if args.get("client_info") == "1":
            params.append(("client_info", _client_info(admin)))
        if state is not None:
            params.append(("state", state))
        params.append(("session_state", str(uuid.uuid5(uuid.NAMESPACE_URL, admin["id"]))))
        return _redirect_to(redirect_uri, params, mode=mode)

    @route("/login/<tenant>/adminconsent", endpoint="login.adminconsent", doc=DOC_CONSENT_V1)
    def adminconsent_v1(emu: Emulator, request: Request, tenant: str) -> Response:
        return _admin_consent(emu, request, tenant, v2=False)

    @route(
        "/login/<tenant>/v2.0/adminconsent", endpoint="login.adminconsent_v2", doc=DOC_CONSENT_V2
    )
    def adminconsent_v2(emu: Emulator, request: Request, tenant: str) -> Response:
        return _admin_consent(emu, request, tenant, v2=True)

    def _admin_consent(emu: Emulator, request: Request, tenant: str, *, v2: bool) -> Response:
        args = request.args
        directory = find_directory(world, tenant)
        if directory is None:
            return _error_page(90002, tenant=tenant)
        client_id = args.get("client_id")
        if not client_id:
            return _error_page(900144, parameter="client_id")
        app = _find_app(world, client_id)
        if app is None:
            return _error_page(700016, client_id=client_id, directory=directory.name)
        redirect_uri = args.get("redirect_uri")
        if not redirect_uri:
            return _error_page(900971)
        if not _registered(app, redirect_uri):
            return _error_page(50011, redirect_uri=redirect_uri, client_id=app.client_id)
        state = args.get("state")

        def answer(params: list[tuple[str, str]]) -> Response:
            params = [("admin_consent", "True"), *params]
            if state is not None:
                params.append(("state", state))
            return _redirect_to(redirect_uri, params, tail="" if v2 else "#")

        def fail(failure: LoginError) -> Response:
            description = _with_trace(failure.description())
            return answer([("error", failure.redirect_error()), ("error_description", description)])

        scope = args.get("scope")
        if v2 and directory.given == "common":
            return fail(LoginError(90130))
        if v2 and not scope:
            return fail(LoginError(900144, parameter="scope"))
        if directory.meta:
            directory = _home(world, app)
        if directory.tenant_id != app.home_tenant and not app.multitenant:
            return _error_page(700016, **_app_fields(app, directory))
        if _state(emu)["deny_consent"]:
            return fail(LoginError(65004))
        partner = world.partners[app.home_tenant]
        admin = partner_admin(emu, partner)
        customer = directory.customer
        if directory.tenant_id != app.home_tenant:
            with world.lock:
                ours = (
                    customer is not None
                    and customer.partner_tenant == partner.tenant_id
                    and customer.gdap_status == "active"
                    and partner.gdap_app is app
                )
                if not ours:
                    return fail(
                        LoginError(
                            50020,
                            user=admin["upn"],
                            idp=f"https://sts.windows.net/{partner.tenant_id}/",
                            **_app_fields(app, directory),
                        )
                    )
                assert customer is not None
                customer.consented = True
        params = [("tenant", str(directory.tenant_id))]
        if v2:
            params.append(("scope", str(scope)))
        return answer(params)


def _with_trace(description: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{description}\r\nTrace ID: {uuid.uuid4()}\r\nCorrelation ID: {uuid.uuid4()}\r\nTimestamp: {now}"


def _basic_credentials(request: Request) -> tuple[str | None, str | None]:
    """client_id and secret from ``Authorization: Basic`` (RFC 6749 §2.3.1), which Entra accepts."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None, None
    try:
        decoded = base64.b64decode(value.strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, _, password = decoded.partition(":")
    return unquote(user) or None, unquote(password) or None


def _authenticate(app: App, secret: str | None) -> None:
    if not secret:
        raise LoginError(7000218)
    if not hmac.compare_digest(secret.encode(), app.secret.encode()):
        raise LoginError(7000215, client_id=app.client_id)
    if app.secret_expired:
        raise LoginError(7000222, client_id=app.client_id)
