"""The WSGI app of `halo-integrator run`: health, webhooks, the admin page, modules' routes.

Routes are fixed when the app is made: the core's own, then each enabled module's
`web_routes`, each confined to ``/<module>/``. Admin pages (the core's and modules' admin
routes) need the admin credential, HTTP basic against ``[server] admin_user`` and
``admin_password``; without a configured password they are closed, never open. A form posted
to an admin route must carry the CSRF token the core hands the route (``csrf_token``), since
a browser sends basic credentials with any site's request. Every answer carries the security
headers, and none may be cached.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

import attrs
import sqlalchemy as sa
import structlog
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from ..config import Config, ValueProblem
from ..context import module_context
from ..http import HttpClient
from ..logging import redact_text
from ..models import WebhookEvent, WebRoute
from ..pacing import Pacer
from ..plugins import PluginHost
from ..store import Store
from ..store.request_log import StoreRequestLog, record_inbound
from ..webhooks import WebhookRefresher, handle_webhook
from .admin import admin_page, last_runs
from .pages import content_security_policy, esc, message_page, page

log = structlog.get_logger(__name__)

#: WSGI environ keys the core sets for modules' routes.
ENVIRON_STORE = "halo_integrator.store"
ENVIRON_CSRF_TOKEN = "halo_integrator.csrf_token"
#: The form field (or ``X-CSRF-Token`` header) an admin route's POST must carry.
CSRF_FIELD = "csrf_token"

ADMIN_REALM = "halo-integrator admin"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_ADMIN_OFF = (
    "The admin pages are off: no admin credential is configured. Set one in the "
    'configuration file, for example\n\n[server]\nadmin_user = "admin"\n'
    'admin_password = { env = "HALO_INTEGRATOR_ADMIN_PASSWORD" }\n\n'
    'with the password in that environment variable (or { file = "/path" }), and restart.'
)


#: Failed admin sign-ins one address may make within `SIGN_IN_WINDOW` seconds; past them it
#: is answered 429 until the oldest of them is that old, whatever it sends.
SIGN_IN_FAILURES = 10
SIGN_IN_WINDOW = 15 * 60.0


class SignInThrottle:
    """Failed admin sign-ins by remote address, over a sliding window: what stops the
    password being guessed at the speed of the server."""

    #: Addresses remembered at most; past this, those without a recent failure are dropped.
    MAX_ADDRESSES = 4096

    def __init__(
        self,
        failures: int = SIGN_IN_FAILURES,
        window: float = SIGN_IN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: dict[str, collections.deque[float]] = {}

    def wait(self, address: str) -> float:
        """Seconds ``address`` must wait before it may try again (0: it may now)."""
        with self._lock:
            times = self._recent(address, self._clock())
            if len(times) < self.failures:
                return 0.0
            return max(0.0, times[0] + self.window - self._clock())

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            if address not in self._failed and len(self._failed) >= self.MAX_ADDRESSES:
                for other in list(self._failed):
                    self._recent(other, now)  # drops an address with no recent failure
            self._failed.setdefault(address, collections.deque()).append(now)
            self._recent(address, now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failed.pop(address, None)

    def _recent(self, address: str, now: float) -> collections.deque[float]:
        times = self._failed.get(address, collections.deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        while len(times) > self.failures:
            times.popleft()
        if not times:
            self._failed.pop(address, None)
        return times


class Health(Protocol):
    """The scheduler's state, as ``/healthz`` and the admin page show it."""

    def snapshot(self) -> Mapping[str, Any]: ...


@attrs.frozen(kw_only=True)
class MountedRoute:
    """A module's route as the app serves it."""

    module: str
    path: str
    app: Any
    admin: bool
    title: str | None

    def matches(self, path: str) -> bool:
        """The path itself; a path ending in ``/`` serves everything under it too."""
        return path == self.path or (self.path.endswith("/") and path.startswith(self.path))


class WebApp:
    """The server's WSGI app. Build it with `make_app`; `close` it when the server stops."""

    def __init__(
        self,
        config: Config,
        store: Store,
        host: PluginHost,
        health: Health | None = None,
        *,
        http: HttpClient | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.host = host
        self.health = health
        self._own_http = http is None
        self.http = http or HttpClient(
            verify=config.endpoints.verify,
            request_log=StoreRequestLog(store),
            # Webhook refreshes sync through it: in the daemon, on the scheduler's pacer.
            pacer=pacer or Pacer.from_config(config),
        )
        # Per process: a restart invalidates the forms of pages open in a browser.
        self._csrf_key = secrets.token_bytes(32)
        self.sign_ins = SignInThrottle()
        self.active = host.active_modules()
        self.modules = tuple(sorted(self.active))
        self.routes = self._collect_routes(self.active)
        #: Runs the syncs accepted webhooks ask for, off the request threads.
        self.refresher = WebhookRefresher()

    def close(self, grace: float = 10.0) -> None:
        """Let a running webhook refresh end (up to ``grace`` seconds), then let go."""
        self.refresher.close(grace)
        if self._own_http:
            self.http.close()

    # -- routes ----------------------------------------------------------------------------

    def _collect_routes(self, active: Mapping[str, Any]) -> tuple[MountedRoute, ...]:
        routes: list[MountedRoute] = []
        for name in self.modules:
            if not self.host.implements(name, "web_routes"):
                continue
            context = module_context(self.config, active[name], http=self.http)
            try:
                offered = [
                    route
                    for answer in self.host.hook_for(name).web_routes(context=context)
                    for route in answer or ()
                ]
            except Exception:
                log.exception("web.routes_failed", module=name)
                continue
            for route in offered:
                problem = _route_problem(name, route, routes)
                if problem:
                    log.error(
                        "web.route_refused",
                        module=name,
                        path=getattr(route, "path", None),
                        reason=problem,
                    )
                    continue
                routes.append(
                    MountedRoute(
                        module=name,
                        path=route.path,
                        app=route.app,
                        admin=route.admin,
                        title=route.title,
                    )
                )
        # The longest path first, so a route under another's subtree wins.
        return tuple(sorted(routes, key=lambda r: len(r.path), reverse=True))

    def admin_links(self) -> list[tuple[str, str]]:
        """(title, path) of each module's admin routes that have a title."""
        return sorted(
            (route.title, route.path) for route in self.routes if route.admin and route.title
        )

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.monotonic()
        request = Request(environ)
        path = request.path
        admin = path in ("/admin", "/admin/")
        route = None
        if not admin:
            route = next((r for r in self.routes if r.matches(path)), None)
            admin = bool(route and route.admin)
        statuses: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, _secured(headers, admin=admin), exc_info)

        try:
            if route is not None:
                answer = self._module_route(route, request, environ, start)
            else:
                answer = self._core_route(request)(environ, start)
        except Exception:
            log.exception("web.failed", method=request.method, path=path)
            if statuses:
                raise  # headers are out: let the server end the connection
            answer = message_page(
                "Internal error", "The request failed; the server log says why.", status=500
            )(environ, start)
        log.info(
            "web.request",
            method=request.method,
            path=redact_text(path),
            status=statuses[0].split(" ", 1)[0] if statuses else None,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return answer

    def _core_route(self, request: Request) -> Callable[..., Any]:
        path, method = request.path, request.method
        if path == "/":
            return _only(method, ("GET", "HEAD")) or redirect("/admin", 302)
        if path == "/healthz":
            return _only(method, ("GET", "HEAD")) or self.healthz()
        if path in ("/admin", "/admin/"):
            return (
                _only(method, ("GET", "HEAD"))
                or self._admin_refusal(request)
                or admin_page(
                    self.store, health=self._snapshot()[0], module_links=self.admin_links()
                )
            )
        if path.startswith("/webhooks/"):
            segment = path.removeprefix("/webhooks/")
            if not segment or "/" in segment:
                return message_page("Not found", "Nothing is served here.", status=404)
            return _only(method, ("POST",)) or self.webhook(request, segment)
        return message_page("Not found", "Nothing is served here.", status=404)

    def _module_route(
        self,
        route: MountedRoute,
        request: Request,
        environ: dict[str, Any],
        start: Callable[..., Any],
    ) -> Iterable[bytes]:
        if route.admin:
            refusal = self._admin_refusal(request) or self._csrf_refusal(request, environ)
            if refusal is not None:
                return refusal(environ, start)
            environ["REMOTE_USER"] = self.config.server.admin_user
            environ[ENVIRON_CSRF_TOKEN] = self.csrf_token()
        environ[ENVIRON_STORE] = self.store
        with structlog.contextvars.bound_contextvars(module=route.module):
            return route.app(environ, start)

    # -- /healthz --------------------------------------------------------------------------

    def _snapshot(self) -> tuple[dict[str, Any] | None, bool]:
        if self.health is None:
            return None, True
        try:
            snapshot = dict(self.health.snapshot())
        except Exception as exc:
            log.exception("web.health_failed")
            return {"alive": False, "error": f"{type(exc).__name__}: {exc}"}, False
        return snapshot, bool(snapshot.get("alive"))

    def healthz(self) -> Response:
        scheduler, alive = self._snapshot()
        modules: dict[str, Any] | None = None
        try:
            with self.store.read() as db:
                db.execute(sa.text("SELECT 1"))
            modules = last_runs(self.store, self.modules)
            store = "ok"
        except Exception as exc:
            log.warning("web.store_unreachable", error=str(exc))
            reason = getattr(exc, "orig", None) or exc
            first = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
            store = redact_text(f"unreachable: {type(reason).__name__}: {first}")[:300]
        healthy = alive and store == "ok"
        body = {
            "status": "ok" if healthy else "degraded",
            "scheduler": scheduler,
            "store": store,
            "modules": modules,
        }
        return _json(body, 200 if healthy else 503)

    # -- /webhooks/<module> ----------------------------------------------------------------

    def webhook(self, request: Request, segment: str) -> Response:
        module = segment
        if module not in self.modules and segment.replace("-", "_") in self.modules:
            module = segment.replace("-", "_")  # /webhooks/microsoft-csp, as URLs like it
        received_at = datetime.now(UTC)
        limit = self.config.server.max_body_bytes
        body = read_body(request.environ, limit)
        if body is None:
            message = f"the body is larger than {limit} bytes ([server] max_body_bytes)"
            record_inbound(
                self.store,
                module=module,
                method="POST",
                url=request.path,
                status=413,
                outcome="rejected",
                detail=message,
                at=received_at,
            )
            return _json({"message": message}, 413)
        event = WebhookEvent(
            module=module,
            received_at=received_at,
            headers={name: value for name, value in request.headers.items()},
            body=body,
            remote_addr=request.remote_addr,
        )
        outcome = handle_webhook(
            self.store,
            self.config,
            self.host,
            event,
            path=request.path,
            modules=self.active,
            http=self.http,
            refresher=self.refresher,
        )
        return _json({"message": outcome.message}, outcome.status)

    # -- the admin credential --------------------------------------------------------------

    def _admin_refusal(self, request: Request) -> Response | None:
        """The answer refusing ``request`` the admin pages, or ``None`` to let it in."""
        server = self.config.server
        if server.admin_password is None:
            return page(
                "Admin pages are off",
                "<pre>" + esc(_ADMIN_OFF) + "</pre>",
                status=403,
            )
        try:
            password = server.admin_password.resolve()
        except ValueProblem as exc:
            log.error("web.admin_password_unreadable", problem=str(exc))
            return message_page(
                "Admin pages are off",
                "An admin password is configured but cannot be read; the server log says why.",
                status=403,
            )
        given = request.authorization
        address = request.remote_addr or "unknown"
        wait = self.sign_ins.wait(address)
        if wait > 0:
            log.warning("web.admin_sign_in_throttled", path=request.path, remote_addr=address)
            minutes = max(1, round(wait / 60))
            answer = message_page(
                "Too many failed sign-ins",
                f"{self.sign_ins.failures} failed admin sign-ins from this address within "
                f"{round(self.sign_ins.window / 60)} minutes: try again in about {minutes} "
                f"minute{'s' if minutes != 1 else ''}, with the admin user and password of "
                "the config ([server] admin_user and admin_password).",
                status=429,
            )
            answer.headers["Retry-After"] = str(max(1, round(wait)))
            return answer
        user = given.username if given is not None and given.type == "basic" else None
        secret = given.password if given is not None and given.type == "basic" else None
        # Both compared, always, in constant time.
        user_ok = hmac.compare_digest((user or "").encode(), server.admin_user.encode())
        password_ok = hmac.compare_digest((secret or "").encode(), password.encode())
        if user is not None and secret is not None and user_ok and password_ok:
            self.sign_ins.succeeded(address)
            return None
        if given is not None:
            # A credential sent and refused (not a browser's first request, which sends none).
            self.sign_ins.failed(address)
            log.warning("web.admin_refused", path=request.path, remote_addr=address)
        answer = message_page(
            "Sign in",
            "The admin pages need the admin user and password ([server] admin_user and "
            "admin_password).",
            status=401,
        )
        answer.headers["WWW-Authenticate"] = f'Basic realm="{ADMIN_REALM}", charset="UTF-8"'
        return answer

    def csrf_token(self) -> str:
        """The token an admin form must post back (the same for the process's life)."""
        digest = hmac.new(
            self._csrf_key, b"csrf:" + self.config.server.admin_user.encode(), hashlib.sha256
        )
        return digest.hexdigest()

    def _csrf_refusal(self, request: Request, environ: dict[str, Any]) -> Response | None:
        """Refuse an admin POST without the CSRF token; leave its body readable again."""
        if request.method in _SAFE_METHODS:
            return None
        body = read_body(environ, self.config.server.max_body_bytes)
        if body is None:
            return message_page("Too large", "The request body is too large.", status=413)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        supplied = request.headers.get("X-CSRF-Token")
        if supplied is None and request.mimetype == "application/x-www-form-urlencoded":
            fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            supplied = next((value for name, value in fields if name == CSRF_FIELD), None)
        if supplied is not None and hmac.compare_digest(
            supplied.encode(), self.csrf_token().encode()
        ):
            return None
        log.warning("web.csrf_refused", path=request.path)
        return message_page(
            "Form expired",
            "This form is stale (the server restarted) or did not come from the admin page: "
            "reload the page and try again.",
            status=403,
        )


def make_app(
    config: Config,
    store: Store,
    host: PluginHost,
    health: Health | None = None,
    *,
    http: HttpClient | None = None,
    pacer: Pacer | None = None,
) -> WebApp:
    """The server's WSGI app for the enabled modules of ``host``.

    ``health`` is the scheduler's (``None`` when no scheduler runs); ``http`` the client the
    modules' routes reach Microsoft with (one of the app's own, logging to ``store``, if not
    given); ``pacer`` the pacing that client keeps (the scheduler's, so that the process
    keeps one account of Microsoft's budgets; one of the app's own if not given).
    """
    return WebApp(config, store, host, health, http=http, pacer=pacer)


# -- helpers -----------------------------------------------------------------------------------


def read_body(environ: Mapping[str, Any], limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes.

    Never reads more than ``limit + 1`` bytes, whatever the request claims.
    """
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None
    if length is not None and length > limit:
        return None
    stream = environ["wsgi.input"]
    if length is None:
        if not environ.get("wsgi.input_terminated"):
            return b""  # no length and no chunked framing: nothing may be read safely
        wanted = limit + 1
    else:
        wanted = length
    chunks, got = [], 0
    while got < wanted:
        chunk = stream.read(min(65536, wanted - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    body = b"".join(chunks)
    return None if len(body) > limit else body


def _route_problem(module: str, route: Any, taken: Iterable[MountedRoute]) -> str | None:
    if not isinstance(route, WebRoute):
        return f"the hook answered {type(route).__name__}, not a WebRoute"
    path = route.path
    prefix = f"/{module}/"
    if not isinstance(path, str) or not path.startswith(prefix):
        return f"the path must start with {prefix}"
    if any(part in (".", "..") for part in path.split("/")) or "//" in path:
        return "the path must be plain: no empty, '.' or '..' segments"
    if any(ch in path for ch in "?#%") or any(ord(ch) < 33 for ch in path):
        return "the path must not hold '?', '#', '%', spaces or control characters"
    if not callable(route.app):
        return "the route's app is not a WSGI callable"
    if any(other.path == path for other in taken):
        return "another route of the module has this path"
    return None


def _secured(headers: list[tuple[str, str]], *, admin: bool) -> list[tuple[str, str]]:
    names = {name.lower() for name, _ in headers}
    forced = {name.lower() for name, _ in _SECURITY_HEADERS}
    secured = [(name, value) for name, value in headers if name.lower() not in forced]
    secured.extend(_SECURITY_HEADERS)
    if "content-security-policy" not in names:
        secured.append(("Content-Security-Policy", content_security_policy()))
    if admin or "cache-control" not in names:
        secured = [(n, v) for n, v in secured if n.lower() != "cache-control"]
        secured.append(("Cache-Control", "no-store"))
    return secured


def _only(method: str, allowed: tuple[str, ...]) -> Response | None:
    if method in allowed:
        return None
    answer = message_page("Method not allowed", f"Use {' or '.join(allowed)} here.", status=405)
    answer.headers["Allow"] = ", ".join(allowed)
    return answer


def _json(body: Any, status: int) -> Response:
    return Response(
        json.dumps(body, default=str, sort_keys=True),
        status=status,
        content_type="application/json",
    )
