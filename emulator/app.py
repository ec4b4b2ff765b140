"""The emulator's WSGI application: routing, tokens, faults and the shapes of errors.

One loopback server stands for every Microsoft host; each host is a path prefix, so that an
endpoint setting such as ``graph = "https://127.0.0.1:8443/graph"`` points the client at it
(the login service is also served on an origin of its own, where paths start with the
tenant as Microsoft's do: MSAL reads the tenant from there):

| prefix | stands for |
|---|---|
| ``/login`` | ``https://login.microsoftonline.com`` |
| ``/graph`` | ``https://graph.microsoft.com`` |
| ``/partnercenter`` | ``https://api.partnercenter.microsoft.com`` |
| ``/partnerapi`` | ``https://api.partner.microsoft.com`` |
| ``/blob`` | the Azure storage account of billing exports |
| ``/_admin`` | the emulator's own admin API (change the world, inject faults, read the budget) |

Endpoint modules (`login`, `graph`, `partner_center`, `billing`, `pricing`, `admin`) each
register their routes with `Emulator.route`. Each route names the Microsoft documentation
page it follows.
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .budget import TenantBudget
from .world import World

#: Resource identifiers (as in scopes and tokens) of the APIs the emulator serves.
GRAPH = "https://graph.microsoft.com"
PARTNER_CENTER = "https://api.partnercenter.microsoft.com"
PARTNER_API = "https://api.partner.microsoft.com"
RESOURCES = (GRAPH, PARTNER_CENTER, PARTNER_API)

Handler = Callable[..., Response]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), default=_json_default),
        status=status,
        headers=headers,
        content_type="application/json; charset=utf-8",
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not JSON: {value!r}")


def iso(value: datetime | None) -> str | None:
    """Graph's and Partner Center's timestamp form: UTC with a ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """Graph's error shape (concepts/errors.md)."""
    return json_response(
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": secrets.token_hex(16),
                    "client-request-id": secrets.token_hex(16),
                },
            }
        },
        status=status,
        headers=headers,
    )


def partner_center_error(
    status: int, code: int | str, description: str, headers: dict[str, str] | None = None
) -> Response:
    """Partner Center's error shape (developer/error-codes.md)."""
    return json_response(
        {"code": code, "description": description, "data": [], "source": "PartnerFD"},
        status=status,
        headers=headers,
    )


def entra_error(status: int, error: str, code: int, description: str) -> Response:
    """The token endpoint's error shape, with an AADSTS code (§5.3 of the API notes)."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace, correlation = secrets.token_hex(16), secrets.token_hex(16)
    return json_response(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {correlation}\r\nTimestamp: {now}",
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status=status,
    )


@attrs.frozen
class Token:
    """What an access token issued by the emulated login stands for."""

    value: str
    client_id: str
    tenant: str
    resource: str
    scopes: tuple[str, ...]
    expires: datetime
    user: str | None = None  # a delegated token's signed-in user
    roles: tuple[str, ...] = ()  # an app-only token's application permissions

    @property
    def app_only(self) -> bool:
        return self.user is None


class Tokens:
    """Access and refresh tokens the emulated login issued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: dict[str, Token] = {}
        self.refresh: dict[str, dict[str, Any]] = {}

    def issue(
        self,
        *,
        client_id: str,
        tenant: str,
        resource: str,
        scopes: tuple[str, ...],
        user: str | None = None,
        roles: tuple[str, ...] = (),
        lifetime: int = 3599,
    ) -> Token:
        token = Token(
            value="emu." + secrets.token_urlsafe(32),
            client_id=client_id,
            tenant=tenant.lower(),
            resource=resource,
            scopes=scopes,
            expires=datetime.now(UTC) + timedelta(seconds=lifetime),
            user=user,
            roles=roles,
        )
        with self._lock:
            self._access[token.value] = token
        return token

    def find(self, value: str) -> Token | None:
        with self._lock:
            return self._access.get(value)

    def expire_all(self) -> None:
        with self._lock:
            self._access.clear()


class AuthFailure(Exception):
    """A request whose bearer token does not let it in; carries the answer."""

    def __init__(self, response: Response) -> None:
        self.response = response


@attrs.define
class Fault:
    """A failure injected on purpose: matching requests get it, ``times`` times (or always).

    ``endpoint`` is a glob over route names (``graph.users``, ``graph.*``, ``login.token``);
    ``tenant`` limits it to requests for one tenant. Kinds: ``throttle`` (429 with
    Retry-After, in the API's own body), ``unavailable`` (503), ``slow`` (sleep ``delay``
    seconds, then answer), ``drop`` (close the connection mid-response), ``forbidden``
    (Partner Center's lapsed reseller relationship), ``denied`` (Graph's
    Authorization_RequestDenied), ``sync_state_not_found`` (a delta token refused with 400
    rather than the emulator's usual 410: delta-query-overview.md allows "a 40X-series error
    with error codes such as syncStateNotFound"), or an AADSTS code for the token endpoint
    (``aadsts7000229``, ``aadsts700016``, ``aadsts7000222``, ``aadsts7000215``,
    ``aadsts50011``, ``aadsts65001``, ``invalid_client``).
    """

    kind: str
    endpoint: str = "*"
    tenant: str | None = None
    times: int | None = None
    retry_after: float = 1
    delay: float = 0
    hits: int = 0

    def matches(self, endpoint: str, tenant: str | None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.tenant is not None and (tenant or "").lower() != self.tenant.lower():
            return False
        return fnmatch.fnmatchcase(endpoint, self.endpoint)


class Emulator:
    """The WSGI application over a `World`."""

    def __init__(self, world: World, *, base_url: str = "https://127.0.0.1") -> None:
        self.world = world
        self.base_url = base_url
        #: Hosts served on an origin of their own (no path prefix): ``{"login": "https://..."}``.
        #: MSAL reads the tenant from the first path segment of the token endpoint, so the
        #: login service must have the tenant first, as Microsoft's has.
        self.origins: dict[str, str] = {}
        self.tokens = Tokens()
        self.faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        #: Seconds every Microsoft API request waits before it is answered (the admin API's
        #: do not): a real cloud's round trip, for benchmarks (`halo-integrator emulator
        #: --latency-ms`). Unlike a ``slow`` fault it never shadows an injected fault.
        self.latency: float = 0.0
        #: Graph's request budget per app per tenant (`halo-integrator emulator
        #: --tenant-budget`): unlimited until ``budget.limit`` is set, counted either way.
        self.budget = TenantBudget()
        self.url_map = Map(strict_slashes=False, merge_slashes=False)
        self.handlers: dict[str, tuple[Handler, str | None]] = {}
        #: Every request served: (method, path, status), for tests.
        self.requests: list[tuple[str, str, int]] = []
        self.state: dict[str, Any] = {}  # what endpoint modules keep between requests
        #: The server's trustme CA, when served by `EmulatorServer` (signs the webhook
        #: signing certificate); ``None`` for an app used on its own.
        self.ca: Any = None
        from . import admin, billing, graph, login, partner_center, pricing

        for module in (login, graph, partner_center, billing, pricing, admin):
            module.register(self)

    # -- routing ---------------------------------------------------------------------------

    def route(
        self,
        rule: str,
        *,
        endpoint: str,
        methods: tuple[str, ...] = ("GET",),
        doc: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler. ``doc`` names the Microsoft page whose samples it follows."""

        def decorator(handler: Handler) -> Handler:
            self.url_map.add(Rule(rule, endpoint=endpoint, methods=list(methods)))
            self.handlers[endpoint] = (handler, doc)
            return handler

        return decorator

    def url(self, prefix: str, path: str) -> str:
        """An absolute URL on this emulator, as a next link or a Location would carry it."""
        origin = self.origins.get(prefix)
        return f"{origin}{path}" if origin else f"{self.base_url}/{prefix}{path}"

    # -- faults ----------------------------------------------------------------------------

    def inject(self, kind: str, **options: Any) -> Fault:
        from .login import FAULT_KINDS

        known = {
            "throttle",
            "unavailable",
            "slow",
            "drop",
            "forbidden",
            "denied",
            "sync_state_not_found",
            *FAULT_KINDS,
        }
        if kind.lower() not in known:
            raise ValueError(f"unknown fault kind {kind!r}: use one of {', '.join(sorted(known))}")
        fault = Fault(kind=kind, **options)
        with self._faults_lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self.faults.clear()

    def take_fault(self, endpoint: str, tenant: str | None) -> Fault | None:
        with self._faults_lock:
            for fault in self.faults:
                if fault.matches(endpoint, tenant):
                    fault.hits += 1
                    return fault
        return None

    # -- tokens ----------------------------------------------------------------------------

    def authorize(self, request: Request, resource: str, *, delegated: bool | None = None) -> Token:
        """The bearer token of ``request`` for ``resource``, or `AuthFailure` as the API answers."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = self.tokens.find(value.strip()) if scheme.lower() == "bearer" else None
        error = graph_error if resource == GRAPH else None
        if token is None or token.expires < datetime.now(UTC):
            reason = (
                "Access token is empty."
                if not value
                else "Access token has expired or is not yet valid."
            )
            if error is not None:
                raise AuthFailure(error(401, "InvalidAuthenticationToken", reason))
            raise AuthFailure(partner_center_error(401, 401, "Access denied: " + reason))
        if token.resource != resource:
            message = f"Invalid audience: the token is for {token.resource}, not {resource}."
            if error is not None:
                raise AuthFailure(error(401, "InvalidAuthenticationToken", message))
            raise AuthFailure(partner_center_error(401, 401, message))
        if delegated is True and token.app_only:
            message = "This API needs a token for a signed-in user (App+User); app-only tokens are not accepted."
            if error is not None:
                raise AuthFailure(error(403, "Authorization_RequestDenied", message))
            raise AuthFailure(partner_center_error(403, 403, message))
        return token

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self.dispatch(request)
        self.requests.append((request.method, request.full_path.rstrip("?"), response.status_code))
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except NotFound:
            return self._not_found(request)
        except MethodNotAllowed as exc:
            return Response(status=405, headers={"Allow": ", ".join(exc.valid_methods or [])})
        except HTTPException as exc:  # pragma: no cover - werkzeug's own redirects
            return exc.get_response()
        handler, _ = self.handlers[endpoint]
        if self.latency > 0 and not endpoint.startswith("admin."):
            time.sleep(self.latency)
        throttled = self._over_budget(request)
        if throttled is not None:
            return throttled
        tenant = values.get("tenant") or values.get("customer_id") or self._token_tenant(request)
        fault = self.take_fault(endpoint, tenant)
        if fault is not None:
            answer = self.fault_response(fault, endpoint, request, tenant)
            if answer is not None:
                return answer
        try:
            return handler(self, request, **values)
        except AuthFailure as failure:
            return failure.response

    def fault_response(
        self, fault: Fault, endpoint: str, request: Request, tenant: str | None
    ) -> Response | None:
        retry = {"Retry-After": f"{fault.retry_after:g}"}
        kind = fault.kind.lower()
        if kind == "slow":
            time.sleep(fault.delay)
            return None
        if kind == "drop":
            return Response(
                _DroppedBody(), status=200, content_type="application/json", direct_passthrough=True
            )
        api = endpoint.split(".", 1)[0]
        if kind == "throttle":
            if api == "graph" or api == "billing":
                return graph_error(429, "TooManyRequests", "Please retry again later.", retry)
            if api == "login":
                return entra_error(
                    429, "temporarily_unavailable", 50196, "The server is busy; retry later."
                )
            seconds = int(fault.retry_after) or 1
            return json_response(
                {
                    "statusCode": 429,
                    "message": f"Rate limit is exceeded. Try again in {seconds} seconds.",
                },
                status=429,
                headers=retry,
            )
        if kind == "unavailable":
            if api in ("graph", "billing"):
                return graph_error(
                    503, "serviceNotAvailable", "The service is temporarily unavailable.", retry
                )
            return Response(
                "Service Unavailable", status=503, headers=retry, content_type="text/plain"
            )
        if kind == "forbidden":
            partner = self._token_tenant(request) or "unknown"
            return partner_center_error(
                403,
                20002,
                f"The partner ID {partner} has no commerce relationship with the customer ID {tenant}.",
            )
        if kind == "denied":
            return graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        if kind == "sync_state_not_found":
            # errors.md's description of the code; the status is the "40X" the overview allows.
            return graph_error(
                400,
                "syncStateNotFound",
                "The sync state generation is not found. The delta token is expired and data "
                "must be synchronized again.",
            )
        from .login import fault_token_error

        return fault_token_error(kind)

    def _over_budget(self, request: Request) -> Response | None:
        """Graph's 429 when the request's (app, tenant) has spent its budget, else ``None``.

        Only Graph is budgeted, and only requests whose bearer token the emulator issued
        for Graph: that token says which app calls and for which tenant. Any other request
        goes on to be answered (a bad token with Graph's 401).
        """
        if not (request.path == "/graph" or request.path.startswith("/graph/")):
            return None
        _, _, value = request.headers.get("Authorization", "").partition(" ")
        token = self.tokens.find(value.strip()) if value else None
        if token is None or token.resource != GRAPH or token.expires < datetime.now(UTC):
            return None
        url = request.full_path.rstrip("?")
        retry_after = self.budget.admit(token.client_id, token.tenant, request.method, url)
        if retry_after is None:
            return None
        # concepts/throttling.md: 429 with the wait in whole seconds in Retry-After.
        return graph_error(
            429,
            "TooManyRequests",
            "Please retry again later.",
            {"Retry-After": str(retry_after)},
        )

    def _token_tenant(self, request: Request) -> str | None:
        _, _, value = request.headers.get("Authorization", "").partition(" ")
        token = self.tokens.find(value.strip()) if value else None
        return token.tenant if token else None

    def _not_found(self, request: Request) -> Response:
        if request.path.startswith("/graph/"):
            return graph_error(
                400,
                "BadRequest",
                f"Resource not found for the segment '{request.path.rsplit('/', 1)[-1]}'.",
            )
        if request.path.startswith("/partnercenter/"):
            return partner_center_error(404, 1000, "Not found")
        return Response("Not Found", status=404, content_type="text/plain")


class _DroppedBody:
    """A response body that stops half-way: the connection closes mid-page."""

    def __iter__(self):
        yield b'{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users","value":[{"id":"'
        raise ConnectionAbortedError("fault: connection dropped mid-page")
