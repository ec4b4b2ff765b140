"""The daemon's scheduler: one interval job per enabled module that has something to sync.

An APScheduler 3 `BackgroundScheduler` in UTC, its jobs rebuilt from the configuration at
each start (memory job store): ``sync:<module>`` every ``interval_minutes``, first run at
start-up, never two runs of one job at once, missed runs coalesced into one. The sync
bookmarks live in the store, not in the scheduler, so a restart picks up where the last run
left off. Each job has a `SyncEngine` of its own; all share one ``stop`` event, which the
daemon sets on SIGTERM so that a running module finishes its current tenant and returns.

`Health` is what ``/healthz`` shows of all this: whether the scheduler is alive, each job's
next run, and each module's last run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config
from .models import EntityKind
from .pacing import Pacer
from .plugins import ActiveModule, PluginHost
from .store import Store, schema
from .store.request_log import prune_request_log
from .sync.engine import Counts, Reporter, RunResult, SyncEngine
from .sync.mapping import ENTITY_RULES

log = structlog.get_logger(__name__)

#: A run that could not start on time (the process was busy or suspended) still runs if it
#: is at most this late, or one interval late for longer intervals: with coalescing, any
#: number of missed runs then makes exactly one run as soon as the process can.
MISFIRE_GRACE = timedelta(minutes=5)
#: Request-log entries are pruned this often when ``[logging] request_log_retention_days``
#: is set.
PRUNE_INTERVAL = timedelta(days=1)
PRUNE_JOB = "prune:request-log"

#: The hooks the sync engine runs; a module whose plugin implements none of them gets no job.
SYNC_HOOKS = ("fetch_tenants", *(rule.hook for rule in ENTITY_RULES.values()))


def sync_job_id(module: str) -> str:
    return f"sync:{module}"


@attrs.frozen(kw_only=True)
class SyncJob:
    """One module's scheduled sync: what it imports and how often."""

    module: str
    interval: timedelta
    kinds: tuple[str, ...]

    @property
    def id(self) -> str:
        return sync_job_id(self.module)


def plan_sync_jobs(
    config: Config,
    host: PluginHost,
    modules: dict[str, ActiveModule],
    *,
    every: timedelta | None = None,
) -> tuple[list[SyncJob], dict[str, str]]:
    """The sync jobs of ``modules``, and why each module left out gets none.

    A module gets a job when the integrator is enabled and its plugin implements a hook the
    engine runs for one of the kinds ``[integrator] import_kinds`` selects. ``every``
    overrides each module's interval (``run --every``).
    """
    wanted = [kind.value for kind in config.integrator.import_kinds]
    jobs: list[SyncJob] = []
    skipped: dict[str, str] = {}
    for name, active in sorted(modules.items()):
        if not config.integrator.enabled:
            skipped[name] = "integrator.enabled is false: scheduled syncs are off"
            continue
        implemented = [hook for hook in SYNC_HOOKS if host.implements(name, hook)]
        if not implemented:
            if any(host.implements(name, hook) for hook in ("fetch_usage", "fetch_prices")):
                # Billing and pricing runs: the engine runs them whole, kinds do not apply.
                interval = every or timedelta(minutes=active.interval_minutes)
                jobs.append(SyncJob(module=name, interval=interval, kinds=()))
            else:
                skipped[name] = "its plugin implements no fetch hook: nothing to sync"
            continue
        kinds = tuple(kind for kind in wanted if _imports(host, name, kind))
        if not kinds:
            skipped[name] = (
                f"integrator.import_kinds ({', '.join(wanted) or 'none'}) selects nothing its "
                f"plugin imports (it implements {', '.join(implemented)})"
            )
            continue
        interval = every or timedelta(minutes=active.interval_minutes)
        jobs.append(SyncJob(module=name, interval=interval, kinds=kinds))
    return jobs, skipped


def _imports(host: PluginHost, module: str, kind: str) -> bool:
    if kind == EntityKind.TENANTS:
        return host.implements(module, "fetch_tenants")
    rule = ENTITY_RULES.get(EntityKind(kind))
    # Without tenants of its own a module syncs the tenants already in the store.
    return rule is not None and host.implements(module, rule.hook)


# --- health --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


class Health:
    """The scheduler's state for ``/healthz`` and the admin page; safe to read from any thread.

    `snapshot` returns plain JSON-ready data::

        {"alive": true, "syncs_enabled": true, "note": null,
         "jobs": [{"id": "sync:microsoft_csp", "module": "microsoft_csp",
                   "interval_seconds": 3600, "next_run_at": "...", "running": false,
                   "progress": null}],
         "modules": {"microsoft_csp": {"scheduled": true, "reason": null,
                     "last_run": {"run_id": 7, "started_at": "...", "finished_at": "...",
                                  "outcome": "succeeded", "error": null, "note": null,
                                  "counts": {"users": {"added": 0, ...}}}}}}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self.syncs_enabled = True
        self.note: str | None = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._modules: dict[str, dict[str, Any]] = {}

    def attach(self, scheduler: BackgroundScheduler) -> None:
        self._scheduler = scheduler

    @property
    def alive(self) -> bool:
        scheduler = self._scheduler
        return bool(scheduler is not None and scheduler.running)

    def module(self, name: str, *, scheduled: bool, reason: str | None = None) -> None:
        with self._lock:
            entry = self._modules.setdefault(name, {"last_run": None})
            entry.update(scheduled=scheduled, reason=reason)

    def job(self, job: SyncJob) -> None:
        with self._lock:
            self._jobs[job.id] = {
                "id": job.id,
                "module": job.module,
                "interval_seconds": job.interval.total_seconds(),
                "running": False,
                "running_since": None,
                "progress": None,
            }

    def running(self, job_id: str, since: datetime | None) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id].update(running=since is not None, running_since=_iso(since))
                if since is None:
                    self._jobs[job_id]["progress"] = None

    def progress(self, job_id: str, text: str) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id]["progress"] = text

    def last_run(self, module: str, run: dict[str, Any]) -> None:
        with self._lock:
            self._modules.setdefault(module, {"scheduled": False, "reason": None})
            self._modules[module]["last_run"] = run

    def snapshot(self) -> dict[str, Any]:
        scheduler = self._scheduler
        next_runs: dict[str, str | None] = {}
        if scheduler is not None and scheduler.running:
            for job in scheduler.get_jobs():
                next_runs[job.id] = _iso(job.next_run_time)
        with self._lock:
            jobs = [
                dict(job, next_run_at=next_runs.get(job_id)) for job_id, job in self._jobs.items()
            ]
            modules = {
                name: dict(entry, last_run=dict(entry["last_run"]) if entry["last_run"] else None)
                for name, entry in sorted(self._modules.items())
            }
        return {
            "alive": self.alive,
            "syncs_enabled": self.syncs_enabled,
            "note": self.note,
            "jobs": jobs,
            "modules": modules,
        }


def run_summary(
    result: RunResult, started: datetime, finished: datetime | None = None
) -> dict[str, Any]:
    """What `Health` keeps of one run."""
    return {
        "run_id": result.run_id,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "outcome": result.outcome,
        "error": result.error,
        "note": result.note,
        "counts": {kind: counts.as_dict() for kind, counts in result.counts.items()},
    }


def _stored_last_runs(store: Store, modules: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each module's last run recorded in the store (before this start), with its counts."""
    runs, counts = schema.sync_runs, schema.sync_counts
    latest = (
        sa.select(runs.c.module, sa.func.max(runs.c.id).label("id"))
        .where(runs.c.module.in_(modules))
        .group_by(runs.c.module)
        .subquery()
    )
    with store.read() as connection:
        rows = connection.execute(sa.select(runs).join(latest, runs.c.id == latest.c.id)).all()
        for row in rows:
            totals: dict[str, Counts] = {}
            for count in connection.execute(
                sa.select(counts).where(counts.c.run_id == row.id)
            ).mappings():
                kind = totals.setdefault(count["entity_kind"], Counts())
                kind.add(Counts(**{f.name: count[f.name] for f in attrs.fields(Counts)}))
            yield (
                row.module,
                {
                    "run_id": row.id,
                    "started_at": _iso(row.started_at),
                    "finished_at": _iso(row.finished_at),
                    "outcome": row.outcome,
                    "error": row.error,
                    "note": None,
                    "counts": {kind: c.as_dict() for kind, c in totals.items()},
                },
            )


def _grace(interval: timedelta) -> int:
    return int(max(interval, MISFIRE_GRACE).total_seconds())


# --- the scheduler -------------------------------------------------------------------------


class _HealthReporter(Reporter):
    """Shows a running job's progress (tenant i of n) in `Health`."""

    def __init__(self, health: Health, job_id: str) -> None:
        self.health = health
        self.job_id = job_id

    def tenants_started(self, module: str, total: int) -> None:
        self.health.progress(self.job_id, f"tenant 0/{total}")

    def tenant_finished(self, module: str, index: int, total: int, tenant: Any) -> None:
        self.health.progress(self.job_id, f"tenant {index}/{total}")


class Scheduler:
    """The sync jobs (and request-log pruning) of one daemon.

    `start` runs them in the background; `run_once` runs each job once in the calling
    thread (``run --once``). Set ``stop`` to have running syncs end after their current
    tenant; `shutdown` stops new runs starting and `wait_idle` waits for the running ones.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        host: PluginHost,
        *,
        stop: threading.Event | None = None,
        every: timedelta | None = None,
        health: Health | None = None,
        prune: Callable[[Store, int], int] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.host = host
        self.stop = stop or threading.Event()
        self.health = health or Health()
        self._prune = prune or prune_request_log
        modules = host.active_modules()
        self.jobs, skipped = plan_sync_jobs(config, host, modules, every=every)
        #: One account of Microsoft's budgets for every job: their runs overlap, and a
        #: Retry-After one of them is given holds the others' requests to that tenant too.
        self.pacer = pacer or Pacer.from_config(config)
        self.engines = {
            job.module: SyncEngine(
                store,
                config,
                host,
                reporter=_HealthReporter(self.health, job.id),
                stop=self.stop,
                pacer=self.pacer,
            )
            for job in self.jobs
        }
        self.health.syncs_enabled = config.integrator.enabled
        if not config.integrator.enabled:
            self.health.note = "integrator.enabled is false: no scheduled syncs (the server runs)"
            log.warning("scheduler.syncs_disabled", reason=self.health.note)
        for name, reason in skipped.items():
            self.health.module(name, scheduled=False, reason=reason)
            if config.integrator.enabled:
                log.info("scheduler.module_not_scheduled", module=name, reason=reason)
        for job in self.jobs:
            self.health.module(job.module, scheduled=True)
            self.health.job(job)
        try:
            for module, run in _stored_last_runs(self.store, [job.module for job in self.jobs]):
                self.health.last_run(module, run)
        except sa.exc.SQLAlchemyError as exc:  # health is a courtesy; the runs still happen
            log.warning("scheduler.last_runs_unread", error=str(exc))
        self._running: dict[str, datetime] = {}
        self._idle = threading.Condition()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=len(self.jobs) + 1)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.health.attach(self.scheduler)

    @property
    def retention_days(self) -> int:
        return self.config.logging.request_log_retention_days

    def start(self) -> None:
        self.scheduler.start()
        now = datetime.now(UTC)
        for job in self.jobs:
            self.scheduler.add_job(
                self.run_job,
                IntervalTrigger(seconds=job.interval.total_seconds(), timezone=UTC),
                args=[job],
                id=job.id,
                name=job.id,
                next_run_time=now,
                misfire_grace_time=_grace(job.interval),
            )
            log.info(
                "scheduler.job_added",
                job=job.id,
                every_seconds=job.interval.total_seconds(),
                kinds=list(job.kinds),
            )
        if self.retention_days > 0:
            self.scheduler.add_job(
                self.prune_request_log,
                IntervalTrigger(seconds=PRUNE_INTERVAL.total_seconds(), timezone=UTC),
                id=PRUNE_JOB,
                name=PRUNE_JOB,
                next_run_time=now,
                misfire_grace_time=_grace(PRUNE_INTERVAL),
            )

    def run_once(self) -> list[RunResult]:
        """Each job once, one after the other, in this thread; the results of the syncs.

        A job not started when ``stop`` is set is left out (and logged).
        """
        results = []
        for job in self.jobs:
            result = self.run_job(job)
            if result is None:
                log.info("scheduler.not_run", job=job.id, reason="stop requested before it ran")
            else:
                results.append(result)
        if self.retention_days > 0 and not self.stop.is_set():
            self.prune_request_log()
        return results

    # -- the jobs ----------------------------------------------------------------------------

    def run_job(self, job: SyncJob) -> RunResult | None:
        """One run of ``job``; any exception is logged and recorded, never raised.

        Returns ``None``, running nothing, once ``stop`` is set.
        """
        started = datetime.now(UTC)
        if not self._begin(job.id, started):
            return None
        self.health.running(job.id, started)
        try:
            try:
                with structlog.contextvars.bound_contextvars(job=job.id):
                    [result] = self.engines[job.module].run(module=job.module, only=list(job.kinds))
            except Exception as exc:
                # The engine records its own failures; this is one it could not (the store
                # gone, a bug): keep the scheduler going and say which module it was.
                log.exception("scheduler.job_failed", job=job.id, module=job.module, error=str(exc))
                result = RunResult(module=job.module, run_id=None, dry_run=False, outcome="failed")
                result.error = f"{type(exc).__name__}: {exc}"
            # Before the job counts as done, so that whoever waits for it sees its result.
            self.health.last_run(job.module, run_summary(result, started, datetime.now(UTC)))
            return result
        finally:
            self.health.running(job.id, None)
            self._end(job.id)

    def prune_request_log(self) -> int | None:
        """Delete request-log entries older than the retention; never raises."""
        if not self._begin(PRUNE_JOB, datetime.now(UTC)):
            return None
        try:
            with structlog.contextvars.bound_contextvars(job=PRUNE_JOB):
                removed = self._prune(self.store, self.retention_days)
                log.info("request_log.pruned", removed=removed, older_than_days=self.retention_days)
                return removed
        except Exception as exc:
            log.exception("scheduler.job_failed", job=PRUNE_JOB, error=str(exc))
            return None
        finally:
            self._end(PRUNE_JOB)

    def _begin(self, job_id: str, started: datetime) -> bool:
        with self._idle:
            # Checked under the lock `wait_idle` reads with: a job either counts as running
            # there, or sees the stop and does not start.
            if self.stop.is_set():
                return False
            self._running[job_id] = started
            return True

    def _end(self, job_id: str) -> None:
        with self._idle:
            self._running.pop(job_id, None)
            self._idle.notify_all()

    # -- stopping ----------------------------------------------------------------------------

    def running(self) -> list[str]:
        with self._idle:
            return sorted(self._running)

    def shutdown(self) -> None:
        """No new runs start; the running ones go on (set ``stop`` to end them early)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            log.info("scheduler.shut_down", running=self.running())

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running jobs; whether none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout=timeout)
