"""What the core hands a plugin when it calls one of its hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .config import IntegratorSettings


@attrs.frozen(kw_only=True)
class ModuleContext:
    """One module's view of the host during a run.

    ``settings`` is the module's own settings object (its `ModuleSpec.settings_type`, or
    ``None`` if it has none); ``integrator`` holds the settings every module shares (guide
    section 8); ``log`` is a structlog logger already bound to the module (and, inside a
    tenant, to the tenant), so a plugin just logs.
    """

    module: str
    settings: Any
    integrator: IntegratorSettings
    log: Any
    dry_run: bool = False
