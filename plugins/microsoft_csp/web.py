"""The Microsoft CSP module's routes on the integrator's HTTP server.

``/microsoft_csp/admin`` (behind the admin credential) shows each connection's Partner
Center authorization with an Authorize button, and each tenant's access and consent with a
Grant admin consent link. The two callbacks are public and trust only what they issued:

* **Authorize** is a POST (with the core's CSRF token) that starts the sign-in
  (`DelegatedTokens.begin`, as `csp authorize` does) and keeps the flow, PKCE verifier
  included, in memory under MSAL's random ``state`` for `SIGN_IN_TTL`.
  ``/microsoft_csp/auth/callback`` completes only a flow it finds by that state, once.
* **Consent links** carry a state signed by this process (HMAC of tenant, connection and
  expiry with a key that never leaves memory), valid for `CONSENT_LINK_TTL` and used once.
  ``/microsoft_csp/consent/callback`` records the answer (`consent.record_consent`, as
  `csp consent` does) only for a state it signed, checking the tenant the answer names.

Anything else reaching a callback gets a 400 page and an inbound request-log row, and
changes nothing. Microsoft is reached only through `delegated` and `consent`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from halo_integrator_core import ModuleContext, WebRoute
from halo_integrator_core.errors import HttpError
from halo_integrator_core.http import HttpClient
from halo_integrator_core.store import Store
from halo_integrator_core.store.request_log import record_inbound
from halo_integrator_core.web import CSRF_FIELD, ENVIRON_CSRF_TOKEN, ENVIRON_STORE
from halo_integrator_core.web.admin import tenant_rows
from halo_integrator_core.web.pages import content_security_policy, esc, message_page, page, table

from .consent import consent_fix, consent_url, parse_consent_callback, record_consent
from .delegated import AuthorizationStatus, DelegatedTokens
from .errors import MicrosoftAuthError
from .settings import Connection, MicrosoftCspSettings

log = structlog.get_logger(__name__)

MODULE = "microsoft_csp"
ADMIN_PATH = f"/{MODULE}/admin"
AUTHORIZE_PATH = f"/{MODULE}/admin/authorize"
AUTH_CALLBACK_PATH = f"/{MODULE}/auth/callback"
CONSENT_CALLBACK_PATH = f"/{MODULE}/consent/callback"

#: How long a started sign-in waits for its answer (Entra's codes live ten minutes).
SIGN_IN_TTL = timedelta(minutes=15)
#: How long a Grant admin consent link stays good: long enough to send it to the customer.
CONSENT_LINK_TTL = timedelta(days=7)
#: Sign-ins waiting at once; the oldest is dropped beyond it.
MAX_PENDING_SIGN_INS = 50


def routes(context: ModuleContext) -> list[WebRoute]:
    """The module's routes, sharing one `CspWeb` (its pending sign-ins and signing key)."""
    web = CspWeb(context)
    return [
        WebRoute(path=ADMIN_PATH, app=web.admin, admin=True, title="Microsoft CSP"),
        WebRoute(path=AUTHORIZE_PATH, app=web.authorize, admin=True),
        WebRoute(path=AUTH_CALLBACK_PATH, app=web.auth_callback),
        WebRoute(path=CONSENT_CALLBACK_PATH, app=web.consent_callback),
    ]


# -- the states ---------------------------------------------------------------------------------


class PendingSignIns:
    """Sign-ins started from the admin page, by MSAL's ``state``, each taken once."""

    def __init__(self, ttl: timedelta = SIGN_IN_TTL, *, clock: Any = time.monotonic) -> None:
        self.ttl = ttl.total_seconds()
        self.clock = clock
        self._flows: OrderedDict[str, tuple[float, DelegatedTokens, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, tokens: DelegatedTokens, flow: dict[str, Any]) -> None:
        with self._lock:
            self._prune()
            self._flows[flow["state"]] = (self.clock() + self.ttl, tokens, flow)
            while len(self._flows) > MAX_PENDING_SIGN_INS:
                self._flows.popitem(last=False)

    def take(self, state: str) -> tuple[DelegatedTokens, dict[str, Any]] | None:
        """The sign-in ``state`` belongs to, removed; ``None`` if none waits (or it expired)."""
        with self._lock:
            self._prune()
            found = self._flows.pop(state, None)
        return None if found is None else (found[1], found[2])

    def _prune(self) -> None:
        now = self.clock()
        for state in [s for s, (expires, _, _) in self._flows.items() if expires <= now]:
            del self._flows[state]


class ConsentStates:
    """The ``state`` of consent links: signed by this process, expiring, each used once."""

    def __init__(
        self,
        ttl: timedelta = CONSENT_LINK_TTL,
        *,
        key: bytes | None = None,
        clock: Any = time.time,
    ) -> None:
        self.ttl = ttl.total_seconds()
        self.clock = clock
        self._key = key or secrets.token_bytes(32)
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, tenant_id: str, connection: str) -> str:
        claim = {"t": tenant_id, "c": connection, "e": int(self.clock() + self.ttl)}
        payload = _b64(json.dumps(claim, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def check(self, state: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the claim, None) for a good state, used up by this call; else (None, why not)."""
        payload, _, signature = state.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None, "the state was not issued by this server (or it restarted since)"
        try:
            claim = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            expires = float(claim["e"])
            if not (isinstance(claim["t"], str) and isinstance(claim["c"], str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return None, "the state is malformed"
        now = self.clock()
        if expires <= now:
            return None, "the consent link has expired"
        with self._lock:
            for used in [s for s, until in self._used.items() if until <= now]:
                del self._used[used]
            if signature in self._used:
                return None, "the consent link was used already"
            self._used[signature] = expires
        return claim, None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:18])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- the routes ---------------------------------------------------------------------------------


class CspWeb:
    """The module's pages, over the connections of ``context.settings``."""

    def __init__(self, context: ModuleContext) -> None:
        self.context = context
        settings: MicrosoftCspSettings | None = context.settings
        self.connections: dict[str, Connection] = {
            c.name: c for c in (settings.connections if settings else ())
        }
        base = (context.public_url or "").rstrip("/")
        self.auth_redirect_uri = f"{base}{AUTH_CALLBACK_PATH}"
        self.consent_redirect_uri = f"{base}{CONSENT_CALLBACK_PATH}"
        self.sign_ins = PendingSignIns()
        self.consent_states = ConsentStates()
        self._tokens: dict[str, DelegatedTokens] = {}
        self._http: HttpClient | None = None
        self._lock = threading.Lock()

    def tokens(self, connection: Connection) -> DelegatedTokens:
        """The connection's delegated tokens (one object per connection, as its lock wants)."""
        context = self.context
        if context.endpoints is None or context.state_dir is None:
            raise RuntimeError("the module context has no endpoints or state folder")
        with self._lock:
            found = self._tokens.get(connection.name)
            if found is None:
                http = context.http
                if http is None:
                    self._http = self._http or HttpClient(verify=context.endpoints.verify)
                    http = self._http
                found = DelegatedTokens(connection, context.endpoints, http, context.state_dir)
                self._tokens[connection.name] = found
            return found

    # -- the admin page --------------------------------------------------------------------

    @Request.application
    def admin(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        store = _store(request)
        body = (
            "<h2>Connections</h2>"
            + self._connections_table(request.environ.get(ENVIRON_CSRF_TOKEN, ""))
            + "<p class='note'>Authorize signs in to Partner Center as a user with access to "
            "the Customer list. Register this redirect URI on each connection's Partner "
            f"Center app (Authentication → Web), exactly: <code>{esc(self.auth_redirect_uri)}"
            "</code></p>"
            + "<h2>Tenants</h2>"
            + self._tenants_table(store)
            + "<p class='note'>Send a tenant's consent link to an administrator native to that "
            "tenant (not a guest from your MSP). A link is good for "
            f"{CONSENT_LINK_TTL.days} days, once, while this server runs. Register this "
            "redirect URI on each connection's GDAP app, exactly: "
            f"<code>{esc(self.consent_redirect_uri)}</code></p>"
        )
        login = urlsplit(self._login_url())
        policy = content_security_policy(form_action=("'self'", f"{login.scheme}://{login.netloc}"))
        return page(
            "Microsoft CSP",
            body,
            headers=[("Content-Security-Policy", policy)],
        )

    def _login_url(self) -> str:
        endpoints = self.context.endpoints
        return endpoints.url("login") if endpoints is not None else "https://login.invalid"

    def _connections_table(self, csrf_token: str) -> str:
        rows = []
        for connection in self.connections.values():
            try:
                state = _describe(self.tokens(connection).status())
            except Exception as exc:  # an unreadable cache is shown, not a failed page
                log.exception("csp.web_status_failed", connection=connection.name)
                state = f"<span class='bad'>unknown: {esc(type(exc).__name__)}</span>"
            form = (
                f"<form method='post' action='{esc(AUTHORIZE_PATH)}'>"
                f"<input type='hidden' name='{CSRF_FIELD}' value='{esc(csrf_token)}'>"
                f"<input type='hidden' name='connection' value='{esc(connection.name)}'>"
                "<button type='submit'>Authorize</button></form>"
            )
            rows.append(
                (
                    esc(connection.name),
                    f"<code>{esc(connection.tenant_id)}</code>",
                    f"<code>{esc(connection.partner_center_app.client_id)}</code>",
                    state,
                    form,
                )
            )
        return table(
            ("Connection", "Partner tenant", "Partner Center app", "Authorization", ""),
            rows,
            empty=f"No connections are configured in [modules.{MODULE}].",
        )

    def _tenants_table(self, store: Store) -> str:
        rows = []
        for tenant in tenant_rows(store, MODULE):
            connection = self._connection_of(tenant["connection"])
            if connection is None:
                link = "<span class='note'>its connection is not configured</span>"
            else:
                url = consent_url(
                    self.context.endpoints,  # type: ignore[arg-type]
                    str(connection.gdap_app.client_id),
                    tenant["tenant_id"],
                    self.consent_redirect_uri,
                    self.consent_states.issue(tenant["tenant_id"], connection.name),
                )
                link = (
                    f"<a href='{esc(url)}' target='_blank' rel='noopener noreferrer'>"
                    "Grant admin consent</a>"
                )
            consent = tenant["consent"]
            rows.append(
                (
                    f"{esc(tenant['name'])}<br><code>{esc(tenant['tenant_id'])}</code>",
                    esc(tenant["connection"]),
                    esc(tenant["access"])
                    + (
                        f"<br><span class='note'>{esc(tenant['access_detail'])}</span>"
                        if tenant["access_detail"]
                        else ""
                    ),
                    f"<span class='{'bad' if consent == 'consent needed' else 'good'}'>"
                    f"{esc(consent)}</span>",
                    esc(tenant["mapping"]),
                    link,
                )
            )
        return table(
            ("Tenant", "Connection", "Access", "Consent", "Mapping", ""),
            rows,
            empty="No tenants synced yet: run `halo-integrator sync --only tenants`.",
        )

    def _connection_of(self, name: str | None) -> Connection | None:
        if name:
            return self.connections.get(name)
        if len(self.connections) == 1:
            return next(iter(self.connections.values()))
        return None

    # -- Authorize ------------------------------------------------------------------------

    @Request.application
    def authorize(self, request: Request) -> Response:
        """Start a connection's sign-in (the core checked the credential and CSRF token)."""
        if request.method != "POST":
            return _not_allowed("POST")
        connection = self.connections.get(request.form.get("connection", ""))
        if connection is None:
            return message_page("Unknown connection", "No such connection is configured.", 404)
        try:
            with _bound(connection):
                tokens = self.tokens(connection)
                flow = tokens.begin(self.auth_redirect_uri)
        except (MicrosoftAuthError, HttpError) as exc:
            log.warning("csp.sign_in_not_started", connection=connection.name, error=str(exc))
            return message_page("Cannot authorize", f"Connection {connection.name}: {exc}", 502)
        self.sign_ins.add(tokens, flow)
        log.info("csp.sign_in_started", connection=connection.name)
        return redirect(flow["auth_uri"], 303)

    @Request.application
    def auth_callback(self, request: Request) -> Response:
        """The Partner Center sign-in's answer: complete the flow its state names."""
        if request.method == "HEAD":  # a link preview must not use up a waiting sign-in
            return Response(status=200)
        if request.method != "GET":
            return _not_allowed("GET")
        started = time.monotonic()
        url = _path_and_query(request)
        store = _store(request)

        def done(status: int, outcome: str, detail: str, connection: Connection | None) -> None:
            record_inbound(
                store,
                module=MODULE,
                method=request.method,
                url=url,
                status=status,
                outcome=outcome,
                detail=detail,
                connection=connection.name if connection else None,
                tenant_id=str(connection.tenant_id) if connection else None,
                duration_ms=round((time.monotonic() - started) * 1000),
            )

        found = self.sign_ins.take(request.args.get("state", ""))
        if found is None:
            text = (
                "No sign-in started from the admin page is waiting for this answer (it expired, "
                "was used already, or the server restarted). Start again with Authorize on "
                f"the admin page ({ADMIN_PATH})."
            )
            done(400, "state_invalid", "no sign-in waits for this state", None)
            return message_page("Not expected", text, 400)
        tokens, flow = found
        connection = tokens.connection
        try:
            with _bound(connection):
                status = tokens.complete(flow, dict(request.args.items()))
        except (MicrosoftAuthError, HttpError) as exc:
            status_code = 400 if isinstance(exc, MicrosoftAuthError) else 502
            done(status_code, "authorization_failed", str(exc), connection)
            return message_page(
                "Authorization failed", f"Connection {connection.name}: {exc}", status_code
            )
        except Exception as exc:
            log.exception("csp.authorization_failed", connection=connection.name)
            done(500, "error", f"{type(exc).__name__}: {exc}", connection)
            return message_page(
                "Authorization failed",
                f"Connection {connection.name}: the sign-in could not be completed; the server "
                "log says why. Start again with Authorize on the admin page.",
                500,
            )
        detail = f"authorized as {status.username}"
        done(200, "authorized", detail, connection)
        return message_page(
            "Authorized",
            f"Connection {connection.name} is authorized with Partner Center as "
            f"{status.username}. You can close this window.",
        )

    # -- admin consent -----------------------------------------------------------------------

    @Request.application
    def consent_callback(self, request: Request) -> Response:
        """The admin-consent answer: record it if its state is one of our links."""
        if request.method == "HEAD":
            return Response(status=200)
        if request.method != "GET":
            return _not_allowed("GET")
        started = time.monotonic()
        url = _path_and_query(request)
        store = _store(request)
        state = request.args.get("state", "")
        claim, problem = self.consent_states.check(state)
        if claim is None:
            record_inbound(
                store,
                module=MODULE,
                method="GET",
                url=url,
                status=400,
                outcome="state_invalid",
                detail=f"admin-consent answer refused: {problem}",
                tenant_id=request.args.get("tenant") or None,
                duration_ms=round((time.monotonic() - started) * 1000),
            )
            return message_page(
                "Not expected",
                f"This answer was not recorded: {problem}. Open a fresh Grant admin consent "
                f"link from the admin page ({ADMIN_PATH}).",
                400,
            )
        result = parse_consent_callback(
            dict(request.args.items()), expected_tenant=claim["t"], expected_state=state
        )
        record_consent(
            store,
            result,
            url=url,
            connection=claim["c"],
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        if result.ok:
            return message_page(
                "Admin consent granted",
                f"Admin consent is granted in tenant {result.tenant}. The next sync uses it. "
                "You can close this window.",
            )
        return message_page(
            "Admin consent failed",
            f"Admin consent failed in tenant {result.tenant}: "
            f"{result.description or result.error}. Fix: {consent_fix(result)}.",
            400,
        )


# -- helpers ------------------------------------------------------------------------------------


def _describe(status: AuthorizationStatus) -> str:
    if not status.authorized:
        return "<span class='bad'>not authorized</span>"
    if status.expires_at is None:
        token = "no access token cached (one is fetched with the refresh token when needed)"
    elif status.expires_at <= datetime.now(UTC):
        token = "access token expired, renewed with the refresh token when needed"
    else:
        token = f"access token valid until {status.expires_at:%Y-%m-%d %H:%M UTC}"
    return f"<span class='good'>authorized as {esc(status.username)}</span><br>{esc(token)}"


def _store(request: Request) -> Store:
    store = request.environ.get(ENVIRON_STORE)
    if store is None:
        raise RuntimeError(f"{ENVIRON_STORE} is not in the environ: mount the app on the core's")
    return store


def _path_and_query(request: Request) -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def _bound(connection: Connection) -> Any:
    # The outbound request log names the module, connection and partner tenant, as the
    # command line's authorize does.
    return structlog.contextvars.bound_contextvars(
        module=MODULE, connection=connection.name, tenant=str(connection.tenant_id)
    )


def _not_allowed(method: str) -> Response:
    answer = message_page("Method not allowed", f"Use {method} here.", 405)
    answer.headers["Allow"] = method
    return answer
