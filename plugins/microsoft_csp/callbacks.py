"""The two OAuth redirect endpoints, as a small WSGI app, and a loopback server for it.

``GET /auth/callback`` finishes a Partner Center authorization (`delegated`) and ``GET
/consent/callback`` records an admin-consent answer (`consent`). A flow waiting for its
answer is registered by its ``state``; an answer with a state nobody waits for is refused.
The command line serves the app on the redirect URI's loopback port while it waits; the
daemon's HTTP server is meant to mount the same app.
"""

from __future__ import annotations

import html
import socket
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import structlog

from halo_integrator_core.logging import redact_text
from halo_integrator_core.store import Store

from .consent import ConsentResult, consent_fix, parse_consent_callback, record_consent
from .delegated import AuthorizationStatus, DelegatedTokens
from .errors import MicrosoftAuthError

log = structlog.get_logger(__name__)

AUTH_PATH = "/auth/callback"
CONSENT_PATH = "/consent/callback"
DEFAULT_AUTH_REDIRECT_URI = f"http://localhost:8400{AUTH_PATH}"
LOOPBACK_HOSTS = {"localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1", "::1": "::1"}


class Waiter:
    """The answer one flow is waiting for: `wait` returns it, or raises what failed."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def set(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> Any:
        """The answer, or raises `TimeoutError` if none came within ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._result


@attrs.frozen
class _PendingAuthorization:
    tokens: DelegatedTokens
    flow: dict[str, Any]
    waiter: Waiter


@attrs.frozen
class _PendingConsent:
    tenant: str
    connection: str | None
    store: Store
    waiter: Waiter


class CallbackApp:
    """WSGI app of the two redirect endpoints (paths overridable to match a redirect URI)."""

    def __init__(self, *, auth_path: str = AUTH_PATH, consent_path: str = CONSENT_PATH) -> None:
        self.auth_path = auth_path
        self.consent_path = consent_path
        self._authorizations: dict[str, _PendingAuthorization] = {}
        self._consents: dict[str, _PendingConsent] = {}
        self._lock = threading.Lock()

    def expect_authorization(self, tokens: DelegatedTokens, flow: dict[str, Any]) -> Waiter:
        """Wait for the answer to ``flow`` (from `DelegatedTokens.begin`)."""
        waiter = Waiter()
        with self._lock:
            self._authorizations[flow["state"]] = _PendingAuthorization(tokens, flow, waiter)
        return waiter

    def expect_consent(
        self, *, state: str, tenant: str, store: Store, connection: str | None = None
    ) -> Waiter:
        """Wait for the answer to the consent URL of ``tenant`` made with ``state``."""
        waiter = Waiter()
        with self._lock:
            self._consents[state] = _PendingConsent(tenant, connection, store, waiter)
        return waiter

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if method == "POST":  # response_mode=form_post answers the same way, in the body
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            body = environ["wsgi.input"].read(length).decode("utf-8", "replace")
            query |= dict(parse_qsl(body, keep_blank_values=True))
        elif method == "HEAD":  # a link preview must not use up a waiting flow
            return _page(start_response, 200, "halo-integrator", "")
        elif method != "GET":
            return _page(start_response, 405, "Method not allowed", "Use GET.")
        url = path + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
        if path == self.auth_path:
            status, title, text = self._authorization(query)
        elif path == self.consent_path:
            status, title, text = self._consent(query, url)
        else:
            return _page(start_response, 404, "Not found", "Nothing is served here.")
        log.info("csp.callback", path=path, status=status, url=redact_text(url))
        return _page(start_response, status, title, text)

    def _authorization(self, query: dict[str, str]) -> tuple[int, str, str]:
        with self._lock:
            pending = self._authorizations.pop(query.get("state", ""), None)
        if pending is None:
            return _unexpected("sign-in")
        name = pending.tokens.connection.name
        try:
            status: AuthorizationStatus = pending.tokens.complete(pending.flow, query)
        except MicrosoftAuthError as exc:
            pending.waiter.set(error=exc)
            return 400, "Authorization failed", f"Connection {name}: {exc}"
        except Exception as exc:  # the command waiting reports it; the browser gets a page
            pending.waiter.set(error=exc)
            return 500, "Authorization failed", f"Connection {name}: {type(exc).__name__}: {exc}"
        pending.waiter.set(status)
        return (
            200,
            "Authorized",
            f"Connection {name} is authorized with Partner Center as {status.username}. "
            "You can close this window.",
        )

    def _consent(self, query: dict[str, str], url: str) -> tuple[int, str, str]:
        started = time.monotonic()
        with self._lock:
            pending = self._consents.pop(query.get("state", ""), None)
        if pending is None:
            return _unexpected("admin consent")
        result: ConsentResult = parse_consent_callback(
            query, expected_tenant=pending.tenant, expected_state=query.get("state")
        )
        try:
            record_consent(
                pending.store,
                result,
                url=url,
                connection=pending.connection,
                duration_ms=round((time.monotonic() - started) * 1000),
            )
        except Exception as exc:
            pending.waiter.set(result, error=exc)
            return 500, "Not recorded", f"The answer could not be recorded: {exc}"
        pending.waiter.set(result)
        if result.ok:
            return (
                200,
                "Admin consent granted",
                f"Admin consent is granted in tenant {result.tenant}. You can close this window.",
            )
        return (
            400,
            "Admin consent failed",
            f"Admin consent failed in tenant {result.tenant}: {result.description or result.error}. "
            f"Fix: {consent_fix(result)}.",
        )


def _unexpected(what: str) -> tuple[int, str, str]:
    return (
        400,
        "Not expected",
        f"No {what} is waiting for this answer (it is stale, or was already used). Run the "
        "halo-integrator command again and use the URL it prints.",
    )


def _page(start_response: Callable[..., Any], status: int, title: str, text: str) -> list[bytes]:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} · halo-integrator</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    ).encode()
    start_response(
        f"{status} {reasons.get(status, 'Internal Server Error')}",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
        ],
    )
    return [body]


# -- serving it on loopback ----------------------------------------------------------------


class RedirectUriError(ValueError):
    """A redirect URI this machine cannot serve; the message says why and what to give."""


def loopback_address(redirect_uri: str) -> tuple[str, int, str]:
    """(address to listen on, port, path) of a ``http://localhost:PORT/path`` redirect URI."""
    parts = urlsplit(redirect_uri)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or host not in LOOPBACK_HOSTS:
        raise RedirectUriError(
            f"{redirect_uri!r} cannot be served by this command: it listens on loopback over "
            "plain http (as Entra allows for localhost only); give a redirect URI such as "
            f"{DEFAULT_AUTH_REDIRECT_URI}, registered on the app registration exactly as given"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise RedirectUriError(f"{redirect_uri!r} has an invalid port") from None
    return LOOPBACK_HOSTS[host], port, parts.path or "/"


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    # The default prints each request line, authorization code included, to stderr.
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(wsgiref.simple_server.WSGIServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class LoopbackServer:
    """Serves ``app`` on ``address:port`` in a thread, for as long as the ``with`` lasts."""

    def __init__(self, app: Any, address: str, port: int) -> None:
        self.address = address
        self.port = port
        server_class = _Server6 if ":" in address else _Server
        try:
            self._server = wsgiref.simple_server.make_server(
                address, port, app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise RedirectUriError(
                f"cannot listen on {address}:{port} for the redirect: {exc.strerror or exc}; "
                "stop what uses that port, or give --redirect-uri with another port (registered "
                "on the app registration too)"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="csp-callback",
            daemon=True,
        )

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
