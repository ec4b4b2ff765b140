"""``halo-integrator csp webhooks register|status|test``: Partner Center's webhook registration.

Through the registration API of the webhooks page (``/webhooks/v1/registration``, its
``validationEvents``), with the connection's Partner Center token (the authorized user's,
or the app's own until `csp authorize`), as a sync calls Partner Center. Each refusal is
explained by one row of `REFUSALS`. The receiver itself is `webhooks`.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import click
import sqlalchemy as sa
import structlog

from halo_integrator_core import ModuleContext
from halo_integrator_core.config import Config
from halo_integrator_core.errors import (
    AuthenticationFailed,
    BadRequest,
    Conflict,
    HttpError,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from halo_integrator_core.http import HttpClient, RetryPolicy
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.request_log import StoreRequestLog

from .commands import (
    MODULE,
    CommandFailed,
    _config,
    _connection,
    _http,
    _reported,
    _settings,
    _store,
    _usage,
)
from .directory import ConnectionClients
from .settings import Connection, MicrosoftCspSettings

#: Always registered besides ``webhooks.events``: Partner Center sends a validation event
#: only to a registration that includes it (`csp webhooks test`).
TEST_EVENT = "test-created"
DEFAULT_TEST_TIMEOUT = 60.0
WEBHOOK_ROLES = "Global admin, Billing Admin, Admin agent, Sales agent or Helpdesk agent"


@attrs.frozen
class Refusal:
    """What a Partner Center refusal means for these commands, and its fix."""

    error: type[HttpError]
    cause: Callable[[HttpError, Connection], str]
    fix: Callable[[HttpError, Connection], str]


#: Partner Center's refusals of the webhook calls, first match wins.
REFUSALS: tuple[Refusal, ...] = (
    Refusal(
        AuthenticationFailed,
        lambda e, c: f"Partner Center did not accept the token of connection {c.name} ({e.detail})",
        lambda e, c: (
            f"run `halo-integrator csp authorize {c.name}`, and check the Partner "
            "Center app's secret"
        ),
    ),
    Refusal(
        PermissionDenied,
        lambda e, c: (
            f"Partner Center refused connection {c.name} the webhook API ({e.detail}): "
            f"it needs one of the roles {WEBHOOK_ROLES}"
        ),
        lambda e, c: (
            "give the authorized account one of those roles in Partner Center (or "
            f"authorize another: `halo-integrator csp authorize {c.name}`)"
        ),
    ),
    Refusal(
        RateLimited,
        lambda e, c: (
            "Partner Center allows 2 validation events a minute"
            + (f": try again in {e.retry_after:g} s" if e.retry_after is not None else "")
        ),
        lambda e, c: "wait a minute, then run `halo-integrator csp webhooks test` again",
    ),
    Refusal(
        BadRequest,
        lambda e, c: f"Partner Center refused the request: {e.detail}",
        lambda e, c: (
            "check the callback URL (reachable from the internet, https) and "
            f"[modules.{MODULE}.webhooks] events, then `halo-integrator csp webhooks register`"
        ),
    ),
    Refusal(
        Conflict,
        lambda e, c: f"Partner Center refused the change: {e.detail}",
        lambda e, c: (
            "run `halo-integrator csp webhooks status` to see the registration, then register again"
        ),
    ),
)


def explained(error: HttpError, connection: Connection) -> Exception:
    for refusal in REFUSALS:
        if isinstance(error, refusal.error):
            return CommandFailed(refusal.cause(error, connection), refusal.fix(error, connection))
    return error


class RegistrationApi:
    """The registration API of the webhooks page, for one connection."""

    def __init__(
        self,
        config: Config,
        settings: MicrosoftCspSettings,
        connection: Connection,
        http: HttpClient,
    ) -> None:
        context = ModuleContext(
            module=MODULE,
            settings=settings,
            integrator=config.integrator,
            log=structlog.get_logger(f"halo_integrator.{MODULE}"),
            endpoints=config.endpoints,
            http=http,
            state_dir=config.directory,
        )
        self.connection = connection
        self.http = http
        self.clients = ConnectionClients(connection, context, http)
        self.url = config.endpoints.url("partner_center") + "/webhooks/v1/registration"

    def _headers(self) -> dict[str, str]:
        return {
            **self.clients.partner_center_headers(),
            "MS-CorrelationId": str(uuid.uuid4()),
            "Accept": "application/json",
        }

    def _call(
        self, method: str, path: str = "", *, http: HttpClient | None = None, **options: Any
    ) -> Any:
        try:
            return (http or self.http).json(
                method, self.url + path, headers=self._headers(), **options
            )
        except HttpError as exc:
            raise explained(exc, self.connection) from None

    def get(self) -> dict[str, Any] | None:
        """The registration, or ``None`` when there is none (404)."""
        try:
            return self._call("GET")
        except NotFound:
            return None

    def register(self, url: str, events: list[str], *, update: bool) -> dict[str, Any]:
        # POST registers, PUT updates an existing registration (the page's two calls).
        body = {"WebhookUrl": url, "WebhookEvents": events}
        return self._call("PUT" if update else "POST", json=body)

    def send_validation_event(self, http: HttpClient) -> str:
        answer = self._call("POST", "/validationEvents", http=http)
        correlation = answer.get("correlationId") if isinstance(answer, dict) else None
        if not correlation:
            raise CommandFailed(
                f"Partner Center's answer names no correlationId: {answer!r:.200}",
                "try again; if it persists, the webhook API has changed",
            )
        return correlation

    def validation_event(self, correlation: str) -> dict[str, Any]:
        return self._call("GET", f"/validationEvents/{correlation}")


# -- the callback URL --------------------------------------------------------------------------


def default_url(config: Config) -> str:
    return f"{config.server.base_url()}/webhooks/{MODULE}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_callback_url(url: str, config: Config, *, given: bool) -> None:
    """A URL Partner Center can be told to POST events to; a usage error otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    where = "--url" if given else "[server] public_url"
    if parts.scheme not in ("http", "https") or not host:
        _usage(f"not an absolute http(s) URL: {url!r}", f"give {where} as https://host/...")
    if parts.scheme == "http" and not _loopback(host):
        _usage(
            f"refusing the http:// callback URL {url}: the events name your customers and their "
            "subscriptions and would cross the network unencrypted (their signature stops "
            "forgery, not reading)",
            f"serve the integrator behind a TLS proxy and give {where} as its https:// address "
            "(plain http is accepted for a loopback address only, such as the emulator's)",
        )
    if _loopback(host) and config.endpoints.partner_center is None:
        _usage(
            f"Partner Center cannot reach {url}: it is a loopback address",
            "set [server] public_url to where the internet reaches this server (https), or "
            "give --url",
        )


# -- the commands ------------------------------------------------------------------------------


@click.group("webhooks")
def webhooks() -> None:
    """Partner Center webhooks: register the integrator's callback, see the registration,
    ask Partner Center for a test event."""


@webhooks.command("register")
@click.option("--connection", "connection_name", help="The connection (if there are several).")
@click.option(
    "--url",
    help="The callback Partner Center POSTs events to [default: "
    f"{{[server] public_url}}/webhooks/{MODULE}].",
)
@_reported
def register(connection_name: str | None, url: str | None) -> None:
    """Register the callback URL for [modules.microsoft_csp.webhooks] events (and
    test-created), or update the registration."""
    config = _config()
    settings = _settings(config)
    connection = _connection(settings, connection_name, config)
    if not settings.webhooks.enabled:
        _usage(
            f"webhooks are off in [modules.{MODULE}.webhooks]: Partner Center's events would be "
            "answered 404",
            f"set enabled = true in [modules.{MODULE}.webhooks] and check allowed_certificate_hosts, "
            "then run this again",
        )
    target = url or default_url(config)
    check_callback_url(target, config, given=url is not None)
    events = list(dict.fromkeys([*settings.webhooks.events, TEST_EVENT]))
    store = _store()
    try:
        with _http(config, store) as http, _bound(connection):
            api = RegistrationApi(config, settings, connection, http)
            existing = api.get()
            answer = api.register(target, events, update=existing is not None)
    finally:
        store.close()
    registered = answer.get("WebhookEvents") if isinstance(answer, dict) else None
    subscriber = answer.get("SubscriberId") if isinstance(answer, dict) else None
    verb = "updated the registration" if existing is not None else "registered"
    click.echo(
        f"connection {connection.name}: {verb}: {answer.get('WebhookUrl', target)} for "
        f"{', '.join(registered or events)}" + (f" (subscriber {subscriber})" if subscriber else "")
    )
    if not target.rstrip("/").endswith((f"/webhooks/{MODULE}", "/webhooks/microsoft-csp")):
        click.echo(
            f"note: the integrator answers events at /webhooks/{MODULE}: make sure {target} "
            "reaches it"
        )
    click.echo("next: `halo-integrator csp webhooks test` asks Partner Center for a test event")


@webhooks.command("status")
@click.option("--connection", "connection_name", help="Only this connection.")
@_reported
def status(connection_name: str | None) -> None:
    """Each connection's registration in Partner Center, the receiver's settings, and the
    last events received."""
    config = _config()
    settings = _settings(config)
    connections = (
        [_connection(settings, connection_name, config)]
        if connection_name is not None
        else list(settings.connections)
    )
    if not connections:
        _connection(settings, None, config)  # says how to add one
    hooks = settings.webhooks
    expected = default_url(config)
    store = _store()
    try:
        with _http(config, store) as http:
            for connection in connections:
                with _bound(connection):
                    found = RegistrationApi(config, settings, connection, http).get()
                where = f"{connection.name} (partner tenant {connection.tenant_id})"
                if found is None:
                    click.echo(
                        f"{where}: not registered: run `halo-integrator csp webhooks register"
                        + (f" --connection {connection.name}`" if len(connections) > 1 else "`")
                    )
                    continue
                events = list(found.get("WebhookEvents") or [])
                click.echo(f"{where}: registered {found.get('WebhookUrl')} for {', '.join(events)}")
                missing = [e for e in (*hooks.events, TEST_EVENT) if e not in events]
                if missing:
                    click.echo(
                        f"  note: not registered for {', '.join(missing)}: run "
                        "`halo-integrator csp webhooks register` again"
                    )
                if found.get("WebhookUrl") != expected:
                    click.echo(f"  note: this server's callback would be {expected}")
        click.echo(
            f"receiver: {'on' if hooks.enabled else 'off'} at /webhooks/{MODULE}; certificate "
            f"hosts: {', '.join(hooks.allowed_certificate_hosts)}; trusted roots: "
            f"{hooks.trusted_ca_file or 'the public ones (certifi)'}"
        )
        _last_events(store)
    finally:
        store.close()


def _last_events(store: Store, count: int = 5) -> None:
    log = schema.request_log
    with store.read() as connection:
        rows = connection.execute(
            sa.select(log.c.at, log.c.status, log.c.outcome, log.c.detail)
            .where(
                log.c.direction == "inbound",
                log.c.module == MODULE,
                log.c.url.like("/webhooks/%"),
            )
            .order_by(log.c.at.desc(), log.c.id.desc())
            .limit(count)
        ).all()
    if not rows:
        click.echo("events received: none yet")
        return
    click.echo(f"last {len(rows)} event(s) received:")
    for row in rows:
        click.echo(
            f"  {row.at:%Y-%m-%d %H:%M:%S} UTC  {row.status}  {row.outcome or '-'}  "
            f"{(row.detail or '')[:120]}"
        )


@webhooks.command("test")
@click.option("--connection", "connection_name", help="The connection (if there are several).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_TEST_TIMEOUT,
    show_default=True,
    help="Seconds to wait for Partner Center to report the delivery.",
)
@_reported
def test(connection_name: str | None, timeout: float) -> None:
    """Ask Partner Center to send a test event to the registered callback, wait for the
    delivery's result, and report it."""
    config = _config()
    settings = _settings(config)
    connection = _connection(settings, connection_name, config)
    store = _store()
    try:
        with (
            _http(config, store) as http,
            # Partner Center allows 2 validation events a minute: say so rather than wait.
            HttpClient(
                verify=config.endpoints.verify,
                request_log=StoreRequestLog(store),
                retry=RetryPolicy(max_attempts=1),
            ) as once,
            _bound(connection),
        ):
            api = RegistrationApi(config, settings, connection, http)
            registration = api.get()
            if registration is None:
                raise CommandFailed(
                    f"connection {connection.name} has no webhook registration",
                    "run `halo-integrator csp webhooks register` first",
                )
            if TEST_EVENT not in (registration.get("WebhookEvents") or []):
                raise CommandFailed(
                    f"the registration of connection {connection.name} does not include "
                    f"{TEST_EVENT}, which a test event needs",
                    "run `halo-integrator csp webhooks register` again (it adds it)",
                )
            correlation = api.send_validation_event(once)
            click.echo(
                f"Partner Center is sending a test event to {registration.get('WebhookUrl')} "
                f"(correlation {correlation}); waiting up to {timeout:g} s for the result ..."
            )
            result = _wait_for_delivery(api, correlation, timeout)
    finally:
        store.close()
    attempts = result.get("results") or []
    for attempt in attempts:
        message = attempt.get("responseMessage") or ""
        system = " (a Partner Center system error)" if attempt.get("systemError") else ""
        click.echo(
            f"  delivery at {attempt.get('dateTimeUtc', '?')}: {attempt.get('responseCode') or 'no answer'}"
            f"{system}{': ' + message[:300] if message else ''}"
        )
    if any(a.get("responseCode") == "OK" for a in attempts):
        click.echo("the callback answered OK: the registration works")
        return
    if not attempts:
        raise CommandFailed(
            f"Partner Center reported no delivery of the test event within {timeout:g} s "
            f"(status {result.get('status', 'unknown')})",
            "run the command again with a longer --timeout; Partner Center keeps the result "
            "for seven days",
        )
    raise CommandFailed(
        "the callback did not answer the test event OK",
        f"check that {registration.get('WebhookUrl')} reaches `halo-integrator run` from the "
        "internet, and read why it answered as it did: `halo-integrator logs inbound`",
    )


def _wait_for_delivery(api: RegistrationApi, correlation: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pause = 0.2
    while True:
        result = api.validation_event(correlation)
        if str(result.get("status", "")).lower() == "completed" or result.get("results"):
            return result
        if time.monotonic() + pause > deadline:
            return result
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def _bound(connection: Connection) -> Any:
    return structlog.contextvars.bound_contextvars(
        module=MODULE, connection=connection.name, tenant=str(connection.tenant_id)
    )


__all__ = ["REFUSALS", "RegistrationApi", "check_callback_url", "webhooks"]
