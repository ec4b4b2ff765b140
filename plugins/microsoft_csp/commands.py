"""``halo-integrator csp ...``: authorize connections, see their state, grant admin consent,
list the synced tenants, map them to customers, generate and list site mappings, assign and
remove users' licences and change subscription quantities (`management`).

Added to the command line by the plugin's `register_commands` hook, so present only while
the ``microsoft_csp`` module is enabled. Each command gets the configuration from click's
context object, as the core commands do. The waiting commands serve the redirect endpoints
(`callbacks`) on the redirect URI's loopback port until the answer arrives or the timeout
passes. Errors are printed with their cause and fix, never as a traceback: exit 2 when the
command line or the configuration is wrong, 1 when Microsoft or the sign-in refused.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import shutil
import sys
import tempfile
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import sqlalchemy as sa
import structlog
import tomlkit

from halo_integrator_core import ModuleContext
from halo_integrator_core.config import (
    CLOUD_HOSTS,
    Config,
    ConfigError,
    Guid,
    TenantMapping,
    ValueProblem,
    load_config,
    structure_module_settings,
)
from halo_integrator_core.config_edit import write_atomically
from halo_integrator_core.errors import HttpError
from halo_integrator_core.http import HttpClient
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.request_log import StoreRequestLog
from halo_integrator_core.store.updates import (
    record_licence_assignment,
    record_subscription_quantity,
)

from . import management
from .auth import AppTokenCache, AppTokens, HttpCache, app_cache_file, http_cache_file
from .callbacks import (
    DEFAULT_AUTH_REDIRECT_URI,
    CallbackApp,
    LoopbackServer,
    RedirectUriError,
    loopback_address,
)
from .consent import (
    DEFAULT_CONSENT_REDIRECT_URI,
    ConsentResult,
    consent_fix,
    consent_url,
)
from .delegated import AuthorizationStatus, DelegatedTokens
from .directory import CspSession
from .errors import MicrosoftAuthError
from .management import Refused
from .mapping_proposals import CannotAppend, Proposals, TenantName, append_mappings, propose
from .settings import Connection, MicrosoftCspSettings
from .site_mappings import (
    MappedTenant,
    Plan,
    append_site_mappings,
    covering,
    describe_filters,
    describe_target,
    plan,
    processing_order,
    render_site_mappings,
)

MODULE = "microsoft_csp"
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 300.0

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(Exception):
    """A command that could not do its job, with what to do about it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


# -- shared ---------------------------------------------------------------------------------


def _usage(message: str, fix: str | None = None) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    if fix:
        click.echo(f"fix: {fix}", err=True)
    sys.exit(EXIT_USAGE)


def _reported(command: F) -> F:
    """Print a failure as one clear message (cause and fix) and exit, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RedirectUriError as exc:
            _usage(str(exc))
        except CommandFailed as exc:
            click.echo(f"error: {exc}", err=True)
            click.echo(f"fix: {exc.fix}", err=True)
        except Refused as exc:
            if exc.usage:
                _usage(str(exc), exc.fix)
            click.echo(f"error: {exc}", err=True)
            if exc.fix:
                click.echo(f"fix: {exc.fix}", err=True)
        except (MicrosoftAuthError, HttpError) as exc:
            click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)

    return run  # type: ignore[return-value]


def _config() -> Config:
    # ``obj`` is the core's App: it loads the file once, reports its problems (exit 2) and
    # configures logging.
    return click.get_current_context().obj.config()


def _store() -> Store:
    return click.get_current_context().obj.store()


def _settings(config: Config) -> MicrosoftCspSettings:
    try:
        return structure_module_settings(config, MODULE, MicrosoftCspSettings)
    except ConfigError as exc:
        from halo_integrator_core.cli import fail_config

        fail_config(ConfigError(exc.problems, source=config.source))


def _connection(settings: MicrosoftCspSettings, name: str | None, config: Config) -> Connection:
    names = [c.name for c in settings.connections]
    if not names:
        _usage(
            f"no connections are configured in [modules.{MODULE}]",
            f"add a [[modules.{MODULE}.connections]] table to {config.source or 'the configuration'} "
            "(name, tenant_id, partner_center_app, gdap_app), then `halo-integrator config check`",
        )
    if name is None:
        if len(names) == 1:
            return settings.connections[0]
        _usage(
            f"there are {len(names)} connections: say which with --connection "
            f"(one of: {', '.join(names)})"
        )
    for connection in settings.connections:
        if connection.name == name:
            return connection
    _usage(f"no connection named {name!r} (connections: {', '.join(names)})")


def _http(config: Config, store: Store | None = None) -> HttpClient:
    return HttpClient(
        verify=config.endpoints.verify,
        request_log=StoreRequestLog(store) if store is not None else None,
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "unknown"


def _describe_status(status: AuthorizationStatus) -> str:
    if status.expires_at is None:
        return f"authorized as {status.username}; no access token cached, one is fetched with the refresh token when needed"
    expired = status.expires_at <= datetime.now(status.expires_at.tzinfo)
    verb = "expired" if expired else "valid until"
    return (
        f"authorized as {status.username}; access token {verb} {_when(status.expires_at)}, "
        "renewed silently with the refresh token"
    )


def _open_browser(url: str) -> None:
    try:
        opened = webbrowser.open(url)
    except Exception:  # no browser is no failure: the URL is printed
        opened = False
    if not opened:
        click.echo("(no browser could be opened here: open the URL above yourself)", err=True)


# -- the group ------------------------------------------------------------------------------


@click.group("csp")
def csp() -> None:
    """Microsoft CSP: authorize connections with Partner Center, grant admin consent, list
    and map tenants, generate site mappings, manage licences and subscription quantities."""


# -- authorize, status, disconnect ------------------------------------------------------------


def run_authorization(
    tokens: DelegatedTokens,
    redirect_uri: str,
    *,
    timeout: float,
    open_browser: Callable[[str], Any] | None = None,
    echo: Callable[[str], None] = click.echo,
) -> AuthorizationStatus:
    """Serve the redirect URI, start the sign-in and wait for it to come back.

    ``open_browser`` is called with the sign-in URL once the endpoint is listening.
    Raises `CommandFailed` when no answer comes within ``timeout`` seconds, and the typed
    errors of `DelegatedTokens.complete` when the answer is a refusal.
    """
    address, port, path = loopback_address(redirect_uri)
    callbacks = CallbackApp(auth_path=path)
    connection = tokens.connection
    with LoopbackServer(callbacks, address, port):
        flow = tokens.begin(redirect_uri)
        waiter = callbacks.expect_authorization(tokens, flow)
        echo(
            f"Authorizing connection {connection.name!r} (partner tenant {connection.tenant_id}) "
            "with Partner Center."
        )
        echo(
            f"The redirect URI to register on app {tokens.client_id} (Authentication → Web → "
            f"Redirect URIs), exactly as shown:\n  {redirect_uri}"
        )
        echo(
            "Sign in as a Partner Center user with access to the Customer list (MFA required) "
            f"at:\n  {flow['auth_uri']}"
        )
        echo(f"Waiting up to {timeout:g} s for the sign-in to come back (Ctrl-C stops) ...")
        if open_browser is not None:
            open_browser(flow["auth_uri"])
        try:
            return waiter.wait(timeout)
        except TimeoutError:
            raise CommandFailed(
                f"no sign-in reached {redirect_uri} within {timeout:g} s",
                "run the command again and finish the sign-in in time (--timeout gives more); "
                "if the sign-in page showed AADSTS50011, add the redirect URI above to the app "
                "registration exactly as shown",
            ) from None


@csp.command("authorize")
@click.argument("connection_name", metavar="CONNECTION")
@click.option(
    "--redirect-uri",
    default=DEFAULT_AUTH_REDIRECT_URI,
    show_default=True,
    help="Where the sign-in comes back: a http://localhost:PORT/... URI registered on the "
    "Partner Center app. This command listens there while it waits.",
)
@click.option("--no-browser", is_flag=True, help="Only print the sign-in URL.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the sign-in.",
)
@_reported
def authorize(connection_name: str, redirect_uri: str, no_browser: bool, timeout: float) -> None:
    """Authorize CONNECTION with Partner Center (sign in as a partner user, once)."""
    config = _config()
    connection = _connection(_settings(config), connection_name, config)
    loopback_address(redirect_uri)  # a URI we cannot serve is a usage error, before anything
    store = _store()
    try:
        with (
            _http(config, store) as http,
            structlog.contextvars.bound_contextvars(
                module=MODULE, connection=connection.name, tenant=str(connection.tenant_id)
            ),
        ):
            tokens = DelegatedTokens.keeping_discovery(
                connection, config.endpoints, http, config.directory
            )
            status = run_authorization(
                tokens,
                redirect_uri,
                timeout=timeout,
                open_browser=None if no_browser else _open_browser,
            )
    finally:
        store.close()
    click.echo(f"connection {connection.name}: {_describe_status(status)}")
    click.echo(f"token cache: {tokens.path} (readable by you only)")


@csp.command("status")
@_reported
def status() -> None:
    """Show each connection: authorized or not, as whom, until when, and its token cache."""
    config = _config()
    settings = _settings(config)
    if not settings.connections:
        click.echo(f"no connections are configured in [modules.{MODULE}]")
        return
    with _http(config) as http:
        for connection in settings.connections:
            tokens = DelegatedTokens(connection, config.endpoints, http, config.directory)
            state = tokens.status()
            where = f"{connection.name} (partner tenant {connection.tenant_id})"
            if state.authorized:
                click.echo(f"{where}: {_describe_status(state)}")
            else:
                click.echo(
                    f"{where}: not authorized: run `halo-integrator csp authorize {connection.name}`"
                )
            present = "" if tokens.path.exists() else " (none yet)"
            click.echo(f"  token cache: {tokens.path}{present}")


@csp.command("disconnect")
@click.argument("connection_name", metavar="CONNECTION")
@_reported
def disconnect(connection_name: str) -> None:
    """Forget CONNECTION's authorization and delete its token cache."""
    config = _config()
    connection = _connection(_settings(config), connection_name, config)
    with _http(config) as http:
        tokens = DelegatedTokens(connection, config.endpoints, http, config.directory)
        was = tokens.status()
        removed = tokens.disconnect()
    if not removed:
        click.echo(
            f"connection {connection.name} was not authorized (no token cache at {tokens.path}): "
            "nothing to remove"
        )
        return
    who = f" of {was.username}" if was.username else ""
    click.echo(
        f"connection {connection.name} disconnected: removed the authorization{who} and the "
        f"token cache {tokens.path}"
    )
    click.echo(
        "to replace the Partner Center app's secret: put the new secret's Value where "
        "partner_center_app.client_secret points, then run "
        f"`halo-integrator csp authorize {connection.name}`"
    )


# -- admin consent ----------------------------------------------------------------------------


def _known_tenants(config: Config) -> list[dict[str, Any]]:
    """Tenants of this module the store knows (from syncs), and tenant IDs mapped in config."""
    store = _store()
    try:
        with store.read() as db:
            rows = [
                dict(row._mapping)
                for row in db.execute(
                    sa.select(
                        schema.tenants.c.tenant_id,
                        schema.tenants.c.name,
                        schema.tenants.c.default_domain,
                        schema.tenants.c.connection,
                    )
                    .where(schema.tenants.c.module == MODULE)
                    .order_by(schema.tenants.c.name)
                )
            ]
    finally:
        store.close()
    seen = {str(r["tenant_id"]).lower() for r in rows}
    for mapping in config.tenant_mappings:
        if str(mapping.tenant_id).lower() not in seen:
            rows.append(
                {
                    "tenant_id": str(mapping.tenant_id),
                    "name": mapping.customer or "",
                    "default_domain": None,
                    "connection": "",
                }
            )
            seen.add(str(mapping.tenant_id).lower())
    return rows


def _resolve_tenant(
    config: Config, settings: MicrosoftCspSettings, value: str, connection_name: str | None
) -> tuple[str, Connection]:
    """(tenant ID, connection) for TENANT: a tenant ID, or a synced tenant's name or domain."""
    wanted = value.strip()
    if wanted.lower() in ("common", "organizations", "consumers", ""):
        _usage(
            f"{value!r} is not a customer tenant",
            "give the customer's tenant ID, or the name or default domain of a synced tenant",
        )
    try:
        tenant_id: str | None = str(Guid.parse(wanted))
    except ValueProblem:
        tenant_id = None
    single = len(settings.connections) == 1
    if tenant_id is not None and (connection_name is not None or single):
        return tenant_id, _connection(settings, connection_name, config)
    known = _known_tenants(config)
    if tenant_id is not None:
        matches = [t for t in known if str(t["tenant_id"]).lower() == tenant_id]
    else:
        key = wanted.lower()
        matches = [
            t
            for t in known
            if key in (str(t["name"]).lower(), str(t["default_domain"] or "").lower())
        ]
        if not matches:
            listing = "; ".join(
                f"{t['name'] or '?'} ({', '.join(filter(None, [t['default_domain'], t['tenant_id']]))})"
                for t in known[:20]
            )
            more = f"; and {len(known) - 20} more" if len(known) > 20 else ""
            _usage(
                f"no tenant named {value!r}"
                + (f" (known tenants: {listing}{more})" if known else " (no tenants synced yet)"),
                "give a tenant ID, or the name or default domain of a tenant listed by "
                "`halo-integrator export --what tenants`",
            )
        ids = {str(t["tenant_id"]).lower() for t in matches}
        if len(ids) > 1:
            _usage(
                f"{value!r} names {len(ids)} tenants ({', '.join(sorted(ids))})",
                "give the tenant ID instead",
            )
        tenant_id = ids.pop()
    if connection_name is None:
        owners = {t["connection"] for t in matches if t["connection"]}
        if len(owners) == 1:
            connection_name = owners.pop()
    return tenant_id, _connection(settings, connection_name, config)


def _consent_target(tenant: str, connection_name: str | None) -> tuple[Config, Connection, str]:
    config = _config()
    settings = _settings(config)
    tenant_id, connection = _resolve_tenant(config, settings, tenant, connection_name)
    return config, connection, tenant_id


_REDIRECT_HELP = (
    "Where the answer comes back: a redirect URI registered on the GDAP app "
    "(Authentication → Redirect URIs)."
)


@csp.command("consent-url")
@click.argument("tenant")
@click.option("--connection", "connection_name", help="The connection whose GDAP app to consent.")
@click.option(
    "--redirect-uri", default=DEFAULT_CONSENT_REDIRECT_URI, show_default=True, help=_REDIRECT_HELP
)
@_reported
def consent_url_command(tenant: str, connection_name: str | None, redirect_uri: str) -> None:
    """Print TENANT's admin-consent URL for the GDAP app."""
    config, connection, tenant_id = _consent_target(tenant, connection_name)
    url = consent_url(
        config.endpoints,
        str(connection.gdap_app.client_id),
        tenant_id,
        redirect_uri,
        secrets.token_urlsafe(16),
    )
    click.echo(url)
    click.echo(
        f"Open it signed in as an administrator native to tenant {tenant_id} (not a guest from "
        f"your MSP) and accept. {redirect_uri} must be registered on app "
        f"{connection.gdap_app.client_id}. `halo-integrator csp consent {tenant_id}` also "
        "waits for the answer and records it.",
        err=True,
    )


@csp.command("consent")
@click.argument("tenant")
@click.option("--connection", "connection_name", help="The connection whose GDAP app to consent.")
@click.option(
    "--redirect-uri",
    default=DEFAULT_CONSENT_REDIRECT_URI,
    show_default=True,
    help=_REDIRECT_HELP + " This command listens there while it waits.",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@_reported
def consent(
    tenant: str,
    connection_name: str | None,
    redirect_uri: str,
    no_browser: bool,
    timeout: float,
) -> None:
    """Grant admin consent for the GDAP app in TENANT, and record the answer."""
    loopback_address(redirect_uri)  # a URI we cannot serve is a usage error, before anything
    config, connection, tenant_id = _consent_target(tenant, connection_name)
    store = _store()
    try:
        result = run_consent(
            config,
            connection,
            tenant_id,
            store,
            redirect_uri,
            timeout=timeout,
            open_browser=None if no_browser else _open_browser,
        )
        if not result.ok:
            raise CommandFailed(
                f"admin consent failed in tenant {tenant_id}: "
                f"{result.description or result.error} (recorded in the request log)",
                consent_fix(result),
            )
        click.echo(
            f"admin consent granted in tenant {tenant_id} for app "
            f"{connection.gdap_app.client_id} (recorded in the request log)"
        )
        _check_app_token(config, connection, tenant_id, store)
    finally:
        store.close()


def run_consent(
    config: Config,
    connection: Connection,
    tenant_id: str,
    store: Store,
    redirect_uri: str,
    *,
    timeout: float,
    open_browser: Callable[[str], Any] | None = None,
    echo: Callable[[str], None] = click.echo,
) -> ConsentResult:
    """Serve the consent redirect URI, hand out the URL and wait for the answer (recorded)."""
    address, port, path = loopback_address(redirect_uri)
    callbacks = CallbackApp(consent_path=path)
    state = secrets.token_urlsafe(16)
    with LoopbackServer(callbacks, address, port):
        waiter = callbacks.expect_consent(
            state=state, tenant=tenant_id, store=store, connection=connection.name
        )
        url = consent_url(
            config.endpoints, str(connection.gdap_app.client_id), tenant_id, redirect_uri, state
        )
        echo(
            f"Admin consent for app {connection.gdap_app.client_id} (the GDAP app of connection "
            f"{connection.name!r}) in tenant {tenant_id}."
        )
        echo(f"The redirect URI to register on the app, exactly as shown:\n  {redirect_uri}")
        echo(
            "Open this URL signed in as an administrator native to that tenant (not a guest "
            f"from your MSP), who may create enterprise apps, and accept:\n  {url}"
        )
        echo(f"Waiting up to {timeout:g} s for the answer (Ctrl-C stops) ...")
        if open_browser is not None:
            open_browser(url)
        try:
            return waiter.wait(timeout)
        except TimeoutError:
            raise CommandFailed(
                f"no answer reached {redirect_uri} within {timeout:g} s",
                "run the command again and accept in time (--timeout gives more); if the page "
                "showed AADSTS50011, register the redirect URI above on the GDAP app",
            ) from None


def _check_app_token(config: Config, connection: Connection, tenant_id: str, store: Store) -> None:
    """Try an app-only Graph token in the tenant now, as the next sync will."""
    app = connection.gdap_app
    graph = CLOUD_HOSTS[config.endpoints.cloud]["graph"]
    with (
        _http(config, store) as http,
        structlog.contextvars.bound_contextvars(
            module=MODULE, connection=connection.name, tenant=tenant_id
        ),
    ):
        login = config.endpoints.url("login")
        tokens = AppTokens(
            client_id=str(app.client_id),
            secret=app.client_secret.resolve,
            authority=login,
            http=http,
            app_name=f"{app.client_id} (GDAP app of connection {connection.name!r})",
            # The caches the sync uses: the token got here spares the next sync a request.
            token_cache=AppTokenCache(
                app_cache_file(config.directory, connection.name, "gdap"), login=login
            ),
            http_cache=HttpCache(http_cache_file(config.directory, connection.name)),
        )
        # A token kept from before the consent may lack what was just consented to: ask anew.
        tokens.forget(tenant_id)
        try:
            tokens.token(tenant_id, graph)
        except (MicrosoftAuthError, HttpError, ValueProblem) as exc:
            click.echo(
                f"note: no app-only token for tenant {tenant_id} yet ({exc}). Entra can take a "
                "few minutes to provision the app after consent; the next sync tries again."
            )
            return
    click.echo(f"checked: the GDAP app gets a Graph token in tenant {tenant_id}")


# -- tenants and their mappings ----------------------------------------------------------------

#: The fields of `csp tenants --json`, in order (documented in the README: stable).
TENANT_FIELDS = (
    "connection",
    "tenant_id",
    "name",
    "default_domain",
    "access",
    "access_detail",
    "consent",
    "mapping",
    "customer",
    "mapping_source",
    "pending",
    "last_synced_at",
    "last_error",
    "active",
)

#: Whether the GDAP app is consented, read from the access state the last sync found: a
#: token in the tenant was asked for only where an active GDAP relationship exists.
CONSENT_BY_ACCESS = {
    "reseller_and_gdap": "consented",
    "gdap_only": "consented",
    "consent_missing": "consent_needed",
    "reseller_only": "not_applicable",  # no GDAP relationship: the GDAP app is not used
    "gdap_expired": "not_applicable",  # nothing to consent to until a new relationship
}

_SYNC_FIRST = "run `halo-integrator sync --only tenants` (or a full `halo-integrator sync`) first"


def _nothing_stored(config: Config) -> str | None:
    """Why the store has nothing to show yet (no SQLite file), or ``None``; creates nothing."""
    url = sa.engine.make_url(config.store_url)
    database = url.database
    on_file = url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
    if on_file and not Path(database).exists():
        return f"nothing synced yet (no store at {database})"
    return None


def _config_mappings(config: Config) -> dict[str, TenantMapping]:
    """The config's mapping of each tenant for this module (one for this module wins)."""
    found: dict[str, TenantMapping] = {}
    for mapping in config.tenant_mappings:
        if mapping.module not in (None, "", MODULE):
            continue
        key = str(mapping.tenant_id).lower()
        if key not in found or mapping.module:
            found[key] = mapping
    return found


def _pending(mapping: TenantMapping | None, row: dict[str, Any]) -> str | None:
    """What the next sync will change about the tenant's mapping, as the config says now."""
    if mapping is None:
        if row["mapping_source"] == "config":
            return "the config no longer maps it: the next sync applies that"
        return None
    if mapping.do_not_import:
        if row["mapping"] == "do_not_import":
            return None
        return "the config says do not import: applied at the next sync"
    if row["mapping"] == "customer" and row["customer"] == mapping.customer:
        return None
    return f'the config maps it to "{mapping.customer}": applied at the next sync'


def tenant_rows(store: Store, config: Config) -> list[dict[str, Any]]:
    """The module's stored tenants with their access, consent and mapping (see TENANT_FIELDS)."""
    t, m, c = schema.tenants, schema.tenant_mappings, schema.customers
    with store.read() as db:
        tenants = db.execute(
            sa.select(
                t.c.connection,
                t.c.tenant_id,
                t.c.name,
                t.c.default_domain,
                t.c.access,
                t.c.access_detail,
                t.c.customer_id,
                c.c.name.label("customer"),
                t.c.do_not_import,
                t.c.last_synced_at,
                t.c.last_error,
                t.c.active,
            )
            .select_from(t.outerjoin(c, c.c.id == t.c.customer_id))
            .where(t.c.module == MODULE)
            .order_by(t.c.connection, t.c.name, t.c.tenant_id)
        ).all()
        sources: dict[str, tuple[bool, str]] = {}
        for row in db.execute(
            sa.select(m.c.tenant_id, m.c.module, m.c.source).where(m.c.module.in_(["", MODULE]))
        ):
            # As the sync reads them: a mapping for this module wins over one for all.
            key = row.tenant_id.lower()
            if key not in sources or row.module:
                sources[key] = (bool(row.module), row.source)
    in_config = _config_mappings(config)
    rows = []
    for tenant in tenants:
        if tenant.do_not_import:
            mapping = "do_not_import"
        elif tenant.customer_id is not None:
            mapping = "customer"
        else:
            mapping = "unmapped"
        source = sources.get(tenant.tenant_id.lower(), (False, None))[1]
        row = {
            "connection": tenant.connection or None,
            "tenant_id": tenant.tenant_id,
            "name": tenant.name,
            "default_domain": tenant.default_domain,
            "access": tenant.access,
            "access_detail": tenant.access_detail,
            "consent": CONSENT_BY_ACCESS.get(tenant.access, "unknown"),
            "mapping": mapping,
            "customer": tenant.customer if mapping == "customer" else None,
            "mapping_source": source if mapping != "unmapped" else None,
            "pending": None,
            "last_synced_at": (
                tenant.last_synced_at.isoformat() if tenant.last_synced_at else None
            ),
            "last_error": tenant.last_error,
            "active": bool(tenant.active),
        }
        row["pending"] = _pending(in_config.get(tenant.tenant_id.lower()), row)
        rows.append(row)
    return rows


def _shorten(text: str | None, width: int) -> str:
    text = re.sub(r"\s*[\r\n\t]\s*", " ", text or "")  # one line, whatever the text
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


_CONSENT_SHOWN = {"consent_needed": "consent needed", "not_applicable": "n/a"}
_SOURCE_SHOWN = {"config": "config", "created": "created", None: "-"}


def _print_tenant_table(rows: list[dict[str, Any]]) -> None:
    width = max(shutil.get_terminal_size((120, 24)).columns, 60)
    headers = ("TENANT", "ACCESS", "CONSENT", "MAPPING", "FROM", "LAST SYNC")
    caps = (30, 17, 14, 30, 7, 20)
    table = []
    for row in rows:
        mapping = {"customer": row["customer"], "do_not_import": "do not import"}.get(
            row["mapping"], "unmapped"
        )
        synced = row["last_synced_at"]
        table.append(
            (
                row["name"],
                row["access"],
                _CONSENT_SHOWN.get(row["consent"], row["consent"]),
                mapping,
                _SOURCE_SHOWN.get(row["mapping_source"], row["mapping_source"]),
                f"{synced[:10]} {synced[11:16]} UTC" if synced else "never",
            )
        )
    widths = [
        min(cap, max(len(str(cells[i])) for cells in [headers, *table]))
        for i, cap in enumerate(caps)
    ]

    def line(cells: tuple[Any, ...]) -> str:
        shortened = (_shorten(str(cell), w).ljust(w) for cell, w in zip(cells, widths, strict=True))
        return "  ".join(shortened).rstrip()

    click.echo(line(headers))
    for row, cells in zip(rows, table, strict=True):
        click.echo(line(cells))
        where = [f"id {row['tenant_id']}", f"domain {row['default_domain'] or '-'}"]
        if row["connection"]:
            where.append(f"connection {row['connection']}")
        if not row["active"]:
            where.append("inactive: no longer listed by Microsoft")
        notes = [
            ("", "   ".join(where)),
            ("detail: ", row["access_detail"]),
            ("error: ", row["last_error"]),
            ("pending: ", row["pending"]),
        ]
        if row["consent"] == "consent_needed":
            notes.append(("consent: ", f"`halo-integrator csp consent {row['tenant_id']}`"))
        for label, text in notes:
            if text:
                click.echo("  " + _shorten(label + text, width - 2))
    unmapped = sum(1 for row in rows if row["mapping"] == "unmapped" and row["active"])
    click.echo(f"\n{len(rows)} tenant{'s' if len(rows) != 1 else ''}, {unmapped} unmapped.")
    if unmapped:
        click.echo(
            "Map tenants with [[tenant_mappings]] in the config; `halo-integrator csp map --auto` "
            "proposes mappings from the names of existing customers."
        )
    click.echo("Details in full: `halo-integrator csp tenants --json`.")


@csp.command("tenants")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable field names).")
@_reported
def tenants_command(as_json: bool) -> None:
    """List the synced tenants: access, consent, mapping and last sync (read from the store)."""
    config = _config()
    missing = _nothing_stored(config)
    rows: list[dict[str, Any]] = []
    if missing is None:
        store = _store()
        try:
            rows = tenant_rows(store, config)
        finally:
            store.close()
        if not rows:
            missing = f"no {MODULE} tenants in the store at {store.describe()} yet"
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        _print_tenant_table(rows)
    if missing:
        click.echo(f"{missing}: {_SYNC_FIRST}", err=as_json)


def _names_to_match(store: Store) -> tuple[list[TenantName], list[str]]:
    """The module's active tenants, and the names of the active customers."""
    t, c = schema.tenants, schema.customers
    with store.read() as db:
        tenants = [
            TenantName(row.tenant_id, row.name)
            for row in db.execute(
                sa.select(t.c.tenant_id, t.c.name)
                .where(t.c.module == MODULE, t.c.active.is_(True))
                .order_by(t.c.name, t.c.tenant_id)
            )
        ]
        customers = list(
            db.execute(sa.select(c.c.name).where(c.c.active.is_(True)).order_by(c.c.name)).scalars()
        )
    return tenants, customers


def _validated(config: Config, text: str) -> None:
    """Load ``text`` as the config would be loaded; exit 2 with its problems if it fails."""
    from halo_integrator_core.cli import fail_config

    assert config.source is not None
    with tempfile.TemporaryDirectory(prefix="halo-integrator-map-") as folder:
        candidate = Path(folder) / config.source.name
        candidate.write_text(text, encoding="utf-8")
        try:
            load_config(candidate)
        except ConfigError as exc:
            click.echo(
                f"error: with the proposed mappings the configuration would not load, so "
                f"{config.source} is left as it was",
                err=True,
            )
            fail_config(ConfigError(exc.problems, source=config.source))


def _tenant_label(name: str, tenant_id: str) -> str:
    return f'"{name}" ({tenant_id})'


def _report(proposals: Proposals, *, written: Path | None) -> None:
    verb = "mapped" if written else "would map"
    if proposals.mapped:
        where = f", appended to {written}" if written else " (dry run: the config is unchanged)"
        click.echo(f"{verb} {len(proposals.mapped)} tenant(s){where}:")
        for p in proposals.mapped:
            click.echo(
                f'  {_tenant_label(p.tenant_name, p.tenant_id)} → "{p.customer}" ({p.match} match)'
            )
    else:
        click.echo("no new mappings to propose")
    if proposals.ambiguous:
        click.echo(f"ambiguous, left unmapped ({len(proposals.ambiguous)}):")
        for a in proposals.ambiguous:
            candidates = ", ".join(f'"{name}"' for name in a.candidates)
            click.echo(f"  {_tenant_label(a.tenant_name, a.tenant_id)} matches {candidates}")
        click.echo("  fix: map each by hand: [[tenant_mappings]] with its tenant_id and customer")
    if proposals.unmatched:
        click.echo(f"unmatched: no customer of that name ({len(proposals.unmatched)}):")
        for u in proposals.unmatched:
            click.echo(f"  {_tenant_label(u.name, u.tenant_id)}")
        click.echo(
            "  fix: map each by hand, mark it do_not_import = true, or turn on "
            "[integrator] create_customers_from_tenants to create its customer"
        )
    if proposals.already_mapped:
        click.echo(
            f"already mapped in the config, left as they are: {len(proposals.already_mapped)}"
        )
    if written and proposals.mapped:
        click.echo("next: `halo-integrator sync` maps these tenants to their customers")


@csp.command("map")
@click.option(
    "--auto",
    is_flag=True,
    help="Propose mappings by matching tenant names to existing customers' names (required).",
)
@click.option("--dry-run", is_flag=True, help="Print the proposals; leave the config unchanged.")
@_reported
def map_command(auto: bool, dry_run: bool) -> None:
    """Map unmapped tenants to existing customers of the same name, in the config file."""
    if not auto:
        _usage(
            "`csp map` needs --auto: tenant mappings are otherwise written by hand in the config",
            "run `halo-integrator csp map --auto [--dry-run]` to propose them from customer "
            "names, or add [[tenant_mappings]] tables (tenant_id, and customer or "
            "do_not_import = true) to the configuration file",
        )
    config = _config()
    missing = _nothing_stored(config)
    if missing:
        click.echo(f"{missing}: {_SYNC_FIRST}")
        return
    store = _store()
    try:
        tenants, customers = _names_to_match(store)
    finally:
        store.close()
    if not tenants:
        click.echo(f"no {MODULE} tenants in the store yet: {_SYNC_FIRST}")
        return
    mapped_ids = {str(mapping.tenant_id) for mapping in config.tenant_mappings}
    proposals = propose(tenants, customers, mapped_ids)
    if dry_run or not proposals.mapped:
        _report(proposals, written=None if dry_run else config.source)
        return
    assert config.source is not None  # loaded from a file: App.config() insists on one
    text = config.source.read_text(encoding="utf-8")
    try:
        updated = append_mappings(text, proposals.mapped, datetime.now(UTC).date())
    except (CannotAppend, tomlkit.exceptions.ParseError) as exc:
        _usage(f"cannot add the mappings to {config.source}: {exc}")
    _validated(config, updated)
    write_atomically(config.source, updated)
    _report(proposals, written=config.source)


# -- site mappings ----------------------------------------------------------------------------


@csp.group("site-mappings")
def site_mappings_group() -> None:
    """Generate and list the site mappings that place each tenant's users (guide 6.1)."""


def _mapped_tenants(store: Store) -> list[MappedTenant]:
    """The module's active tenants that a sync imports for a customer, with its name; a
    tenant reached through two connections once."""
    t, c = schema.tenants, schema.customers
    found: dict[str, MappedTenant] = {}
    with store.read() as db:
        for row in db.execute(
            sa.select(t.c.tenant_id, t.c.name, c.c.name.label("customer"))
            .select_from(t.join(c, c.c.id == t.c.customer_id))
            .where(t.c.module == MODULE, t.c.active.is_(True), t.c.do_not_import.is_(False))
            .order_by(c.c.name, t.c.name, t.c.tenant_id)
        ):
            found.setdefault(
                row.tenant_id.lower(), MappedTenant(row.tenant_id, row.name, row.customer)
            )
    return list(found.values())


_MAP_FIRST = (
    "map tenants to customers ([[tenant_mappings]] in the config, or "
    "`halo-integrator csp map --auto`), then run `halo-integrator sync --only tenants`"
)


def _report_plan(found: Plan, config: Config, *, written: Path | None, dry_run: bool) -> None:
    if found.added:
        if dry_run:
            where = f"would append {len(found.added)} site mapping(s) to {config.source}"
            click.echo(f"{where} (dry run: the config is unchanged):")
        else:
            click.echo(
                f"added {len(found.added)} site mapping(s) to {written}, each importing all "
                "users of one tenant to its customer's Main site:"
            )
            for tenant in found.added:
                click.echo(
                    f'  "{tenant.customer}" ← {_tenant_label(tenant.name, tenant.tenant_id)}'
                )
    else:
        click.echo("no new site mappings: every mapped tenant has one already")
    if found.covered:
        click.echo(f"already covered by a site mapping, skipped ({len(found.covered)}):")
        for covered in found.covered:
            tenant = covered.tenant
            click.echo(
                f"  {_tenant_label(tenant.name, tenant.tenant_id)}: site_mappings[{covered.index}]"
                f' of customer "{tenant.customer}"'
            )
    if written and found.added:
        click.echo(
            "next: `halo-integrator config check`; refine the customers that need more (several "
            "sites, groups, service accounts) by hand; `halo-integrator sync` imports the users"
        )


@site_mappings_group.command("generate")
@click.option("--dry-run", is_flag=True, help="Print the TOML it would append; change nothing.")
@_reported
def site_mappings_generate(dry_run: bool) -> None:
    """Append a site mapping for each mapped tenant without one: all its users to its
    customer's Main site (the guide's Generate Mappings)."""
    config = _config()
    missing = _nothing_stored(config)
    if missing:
        click.echo(f"{missing}: {_SYNC_FIRST}")
        return
    store = _store()
    try:
        tenants = _mapped_tenants(store)
    finally:
        store.close()
    if not tenants:
        click.echo(f"no {MODULE} tenant in the store is mapped to a customer yet: {_MAP_FIRST}")
        return
    found = plan(tenants, config.site_mappings)
    today = datetime.now(UTC).date()
    if dry_run or not found.added:
        _report_plan(found, config, written=None, dry_run=dry_run)
        if dry_run and found.added:
            click.echo()
            click.echo(render_site_mappings(found.added, today), nl=False)
        return
    assert config.source is not None  # loaded from a file: App.config() insists on one
    text = config.source.read_text(encoding="utf-8")
    try:
        updated = append_site_mappings(text, found.added, today)
    except (CannotAppend, tomlkit.exceptions.ParseError) as exc:
        _usage(f"cannot add the site mappings to {config.source}: {exc}")
    _validated(config, updated)
    write_atomically(config.source, updated)
    _report_plan(found, config, written=config.source, dry_run=False)


_LIST_HEADERS = (
    "SEQ",
    "MAPPING",
    "TYPE",
    "SITE / FIELD",
    "TENANT",
    "GROUP",
    "FILTERS",
    "DESCRIPTION",
)


@site_mappings_group.command("list")
@_reported
def site_mappings_list() -> None:
    """List the config's site mappings in the order a sync tries them, per customer, and the
    mapped tenants no site mapping places."""
    config = _config()
    ordered = processing_order(config.site_mappings)
    if ordered:
        click.echo(
            f"site mappings in {config.source}, in the order a sync tries them for each customer "
            "(sequence, then file order):"
        )
        rows = {
            customer: [
                (
                    str(mapping.sequence),
                    f"site_mappings[{index}]",
                    mapping.type.value,
                    describe_target(mapping),
                    str(mapping.tenant_id) if mapping.tenant_id else "all",
                    mapping.group or "-",
                    describe_filters(mapping) or "-",
                    mapping.description or "-",
                )
                for index, mapping in mappings
            ]
            for customer, mappings in ordered.items()
        }
        cells = [_LIST_HEADERS, *(row for table in rows.values() for row in table)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(_LIST_HEADERS))]

        def line(row: tuple[str, ...]) -> str:
            return "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

        for customer, table in rows.items():
            click.echo(f'\ncustomer "{customer}":')
            click.echo(line(_LIST_HEADERS))
            for row in table:
                click.echo(line(row))
    else:
        click.echo(f"no [[site_mappings]] in {config.source}")
    missing = _nothing_stored(config)
    if missing:
        click.echo(
            f"\n{missing}: the mapped tenants no site mapping places are listed after a sync"
        )
        return
    store = _store()
    try:
        tenants = _mapped_tenants(store)
    finally:
        store.close()
    mapped_customers = {mapping.customer for mapping in config.site_mappings}
    unplaced = [tenant for tenant in tenants if covering(config.site_mappings, tenant) is None]
    without = [t for t in unplaced if t.customer not in mapped_customers]
    others = [t for t in unplaced if t.customer in mapped_customers]
    generated = config.integrator.create_site_mappings_for_new_tenants
    if without:
        fate = (
            "their users go to the customer's Main site, as integrator."
            "create_site_mappings_for_new_tenants is on"
            if generated
            else "their users are not imported: `halo-integrator csp site-mappings generate` "
            "writes a mapping for each, or set integrator.create_site_mappings_for_new_tenants "
            "= true"
        )
        click.echo(f"\ncustomers of mapped tenants with no site mapping ({fate}):")
        for tenant in without:
            click.echo(f'  "{tenant.customer}": {_tenant_label(tenant.name, tenant.tenant_id)}')
    if others:
        click.echo(
            "\ntenants whose customer's site mappings all name other tenants (their users are "
            "not imported: add a mapping for the tenant, or `halo-integrator csp site-mappings "
            "generate`):"
        )
        for tenant in others:
            click.echo(f'  "{tenant.customer}": {_tenant_label(tenant.name, tenant.tenant_id)}')
    if not tenants:
        click.echo(f"\nno {MODULE} tenant in the store is mapped to a customer yet: {_MAP_FIRST}")
    elif not unplaced:
        click.echo(f"\nevery mapped tenant ({len(tenants)}) has a site mapping")


# -- licences and subscriptions (guide 5.1, 9.1) -----------------------------------------------


def _session(config: Config, settings: MicrosoftCspSettings, http: HttpClient) -> CspSession:
    """The module's session for one command, as a sync would make it."""
    context = ModuleContext(
        module=MODULE,
        settings=settings,
        integrator=config.integrator,
        log=structlog.get_logger(f"halo_integrator.{MODULE}"),
        endpoints=config.endpoints,
        http=http,
        state_dir=config.directory,
    )
    # A command is run by a person, often just after changing an app's permissions or
    # consent: its app tokens are fresh ones, not those the sync keeps between runs.
    return CspSession(context, keep_app_tokens=False)


def _synced_store(config: Config) -> Store:
    missing = _nothing_stored(config)
    if missing:
        _usage(f"{missing}: {_SYNC_FIRST}")
    return _store()


@csp.group("licence")
def licence_group() -> None:
    """Assign and remove users' licences in Microsoft 365 (guide 5.1; needs
    manage_licences = true)."""


_USER_HELP = "A synced user: user principal name, email address or Entra object ID."
_SKU_HELP = "A licence of the user's tenant: SKU part number (SPE_E3) or SKU ID."


@licence_group.command("assign")
@click.option("--user", "user_text", required=True, metavar="USER", help=_USER_HELP)
@click.option("--sku", "sku_text", required=True, metavar="SKU", help=_SKU_HELP)
@click.option(
    "--dry-run", is_flag=True, help="Read Microsoft and say what would happen; change nothing."
)
@_reported
def licence_assign(user_text: str, sku_text: str, dry_run: bool) -> None:
    """Assign licence SKU to USER in Microsoft 365 (Graph assignLicense)."""
    _change_licence(user_text, sku_text, assign=True, dry_run=dry_run)


@licence_group.command("remove")
@click.option("--user", "user_text", required=True, metavar="USER", help=_USER_HELP)
@click.option("--sku", "sku_text", required=True, metavar="SKU", help=_SKU_HELP)
@click.option(
    "--dry-run", is_flag=True, help="Read Microsoft and say what would happen; change nothing."
)
@_reported
def licence_remove(user_text: str, sku_text: str, dry_run: bool) -> None:
    """Remove licence SKU from USER in Microsoft 365 (Graph assignLicense)."""
    _change_licence(user_text, sku_text, assign=False, dry_run=dry_run)


def _change_licence(user_text: str, sku_text: str, *, assign: bool, dry_run: bool) -> None:
    config = _config()
    settings = _settings(config)
    if not settings.manage_licences:
        _usage(
            f"licence management is off: [modules.{MODULE}] manage_licences is false (the "
            "guide's 'Allow licences to be managed from within Halo', section 5.1)",
            f"set manage_licences = true under [modules.{MODULE}] in "
            f"{config.source or 'the configuration'}",
        )
    store = _synced_store(config)
    try:
        user = management.find_user(store, user_text)
        licence = management.find_licence(store, user, sku_text)
        tenant = management.stored_tenant(store, config, user.tenant_ref)
        with (
            _http(config, store) as http,
            structlog.contextvars.bound_contextvars(
                module=MODULE, connection=tenant.connection, tenant=tenant.tenant_id
            ),
        ):
            change = management.change_licence(
                _session(config, settings, http),
                tenant,
                user,
                licence,
                assign=assign,
                dry_run=dry_run,
            )
        if not dry_run:
            # Only now that Microsoft has answered: the store follows its answer.
            record_licence_assignment(
                store,
                licence_id=licence.id,
                user_id=user.id,
                assigned=change.assigned,
                counts=change.counts,
            )
    finally:
        store.close()
    for line in change.report(dry_run=dry_run):
        click.echo(line)


@csp.group("subscription")
def subscription_group() -> None:
    """Change subscriptions in Partner Center (guide 9.1; direct partners only)."""


@subscription_group.command("set-quantity")
@click.argument("subscription")
@click.argument("quantity", type=click.IntRange(min=1))
@click.option(
    "--dry-run", is_flag=True, help="Read Partner Center and say what would happen; change nothing."
)
@_reported
def subscription_set_quantity(subscription: str, quantity: int, dry_run: bool) -> None:
    """Set SUBSCRIPTION's licence quantity to QUANTITY in Partner Center.

    SUBSCRIPTION is a synced subscription's ID, or its name when only one has it.
    """
    config = _config()
    settings = _settings(config)
    store = _synced_store(config)
    try:
        stored = management.find_subscription(store, subscription)
        tenant = management.stored_tenant(store, config, stored.tenant_ref)
        with (
            _http(config, store) as http,
            structlog.contextvars.bound_contextvars(
                module=MODULE, connection=tenant.connection, tenant=tenant.tenant_id
            ),
        ):
            change = management.set_quantity(
                _session(config, settings, http), tenant, stored, quantity, dry_run=dry_run
            )
        if not dry_run:
            # From Microsoft's answer (or its last read of a change still in progress).
            record_subscription_quantity(
                store, subscription_id=stored.id, quantity=change.quantity, status=change.status
            )
    finally:
        store.close()
    for line in change.report(dry_run=dry_run):
        click.echo(line)
