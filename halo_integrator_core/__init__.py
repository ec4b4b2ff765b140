"""halo-integrator: an open, pluggable integrator host for managed service providers.

Plugins import only what this package exports: the ``hookimpl`` marker, the record types
that cross the hook boundary, the `ModuleContext` they are handed, and the value types their
settings use (`Guid`, `HttpsUrl`, `SecretRef`).
"""

import pluggy

from .config import Guid, HttpsUrl, SecretRef
from .context import ModuleContext
from .hookspecs import PROJECT_NAME
from .models import (
    LATEST_BOOKMARK,
    AssetQuery,
    Checkpoint,
    DirectoryUser,
    EntityKind,
    Licence,
    ManagedDevice,
    ModuleSpec,
    Notice,
    Price,
    RecordError,
    Removed,
    SkipTenant,
    Subscription,
    Tenant,
    TenantAccess,
    UsageLine,
    UserQuery,
    WebhookEvent,
    WebhookOutcome,
    WebRoute,
)

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "LATEST_BOOKMARK",
    "AssetQuery",
    "Checkpoint",
    "DirectoryUser",
    "EntityKind",
    "Guid",
    "HttpsUrl",
    "Licence",
    "ManagedDevice",
    "ModuleContext",
    "ModuleSpec",
    "Notice",
    "Price",
    "RecordError",
    "Removed",
    "SecretRef",
    "SkipTenant",
    "Subscription",
    "Tenant",
    "TenantAccess",
    "UsageLine",
    "UserQuery",
    "WebRoute",
    "WebhookEvent",
    "WebhookOutcome",
    "hookimpl",
]
