"""The `halo-integrator` command line.

Exit status: 0 when all went well; 1 when a run had failures; 2 when the configuration or
the command line is wrong (the message says which key or option, and how to fix it).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import attrs
import click
import sqlalchemy as sa
import structlog
import tomlkit

from . import config as config_module
from .cli_logs import logs
from .config import Config, ConfigError, find_config, load_config
from .config_edit import write_atomically
from .export import EXPORTS, write_export
from .logging import configure_logging
from .plugins import ActiveModule, PluginHost, entry_point_names
from .store import Store, StoreError, schema
from .sync.bookmarks import reset_user_deltas, tenant_key
from .sync.engine import Change, Reporter, RunResult, SyncEngine, SyncError
from .sync.mapping import MAIN_SITE

EXIT_FAILED = 1
EXIT_USAGE = 2


class App:
    """What the sub-commands share: the config path and, loaded on demand, the rest."""

    def __init__(self, config_path: Path, log_format: str | None, log_level: str | None) -> None:
        self.config_path = config_path
        self.log_format = log_format
        self.log_level = log_level
        self._config: Config | None = None
        self._logging_ready = False

    def config(self, *, missing_ok: bool = False) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path, missing_ok=missing_ok)
            except ConfigError as exc:
                fail_config(exc)
            self.setup_logging()
        return self._config

    def use(self, config: Config) -> None:
        """Work with ``config`` (one the command loaded itself), and configure logging."""
        self._config = config
        self.setup_logging()

    def setup_logging(self) -> None:
        if self._logging_ready:
            return
        settings = self._config.logging if self._config else config_module.LoggingSettings()
        try:
            configure_logging(
                format=self.log_format or settings.format.value,
                level=self.log_level or settings.level,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        self._logging_ready = True

    def host(self, *, missing_ok: bool = False) -> PluginHost:
        return PluginHost.load(self.config(missing_ok=missing_ok))

    def store(self) -> Store:
        try:
            return Store.open(self.config().store_url)
        except StoreError as exc:
            click.echo(f"error: {exc}\nfix: check [store] url in {self.config_path}", err=True)
            sys.exit(EXIT_USAGE)


def fail_config(exc: ConfigError) -> NoReturn:
    where = f"{exc.source}: " if exc.source else ""
    count = len(exc.problems)
    click.echo(f"{where}{count} configuration problem{'s' if count != 1 else ''}", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Configuration file (default: ${config_module.CONFIG_ENV}, then ./{config_module.CONFIG_FILENAME}).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    help="Readable console lines or JSON lines (default: [logging] format, auto).",
)
@click.option("--log-level", help="debug, info, warning or error (default: [logging] level).")
@click.version_option(package_name="halo-integrator")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, log_format: str | None, log_level: str | None
) -> None:
    """An integrator host for managed service providers: Microsoft CSP into your PSA."""
    ctx.obj = App(find_config(config_path), log_format, log_level)


# --- init and config ---------------------------------------------------------------------


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--exist-ok", is_flag=True, help="Leave an existing file as it is and succeed.")
@click.pass_obj
def init(app: App, force: bool, exist_ok: bool) -> None:
    """Write a commented starter configuration."""
    path = app.config_path
    if path.exists() and exist_ok and not force:
        click.echo(f"{path} exists: left as it is")
        return
    if path.exists() and not force:
        click.echo(f"error: {path} already exists; use --force to overwrite it", err=True)
        sys.exit(EXIT_USAGE)
    starter = resources.files("halo_integrator_core").joinpath("starter.toml").read_text("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, starter)
    click.echo(f"wrote {path}")
    click.echo(
        "next: add your connections and tenant mappings, then `halo-integrator config check`"
    )


@cli.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@click.pass_obj
def config_check(app: App) -> None:
    """Validate the configuration file, module settings and secret references."""
    problems: list[str] = []
    loaded = True
    try:
        config = load_config(app.config_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        loaded = False
        # Report the modules' own problems too, so one check shows everything.
        config = config_module.load_modules_only(app.config_path)
        if config is None:
            fail_config(exc)
    app.use(config)
    host = PluginHost.load(config)
    try:
        modules = host.active_modules()
    except ConfigError as exc:
        problems.extend(exc.problems)
        modules = {}
    problems.extend(
        problem
        for name, module in modules.items()
        for problem in config_module.check_secrets(module.settings, f"modules.{name}")
    )
    if loaded:
        warnings = list(config_module.site_mapping_warnings(config))
        store_problems, store_warnings, note = _site_mapping_checks(config)
        problems.extend(store_problems)
        for warning in [*warnings, *store_warnings]:
            click.echo(f"warning: {warning}", err=True)
        if note:
            click.echo(f"note: {note}", err=True)
    if problems:
        fail_config(ConfigError(problems, source=app.config_path))
    enabled = ", ".join(sorted(modules)) or "none"
    click.echo(f"{config.source}: configuration OK (enabled modules: {enabled})")


def _site_mapping_checks(config: Config) -> tuple[list[str], list[str], str | None]:
    """(problems, warnings, note) of the site mappings that name a site, against the store.

    Only a store a run has made already is read (none is created); a customer no sync has
    brought in yet is a warning, since the first sync creates it with its main site.
    """
    checked = [
        (index, mapping)
        for index, mapping in enumerate(config.site_mappings)
        if mapping.type is config_module.SiteMappingType.SITE and not mapping.create_site
    ]
    if not checked:
        return [], [], None
    customers, sites = schema.customers, schema.sites
    try:
        store = Store.open_existing(config.store_url)
    except StoreError as exc:
        return [], [], f"site mappings not checked against the store: {exc}"
    if store is None:
        return [], [], None
    try:
        with store.read() as connection:
            ids = dict(
                connection.execute(
                    sa.select(customers.c.name, customers.c.id).where(
                        customers.c.name.in_({mapping.customer for _, mapping in checked})
                    )
                ).all()
            )
            names: dict[int, list[str]] = {}
            for row in connection.execute(
                sa.select(sites.c.customer_id, sites.c.name)
                .where(sites.c.customer_id.in_(list(ids.values())))
                .order_by(sites.c.customer_id, sites.c.is_main.desc(), sites.c.name)
            ):
                names.setdefault(row.customer_id, []).append(row.name)
    except sa.exc.SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        return (
            [],
            [],
            f"site mappings not checked against the store at {store.describe()}: {reason}",
        )
    finally:
        store.close()
    problems, warnings = [], []
    for index, mapping in checked:
        site = mapping.site or MAIN_SITE
        customer_id = ids.get(mapping.customer)
        if customer_id is None:
            then = (
                ""
                if site.lower() == MAIN_SITE.lower()
                else f", with only its {MAIN_SITE} site: create site {site!r} in the PSA, or "
                "set create_site = true"
            )
            warnings.append(
                f"site_mappings[{index}].customer: customer {mapping.customer!r} is not in the "
                f"store yet; the first sync creates it{then}"
            )
            continue
        known = names.get(customer_id, [])
        if site.lower() not in {name.lower() for name in known}:
            problems.append(
                f"site_mappings[{index}].site: customer {mapping.customer!r} has no site "
                f"{site!r} (its sites: {', '.join(known) or 'none'}); name one of them, or set "
                "create_site = true"
            )
    return problems, warnings, None


@config_group.command("show")
@click.pass_obj
def config_show(app: App) -> None:
    """Print the effective configuration, defaults filled in, secrets redacted."""
    config = app.config()
    host = app.host()
    try:
        modules = host.active_modules()
    except ConfigError as exc:
        fail_config(exc)
    data: dict[str, Any] = config_module.converter.unstructure(config)
    data.pop("source", None)
    data["store"]["url"] = config.store_url
    rendered_modules: dict[str, Any] = {}
    for name, module_config in config.modules.items():
        table: dict[str, Any] = {"enabled": module_config.enabled}
        active = modules.get(name)
        if active is not None:
            table["interval_minutes"] = active.interval_minutes
            if active.settings is not None:
                table |= config_module.converter.unstructure(active.settings)
        else:
            table |= dict(module_config.settings)
        rendered_modules[name] = table
    data["modules"] = rendered_modules
    click.echo(tomlkit.dumps(_toml_ready(config_module.redact_for_display(data))), nl=False)


def _toml_ready(value: Any) -> Any:
    """Plain types only, and no None (TOML has no null)."""
    if isinstance(value, dict):
        if value and set(value) <= {"env", "file"}:  # a secret reference reads best inline
            inline = tomlkit.inline_table()
            inline.update({k: str(v) for k, v in value.items()})
            return inline
        return {str(k): _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_ready(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# --- modules and plugins -----------------------------------------------------------------


@cli.group("modules")
def modules_group() -> None:
    """Enable or disable modules in the configuration file."""


@modules_group.command("enable")
@click.argument("name")
@click.pass_obj
def modules_enable(app: App, name: str) -> None:
    """Enable module NAME (edits the file in place, keeping comments)."""
    _set_module_enabled(app, name, True)


@modules_group.command("disable")
@click.argument("name")
@click.pass_obj
def modules_disable(app: App, name: str) -> None:
    """Disable module NAME (its plugin is then never imported)."""
    _set_module_enabled(app, name, False)


def _set_module_enabled(app: App, name: str, enabled: bool) -> None:
    path = app.config_path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        click.echo(
            f"error: no configuration file at {path}: run `halo-integrator init` first", err=True
        )
        sys.exit(EXIT_USAGE)
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        click.echo(f"error: {path} is not valid TOML: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    known = set(entry_point_names())
    modules = document.get("modules")
    if name not in known and not (modules is not None and name in modules):
        click.echo(
            f"error: no installed plugin provides a module named {name!r} "
            f"(installed: {', '.join(sorted(known)) or 'none'})",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    if modules is None:
        modules = tomlkit.table(is_super_table=True)
        document["modules"] = modules
    if name in modules:
        modules[name]["enabled"] = enabled
    else:
        table = tomlkit.table()
        table["enabled"] = enabled
        modules[name] = table
    write_atomically(path, tomlkit.dumps(document))
    click.echo(f"module {name} {'enabled' if enabled else 'disabled'} in {path}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def plugins_command(app: App, as_json: bool) -> None:
    """List plugins: version, modules, hooks, and whether each module is enabled."""
    config = app.config(missing_ok=True)
    host = PluginHost.load(config)
    specs = host.module_specs()
    rows = []
    for info in host.plugins():
        modules = []
        for module_name in info.modules:
            spec = specs.get(module_name)
            modules.append(
                {
                    "name": module_name,
                    "title": spec.title if spec else None,
                    "enabled": config.module_enabled(module_name),
                    "interval_minutes": (
                        (
                            config.modules[module_name].interval_minutes
                            if module_name in config.modules
                            else None
                        )
                        or (spec.default_interval_minutes if spec else None)
                    ),
                }
            )
        rows.append(attrs.asdict(info) | {"modules": modules})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
        return
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        dist = f" ({row['distribution']}{version})" if row["distribution"] else ""
        click.echo(f"{row['name']}{dist}")
        for module in row["modules"]:
            state = "enabled" if module["enabled"] else "disabled"
            title = f" — {module['title']}" if module["title"] else ""
            click.echo(f"  module {module['name']}{title}: {state}")
        if row["error"]:
            click.echo(f"  error: {row['error']}")
        elif row["loaded"]:
            click.echo(f"  hooks: {', '.join(row['hooks'])}")
        else:
            click.echo("  hooks: not loaded (disabled modules are never imported)")


# --- sync --------------------------------------------------------------------------------


class TerminalReporter(Reporter):
    """Progress on a terminal; in a dry run, each change on standard output."""

    def __init__(self, *, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.progress = sys.stderr.isatty()

    def tenant_finished(self, module: str, index: int, total: int, tenant: Any) -> None:
        if self.progress:
            end = "\n" if index == total else ""
            click.echo(
                f"\r\x1b[K{module}: tenant {index}/{total} {tenant.name}", err=True, nl=False
            )
            click.echo(end, err=True, nl=False)

    @property
    def hears_changes(self) -> bool:
        return self.dry_run

    def change(self, change: Change) -> None:
        if self.dry_run:
            fields = f" ({', '.join(change.fields)})" if change.fields else ""
            verb = {"added": "add", "updated": "update", "deactivated": "deactivate"}[change.action]
            click.echo(
                f"would {verb} {change.kind} {change.entity_id} of tenant {change.tenant_id}{fields}"
            )


@cli.command()
@click.option("--module", help="Run only this module.")
@click.option(
    "--only",
    multiple=True,
    help="Only these entity kinds (tenants, licences, subscriptions, users, assets); repeatable or comma-separated.",
)
@click.option("--tenant", help="Only this tenant (ID or default domain).")
@click.option(
    "--site",
    metavar="CUSTOMER/SITE",
    help="Only the users and assets placed at this site (the guide's per-site import).",
)
@click.option("--dry-run", is_flag=True, help="Compute and print the changes; write nothing.")
@click.pass_obj
def sync(
    app: App,
    module: str | None,
    only: tuple[str, ...],
    tenant: str | None,
    site: str | None,
    dry_run: bool,
) -> None:
    """Run the enabled modules once and print a summary."""
    config = app.config()
    host = app.host()
    store = app.store()
    kinds = [kind.strip() for value in only for kind in value.split(",") if kind.strip()]
    try:
        engine = SyncEngine(store, config, host, reporter=TerminalReporter(dry_run=dry_run))
        results = engine.run(
            module=module, only=kinds or None, tenant=tenant, site=site, dry_run=dry_run
        )
    except ConfigError as exc:
        fail_config(exc)
    except SyncError as exc:
        raise click.UsageError(str(exc)) from None
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    finally:
        store.close()
    for result in results:
        print_summary(result)
    if any(result.failed for result in results):
        sys.exit(EXIT_FAILED)


def print_summary(result: RunResult) -> None:
    title = f"{result.module}: {result.outcome}" + (
        " (dry run: nothing written)" if result.dry_run else ""
    )
    click.echo(title)
    if result.error:
        click.echo(f"  error: {result.error}")
    if result.note:
        click.echo(f"  note: {result.note}")
    headers = ["kind", "added", "updated", "unchanged", "deactivated", "skipped", "failed"]
    rows = [[kind, *map(str, counts.as_dict().values())] for kind, counts in result.counts.items()]
    if rows:
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            click.echo(
                "  "
                + "  ".join(
                    cell.rjust(w) if i else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    for problem in result.problems[:20]:
        entity = (
            f" {problem.entity_id}"
            if problem.entity_id and problem.entity_id != problem.tenant_id
            else ""
        )
        tenant = f" tenant {problem.tenant_id}" if problem.tenant_id else ""
        click.echo(f"  {problem.outcome}: {problem.kind}{tenant}{entity}: {problem.reason}")
    if result.problem_total > 20:
        click.echo(
            f"  … and {result.problem_total - 20} more (`halo-integrator export --what runs`, and the log)"
        )


# --- the daemon --------------------------------------------------------------------------


@cli.command("run")
@click.option(
    "--once",
    is_flag=True,
    help="Run every scheduled job once, print the summaries and exit (for cron); serves nothing.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM or SIGINT, how long to wait for running syncs to finish their current tenant.",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="Run each module every SECONDS instead of its interval_minutes (for tests, and for "
    "catching up).",
)
@click.pass_obj
def run_command(app: App, once: bool, grace: float, every: int | None) -> None:
    """Run the daemon: each enabled module's sync on its interval, and the HTTP server."""
    from datetime import timedelta

    from .daemon import Daemon, ListenError, run_daemon, run_once

    config = app.config()
    host = app.host()
    try:
        host.active_modules()
    except ConfigError as exc:
        fail_config(exc)
    store = app.store()
    try:
        daemon = Daemon(
            config,
            store,
            host,
            grace=grace,
            every=timedelta(seconds=every) if every else None,
        )
    except BaseException:
        store.close()
        raise
    if once:
        if not config.integrator.enabled:
            click.echo("integrator.enabled is false: no scheduled syncs to run", err=True)
        results = run_once(daemon)
        for result in results:
            print_summary(result)
        if any(result.failed for result in results):
            sys.exit(EXIT_FAILED)
        return
    try:
        status = run_daemon(daemon)
    except ListenError as exc:
        store.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(status)


# --- delta reset -------------------------------------------------------------------------

#: The guide's caution about "Get Latest Changes" (8.2.1).
LATEST_WARNING = (
    "warning: changes made in the directory between the last sync and the next one will not "
    "be imported: the next run fetches only what changes from then on (guide 8.2.1); "
    "`halo-integrator deltas reset --now` lists everyone again"
)


@cli.group("deltas")
def deltas_group() -> None:
    """Reset the users delta links of incremental syncs (guide 8.2)."""


@deltas_group.command("reset")
@click.option("--module", help="Only this module (default: every enabled module importing users).")
@click.option("--tenant", help="Only this stored tenant (ID or default domain).")
@click.option(
    "--now", is_flag=True, help="Reset now: forget the delta links; the next run lists every user."
)
@click.option(
    "--latest",
    is_flag=True,
    help="Get latest changes: the next run fetches only what changes from then on "
    "(changes in between are never imported).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be reset; change nothing.")
@click.pass_obj
def deltas_reset(
    app: App, module: str | None, tenant: str | None, now: bool, latest: bool, dry_run: bool
) -> None:
    """Reset the users delta links: the next run lists everyone (--now) or skips to now
    (--latest)."""
    if now == latest:
        raise click.UsageError(
            "give exactly one of --now (the next run lists every user) or --latest (the next "
            "run fetches only what changes from then on)"
        )
    config = app.config()
    deltas_on = config.users.use_deltas
    if latest and not deltas_on:
        raise click.UsageError(
            "--latest skips ahead in the delta links, but [users] use_deltas is off: every run "
            "is already a full listing, so there is nothing to skip. Turn use_deltas on "
            '(with integrator.track = "beta") to sync by deltas'
        )
    host = app.host()
    try:
        modules = host.active_modules()
    except ConfigError as exc:
        fail_config(exc)
    names = _user_modules(host, modules, module)
    if not names:
        click.echo("no enabled module imports users: there are no delta links to reset")
        return
    try:
        store = Store.open_existing(config.store_url)
    except StoreError as exc:
        click.echo(f"error: {exc}\nfix: check [store] url in {app.config_path}", err=True)
        sys.exit(EXIT_USAGE)
    if store is None:
        if tenant:
            raise click.UsageError(
                f"--tenant {tenant!r}: no tenants are stored yet (nothing synced)"
            )
        click.echo("nothing to reset: nothing has been synced yet")
        return
    try:
        store.migrate()
        keys = _tenant_keys(store, names, tenant) if tenant else {}
        reset: dict[str, list[str]] = {}
        with store.dry_run() if dry_run else contextlib.nullcontext(), store.unit() as connection:
            for name in names:
                reset[name] = reset_user_deltas(
                    connection,
                    name,
                    latest=latest,
                    tenant_keys=keys.get(name, []) if tenant else None,
                )
    except StoreError as exc:
        click.echo(f"error: {exc}\nfix: check [store] url in {app.config_path}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    which = f" of tenant {tenant}" if tenant else ""
    for name in names:
        count = len(reset[name])
        tenants = f"{count} tenant{'s' if count != 1 else ''}"
        if not count:
            why = (
                "every run is a full listing while [users] use_deltas is off"
                if not deltas_on
                else "a tenant without one lists everyone at its next run"
            )
            click.echo(f"{name}: nothing to reset: no users delta link is stored{which} ({why})")
        elif latest:
            verb = "would set" if dry_run else "set"
            click.echo(
                f"{name}: {verb} the users delta links of {tenants} to the latest changes: "
                "the next run fetches only what changes from then on"
            )
        else:
            verb = "would reset" if dry_run else "reset"
            click.echo(
                f"{name}: {verb} the users delta links of {tenants}: the next run lists "
                "all their users"
            )
    if latest and any(reset.values()):
        click.echo(LATEST_WARNING, err=True)
    if dry_run:
        click.echo("(dry run: nothing changed)")


def _user_modules(
    host: PluginHost, modules: dict[str, ActiveModule], module: str | None
) -> list[str]:
    """The enabled modules whose plugin imports users, or ``module`` if it is one."""
    if module is None:
        return [name for name in sorted(modules) if host.implements(name, "fetch_users")]
    if module not in modules:
        enabled = ", ".join(sorted(modules)) or "none"
        raise click.UsageError(f"module {module!r} is not enabled (enabled modules: {enabled})")
    if not host.implements(module, "fetch_users"):
        raise click.UsageError(
            f"module {module!r} imports no users (its plugin implements no fetch_users): it "
            "has no delta links to reset"
        )
    return [module]


def _tenant_keys(store: Store, modules: list[str], value: str) -> dict[str, list[str]]:
    """The bookmark keys, per module, of the stored tenant with ``value`` as ID or domain."""
    table = schema.tenants
    wanted = value.strip().lower()
    with store.read() as connection:
        rows = connection.execute(
            sa.select(table.c.module, table.c.connection, table.c.tenant_id).where(
                table.c.module.in_(modules),
                sa.or_(
                    sa.func.lower(table.c.tenant_id) == wanted,
                    sa.func.lower(table.c.default_domain) == wanted,
                ),
            )
        ).all()
    if not rows:
        raise click.UsageError(
            f"--tenant {value!r}: no stored tenant of {', '.join(modules)} has that ID or "
            "default domain (`halo-integrator export --what tenants` lists them)"
        )
    keys: dict[str, list[str]] = {}
    for row in rows:
        keys.setdefault(row.module, []).append(tenant_key(row.connection, row.tenant_id))
    return keys


# --- export ------------------------------------------------------------------------------


@cli.command()
@click.option("--what", required=True, type=click.Choice(sorted(EXPORTS)), help="What to export.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv"]),
    default="json",
    show_default=True,
    help="json: one JSON object per line; csv: a header, then one row per record.",
)
@click.pass_obj
def export(app: App, what: str, fmt: str) -> None:
    """Print what the store holds, one record per line."""
    store = app.store()
    try:
        with store.read() as connection:
            write_export(connection, what, sys.stdout, fmt)
    finally:
        store.close()


# --- the emulator ------------------------------------------------------------------------


def world_options(*, customers: int) -> Any:
    """The options that size an emulated world (``--seed``, ``--customers``, ...)."""

    def decorate(command: Any) -> Any:
        for option in reversed(
            (
                click.option(
                    "--seed", default=1, show_default=True, help="Seed of the generated world."
                ),
                click.option(
                    "--customers",
                    default=customers,
                    show_default=True,
                    type=click.IntRange(1),
                    help="Customer tenants.",
                ),
                click.option(
                    "--users",
                    default=25,
                    show_default=True,
                    type=click.IntRange(0),
                    help="Users per tenant (about).",
                ),
                click.option(
                    "--devices",
                    default=10,
                    show_default=True,
                    type=click.IntRange(0),
                    help="Devices per tenant (about).",
                ),
            )
        ):
            command = option(command)
        return command

    return decorate


@cli.command("emulator")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to serve on."
)
@click.option(
    "--port",
    default=8443,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0 picks a free port.",
)
@click.option(
    "--login-port",
    type=click.IntRange(0, 65535),
    help="Port of the login service, which has an origin of its own (default: --port + 1, or free with --port 0).",
)
@world_options(customers=3)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the emulator's CA bundle here, so a config's ca_bundle path stays the same across "
    "restarts (the CA itself is new each start; default: a temporary folder).",
)
@click.option(
    "--latency-ms",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Answer every Microsoft API request this many milliseconds late, as a real cloud's "
    "round trip would (for benchmarks).",
)
@click.option(
    "--tenant-budget",
    metavar="N/SECONDS",
    help="Limit Graph to N requests per sliding window of SECONDS per app per tenant, as "
    "Microsoft's throttling does: more are answered 429 with Retry-After (default: no limit; "
    "GET /_admin/budget shows the counts).",
)
def emulator_command(
    host: str,
    port: int,
    login_port: int | None,
    seed: int,
    customers: int,
    users: int,
    devices: int,
    state_dir: Path | None,
    latency_ms: int,
    tenant_budget: str | None,
) -> None:
    """Run the built-in Microsoft emulator on loopback and print the config that points at it."""

    try:
        from halo_microsoft_emulator import EmulatorServer, generate
        from halo_microsoft_emulator.budget import BudgetLimit
        from halo_microsoft_emulator.snippet import config_snippet, is_loopback
    except ImportError as exc:  # pragma: no cover - it ships with this distribution
        raise click.ClickException(f"the emulator is not installed: {exc}") from None
    if not is_loopback(host):
        raise click.BadParameter(
            f"{host!r} is not a loopback address: the emulator serves on loopback only",
            param_hint="--host",
        )
    try:
        budget = BudgetLimit.parse(tenant_budget) if tenant_budget is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant-budget") from None
    world = generate(seed=seed, customers=customers, users=users, devices=devices)
    try:
        if login_port is None:
            login_port = port + 1 if port else 0
        server = EmulatorServer(
            world, host=host, port=port, login_port=login_port, state_dir=state_dir
        )
        server.app.latency = latency_ms / 1000
        server.app.budget.limit = budget
        server.start()
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    click.echo(config_snippet(server))
    click.echo(f"# emulator serving on {server.base_url}; Ctrl-C stops it", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.stop()


# --- plugin commands -----------------------------------------------------------------------


@cli.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-demo"),
    show_default=True,
    help="Where the demo writes its config, secrets and store.",
)
@world_options(customers=5)
@click.pass_obj
def demo_command(
    app: App, directory: Path, seed: int, customers: int, users: int, devices: int
) -> None:
    """See it work end to end: the built-in Microsoft emulator, a config pointing at it, an
    authorized connection, and a full sync of every enabled module into DIR."""
    from halo_microsoft_emulator import EmulatorServer, generate
    from halo_microsoft_emulator.demo import prepare, show_billing_report

    app.log_level = app.log_level or "warning"
    app.setup_logging()
    directory = directory.resolve()
    world = generate(seed=seed, customers=customers, users=users, devices=devices)
    with EmulatorServer(world, state_dir=directory / "emulator") as server:
        click.echo(f"emulator: {len(world.customers)} customer tenants on {server.base_url}")
        try:
            config, user = prepare(directory, server)
        except ConfigError as exc:
            fail_config(exc)
        click.echo(f"config:   {config.source}")
        click.echo(f"authorized the Partner Center connection as {user}")
        store = Store.open(config.store_url)
        try:
            engine = SyncEngine(
                store, config, PluginHost.load(config), reporter=TerminalReporter(dry_run=False)
            )
            results = engine.run()
        finally:
            store.close()
    for result in results:
        print_summary(result)
    show_billing_report(config)
    target = f"--config {config.source}"
    click.echo("\nThe emulator has stopped; the store is yours to read:")
    for command in (
        "export --what tenants",
        "export --what licences",
        "export --what subscriptions",
        "export --what users",
        "export --what assets",
        "export --what invoice-lines",
        "billing report",
        "pricing changes",
        "export --what runs",
        "csp tenants",
        "csp status",
        "plugins",
    ):
        click.echo(f"  halo-integrator {target} {command}")
    if any(result.failed for result in results):
        sys.exit(EXIT_FAILED)


cli.add_command(logs)


def register_plugin_commands(group: click.Group, args: Sequence[str]) -> None:
    """Let the plugins of the enabled modules add their sub-commands to ``group``.

    Runs before click parses ``args``, so the configuration is found as the group will find
    it (``--config``, then ``$HALO_INTEGRATOR_CONFIG``, then the working directory). A broken
    file is not reported here: the core commands must still run to report it, and a plugin's
    command reports it when it loads the configuration. Log events are held back, because
    logging is configured only once the command line is parsed; the commands that load
    plugins (`plugins`, `config check`, `sync`) report a plugin that fails to load.
    """
    given, command = _global_options(group, args)
    if command in group.commands:
        return  # a core command: loading every plugin twice would only slow it down
    path = find_config(given)
    try:
        config: Config | None = load_config(path, missing_ok=True)
    except ConfigError:
        # Still offer the enabled modules' commands; they report the problems when run.
        config = config_module.load_modules_only(path)
    if config is None:
        return
    with _logs_held_back():
        host = PluginHost.load(config)
    for name, plugin in host.pm.list_name_plugin():
        others = [p for p in host.pm.get_plugins() if p is not plugin]
        caller = host.pm.subset_hook_caller("register_commands", remove_plugins=others)
        try:
            caller(cli=group)
        except Exception as exc:  # one plugin's failure leaves the others' commands in place
            click.echo(
                f"warning: plugin {name} could not add its commands: {type(exc).__name__}: {exc}",
                err=True,
            )


def _global_options(group: click.Group, args: Sequence[str]) -> tuple[Path | None, str | None]:
    """The value of the group's ``--config`` in ``args`` (``--config X`` or ``--config=X``),
    and the name of the command ``args`` invoke, if any."""
    try:
        ctx = group.make_context("halo-integrator", list(args), resilient_parsing=True)
    except (click.exceptions.Exit, click.ClickException):
        return None, None
    value = ctx.params.get("config_path")
    # What follows the group's options; click keeps the command's name apart from its
    # arguments (``protected_args``, renamed in click 8.2).
    named = getattr(ctx, "_protected_args", None)
    if named is None:  # click before 8.2
        named = ctx.protected_args
    rest = [*named, *ctx.args]
    return (Path(value) if value else None), (rest[0] if rest else None)


@contextlib.contextmanager
def _logs_held_back() -> Iterator[None]:
    saved = structlog.get_config()

    def drop(*_: Any) -> NoReturn:
        raise structlog.DropEvent

    structlog.configure(processors=[drop])
    try:
        yield
    finally:
        structlog.configure(**saved)


def main() -> None:
    """Console-script entry point."""
    register_plugin_commands(cli, sys.argv[1:])
    try:
        cli(prog_name="halo-integrator")
    except KeyboardInterrupt:
        structlog.get_logger(__name__).warning("interrupted")
        sys.exit(130)
