"""The daemon: the scheduler's jobs against an in-test plugin, `run --once` through the
command line, and `halo-integrator run` end to end against the emulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner
from fakes import MODULE, TENANT_A, FakeDirectory
from structlog.testing import capture_logs

from halo_integrator_core import ModuleSpec, hookimpl
from halo_integrator_core import cli as cli_module
from halo_integrator_core.config import load_config
from halo_integrator_core.daemon import Daemon
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.scheduler import PRUNE_JOB, Health, Scheduler
from halo_integrator_core.store import Store, schema

CONFIG = f"""
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[logging]
request_log_retention_days = 0

[modules.{MODULE}]
enabled = true
"""

#: Tenants one after another: "the tenant in hand" is then one tenant.
SEQUENTIAL = CONFIG.replace("[integrator]", "[integrator]\nparallel_tenants = 1")

CLI = Path(sys.executable).parent / "halo-integrator"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s: {predicate}")


@attrs.define(eq=False)
class GatedDirectory(FakeDirectory):
    """A fake directory whose first ``hook`` call of each run waits for ``gate``."""

    hook: str = "fetch_tenants"
    gate: threading.Event = attrs.field(factory=threading.Event)
    entered: threading.Event = attrs.field(factory=threading.Event)
    active: int = 0
    most_active: int = 0
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def _wait(self, hook: str) -> None:
        if hook != self.hook:
            return
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.entered.set()
        try:
            assert self.gate.wait(10), "the test never opened the gate"
        finally:
            with self.lock:
                self.active -= 1

    @hookimpl
    def fetch_tenants(self, context: Any) -> Iterator[Any]:
        self._wait("fetch_tenants")
        yield from super().fetch_tenants(context)

    @hookimpl
    def fetch_licences(self, context: Any, tenant: Any, bookmark: str | None) -> Iterator[Any]:
        if not self.entered.is_set():
            self._wait("fetch_licences")
        yield from super().fetch_licences(context, tenant, bookmark)


def gated_at(hook: str) -> GatedDirectory:
    gated = GatedDirectory.small()
    gated.hook = hook
    return gated


@attrs.define(eq=False)
class SecondDirectory(FakeDirectory):
    """The same directory as a second module, with an interval of its own."""

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="second_directory", title="Second", default_interval_minutes=90)]


class UsageOnly:
    """A module whose plugin fetches only usage: a billing module, which the engine runs
    after the syncing ones."""

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="usage_only", title="Usage only")]

    @hookimpl
    def fetch_usage(self, context: Any, period: str) -> Iterator[Any]:
        yield from ()


@pytest.fixture
def world() -> FakeDirectory:
    return FakeDirectory.small()


@pytest.fixture
def make_scheduler(store: Store, write_config, host_factory, world: FakeDirectory):
    built: list[Scheduler] = []

    def build(
        text: str = CONFIG,
        *plugins: tuple[object, str],
        every: timedelta | None = None,
        **kwargs: Any,
    ) -> Scheduler:
        config = load_config(write_config(text))
        host = host_factory(config, *(plugins or [(world, "fake")]))
        scheduler = Scheduler(store, config, host, every=every, **kwargs)
        built.append(scheduler)
        return scheduler

    yield build
    for scheduler in built:
        for info in scheduler.host.plugins():  # a failed test leaves no run held
            plugin = scheduler.host.pm.get_plugin(info.name)
            if isinstance(plugin, GatedDirectory):
                plugin.gate.set()
        scheduler.stop.set()
        scheduler.shutdown()
        assert scheduler.wait_idle(10)


def runs(store: Store) -> list[Any]:
    with store.read() as connection:
        return connection.execute(sa.select(schema.sync_runs).order_by(schema.sync_runs.c.id)).all()


def last_run(scheduler: Scheduler, module: str = MODULE) -> dict[str, Any] | None:
    return scheduler.health.snapshot()["modules"][module]["last_run"]


# --- the jobs -------------------------------------------------------------------------------


def test_each_module_that_syncs_gets_a_job_with_its_interval_and_runs_at_once(
    make_scheduler, world, store
):
    text = (
        CONFIG
        + "interval_minutes = 7\n\n[modules.second_directory]\nenabled = true\n\n"
        + "[modules.usage_only]\nenabled = true\n"
    )
    second = SecondDirectory.small()
    scheduler = make_scheduler(
        text, (world, "fake"), (second, "second"), (UsageOnly(), "usage_only")
    )
    before = datetime.now(UTC)
    scheduler.start()
    jobs = {job.id: job for job in scheduler.scheduler.get_jobs()}
    # A billing module gets a job too; no prune job at 0 days of retention.
    assert set(jobs) == {f"sync:{MODULE}", "sync:second_directory", "sync:usage_only"}
    assert jobs[f"sync:{MODULE}"].trigger.interval == timedelta(minutes=7)
    assert jobs["sync:second_directory"].trigger.interval == timedelta(minutes=90)
    for job in jobs.values():
        assert job.max_instances == 1 and job.coalesce is True
        assert job.misfire_grace_time == job.trigger.interval.total_seconds()

    # Both run at start-up, then wait for their interval.
    wait_until(lambda: last_run(scheduler) and last_run(scheduler, "second_directory"))
    assert world.calls and second.calls
    wait_until(lambda: last_run(scheduler, "usage_only"))
    assert {row.module for row in runs(store)} == {MODULE, "second_directory", "usage_only"}
    snapshot = scheduler.health.snapshot()
    next_run = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in snapshot["jobs"]}
    assert next_run[f"sync:{MODULE}"] >= before + timedelta(minutes=7)
    assert next_run["sync:second_directory"] >= before + timedelta(minutes=90)
    assert snapshot["modules"]["usage_only"]["scheduled"] is True


def test_a_job_never_overlaps_itself(make_scheduler, store):
    gated = gated_at("fetch_tenants")
    scheduler = make_scheduler(CONFIG, (gated, "fake"), every=timedelta(seconds=0.05))
    scheduler.start()
    assert gated.entered.wait(10)
    time.sleep(0.5)  # ten intervals pass while the first run is held
    assert gated.most_active == 1
    [running] = runs(store)
    assert running.outcome == "running"
    assert scheduler.health.snapshot()["jobs"][0]["running"] is True
    gated.gate.set()
    wait_until(lambda: len([r for r in runs(store) if r.outcome == "succeeded"]) >= 3)
    assert gated.most_active == 1


def test_a_failing_job_is_recorded_and_the_next_run_happens(make_scheduler, world, store):
    scheduler = make_scheduler(every=timedelta(seconds=0.2))
    engine = scheduler.engines[MODULE]
    real_run = engine.run
    calls = []

    def failing_once(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("the store went away")
        return real_run(**kwargs)

    engine.run = failing_once
    seen: list[dict[str, Any]] = []
    record = scheduler.health.last_run
    scheduler.health.last_run = lambda module, run: (seen.append(run), record(module, run))
    scheduler.start()
    wait_until(lambda: len(seen) >= 2)
    failed, succeeded = seen[:2]
    assert failed["outcome"] == "failed"
    assert failed["error"] == "RuntimeError: the store went away"
    assert succeeded["outcome"] == "succeeded" and scheduler.health.alive
    assert [r.outcome for r in runs(store)][:1] == ["succeeded"]


def test_the_exception_of_a_job_names_its_module_in_the_log(make_scheduler):
    scheduler = make_scheduler()

    def broken(**_: Any) -> Any:
        raise RuntimeError("boom")

    scheduler.engines[MODULE].run = broken
    [job] = scheduler.jobs
    with capture_logs() as logs:
        result = scheduler.run_job(job)  # raises nothing
    assert result is not None and result.outcome == "failed"
    assert result.error == "RuntimeError: boom"
    [event] = [e for e in logs if e["event"] == "scheduler.job_failed"]
    assert event["module"] == MODULE and event["job"] == f"sync:{MODULE}"
    assert event["exc_info"] is True and event["log_level"] == "error"


def test_a_disabled_integrator_schedules_no_sync(make_scheduler, world, store):
    scheduler = make_scheduler(CONFIG.replace("[integrator]", "[integrator]\nenabled = false"))
    scheduler.start()
    assert scheduler.scheduler.get_jobs() == []
    assert scheduler.run_once() == []
    snapshot = scheduler.health.snapshot()
    assert snapshot["alive"] is True and snapshot["syncs_enabled"] is False
    assert "integrator.enabled is false" in snapshot["note"]
    assert snapshot["jobs"] == []
    assert snapshot["modules"][MODULE]["scheduled"] is False
    assert world.calls == [] and runs(store) == []


def test_import_kinds_narrow_what_scheduled_runs_import(make_scheduler, world):
    text = CONFIG.replace("[integrator]", '[integrator]\nimport_kinds = ["tenants", "licences"]')
    scheduler = make_scheduler(text)
    [job] = scheduler.jobs
    assert job.kinds == ("tenants", "licences")
    [result] = scheduler.run_once()
    assert result.outcome == "succeeded"
    assert {hook for hook, _, _ in world.calls} == {"fetch_tenants", "fetch_licences"}
    assert set(result.counts) == {"tenants", "licences"}


def test_import_kinds_selecting_nothing_a_module_imports_leave_it_unscheduled(
    make_scheduler, world
):
    scheduler = make_scheduler(CONFIG.replace("[integrator]", "[integrator]\nimport_kinds = []"))
    assert scheduler.jobs == []
    reason = scheduler.health.snapshot()["modules"][MODULE]["reason"]
    assert "import_kinds" in reason


def test_the_stop_event_ends_a_run_between_tenants(make_scheduler, store):
    gated = gated_at("fetch_licences")
    scheduler = make_scheduler(SEQUENTIAL, (gated, "fake"))
    scheduler.start()
    assert gated.entered.wait(10)  # the first tenant is being synced
    scheduler.stop.set()
    scheduler.shutdown()
    assert scheduler.health.alive is False
    assert not scheduler.wait_idle(0.2)  # the tenant in hand is finished first
    gated.gate.set()
    assert scheduler.wait_idle(10)
    result = last_run(scheduler)
    assert result["outcome"] == "succeeded"
    assert result["note"] == "stopped on request: 1 tenant(s) left for the next run"
    assert len({t for hook, t, _ in gated.calls if hook == "fetch_users"}) == 1
    [run] = runs(store)
    assert run.outcome == "succeeded" and run.finished_at is not None


def test_health_shows_each_modules_last_run_and_next_run(make_scheduler, world):
    scheduler = make_scheduler()
    snapshot = scheduler.health.snapshot()
    assert snapshot["alive"] is False  # not started yet
    assert snapshot["modules"][MODULE] == {"scheduled": True, "reason": None, "last_run": None}
    scheduler.start()
    run = wait_until(lambda: not scheduler.running() and last_run(scheduler))
    snapshot = scheduler.health.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot  # JSON-ready as it is
    assert snapshot["alive"] is True and snapshot["syncs_enabled"] is True
    [job] = snapshot["jobs"]
    assert job["id"] == f"sync:{MODULE}" and job["module"] == MODULE
    assert job["interval_seconds"] == 15 * 60  # the module's default
    assert job["next_run_at"] and job["running"] is False
    assert run["outcome"] == "succeeded" and run["run_id"]
    assert datetime.fromisoformat(run["finished_at"]) >= datetime.fromisoformat(run["started_at"])
    assert run["counts"]["users"]["added"] == 4
    assert run["counts"]["tenants"]["added"] == 2


def test_health_after_a_restart_shows_the_last_run_from_the_store(make_scheduler, world):
    first = make_scheduler()
    [result] = first.run_once()
    again = make_scheduler()  # as a restarted daemon would build it
    run = last_run(again)
    assert run["run_id"] == result.run_id and run["outcome"] == "succeeded"
    assert run["counts"]["users"]["added"] == 4


def test_old_request_log_entries_are_pruned_daily_when_a_retention_is_set(make_scheduler):
    pruned: list[int] = []

    def prune(store: Store, older_than_days: int) -> int:
        pruned.append(older_than_days)
        return 3

    text = CONFIG.replace("request_log_retention_days = 0", "request_log_retention_days = 14")
    scheduler = make_scheduler(text, prune=prune)
    scheduler.start()
    job = scheduler.scheduler.get_job(PRUNE_JOB)
    assert job.trigger.interval == timedelta(days=1)
    wait_until(lambda: pruned == [14])

    kept = make_scheduler()  # 0 days keeps everything
    kept.start()
    assert kept.scheduler.get_job(PRUNE_JOB) is None


def test_a_health_snapshot_of_nothing_scheduled_is_still_complete():
    snapshot = Health().snapshot()
    assert snapshot == {
        "alive": False,
        "syncs_enabled": True,
        "note": None,
        "jobs": [],
        "modules": {},
    }


# --- the daemon's stop ------------------------------------------------------------------------


def test_a_stop_waits_for_the_running_tenant_then_exits_0(store, write_config, host_factory):
    gated = gated_at("fetch_licences")
    config = load_config(write_config(SEQUENTIAL))
    daemon = Daemon(config, store, host_factory(config, (gated, "fake")), grace=10)
    daemon.scheduler.start()  # the server is the web tests' part
    assert gated.entered.wait(10)
    threading.Timer(0.3, gated.gate.set).start()
    daemon.request_stop("SIGTERM received")
    started = time.monotonic()
    assert daemon.wait() == 0
    assert 0.2 < time.monotonic() - started < 5
    assert "stopped on request" in last_run(daemon.scheduler)["note"]


def test_a_stop_gives_up_after_the_grace_time(store, write_config, host_factory):
    gated = gated_at("fetch_licences")
    config = load_config(write_config(CONFIG))
    daemon = Daemon(config, store, host_factory(config, (gated, "fake")), grace=0.3)
    daemon.scheduler.start()
    assert gated.entered.wait(10)
    daemon.request_stop()
    try:
        assert daemon.shutdown() == 1  # the caller then ends the process
    finally:
        gated.gate.set()
        assert daemon.scheduler.wait_idle(10)


def test_the_scheduled_runs_and_the_server_keep_one_account_of_microsofts_budgets(
    store, write_config, host_factory
):
    # Webhook refreshes and scheduled runs reach the same tenants' Graph budget: a
    # Retry-After one of them is given must hold the other's requests to that tenant too.
    config = load_config(write_config(CONFIG + f"\n[server]\nport = {free_port()}\n"))
    daemon = Daemon(config, store, host_factory(config, (FakeDirectory.small(), "fake")))
    daemon.serve()
    try:
        assert daemon.app is not None
        pacers = {id(daemon.app.http.pacer)} | {
            id(engine.http(dry_run=dry_run).pacer)
            for engine in daemon.scheduler.engines.values()
            for dry_run in (False, True)
        }
        assert pacers == {id(daemon.pacer)}
        graph = config.endpoints.url("graph")
        with structlog.contextvars.bound_contextvars(tenant=TENANT_A):
            turn = daemon.app.http.pacer.wait_turn(f"{graph}/v1.0/users")
            assert daemon.app.http.pacer.finish(turn, status=429, retry_after=30.0)
            waits: list[float] = []
            engine = daemon.scheduler.engines[MODULE]
            engine.http(dry_run=False).pacer.wait_turn(f"{graph}/v1.0/users", sleep=waits.append)
        assert len(waits) == 1 and 29 < waits[0] <= 30
    finally:
        daemon.shutdown()


# --- run --once through the command line --------------------------------------------------------


@pytest.fixture
def cli_world(monkeypatch) -> FakeDirectory:
    """Every host the command line builds gets the in-test plugin, and no entry points."""
    world = FakeDirectory.small()
    load = PluginHost.load.__func__

    def load_with_fake(cls, config, *, entry_points=True):
        host = load(cls, config, entry_points=False)
        host.register(world, name="fake")
        return host

    monkeypatch.setattr(PluginHost, "load", classmethod(load_with_fake))
    return world


def cli(path: Path, *args: str):
    return CliRunner().invoke(
        cli_module.cli, ["--config", str(path), "--log-level", "error", *args]
    )


def test_run_once_runs_each_job_and_prints_the_summaries(cli_world, write_config):
    before = signal.getsignal(signal.SIGINT)
    result = cli(write_config(CONFIG), "run", "--once")
    assert result.exit_code == 0, result.output
    assert f"{MODULE}: succeeded" in result.output
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_run_once_exits_1_when_a_run_failed(cli_world, write_config):
    cli_world.fail[("fetch_users", TENANT_A)] = RuntimeError("Graph said no")
    result = cli(write_config(CONFIG), "run", "--once")
    assert result.exit_code == 1, result.output
    assert f"{MODULE}: completed_with_errors" in result.output


def test_run_once_with_the_integrator_disabled_runs_nothing(cli_world, write_config):
    path = write_config(CONFIG.replace("[integrator]", "[integrator]\nenabled = false"))
    result = cli(path, "run", "--once")
    assert result.exit_code == 0
    assert "integrator.enabled is false" in result.output
    assert cli_world.calls == []


def test_run_with_a_bad_config_exits_2_naming_the_problem(cli_world, write_config):
    result = cli(write_config(CONFIG + "colour = 'blue'\n"), "run")
    assert result.exit_code == 2
    assert "configuration problem" in result.output and "colour" in result.output


# --- end to end ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def daemon_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"}


@pytest.fixture
def emulated(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An emulator, and an authorized config pointing at it with a free ``[server] port``."""
    from halo_microsoft_emulator import EmulatorServer, generate
    from halo_microsoft_emulator.demo import authorize_through_emulator, write_demo_config

    world = generate(seed=3, customers=2, users=4, devices=2)
    with EmulatorServer(world) as server:
        path = write_demo_config(tmp_path / "d", server)
        port = free_port()
        with path.open("a", encoding="utf-8") as file:
            file.write(f'\n[server]\naddress = "127.0.0.1"\nport = {port}\n')
        authorize_through_emulator(load_config(path), server)
        yield path, port


def test_the_daemon_syncs_on_schedule_serves_health_and_stops_on_sigterm(emulated):
    path, port = emulated
    daemon = subprocess.Popen(
        [str(CLI), "--config", str(path), "--log-format", "json", "run", "--every", "2"],
        env=daemon_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        db = path.parent / "halo-integrator.db"

        def finished_runs() -> list[Any]:
            store = Store.open_existing(f"sqlite:///{db}") if db.exists() else None
            if store is None:  # not made yet
                return []
            try:
                with store.read() as connection:
                    return connection.execute(
                        sa.select(schema.sync_runs).where(
                            schema.sync_runs.c.module == "microsoft_csp",
                            schema.sync_runs.c.finished_at.is_not(None),
                        )
                    ).all()
            except sa.exc.OperationalError:  # being migrated
                return []
            finally:
                store.close()

        two = wait_until(lambda: len(finished_runs()) >= 2 and finished_runs(), timeout=30)
        assert all(run.outcome == "succeeded" for run in two), [r.error for r in two]

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
            health = json.loads(answer.read())
        assert "microsoft_csp" in json.dumps(health)

        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=15)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, stderr[-3000:]
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    [started] = [e for e in events if e["event"] == "daemon.started"]
    assert started["health"] == f"http://127.0.0.1:{port}/healthz"
    assert "sync:microsoft_csp" in started["jobs"]
    assert "daemon.stopping" in names and names[-1] == "daemon.stopped"
    assert len(finished_runs()) >= 2


def test_a_port_in_use_is_a_clear_error(emulated):
    path, port = emulated
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        answer = subprocess.run(
            [str(CLI), "--config", str(path), "run"],
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert answer.returncode == 2, answer.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in answer.stderr
    assert "[server] address and port" in answer.stderr and str(path) in answer.stderr
