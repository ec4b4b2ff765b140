"""Inbound webhooks: hand each to the module it is addressed to, and log it.

The HTTP server calls `handle_webhook` for ``POST /webhooks/<module>``. Whatever the plugin
makes of the request, or if it fails, the request and its outcome are written to the
inbound request log, and the sender gets a status it can act on.
"""

from __future__ import annotations

import time

import structlog

from .config import Config
from .context import module_context
from .models import WebhookEvent, WebhookOutcome
from .plugins import ActiveModule, PluginHost
from .store import Store
from .store.request_log import record_inbound

log = structlog.get_logger(__name__)


def handle_webhook(
    store: Store, config: Config, host: PluginHost, event: WebhookEvent, *, path: str
) -> WebhookOutcome:
    """Run the addressed module's `on_webhook` and log the request as inbound."""
    started = time.monotonic()
    modules = host.active_modules()
    active = modules.get(event.module)
    if active is None:
        outcome = WebhookOutcome(status=404, message=f"no enabled module {event.module!r}")
    elif not host.implements(event.module, "on_webhook"):
        outcome = WebhookOutcome(
            status=404, message=f"module {event.module!r} does not accept webhooks"
        )
    else:
        outcome = _call(host, active, config, event)
    record_inbound(
        store,
        module=event.module,
        method="POST",
        url=path,
        status=outcome.status,
        outcome=outcome.event_name,
        detail=outcome.message,
        tenant_id=outcome.tenant_id,
        duration_ms=round((time.monotonic() - started) * 1000),
        at=event.received_at,
    )
    log.info(
        "webhook.handled",
        module=event.module,
        status=outcome.status,
        event_name=outcome.event_name,
        tenant=outcome.tenant_id,
        detail=outcome.message,
    )
    return outcome


def _call(
    host: PluginHost, active: ActiveModule, config: Config, event: WebhookEvent
) -> WebhookOutcome:
    context = module_context(config, active)
    try:
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


__all__ = ["handle_webhook"]
