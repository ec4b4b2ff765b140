"""halo-integrator: an open, pluggable integrator host for managed service providers.

Plugins import only what this package exports: the ``hookimpl`` marker, the record types
that cross the hook boundary, and the `ModuleContext` they are handed.
"""

import pluggy

from .context import ModuleContext
from .hookspecs import PROJECT_NAME
from .models import (
    Checkpoint,
    DirectoryUser,
    EntityKind,
    Licence,
    ManagedDevice,
    ModuleSpec,
    Price,
    RecordError,
    Removed,
    Subscription,
    Tenant,
    TenantAccess,
    UsageLine,
    WebhookEvent,
    WebhookOutcome,
)

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "Checkpoint",
    "DirectoryUser",
    "EntityKind",
    "Licence",
    "ManagedDevice",
    "ModuleContext",
    "ModuleSpec",
    "Price",
    "RecordError",
    "Removed",
    "Subscription",
    "Tenant",
    "TenantAccess",
    "UsageLine",
    "WebhookEvent",
    "WebhookOutcome",
    "hookimpl",
]
