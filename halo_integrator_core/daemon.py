"""`halo-integrator run`: the scheduler and the HTTP server in one long-running process.

The process serves the HTTP endpoints (callbacks, webhooks, ``/healthz``, the admin page)
and runs each module's sync on its interval until SIGTERM or SIGINT. Then no new run
starts, a running module finishes the tenant it is on and stops there, and the process waits
for that up to a grace time before it stops the server, closes the store and exits 0. A
second signal ends it at once. Nothing needs saving on the way out: each tenant's work is
committed with its bookmarks as it goes, so the next start resumes from the store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from datetime import timedelta
from typing import Any

import structlog

from .config import Config
from .plugins import PluginHost
from .scheduler import Health, Scheduler
from .store import Store
from .sync.engine import RunResult
from .web import Server, WebApp, make_app, serve

log = structlog.get_logger(__name__)

#: Seconds a stop waits for running syncs by default (``run --grace``).
DEFAULT_GRACE = 60.0
#: The exit status when the grace ran out with a sync still running.
EXIT_UNFINISHED = 1


class ListenError(Exception):
    """The HTTP server cannot listen where ``[server]`` says (the port is taken, say)."""


class Daemon:
    """One `halo-integrator run`: build it, then `run` (or `run_once`).

    ``stop`` is the event every sync engine watches; `request_stop` sets it (the signal
    handlers call it) and wakes `wait`, which then shuts everything down in order.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        host: PluginHost,
        *,
        grace: float = DEFAULT_GRACE,
        every: timedelta | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.host = host
        self.grace = grace
        self.stop = threading.Event()
        self.stop_requested = threading.Event()
        self.health = Health()
        self.scheduler = Scheduler(
            store, config, host, stop=self.stop, every=every, health=self.health
        )
        #: The process's one account of Microsoft's budgets: the scheduled runs and the
        #: server (its webhook refreshes, its routes) pace their requests by the same.
        self.pacer = self.scheduler.pacer
        self.app: WebApp | None = None
        self.server: Server | None = None

    # -- starting -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Start the HTTP server on ``[server] address`` and ``port``; `ListenError` if it
        cannot listen there."""
        settings = self.config.server
        self.app = make_app(self.config, self.store, self.host, self.health, pacer=self.pacer)
        try:
            self.server = serve(self.app, settings.address, settings.port).start()
        except OSError as exc:
            self.app.close()
            self.app = None
            source = f" in {self.config.source}" if self.config.source else ""
            raise ListenError(f"{exc} (the [server] table{source})") from None

    def start(self) -> None:
        """The server first, so that a taken port stops the daemon before any sync starts."""
        self.serve()
        try:
            self.scheduler.start()
        except BaseException:
            self._stop_server()
            raise
        log.info(
            "daemon.started",
            url=self.server.url,
            health=f"{self.server.url}/healthz",
            public_url=self.config.server.base_url(),
            jobs=[job.id for job in self.scheduler.jobs],
            syncs_enabled=self.config.integrator.enabled,
        )

    # -- running --------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, wait for a stop request, stop; the exit status."""
        self.start()
        return self.wait()

    def run_once(self) -> list[RunResult]:
        """Every job once, then return: for cron. No server is started."""
        return self.scheduler.run_once()

    def wait(self) -> int:
        # A timed wait, so that signal handlers run promptly in this (the main) thread.
        while not self.stop_requested.wait(1.0):
            pass
        return self.shutdown()

    # -- stopping -------------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Let running syncs end after their current tenant, and start no new run."""
        self.stop.set()
        self.stop_requested.set()
        log.info(
            "daemon.stopping",
            reason=reason,
            running=self.scheduler.running(),
            grace_seconds=self.grace,
        )

    def shutdown(self) -> int:
        """Stop scheduling, wait up to the grace time for running syncs, stop the server and
        close the store. 0 when every run finished; `EXIT_UNFINISHED` when one did not (the
        store is then left to the exit, and the next start resumes from its bookmarks)."""
        self.stop.set()
        self.scheduler.shutdown()
        finished = self.scheduler.wait_idle(self.grace)
        if not finished:
            log.warning(
                "daemon.grace_expired",
                running=self.scheduler.running(),
                grace_seconds=self.grace,
                note="the next start resumes from the last committed tenant",
            )
        self._stop_server()
        if finished:
            self.store.close()
        log.info("daemon.stopped", clean=finished)
        return 0 if finished else EXIT_UNFINISHED

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.app is not None:
            self.app.close()
            self.app = None


def install_signal_handlers(daemon: Daemon) -> dict[int, Any]:
    """SIGTERM and SIGINT ask ``daemon`` to stop; a second one ends the process at once.

    Returns the handlers they replace, for `restore_signal_handlers`.
    """

    def handle(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if daemon.stop_requested.is_set():
            log.error("daemon.killed", signal=name, reason="second signal: exiting at once")
            _exit_now(128 + signum)
        daemon.request_stop(f"{name} received")

    return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _exit_now(status: int) -> None:
    """End the process without waiting for worker threads (a sync still running)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run_daemon(daemon: Daemon) -> int:
    """`halo-integrator run`: serve and schedule until signalled; the exit status.

    When the grace time ran out with a sync still running, the process ends here (its worker
    threads would otherwise hold it open).
    """
    previous = install_signal_handlers(daemon)
    try:
        status = daemon.run()
    finally:
        restore_signal_handlers(previous)
    if status == EXIT_UNFINISHED:
        _exit_now(status)
    return status


def run_once(daemon: Daemon) -> list[RunResult]:
    """`halo-integrator run --once`: every job once, stoppable by SIGTERM as `run` is."""
    previous = install_signal_handlers(daemon)
    try:
        return daemon.run_once()
    finally:
        restore_signal_handlers(previous)
        daemon.store.close()
