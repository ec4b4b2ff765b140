"""The sync engine: run a module's fetch hooks and bring the store in line with them.

Order: tenants first, then for each mapped tenant licences, subscriptions, users and assets
(the fetch hooks the module's plugin implements). Each (tenant, entity kind) is one unit of
work: its records, the deactivation of what a complete listing no longer holds, and the new
bookmark commit together or not at all. Records stream through in batches; nothing holds a
whole tenant in memory. A bad record is counted and skipped; a failing tenant is counted
and the others go on.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from ..config import Config
from ..context import ModuleContext, module_context
from ..http import HttpClient
from ..logging import redact_text
from ..models import (
    LATEST_BOOKMARK,
    Checkpoint,
    DirectoryUser,
    EntityKind,
    Notice,
    RecordError,
    Removed,
    SkipTenant,
    Tenant,
    TenantAccess,
)
from ..pacing import Pacer
from ..plugins import ActiveModule, PluginHost
from ..store import Store, schema, utcnow
from ..store.bulk import insert_rows, update_rows
from ..store.prepared import by_external_id, in_list, prepared, unseen
from ..store.request_log import RunClients
from .assets import AssetRules, find_assets, is_sense
from .bookmarks import get_bookmark, save_bookmark, tenant_key
from .collector import fewer_collections
from .digest import Digester
from .mapping import (
    ENTITY_RULES,
    EntityRule,
    TenantTarget,
    allow_sso,
    apply_config_mappings,
    mapping_overrides,
    resolve_tenant,
    tenant_columns,
)
from .spool import Spool, Unspoolable
from .users import UserRules, find_matches, is_external

log = structlog.get_logger(__name__)

BATCH_SIZE = 500

#: Fetched (tenant, kind) units that may wait for the writer, per tenant synced at once.
BACKLOG_PER_TENANT_SLOT = 8
#: Finished tenants whose outcome is written in one unit (the rest at the run's end).
OUTCOMES_PER_WRITE = 50
#: Problems kept per run in the store; the rest are still logged and counted.
MAX_STORED_PROBLEMS = 1000


@attrs.define
class Counts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deactivated: int = 0
    skipped: int = 0
    failed: int = 0

    def add(self, other: Counts) -> None:
        for field in attrs.fields(Counts):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Change:
    """One change a run makes (or, in a dry run, would make) to one entity."""

    kind: str
    tenant_id: str
    entity_id: str
    action: str  # added | updated | deactivated
    fields: tuple[str, ...] = ()


@attrs.frozen
class Problem:
    kind: str
    tenant_id: str
    entity_id: str | None
    outcome: str  # skipped | failed | warning
    reason: str


@attrs.define
class RunResult:
    module: str
    run_id: int | None
    dry_run: bool
    outcome: str = "running"
    counts: dict[str, Counts] = attrs.field(factory=dict)
    problems: list[Problem] = attrs.field(factory=list)
    problem_total: int = 0
    error: str | None = None
    note: str | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False, eq=False)

    @property
    def failed(self) -> bool:
        return self.outcome != "succeeded"

    def count(self, kind: str) -> Counts:
        return self.counts.setdefault(kind, Counts())

    def add_problem(self, problem: Problem, *, event: str = "sync.record_") -> None:
        """Count, keep (up to `MAX_STORED_PROBLEMS`) and log one problem of the run."""
        with self._lock:  # tenants synced side by side report into one result
            self.problem_total += 1
            if len(self.problems) < MAX_STORED_PROBLEMS:
                self.problems.append(problem)
        if problem.outcome == "skipped" and problem.entity_id is not None:
            # One record a rule leaves out (a guest no mapping takes, say): thousands a run
            # at some MSPs. They are counted, kept and summed up; one line each only in debug
            # (asked first: structlog builds the event before the level drops it).
            if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):
                return
            logger = log.debug
        else:
            logger = {"failed": log.error, "warning": log.warning}.get(problem.outcome, log.info)
        logger(
            event + problem.outcome,
            kind=problem.kind,
            tenant=problem.tenant_id,
            entity_id=problem.entity_id,
            reason=problem.reason,
        )


def begin_run(store: Store, module: str, options: dict[str, Any]) -> int:
    """Record that a run of ``module`` starts; its ID. Every kind of run (sync, billing,
    pricing) is recorded the same way, so `export --what runs` and health list them all."""
    with store.unit() as connection:
        return connection.execute(
            sa.insert(schema.sync_runs).values(
                module=module, started_at=utcnow(), outcome="running", options=options
            )
        ).inserted_primary_key[0]


def finish_run(store: Store, result: RunResult, counts: Mapping[tuple[str, str], Counts]) -> None:
    """Record how a run ended: its counts per (kind, tenant), its problems, its outcome."""
    with store.unit() as connection:
        if counts:
            connection.execute(
                sa.insert(schema.sync_counts),
                [
                    {
                        "run_id": result.run_id,
                        "entity_kind": kind,
                        "tenant_id": tenant,
                        **c.as_dict(),
                    }
                    for (kind, tenant), c in counts.items()
                ],
            )
        if result.problems:
            now = utcnow()
            connection.execute(
                sa.insert(schema.sync_problems),
                [
                    {
                        "run_id": result.run_id,
                        "entity_kind": p.kind,
                        "tenant_id": p.tenant_id,
                        "entity_id": p.entity_id,
                        "outcome": p.outcome,
                        "reason": redact_text(p.reason),
                        "at": now,
                    }
                    for p in result.problems
                ],
            )
        connection.execute(
            sa.update(schema.sync_runs)
            .where(schema.sync_runs.c.id == result.run_id)
            .values(finished_at=utcnow(), outcome=result.outcome, error=result.error)
        )


@attrs.frozen
class SiteScope:
    customer_id: int
    site_id: int
    label: str


@attrs.frozen
class Scope:
    """What a run is narrowed to: one tenant (ID or default domain), one site."""

    tenant: str | None = None
    site: SiteScope | None = None


class Reporter:
    """Hears what a run does; the command line shows progress and dry-run changes."""

    def tenants_started(self, module: str, total: int) -> None: ...

    def tenant_finished(self, module: str, index: int, total: int, tenant: Tenant) -> None: ...

    def change(self, change: Change) -> None: ...

    @property
    def hears_changes(self) -> bool:
        """Whether `change` wants each change: the engine builds none for a reporter that
        does not (a full sync makes one per record). By default, whether it overrides it."""
        return type(self).change is not Reporter.change


_tenant_locks: dict[str, threading.Lock] = {}
_tenant_locks_guard = threading.Lock()


def tenant_lock(tenant_id: str) -> threading.Lock:
    """The process-wide lock of one tenant: two jobs (modules) never sync it at once."""
    with _tenant_locks_guard:
        return _tenant_locks.setdefault(tenant_id.lower(), threading.Lock())


class SyncError(Exception):
    """A run could not start (bad option, unknown module)."""


class SyncEngine:
    """Runs modules once. The scheduler and `halo-integrator sync` both drive it."""

    def __init__(
        self,
        store: Store,
        config: Config,
        host: PluginHost,
        *,
        reporter: Reporter | None = None,
        http: HttpClient | None = None,
        stop: threading.Event | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """``pacer``: the process's account of Microsoft's budgets (the daemon shares one
        between its engines and its server); without it, the engine keeps its own."""
        self.store = store
        #: Set by the daemon on SIGTERM: a run finishes its current tenant and stops there.
        self.stop = stop or threading.Event()
        self.config = config
        self.host = host
        self.reporter = reporter or Reporter()
        self.modules = host.active_modules()
        self._clients = RunClients.for_config(store, config, http, pacer=pacer)

    def http(self, *, dry_run: bool) -> HttpClient:
        """The client plugins reach Microsoft with; a dry run's leaves no request log."""
        return self._clients.get(dry_run=dry_run)

    def run(
        self,
        *,
        module: str | None = None,
        only: Sequence[str] | None = None,
        tenant: str | None = None,
        site: str | None = None,
        dry_run: bool = False,
    ) -> list[RunResult]:
        """Run ``module`` (or every enabled one) once.

        ``site`` (``"Customer/Site"``) narrows a run to the users and assets placed at that
        site (the guide's per-site imports): only the tenants of that customer are read,
        and only what lands at that site is written or deactivated.
        """
        if module is not None and module not in self.modules:
            enabled = ", ".join(sorted(self.modules)) or "none"
            raise SyncError(f"module {module!r} is not enabled (enabled modules: {enabled})")
        kinds = _parse_kinds(only)
        scope = Scope(tenant=tenant.lower() if tenant else None)
        if site is not None:
            per_site = {EntityKind.USERS, EntityKind.ASSETS}
            if only and not kinds <= per_site:
                raise SyncError("--site narrows users and assets only: use --only users,assets")
            kinds = kinds & per_site
            with self.store.read() as connection:
                scope = attrs.evolve(scope, site=_find_site(connection, site))
        if module:
            names = [module]
        else:
            # Syncing modules first: pricing reads the subscriptions, billing the tenants.
            # A run narrowed to kinds, a tenant or a site is a sync: the others sit it out.
            narrowed = bool(only or tenant or site)
            names = sorted(
                (n for n in self.modules if not (narrowed and self._follower(n))),
                key=lambda n: (self._follower(n), n),
            )
        results = []
        with fewer_collections():
            for name in names:
                if dry_run:
                    with self.store.dry_run():
                        results.append(self._run_module(self.modules[name], kinds, scope, True))
                else:
                    results.append(self._run_module(self.modules[name], kinds, scope, False))
        return results

    def _follower(self, name: str) -> bool:
        """Whether module ``name`` works on what the syncing modules stored (usage
        billing, subscription pricing) rather than syncing entities itself."""
        return self.host.implements(name, "fetch_usage") or self.host.implements(
            name, "fetch_prices"
        )

    # -- one module ------------------------------------------------------------------------

    def _run_module(
        self, active: ActiveModule, kinds: set[EntityKind], scope: Scope, dry_run: bool
    ) -> RunResult:
        try:
            return self._sync_module(active, kinds, scope, dry_run)
        finally:
            self._run_finished(active, dry_run)

    def _run_finished(self, active: ActiveModule, dry_run: bool) -> None:
        """The module's `run_finished` hook, if its plugin has one; never raises."""
        if not self.host.implements(active.name, "run_finished"):
            return
        context = module_context(
            self.config, active, dry_run=dry_run, http=self.http(dry_run=dry_run)
        )
        try:
            self.host.hook_for(active.name).run_finished(context=context)
        except Exception:
            log.exception("sync.run_finished_failed", module=active.name)

    def _sync_module(
        self, active: ActiveModule, kinds: set[EntityKind], scope: Scope, dry_run: bool
    ) -> RunResult:
        # Imported here: both build on this module.
        if self.host.implements(active.name, "fetch_usage"):
            from ..billing import import_usage

            return import_usage(self, active, dry_run=dry_run)
        if self.host.implements(active.name, "fetch_prices"):
            from ..pricing import import_prices

            return import_prices(self, active, dry_run=dry_run)
        options = {
            "only": sorted(kinds),
            "tenant": scope.tenant,
            "site": scope.site.label if scope.site else None,
            "dry_run": dry_run,
        }
        run_id = begin_run(self.store, active.name, options)
        result = RunResult(module=active.name, run_id=run_id, dry_run=dry_run)
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(module=active.name, run_id=run_id):
            context = module_context(
                self.config, active, dry_run=dry_run, http=self.http(dry_run=dry_run)
            )
            runner = _ModuleRun(self, active, context, result, scope)
            try:
                runner.run(kinds)
                failed = any(c.failed for c in runner.tenant_counts.values())
                result.outcome = "completed_with_errors" if failed else "succeeded"
            except Exception as exc:
                log.exception("sync.module_failed", error=str(exc))
                result.outcome = "failed"
                result.error = _reason(exc)
            runner.total()
            finish_run(self.store, result, runner.tenant_counts)
            log.info(
                "sync.finished",
                outcome=result.outcome,
                seconds=round(time.monotonic() - started, 3),
                dry_run=dry_run,
                **{kind: counts.as_dict() for kind, counts in result.counts.items()},
            )
        return result


class _ModuleRun:
    """The state of one module's run: its hooks, counts and problems."""

    def __init__(
        self,
        engine: SyncEngine,
        active: ActiveModule,
        context: ModuleContext,
        result: RunResult,
        scope: Scope,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.config = engine.config
        self.active = active
        self.context = context
        self.result = result
        self.scope = scope
        self.tenant_filter = scope.tenant
        self.hooks = engine.host.hook_for(active.name)
        self._hears_changes = engine.reporter.hears_changes
        self.run_id = result.run_id
        self.tenant_counts: dict[tuple[str, str], Counts] = {}
        self.user_rules = UserRules(engine.config)
        self.asset_rules = AssetRules(engine.config.assets)
        #: With tenants side by side, the one thread that writes what their threads fetch:
        #: one unit of work at a time on every store (not only SQLite's one writer: units
        #: share rows beyond their tenant's, such as asset types and sites a mapping creates).
        self._writer: ThreadPoolExecutor | None = None
        self._backlog = threading.BoundedSemaphore(1)
        self._lock = threading.Lock()
        self._finished = 0
        #: Finished tenants' outcomes waiting to be written (`write_outcomes`).
        self._outcomes: list[dict[str, Any]] = []

    @property
    def module(self) -> str:
        return self.active.name

    def implements(self, hook: str) -> bool:
        return self.engine.host.implements(self.module, hook)

    def counts(self, kind: str, tenant_id: str) -> Counts:
        with self._lock:
            return self.tenant_counts.setdefault((kind, tenant_id), Counts())

    def problem(self, problem: Problem) -> None:
        self.result.add_problem(problem)

    def run(self, kinds: set[EntityKind]) -> None:
        if EntityKind.TENANTS in kinds and self.implements("fetch_tenants"):
            self.sync_tenants()
        rules = [
            rule
            for kind, rule in ENTITY_RULES.items()
            if kind in kinds and self.implements(rule.hook)
        ]
        if not rules or not self.implements("fetch_tenants"):
            if not self.implements("fetch_tenants") and not rules:
                self.result.note = "its plugin implements no fetch hook: nothing to sync"
            return
        targets = self.resolve_targets()
        self.engine.reporter.tenants_started(self.module, len(targets))
        # A dry run's units share one connection (savepoints of one rolled-back
        # transaction): they cannot run side by side.
        parallel = 1 if self.result.dry_run else self.config.integrator.parallel_tenants
        parallel = max(1, min(parallel, len(targets)))
        try:
            self._sync_targets(targets, rules, parallel)
        except BaseException:
            with contextlib.suppress(Exception):  # the run's own failure is what it says
                self.write_outcomes()
            raise
        self.write_outcomes()
        left = len(targets) - self._finished
        if left and self.engine.stop.is_set():
            self.result.note = f"stopped on request: {left} tenant(s) left for the next run"
            log.info("sync.stopped", tenants_left=left)

    def _sync_targets(
        self, targets: list[TenantTarget], rules: list[EntityRule], parallel: int
    ) -> None:
        if parallel == 1:
            for target in targets:
                self.sync_tenant(target, rules, len(targets))
        else:
            # Fetched kinds waiting for the writer: enough that a tenant's thread goes on to
            # its next tenant while the writer catches up (about two tenants a thread ahead),
            # few enough to keep memory flat: a spool holds up to MEMORY_RECORDS records in
            # memory and the rest on disk. At two kinds a thread, measured with the
            # benchmark's 100 ms round trips, the threads waited on the writer for a second.
            self._backlog = threading.BoundedSemaphore(BACKLOG_PER_TENANT_SLOT * parallel)
            with (
                ThreadPoolExecutor(1, thread_name_prefix="halo-writer") as self._writer,
                ThreadPoolExecutor(parallel, thread_name_prefix="halo-tenant") as pool,
            ):
                # Each tenant on a thread of its own, with this run's log context.
                futures = [
                    pool.submit(
                        contextvars.copy_context().run, self.sync_tenant, t, rules, len(targets)
                    )
                    for t in targets
                ]
                for future in futures:
                    future.result()

    def sync_tenant(self, target: TenantTarget, rules: list[EntityRule], total: int) -> None:
        """Every kind of one tenant, unless the run was asked to stop before it began.

        With tenants side by side this thread only fetches: it hands each kind to the
        writer and goes on to the next kind, then to the next tenant, while the writer
        applies them in order (devices after their users) and then finishes the tenant.
        The tenant's lock is held until then.
        """
        if self.engine.stop.is_set():
            return
        lock = tenant_lock(target.tenant.tenant_id)
        lock.acquire()
        try:
            with structlog.contextvars.bound_contextvars(
                tenant=target.tenant.tenant_id, connection=target.tenant.connection
            ):
                if self._writer is None:
                    outcomes = [self.sync_entity_kind(rule, target) for rule in rules]
                    self.finish_tenant(target, outcomes, total)
                    return
                writes = []
                for rule in rules:
                    fetched = self.fetch_entity_kind(rule, target)
                    self._backlog.acquire()  # the writer is this far behind at most
                    writes.append(self._write(self._write_then_free, fetched))
                self._write(self._finish_written, target, writes, total, lock)
                lock = None  # released by the writer, once the tenant is written
        finally:
            if lock is not None:
                lock.release()

    def _write(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``work`` for the writer, in this thread's log context."""
        assert self._writer is not None
        return self._writer.submit(contextvars.copy_context().run, work, *args)

    def _write_then_free(self, fetched: _Fetched) -> str | None:
        try:
            return self.write_fetched(fetched)
        finally:
            self._backlog.release()

    def _finish_written(
        self, target: TenantTarget, writes: list[Future[Any]], total: int, lock: threading.Lock
    ) -> None:
        try:
            # Done already: the writer took them before this.
            self.finish_tenant(target, [write.result() for write in writes], total)
        finally:
            lock.release()

    def finish_tenant(self, target: TenantTarget, outcomes: list[str | None], total: int) -> None:
        """Record how the tenant went (the errors of its kinds) and report it done."""
        errors = [e for e in outcomes if e]
        outcome = {
            "id": target.tenant_ref,
            "last_synced_at": utcnow(),
            "last_error": "; ".join(errors) or None,
        }
        with self._lock:
            self._outcomes.append(outcome)
            full = len(self._outcomes) >= OUTCOMES_PER_WRITE
            self._finished += 1
            index = self._finished
        if full:
            self.write_outcomes()
        self.engine.reporter.tenant_finished(self.module, index, total, target.tenant)

    def write_outcomes(self) -> None:
        """Write the finished tenants' outcomes (when each was synced, and its errors): a
        unit for many tenants, not one each; the last at the end of the run."""
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        if outcomes:
            with self.store.unit() as connection:
                update_rows(connection, schema.tenants, outcomes)

    def total(self) -> None:
        for (kind, _), counts in self.tenant_counts.items():
            self.result.count(kind).add(counts)

    # -- tenants ---------------------------------------------------------------------------

    def sync_tenants(self) -> None:
        kind = EntityKind.TENANTS.value
        counts = Counts()
        try:
            with self.store.unit() as connection:
                apply_config_mappings(connection, self.config)
                complete = True
                for batch in _batched(self._stream(self.hooks.fetch_tenants(context=self.context))):
                    tenants: list[Tenant] = []
                    for item in batch:
                        if isinstance(item, Tenant):
                            tenants.append(item)
                        elif isinstance(item, Checkpoint):
                            complete = item.complete
                        else:
                            self._bad_item(kind, "", item, counts)
                    self._upsert_tenants(connection, tenants, counts)
                if complete:
                    self._deactivate_unseen_tenants(connection, counts)
        except Exception as exc:
            # The stored tenants are still good to sync; say so and go on with them.
            counts = Counts(failed=1)
            self.problem(Problem(kind, "", None, "failed", _reason(exc)))
        self.counts(kind, "").add(counts)

    def _upsert_tenants(
        self, connection: Connection, tenants: list[Tenant], counts: Counts
    ) -> None:
        table = schema.tenants
        now = utcnow()
        # One read for the batch, and one write for all its unchanged tenants: at 500
        # tenants, two statements a tenant were a thousand before any tenant could start.
        listed = {(tenant.connection or "", tenant.tenant_id): tenant for tenant in tenants}
        stored = {
            (row.connection, row.tenant_id): row
            for row in connection.execute(
                sa.select(table).where(
                    table.c.module == self.module,
                    table.c.tenant_id.in_({tenant_id for _, tenant_id in listed}),
                )
            )
        }
        seen: list[int] = []
        # A tenant listed twice in a batch is written once, as last listed.
        for key, tenant in listed.items():
            row = stored.get(key)
            values = tenant_columns(tenant)
            if row is None:
                connection.execute(
                    sa.insert(table).values(
                        module=self.module,
                        connection=tenant.connection or "",
                        tenant_id=tenant.tenant_id,
                        **values,
                        active=True,
                        created_at=now,
                        updated_at=now,
                        seen_run_id=self.run_id,
                    )
                )
                counts.added += 1
                self._change("tenants", tenant.tenant_id, tenant.tenant_id, "added")
                continue
            changed = tuple(k for k, v in values.items() if getattr(row, k) != v)
            if changed or not row.active:
                counts.updated += 1
                self._change("tenants", tenant.tenant_id, tenant.tenant_id, "updated", changed)
                values |= {"active": True, "inactive_since": None, "updated_at": now}
                connection.execute(
                    sa.update(table)
                    .where(table.c.id == row.id)
                    .values(**values, seen_run_id=self.run_id)
                )
            else:
                counts.unchanged += 1
                seen.append(row.id)
        if seen:
            connection.execute(
                sa.update(table).where(table.c.id.in_(seen)).values(seen_run_id=self.run_id)
            )

    def _deactivate_unseen_tenants(self, connection: Connection, counts: Counts) -> None:
        table = schema.tenants
        where = (
            table.c.module == self.module,
            table.c.active.is_(True),
            sa.or_(table.c.seen_run_id.is_(None), table.c.seen_run_id != self.run_id),
        )
        for tenant_id in connection.execute(sa.select(table.c.tenant_id).where(*where)).scalars():
            self._change("tenants", tenant_id, tenant_id, "deactivated")
            counts.deactivated += 1
        now = utcnow()
        connection.execute(
            sa.update(table).where(*where).values(active=False, inactive_since=now, updated_at=now)
        )

    def resolve_targets(self) -> list[TenantTarget]:
        """The stored, active tenants of this module, mapped to their customers."""
        table = schema.tenants
        targets = []
        skipped = 0
        with self.store.unit() as connection:
            if not self.implements("fetch_tenants") or not self._tenants_synced:
                apply_config_mappings(connection, self.config)
            rows = connection.execute(
                sa.select(table)
                .where(table.c.module == self.module, table.c.active.is_(True))
                .order_by(table.c.name, table.c.tenant_id)
            ).all()
            for row in rows:
                if self.tenant_filter and self.tenant_filter not in (
                    row.tenant_id.lower(),
                    (row.default_domain or "").lower(),
                ):
                    continue
                tenant = _tenant_of(row)
                overrides = mapping_overrides(self.config, self.module, row.tenant_id)
                if overrides:
                    # The per-tenant hooks see what the mapping overrides for this tenant.
                    tenant = attrs.evolve(
                        tenant, attributes={**tenant.attributes, "mapping": overrides}
                    )
                target = resolve_tenant(
                    connection,
                    self.config,
                    self.module,
                    row.id,
                    tenant,
                    stored=(row.customer_id, bool(row.do_not_import)),
                )
                if self.scope.site and target.customer_id != self.scope.site.customer_id:
                    continue  # not a tenant of the site's customer
                if target.importable:
                    targets.append(target)
                    if self.config.integrator.add_tenants_to_sso_allowed_list:
                        allow_sso(connection, target)
                    continue
                skipped += 1
                self.counts(EntityKind.TENANTS.value, "").skipped += 1
                reason = (
                    "the tenant mapping says do not import"
                    if target.do_not_import
                    else "no tenant mapping: add a [[tenant_mappings]] entry with tenant_id = "
                    f'"{row.tenant_id}" and customer = "..." (or do_not_import = true), '
                    "or set integrator.create_customers_from_tenants = true"
                )
                self.problem(Problem("tenants", row.tenant_id, row.tenant_id, "skipped", reason))
        if self.tenant_filter and not rows:
            raise SyncError(f"no tenants stored for module {self.module}")
        if self.tenant_filter and not targets and not skipped:
            raise SyncError(
                f"no active tenant of module {self.module} has the ID or domain {self.tenant_filter!r}"
            )
        return targets

    @property
    def _tenants_synced(self) -> bool:
        return (EntityKind.TENANTS.value, "") in self.tenant_counts

    # -- per-tenant entities ---------------------------------------------------------------

    def sync_entity_kind(self, rule: EntityRule, target: TenantTarget) -> str | None:
        """Sync one kind of one tenant, streaming it into one unit of work; returns why it
        failed, if it did."""
        unit = self._unit(rule, target)

        def stream() -> None:
            with self.store.unit() as connection:
                unit.connection = connection
                unit.apply(unit.fetch())

        return self._settle(unit, stream)

    def _unit(self, rule: EntityRule, target: TenantTarget) -> _EntityUnit:
        kind = {EntityKind.USERS: _UserUnit, EntityKind.ASSETS: _AssetUnit}.get(
            rule.kind, _EntityUnit
        )
        return kind(self, rule, target, Counts())

    def fetch_entity_kind(self, rule: EntityRule, target: TenantTarget) -> _Fetched:
        """Fetch one kind of one tenant into a spool, holding nothing of the store, for
        `write_fetched` to apply. Tenants synced side by side thus wait for each other only
        while writing, never while Microsoft answers (or the pacing holds a request)."""
        unit = self._unit(rule, target)
        spool = Spool()
        try:
            with self.store.read() as connection:
                unit.connection = connection
                batches = unit.fetch()
            for batch in batches:
                spool.add(batch)
        except Exception as exc:  # settled (counted, reported) where it is written
            spool.close()
            return _Fetched(unit, None, exc)
        return _Fetched(unit, spool, None)

    def write_fetched(self, fetched: _Fetched) -> str | None:
        """Apply what `fetch_entity_kind` fetched in one unit of work (on the run's one
        writer thread); returns why the kind failed, if it did."""

        def write() -> None:
            if fetched.failure is not None:
                raise fetched.failure
            assert fetched.spool is not None
            with fetched.spool as spool, self.store.unit() as connection:
                fetched.unit.connection = connection
                fetched.unit.apply(spool)

        return self._settle(fetched.unit, write)

    def _settle(self, unit: _EntityUnit, work: Callable[[], None]) -> str | None:
        """Do a unit's ``work`` and count how it went; why it failed, if it did."""
        rule, tenant_id, counts, error = unit.rule, unit.tenant_id, unit.counts, None
        try:
            work()
        except SkipTenant as skip:
            # Known and the user's to fix (consent, say): counted as skipped, not failed.
            counts = Counts(skipped=1)
            self.problem(Problem(rule.kind.value, tenant_id, None, "skipped", str(skip)))
        except Exception as exc:
            # Nothing of the unit was committed: count the tenant's kind as one failure.
            counts, error = Counts(failed=1), f"{rule.kind.value}: {_reason(exc)}"
            self.problem(Problem(rule.kind.value, tenant_id, None, "failed", _reason(exc)))
        else:
            log.info("sync.entities", kind=rule.kind.value, **counts.as_dict())
        self.counts(rule.kind.value, tenant_id).add(counts)
        return error

    def _stream(self, results: Iterable[Any]) -> Iterator[Any]:
        for result in results:
            if result is not None:
                yield from result

    def _bad_item(self, kind: str, tenant_id: str, item: Any, counts: Counts) -> None:
        counts.failed += 1
        if isinstance(item, RecordError):
            self.problem(Problem(kind, tenant_id, item.entity_id, "failed", item.reason))
        else:
            self.problem(
                Problem(
                    kind,
                    tenant_id,
                    None,
                    "failed",
                    f"the plugin yielded {_type_name(item)}, which is not a record of kind {kind}",
                )
            )

    def _change(
        self, kind: str, tenant_id: str, entity_id: str, action: str, fields: tuple[str, ...] = ()
    ) -> None:
        if self._hears_changes:
            self.engine.reporter.change(Change(kind, tenant_id, entity_id, action, fields))


#: `_EntityUnit._read_bookmark` before the hook's arguments are read.
_UNREAD = object()


@attrs.define
class _Fetched:
    """A unit fetched into its spool (or how its fetching failed), waiting to be written."""

    unit: _EntityUnit
    spool: Spool | None
    failure: Exception | None


class _EntityUnit:
    """One (tenant, entity kind) unit: stream, upsert, deactivate, bookmark."""

    def __init__(
        self,
        run: _ModuleRun,
        rule: EntityRule,
        target: TenantTarget,
        counts: Counts,
    ) -> None:
        self.run_state = run
        self.rule = rule
        self.target = target
        #: Set by the run: a reading connection while the fetch hook is called, the unit of
        #: work's while the records are applied.
        self.connection: Connection = None  # type: ignore[assignment]
        self.counts = counts
        self.table = rule.table
        self.kind = rule.kind.value
        self.tenant_id = target.tenant.tenant_id
        tenant = target.tenant
        self.tenant_key = tenant_key(tenant.connection, tenant.tenant_id)
        self.deactivates = True
        #: The bookmark as `hook_arguments` read it: a save of the same value writes nothing.
        self._read_bookmark: Any = _UNREAD
        #: The tenant's rows' digests (entity ID → row ID, digest), read once a unit.
        self._stored_digests: dict[str, tuple[int, str]] | None = None

    def hook_arguments(self) -> dict[str, Any]:
        """What the kind's fetch hook is called with besides the context and the tenant."""
        self._read_bookmark = get_bookmark(self.connection, *self.bookmark_key)
        return {"bookmark": self._read_bookmark}

    @property
    def bookmark_key(self) -> tuple[str, str, str]:
        return (self.run_state.module, self.kind, self.tenant_key)

    def save_bookmark(self, bookmark: str | None, *, complete: bool) -> None:
        # Most kinds list in full and keep no bookmark: no statement to say so again.
        if bookmark != self._read_bookmark:
            save_bookmark(self.connection, *self.bookmark_key, bookmark)

    def fetch(self) -> Iterator[list[Any]]:
        """The fetch hook called (its arguments read now), its items in batches as they come."""
        run = self.run_state
        hook = getattr(run.hooks, self.rule.hook)
        return _batched(
            run._stream(
                hook(context=run.context, tenant=self.target.tenant, **self.hook_arguments())
            )
        )

    def apply(self, batches: Iterable[list[Any]]) -> None:
        """Bring the store in line with the fetched items: upserts, removals, the
        deactivation of what a complete listing no longer holds, the new bookmark."""
        run = self.run_state
        complete, new_bookmark = True, None
        for batch in batches:
            records, removed, errored = [], [], []
            for item in batch:
                if isinstance(item, self.rule.record_type):
                    records.append(item)
                elif isinstance(item, Removed):
                    removed.append(item.entity_id)
                elif isinstance(item, Checkpoint):
                    complete, new_bookmark = item.complete, item.bookmark
                elif isinstance(item, Notice):
                    run.problem(Problem(self.kind, self.tenant_id, None, "warning", item.message))
                else:
                    run._bad_item(self.kind, self.tenant_id, item, self.counts)
                    if isinstance(item, RecordError) and item.entity_id:
                        errored.append(item.entity_id)
            self.upsert(records)
            # A record that failed translation is still there upstream: keep it as it was.
            self.mark_seen(errored)
            if removed and self.deactivates:
                self.deactivate(removed)
        if complete and self.deactivates:
            self.deactivate(None)
        self.save_bookmark(new_bookmark, complete=complete)

    def upsert(self, records: list[Any]) -> None:
        if not records:
            return
        table, run, now = self.table, self.run_state, utcnow()
        by_id = {record.entity_id: record for record in records}
        existing = {
            row.external_id: row
            for row in self.connection.execute(
                by_external_id(table),
                {"b_tenant": self.target.tenant_ref, "b_ids": list(by_id)},
            )
        }
        assert self.rule.columns is not None
        inserts, updates, unchanged = [], [], []
        for entity_id, record in by_id.items():
            values = self.rule.columns(record, self.target) | {
                "customer_id": self.target.customer_id
            }
            row = existing.get(entity_id)
            if row is None:
                inserts.append(
                    values
                    | {
                        "tenant_ref": self.target.tenant_ref,
                        "external_id": entity_id,
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                        "seen_run_id": run.run_id,
                    }
                )
                self.counts.added += 1
                run._change(self.kind, self.tenant_id, entity_id, "added")
                continue
            changed = tuple(k for k, v in values.items() if getattr(row, k) != v)
            if changed or not row.active:
                updates.append(
                    self.update_of(row, values | {"active": True, "inactive_since": None}, now)
                )
                self.counts.updated += 1
                run._change(self.kind, self.tenant_id, entity_id, "updated", changed or ("active",))
            else:
                unchanged.append(row.id)
                self.counts.unchanged += 1
        self.write(inserts, updates, unchanged)

    def update_of(self, row: Any, values: dict[str, Any], now: datetime) -> dict[str, Any]:
        """One row's update, as `write` takes it."""
        return values | {"id": row.id, "updated_at": now, "seen_run_id": self.run_state.run_id}

    def write(
        self,
        inserts: list[dict[str, Any]],
        updates: list[dict[str, Any]],
        unchanged: list[int],
        redigested: Sequence[dict[str, Any]] = (),
    ) -> None:
        """A batch's writes: new rows, changed rows (one statement per column set), the
        unchanged rows marked seen, and (``redigested``) unchanged rows whose record's digest
        is new (a field the rules do not write changed, or the rules' digest did)."""
        table = self.table
        if inserts:
            insert_rows(self.connection, table, inserts)
        if updates:
            update_rows(self.connection, table, updates)
        if redigested:
            update_rows(self.connection, table, redigested)
        if unchanged:
            self.connection.execute(
                prepared(
                    ("seen", table.name),
                    lambda: (
                        sa.update(table)
                        .where(in_list(table.c.id))
                        .values(seen_run_id=sa.bindparam("b_run"))
                    ),
                ),
                {"b_ids": unchanged, "b_run": self.run_state.run_id},
            )

    def unchanged_by_digest(self, digests: dict[str, str]) -> dict[str, int]:
        """Of the entities ``digests`` names (entity ID → digest of its record), those whose
        row was written from a record of that very digest: entity ID → row ID."""
        stored = self._stored_digests
        if stored is None:
            table = self.table
            # A short batch (a delta's, a small tenant's) reads its own rows' digests, not
            # the thousands of the tenant that a delta of a few changes would read.
            short = len(digests) < BATCH_SIZE

            def build() -> sa.Select[Any]:
                select = sa.select(table.c.external_id, table.c.id, table.c.source_digest).where(
                    table.c.tenant_ref == sa.bindparam("b_tenant"),
                    table.c.source_digest.is_not(None),
                )
                return select.where(in_list(table.c.external_id)) if short else select

            values = {"b_tenant": self.target.tenant_ref} | (
                {"b_ids": list(digests)} if short else {}
            )
            rows = {
                entity_id: (row_id, d)
                for entity_id, row_id, d in self.connection.execute(
                    prepared(("digests", table.name, short), build), values
                )
            }
            if len(digests) >= BATCH_SIZE:
                # A listing: one query a unit, not one a batch. The tenant's digests as the
                # unit began (a row the unit writes later goes the ordinary way, which finds it).
                self._stored_digests = rows
            stored = rows
        return {
            entity_id: found[0]
            for entity_id, digest in digests.items()
            if (found := stored.get(entity_id)) is not None and found[1] == digest
        }

    def customer_state(self, table: sa.Table) -> tuple[Any, ...]:
        """How many rows of ``table`` the target's customer has and when one last changed:
        what a digest holds of rows the rules read (sites, the devices' owners)."""
        return tuple(
            self.connection.execute(
                prepared(
                    ("customer state", table.name),
                    lambda: sa.select(sa.func.count(), sa.func.max(table.c.updated_at)).where(
                        table.c.customer_id == sa.bindparam("b_customer")
                    ),
                ),
                {"b_customer": self.target.customer_id},
            ).one()
        )

    def skip_unchanged(self, records: dict[str, Any], digests: dict[str, str]) -> list[int]:
        """Take the records whose rows were written from the same digest out of
        ``records``, counted unchanged; their row IDs (to be marked seen)."""
        same = self.unchanged_by_digest(digests)
        for entity_id in same:
            del records[entity_id]
        self.counts.unchanged += len(same)
        return list(same.values())

    def mark_seen(self, entity_ids: list[str]) -> None:
        if entity_ids:
            table = self.table
            self.connection.execute(
                prepared(
                    ("seen by entity", table.name),
                    lambda: (
                        sa.update(table)
                        .where(
                            table.c.tenant_ref == sa.bindparam("b_tenant"),
                            in_list(table.c.external_id),
                        )
                        .values(seen_run_id=sa.bindparam("b_run"))
                    ),
                ),
                {
                    "b_tenant": self.target.tenant_ref,
                    "b_ids": entity_ids,
                    "b_run": self.run_state.run_id,
                },
            )

    @property
    def site_id(self) -> int | None:
        """The one site this run writes users and assets of (``--site``), if any."""
        site = self.run_state.scope.site
        return site.site_id if site else None

    def deactivate(self, removed: list[str] | None) -> None:
        """Deactivate the active rows the plugin said were ``removed`` (entity IDs), or,
        with ``None``, those a complete listing did not hold (not seen this run)."""
        table, site_id = self.table, self.site_id

        def build() -> sa.Select[Any]:
            select = sa.select(table.c.id, table.c.external_id).where(
                table.c.tenant_ref == sa.bindparam("b_tenant"),
                table.c.active.is_(True),
                in_list(table.c.external_id) if removed is not None else unseen(table),
            )
            if site_id is not None:
                select = select.where(table.c.site_id == sa.bindparam("b_site"))
            return select

        values: dict[str, Any] = {"b_tenant": self.target.tenant_ref}
        if removed is not None:
            values["b_ids"] = removed
        else:
            values["b_run"] = self.run_state.run_id
        if site_id is not None:
            values["b_site"] = site_id
        key = ("to deactivate", table.name, removed is not None, site_id is not None)
        rows = self.connection.execute(prepared(key, build), values).all()
        if not rows:
            return
        now = utcnow()
        ids = [row.id for row in rows]
        for row in rows:
            self.run_state._change(self.kind, self.tenant_id, row.external_id, "deactivated")
        self.counts.deactivated += len(rows)
        # A row that left is no longer what its digest says: should the record come back
        # unchanged, the row is written again (reactivated) rather than skipped.
        forget = {"source_digest": None} if "source_digest" in table.c else {}
        for chunk in _batched(ids):
            self.connection.execute(
                sa.update(table)
                .where(table.c.id.in_(chunk))
                .values(active=False, inactive_since=now, updated_at=now, **forget)
            )
            self.deactivated(chunk, now)

    def deactivated(self, ids: list[int], now: datetime) -> None:
        """What else goes with the rows ``ids`` just deactivated."""


class _UserUnit(_EntityUnit):
    """Users: the guide's user rules (site and field mappings, matching, service accounts),
    delta or full listings by config, and licence assignments."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        config = self.run_state.config
        self.rules = self.run_state.user_rules
        self.settings = config.users
        self.deactivates = config.integrator.deactivate_users_not_found
        #: The tenant's licences by SKU ID: (row ID, SKU part number), read once per unit.
        self._licences: dict[str, tuple[int, str]] | None = None
        self._digester: Digester | None = None

    def digester(self) -> Digester | None:
        """The digests of this unit's records, under everything the user rules read: the
        settings, the tenant and its customer, the customer's sites, the tenant's licences.
        None in a per-site run, which writes only part of what the rules would."""
        if self.site_id is not None:
            return None
        if self._digester is None:
            config = self.run_state.config
            self._digester = Digester(
                config.users,
                config.site_mappings,
                config.integrator,
                self.target,
                self.customer_state(schema.sites),
                sorted(self.licences().items()),
            )
        return self._digester

    def hook_arguments(self) -> dict[str, Any]:
        run, target = self.run_state, self.target
        assert target.customer_id is not None
        if not self.rules.has_mappings(self.connection, target):
            raise SkipTenant(
                "no site mapping places the users of this tenant (customer "
                f"{_customer_name(self.connection, target)}): add [[site_mappings]] for it "
                "(the README's 'Site mappings'; a module may generate catch-alls), or set "
                "integrator.create_site_mappings_for_new_tenants = true"
            )
        for reason in self.rules.broken_mappings(self.connection, target):
            run.problem(Problem(self.kind, self.tenant_id, None, "warning", reason))
        return {
            "bookmark": self.delta_bookmark(),
            "query": self.rules.query(self.connection, target),
        }

    def delta_bookmark(self) -> str | None:
        """The delta link to resume from: none with deltas off, or when a full reconcile is due."""
        if not self.settings.use_deltas or self.site_id is not None:
            return None  # a per-site run lists everyone and moves no delta link
        stored = get_bookmark(self.connection, *self.bookmark_key)
        hours = self.settings.full_reconcile_hours
        if stored and stored != LATEST_BOOKMARK and hours:
            last_full = get_bookmark(self.connection, *self.full_key)
            due = last_full is None or datetime.fromisoformat(last_full) <= utcnow() - timedelta(
                hours=hours
            )
            if due:
                log.info("sync.users_full_reconcile", every_hours=hours, last_full=last_full)
                return None
        return stored

    @property
    def full_key(self) -> tuple[str, str, str]:
        return (self.run_state.module, f"{self.kind}.full", self.tenant_key)

    def save_bookmark(self, bookmark: str | None, *, complete: bool) -> None:
        if not self.settings.use_deltas or self.site_id is not None:
            return  # every run lists everyone: a link would only go stale
        super().save_bookmark(bookmark, complete=complete)
        if complete:
            save_bookmark(self.connection, *self.full_key, utcnow().isoformat())

    def upsert(self, records: list[Any]) -> None:
        if not records:
            return
        run, now = self.run_state, utcnow()
        users: dict[str, DirectoryUser] = {record.object_id: record for record in records}
        digester = self.digester()
        digests = {oid: digester.of(user) for oid, user in users.items()} if digester else {}
        unchanged = self.skip_unchanged(users, digests) if digests else []
        if unchanged:
            # Their rows are this run's now: marked seen before matching, so that none is
            # taken for a free PSA user (and, in an unchanged directory, none is left to look
            # for: the records no rule places, such as guests, cost no matching queries).
            self.write([], [], unchanged)
            unchanged = []
        if not users:
            return
        matches = find_matches(
            self.connection,
            self.target,
            list(users.values()),
            matching=self.settings.matching,
            run_id=run.run_id,
        )
        sku_names = {sku: name for sku, (_, name) in self.licences().items()}
        inserts, updates, redigested, placed = [], [], [], {}
        row_ids: dict[str, int] = {}  # of the placed users whose rows exist already
        for object_id, user in users.items():
            match = matches.get(object_id)
            row = match.row if match else None
            if match is not None and match.ambiguous:
                self.counts.skipped += 1
                run.problem(
                    Problem(self.kind, self.tenant_id, object_id, "skipped", match.ambiguous)
                )
                continue
            placement = self.rules.place(self.connection, self.target, user)
            if placement is None:
                self.counts.skipped += 1
                run.problem(
                    Problem(
                        self.kind,
                        self.tenant_id,
                        object_id,
                        "skipped",
                        f"no site mapping accepts {user.user_principal_name}"
                        + (
                            " (a guest: a mapping takes guests only with "
                            "include_external_users = true)"
                            if is_external(user)
                            else ""
                        )
                        + ": not imported",
                    )
                )
                if row is not None and row.tenant_ref == self.target.tenant_ref:
                    unchanged.append(row.id)  # still in the directory: not a leaver
                continue
            if self.site_id is not None and placement.site_id != self.site_id:
                continue  # another site's user: not this run's
            # The rules' dict of columns is this row's own: completed in place, not copied.
            values = self.rules.columns(
                user,
                placement,
                row,
                service_account=self.rules.is_service_account(user, sku_names),
            )
            values["customer_id"] = self.target.customer_id
            values["tenant_ref"] = self.target.tenant_ref
            values["external_id"] = object_id
            values["active"] = self.rules.active(user)
            # A per-site run has no digests: a row it writes loses its digest (it was
            # written from another record than the one the digest named).
            digest = digests.get(object_id)
            placed[object_id] = user
            if row is None:
                values["source_digest"] = digest
                values["created_at"] = values["updated_at"] = now
                values["seen_run_id"] = run.run_id
                inserts.append(values)
                self.counts.added += 1
                run._change(self.kind, self.tenant_id, object_id, "added")
                continue
            row_ids[object_id] = row.id
            changed = tuple(k for k, v in values.items() if getattr(row, k) != v)
            if changed:
                values["source_digest"] = digest
                values["inactive_since"] = None if values["active"] else row.inactive_since or now
                updates.append(self.update_of(row, values, now))
                self.counts.updated += 1
                run._change(self.kind, self.tenant_id, object_id, "updated", changed)
            else:
                unchanged.append(row.id)
                self.counts.unchanged += 1
                if digests and row.source_digest != digest:
                    redigested.append({"id": row.id, "source_digest": digest})
        self.write(inserts, updates, unchanged, redigested)
        self.assign_licences(placed, row_ids)

    def deactivated(self, ids: list[int], now: datetime) -> None:
        assignments = schema.licence_assignments
        self.connection.execute(
            sa.update(assignments)
            .where(assignments.c.user_id.in_(ids), assignments.c.active.is_(True))
            .values(active=False, inactive_since=now, updated_at=now)
        )

    def licences(self) -> dict[str, tuple[int, str]]:
        if self._licences is None:
            licences = schema.licences
            self._licences = {
                row.external_id: (row.id, row.sku_part_number)
                for row in self.connection.execute(
                    prepared(
                        "licences of tenant",
                        lambda: sa.select(
                            licences.c.external_id, licences.c.id, licences.c.sku_part_number
                        ).where(licences.c.tenant_ref == sa.bindparam("b_tenant")),
                    ),
                    {"b_tenant": self.target.tenant_ref},
                )
            }
        return self._licences

    def assign_licences(self, users: dict[str, Any], row_ids: Mapping[str, int]) -> None:
        """Make each user's licence assignments those of its `assigned_sku_ids`
        (``row_ids``: the row IDs of those of ``users`` whose rows existed before this
        batch; the new rows' are read)."""
        if not users:
            return
        assignments, table = schema.licence_assignments, self.table
        licence_ids = {sku: row_id for sku, (row_id, _) in self.licences().items()}
        user_ids = dict(row_ids)
        if new := [oid for oid in users if oid not in row_ids]:
            user_ids.update(
                self.connection.execute(
                    prepared(
                        "user ids by object id",
                        lambda: sa.select(table.c.external_id, table.c.id).where(
                            table.c.tenant_ref == sa.bindparam("b_tenant"),
                            in_list(table.c.external_id),
                        ),
                    ),
                    {"b_tenant": self.target.tenant_ref, "b_ids": new},
                ).all()
            )
        wanted = {
            (licence_ids[sku], user_ids[object_id])
            for object_id, user in users.items()
            for sku in user.assigned_sku_ids
            if sku in licence_ids
        }
        current = {
            (lid, uid): active
            for lid, uid, active in self.connection.execute(
                prepared(
                    "licence assignments of users",
                    lambda: sa.select(
                        assignments.c.licence_id, assignments.c.user_id, assignments.c.active
                    ).where(in_list(assignments.c.user_id)),
                ),
                {"b_ids": list(user_ids.values())},
            )
        }
        now = utcnow()
        new = [
            {
                "licence_id": lid,
                "user_id": uid,
                "active": True,
                "created_at": now,
                "updated_at": now,
            }
            for lid, uid in wanted - current.keys()
        ]
        if new:
            insert_rows(self.connection, assignments, new)
        flipped = [
            {
                "licence_id": lid,
                "user_id": uid,
                "active": not active,
                "inactive_since": None if not active else now,
                "updated_at": now,
            }
            for (lid, uid), active in current.items()
            if ((lid, uid) in wanted) != active
        ]
        if flipped:
            update_rows(self.connection, assignments, flipped, key=("licence_id", "user_id"))


class _AssetUnit(_EntityUnit):
    """Assets: the guide's asset rules (types, user matching, field mappings, statuses,
    the global matching field). Devices are always listed in full."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rules = self.run_state.asset_rules
        self.new_status, self.deleted_status = self.rules.statuses
        self.excluded = {"sense": 0, "type": 0}
        self._digester: Digester | None = None

    def hook_arguments(self) -> dict[str, Any]:
        return {"bookmark": None, "query": self.rules.query()}

    def save_bookmark(self, bookmark: str | None, *, complete: bool) -> None:
        pass  # assets always use a full listing (guide 8.2)

    def apply(self, batches: Iterable[list[Any]]) -> None:
        super().apply(batches)
        settings = self.rules.settings
        for why, count in self.excluded.items():
            if count:
                reason = (
                    f"{count} devices managed by Microsoft Defender for Endpoint (Sense) left "
                    "out (assets.exclude_sense)"
                    if why == "sense"
                    else f"{count} devices no [[assets.type_rules]] rule matches left out "
                    f'(assets.unmatched = "{settings.unmatched.value}")'
                )
                self.run_state.problem(Problem(self.kind, self.tenant_id, None, "skipped", reason))

    def digester(self) -> Digester | None:
        """The digests of this unit's records, under everything the asset rules read: the
        settings, the tenant and its customer, the default site, and the customer's users
        (a device's site is its owner's). None in a per-site run."""
        if self.site_id is not None:
            return None
        if self._digester is None:
            config = self.run_state.config
            self._digester = Digester(
                config.assets,
                config.integrator,
                self.target,
                self.rules.default_site(self.connection, self.target),
                self.customer_state(schema.users),
            )
        return self._digester

    def upsert(self, records: list[Any]) -> None:
        if not records:
            return
        run, rules, now = self.run_state, self.rules, utcnow()
        digester = self.digester()
        by_id = {device.device_id: device for device in records}
        digests = {did: digester.of(device) for did, device in by_id.items()} if digester else {}
        unchanged = self.skip_unchanged(by_id, digests) if digests else []
        devices, types, left_out = {}, {}, []
        for device in by_id.values():
            type_name = None if rules.settings.exclude_sense and is_sense(device) else ""
            if type_name is None:
                self.excluded["sense"] += 1
            else:
                type_name = rules.type_name(device)
                if type_name is None:
                    self.excluded["type"] += 1
            if type_name is None:
                self.counts.skipped += 1
                left_out.append(device.device_id)
                continue
            devices[device.device_id] = device
            types[device.device_id] = type_name
        # A device left out stays as it was: it is still in Intune, not a leaver.
        self.mark_seen(left_out)
        if not devices:
            self.write([], [], unchanged)
            return
        keys = {device_id: rules.match_key(device) for device_id, device in devices.items()}
        matched, duplicates = find_assets(
            self.connection, self.target, devices, keys, run_id=run.run_id
        )
        for device_id, reason in duplicates.items():
            run.problem(Problem(self.kind, self.tenant_id, device_id, "warning", reason))
        owners = rules.owners(self.connection, self.target, list(devices.values()))
        inserts, updates, redigested = [], [], []
        for device_id, device in devices.items():
            row = matched.get(device_id)
            owner = owners.get(device_id)
            site_id = (owner.site_id if owner else None) or rules.default_site(
                self.connection, self.target
            )
            if self.site_id is not None and site_id != self.site_id:
                continue  # another site's device: not this run's
            # The rules' dict of columns is this row's own: completed in place, not copied.
            values = rules.columns(device, row, match_key=keys[device_id])
            values["customer_id"] = self.target.customer_id
            values["tenant_ref"] = self.target.tenant_ref
            values["external_id"] = device_id
            values["site_id"] = site_id
            values["user_id"] = owner.id if owner else None
            values["active"] = True
            if row is None or not (rules.settings.keep_existing_type and row.asset_type_id):
                values["asset_type_id"] = rules.type_id(self.connection, types[device_id])
            if row is None or not row.active:
                values["status"] = self.new_status  # new, or back in Intune
            digest = digests.get(device_id)
            if row is None:
                values["source_digest"] = digest
                values["source"] = "intune"
                values["created_at"] = values["updated_at"] = now
                values["seen_run_id"] = run.run_id
                inserts.append(values)
                self.counts.added += 1
                run._change(self.kind, self.tenant_id, device_id, "added")
                continue
            changed = tuple(k for k, v in values.items() if getattr(row, k) != v)
            if changed:
                values["source_digest"] = digest
                values["inactive_since"] = None
                updates.append(self.update_of(row, values, now))
                self.counts.updated += 1
                run._change(self.kind, self.tenant_id, device_id, "updated", changed)
            else:
                unchanged.append(row.id)
                self.counts.unchanged += 1
                if digests and row.source_digest != digest:
                    redigested.append({"id": row.id, "source_digest": digest})
        self.write(inserts, updates, unchanged, redigested)

    def deactivated(self, ids: list[int], now: datetime) -> None:
        self.connection.execute(
            sa.update(self.table).where(self.table.c.id.in_(ids)).values(status=self.deleted_status)
        )


def _find_site(connection: Connection, spec: str) -> SiteScope:
    """The site ``"Customer/Site"`` names (ignoring case), or `SyncError` saying why not."""
    customer, sep, site = spec.rpartition("/")
    if not sep or not customer.strip() or not site.strip():
        raise SyncError(f'--site {spec!r}: give it as "CUSTOMER/SITE", e.g. "Contoso/Main"')
    customers, sites = schema.customers, schema.sites
    rows = connection.execute(
        sa.select(
            customers.c.id,
            customers.c.name,
            sites.c.id.label("site_id"),
            sites.c.name.label("site"),
        )
        .select_from(customers.join(sites, sites.c.customer_id == customers.c.id))
        .where(sa.func.lower(customers.c.name) == customer.strip().lower())
    ).all()
    if not rows:
        raise SyncError(f"--site {spec!r}: no customer {customer.strip()!r} in the store")
    for row in rows:
        if row.site.lower() == site.strip().lower():
            return SiteScope(row.id, row.site_id, f"{row.name}/{row.site}")
    known = ", ".join(sorted(row.site for row in rows))
    raise SyncError(
        f"--site {spec!r}: customer {rows[0].name!r} has no site {site.strip()!r} (its sites: {known})"
    )


def _batched(items: Iterable[Any], size: int | None = None) -> Iterator[list[Any]]:
    iterator, size = iter(items), size or BATCH_SIZE
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _parse_kinds(only: Sequence[str] | None) -> set[EntityKind]:
    if not only:
        return set(EntityKind)
    kinds = set()
    for name in only:
        try:
            kinds.add(EntityKind(name))
        except ValueError:
            choices = ", ".join(k.value for k in EntityKind)
            raise SyncError(
                f"--only {name!r}: not an entity kind (choose from {choices})"
            ) from None
    return kinds


def _access(value: str) -> TenantAccess:
    try:
        return TenantAccess(value)
    except ValueError:
        return TenantAccess.UNKNOWN


def _tenant_of(row: Any) -> Tenant:
    return Tenant(
        tenant_id=row.tenant_id,
        name=row.name,
        connection=row.connection or None,
        default_domain=row.default_domain,
        access=_access(row.access),
        access_detail=row.access_detail,
        attributes=row.attributes,
    )


def _customer_name(connection: Connection, target: TenantTarget) -> str:
    name = connection.execute(
        sa.select(schema.customers.c.name).where(schema.customers.c.id == target.customer_id)
    ).scalar_one()
    return repr(name)


def _type_name(item: Any) -> str:
    return item.type_name if isinstance(item, Unspoolable) else type(item).__name__


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
