"""What the core hands a plugin when it calls one of its hooks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .config import Config, EndpointSettings, IntegratorSettings
    from .http import HttpClient
    from .plugins import ActiveModule


@attrs.frozen(kw_only=True)
class ModuleContext:
    """One module's view of the host during a run.

    ``settings`` is the module's own settings object (its `ModuleSpec.settings_type`, or
    ``None`` if it has none); ``integrator`` holds the settings every module shares (guide
    section 8); ``log`` is a structlog logger already bound to the module (and, inside a
    tenant, to the tenant), so a plugin just logs; ``endpoints`` says where Microsoft is and
    ``http`` is the client to reach it with.
    """

    module: str
    settings: Any
    integrator: IntegratorSettings
    log: Any
    dry_run: bool = False
    #: Where Microsoft is (``[endpoints]``); ``None`` only in tests that need no network.
    endpoints: EndpointSettings | None = None
    #: The shared HTTP client: retries, throttling, the outbound request log.
    http: HttpClient | None = None
    #: The folder of the config file, where a module keeps state of its own (token caches).
    state_dir: Path | None = None
    #: Where the integrator's HTTP server is reached (``[server]``), for redirect URIs.
    public_url: str | None = None
    #: The whole configuration, read-only: for a module that works through another
    #: module's settings (subscription pricing downloads with a Microsoft CSP connection).
    config: Config | None = attrs.field(default=None, repr=False)


def module_context(
    config: Config, module: ActiveModule, *, dry_run: bool = False, http: HttpClient | None = None
) -> ModuleContext:
    """The context the core hands ``module``'s hooks."""
    import structlog

    return ModuleContext(
        module=module.name,
        settings=module.settings,
        integrator=config.integrator,
        log=structlog.get_logger(f"halo_integrator.{module.name}"),
        dry_run=dry_run,
        endpoints=config.endpoints,
        http=http,
        state_dir=config.directory,
        public_url=config.server.base_url(),
        config=config,
    )
