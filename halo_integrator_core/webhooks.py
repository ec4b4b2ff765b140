"""Inbound webhooks: hand each to the module it is addressed to, log it, process it once.

The HTTP server calls `handle_webhook` for ``POST /webhooks/<module>``. Whatever the plugin
makes of the request, or if it fails, the request and its outcome are written to the
inbound request log, and the sender gets a status it can act on. An accepted event that
carries an event ID is remembered (``webhook_events``) in the same transaction as its log
entry, so a repeated delivery is answered 200 and changes nothing; an accepted event that
asks for a refresh has it run by a `WebhookRefresher`, off the request thread, so the
sender is answered at once. Rejected requests change nothing but the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any

import attrs
import sqlalchemy as sa
import structlog

from .config import Config
from .context import module_context
from .http import HttpClient
from .logging import redact_text
from .models import WebhookEvent, WebhookOutcome
from .pacing import Pacer
from .plugins import ActiveModule, PluginHost
from .store import Store, schema
from .store.request_log import StoreRequestLog, logged_module

log = structlog.get_logger(__name__)


def handle_webhook(
    store: Store,
    config: Config,
    host: PluginHost,
    event: WebhookEvent,
    *,
    path: str,
    modules: Mapping[str, ActiveModule] | None = None,
    http: HttpClient | None = None,
    refresher: WebhookRefresher | None = None,
) -> WebhookOutcome:
    """Run the addressed module's `on_webhook`, log the request as inbound, and act on it.

    ``modules`` are the enabled modules the caller holds (the daemon's), so they are not
    rebuilt per request; ``http`` is the client plugins fetch with (signing certificates)
    and refreshes sync with; ``refresher`` runs the refreshes (by default one per process).
    """
    started = time.monotonic()
    if modules is None:
        modules = host.active_modules()
    active = modules.get(event.module)
    if active is None:
        outcome = WebhookOutcome(status=404, message=f"no enabled module {event.module!r}")
    elif not host.implements(event.module, "on_webhook"):
        outcome = WebhookOutcome(
            status=404, message=f"module {event.module!r} does not accept webhooks"
        )
    else:
        http = http or _client(store, config)
        outcome = _call(host, active, config, event, http)
    accepted = 200 <= outcome.status < 300
    refresh = _refresh_plan(config, outcome) if accepted else None
    with store.unit() as connection:
        if accepted and outcome.event_id and not _first_delivery(connection, event, outcome):
            outcome = attrs.evolve(
                outcome,
                status=200,
                message=f"already processed (event {outcome.event_id}): nothing done again",
                refresh=(),
            )
            refresh = None
        detail = outcome.message
        if isinstance(refresh, str):
            detail += f"; not refreshed: {refresh}"
        elif refresh:
            detail += f"; refresh queued: {', '.join(refresh)} of tenant {outcome.tenant_id}"
        connection.execute(
            sa.insert(schema.request_log).values(
                direction="inbound",
                at=event.received_at,
                module=logged_module(event.module),
                tenant_id=outcome.tenant_id,
                method="POST",
                url=redact_text(path),
                status=outcome.status,
                duration_ms=round((time.monotonic() - started) * 1000),
                retries=0,
                outcome=_outcome_word(outcome),
                detail=redact_text(detail)[:1000],
            )
        )
    if refresh and not isinstance(refresh, str) and outcome.tenant_id:
        (refresher or default_refresher()).submit(
            store,
            config,
            host,
            module=event.module,
            tenant_id=outcome.tenant_id,
            kinds=refresh,
            http=http or _client(store, config),
        )
    log.info(
        "webhook.handled",
        module=event.module,
        status=outcome.status,
        event_name=outcome.event_name,
        tenant=outcome.tenant_id,
        detail=detail,
    )
    return outcome


def _call(
    host: PluginHost,
    active: ActiveModule,
    config: Config,
    event: WebhookEvent,
    http: HttpClient,
) -> WebhookOutcome:
    context = module_context(config, active, http=http)
    try:
        with structlog.contextvars.bound_contextvars(module=active.name):
            results = host.hook_for(active.name).on_webhook(context=context, event=event)
    except Exception as exc:
        log.exception("webhook.failed", module=active.name)
        return WebhookOutcome(status=500, message=f"the module failed: {type(exc).__name__}: {exc}")
    outcome = next((r for r in results if r is not None), None)
    if not isinstance(outcome, WebhookOutcome):
        return WebhookOutcome(
            status=500,
            message=f"the module answered {type(outcome).__name__}, not a WebhookOutcome",
        )
    return outcome


def _outcome_word(outcome: WebhookOutcome) -> str | None:
    """The request log's ``outcome``: the event's name, or what became of a nameless request."""
    if outcome.event_name:
        return outcome.event_name[:40]
    if outcome.status >= 500:
        return "failed"
    if outcome.status >= 400:
        return "rejected"
    return None


def _first_delivery(
    connection: sa.Connection, event: WebhookEvent, outcome: WebhookOutcome
) -> bool:
    """Remember the event ID; ``False`` if it was already there (a repeated delivery)."""
    try:
        with connection.begin_nested():
            connection.execute(
                sa.insert(schema.webhook_events).values(
                    module=event.module,
                    event_id=outcome.event_id,
                    received_at=event.received_at,
                )
            )
    except sa.exc.IntegrityError:
        return False
    return True


def _refresh_plan(config: Config, outcome: WebhookOutcome) -> list[str] | str | None:
    """The entity kinds to sync for ``outcome``, or why none are (a message), or ``None``."""
    if not outcome.refresh:
        return None
    if not outcome.tenant_id:
        return "the event names no tenant (the scheduled sync will see the change)"
    if not config.integrator.enabled:
        return "the integrator is disabled ([integrator] enabled = false)"
    imported = {kind.value for kind in config.integrator.import_kinds}
    kinds = [kind.value for kind in outcome.refresh if kind.value in imported]
    if not kinds:
        return "[integrator] import_kinds leaves out " + ", ".join(k.value for k in outcome.refresh)
    return kinds


# -- the client --------------------------------------------------------------------------------

_clients_lock = threading.Lock()


def _client(store: Store, config: Config) -> HttpClient:
    """The client of ``store``'s webhooks when the caller gives none (the daemon gives its
    own): made once per store, since its request log registers itself with the store, and
    kept on the store so that it goes when the store goes (a table keyed by the store would
    keep it alive through the log's reference to it)."""
    with _clients_lock:
        client: HttpClient | None = getattr(store, "_webhook_http", None)
        if client is None or client.verify != config.endpoints.verify:
            client = HttpClient(
                verify=config.endpoints.verify,
                request_log=StoreRequestLog(store),
                pacer=Pacer.from_config(config),  # refreshes sync through it
            )
            store._webhook_http = client  # type: ignore[attr-defined]
        return client


# -- refreshes ---------------------------------------------------------------------------------


class WebhookRefresher:
    """Runs the syncs accepted webhooks ask for, one at a time, off the request thread.

    Partner Center's pages name no deadline for an answer but retry a delivery that fails;
    a sync of one tenant's subscriptions takes a token and a few calls, so the request is
    answered first and the sync follows. A refresh already waiting for the same (module,
    tenant, kinds) is not queued twice. The daemon owns one and `close`s it on shutdown
    (setting `stop`, so a running refresh ends at its next checkpoint); `wait` lets a test
    or a caller see the queue empty.
    """

    def __init__(self, *, workers: int = 1) -> None:
        self.stop = threading.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="webhook-refresh"
        )
        self._lock = threading.Lock()
        self._waiting: set[tuple[str, str, tuple[str, ...]]] = set()
        self._futures: set[Future[None]] = set()
        #: Called with each refresh's results (or its exception) when it ends: for tests.
        self.on_done: Callable[[Any], None] | None = None

    def submit(
        self,
        store: Store,
        config: Config,
        host: PluginHost,
        *,
        module: str,
        tenant_id: str,
        kinds: list[str],
        http: HttpClient | None = None,
    ) -> bool:
        """Queue a sync of ``kinds`` of ``tenant_id``; ``False`` if one is already waiting."""
        key = (module, tenant_id, tuple(sorted(kinds)))
        with self._lock:
            if key in self._waiting or self.stop.is_set():
                return False
            self._waiting.add(key)
            future = self._executor.submit(self._run, key, store, config, host, http)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return True

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(
        self,
        key: tuple[str, str, tuple[str, ...]],
        store: Store,
        config: Config,
        host: PluginHost,
        http: HttpClient | None,
    ) -> None:
        from .sync.engine import SyncEngine

        module, tenant_id, kinds = key
        with self._lock:
            # From here on a new event for this tenant queues another refresh: this one may
            # already have read Microsoft before that change.
            self._waiting.discard(key)
        result: Any
        with structlog.contextvars.bound_contextvars(webhook_refresh=True):
            try:
                engine = SyncEngine(store, config, host, http=http, stop=self.stop)
                result = engine.run(module=module, only=list(kinds), tenant=tenant_id)
                for run in result:
                    log.info(
                        "webhook.refreshed",
                        module=module,
                        tenant=tenant_id,
                        kinds=list(kinds),
                        outcome=run.outcome,
                        run_id=run.run_id,
                    )
            except Exception as exc:
                # The scheduled sync stays the source of truth: it will catch up.
                log.exception("webhook.refresh_failed", module=module, tenant=tenant_id)
                result = exc
        if self.on_done is not None:
            self.on_done(result)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no refresh is queued or running; ``False`` if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._futures)
            if not pending:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = wait_for(pending, timeout=left)
            if not_done and deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking refreshes, ask a running one to stop at its checkpoint, and wait."""
        self.stop.set()
        done = self.wait(timeout)
        self._executor.shutdown(wait=done, cancel_futures=True)
        return done


_default: WebhookRefresher | None = None
_default_lock = threading.Lock()


def default_refresher() -> WebhookRefresher:
    """The process's refresher, for callers that bring none."""
    global _default
    with _default_lock:
        if _default is None or _default.stop.is_set():
            _default = WebhookRefresher()
        return _default


__all__ = ["WebhookRefresher", "default_refresher", "handle_webhook"]
