"""``[modules.microsoft_csp]``: connections to CSP partner tenants (guide sections 1–5)."""

from __future__ import annotations

import attrs

from halo_integrator_core import Guid, SecretRef
from halo_integrator_core.config import LicenceImportType, RelationshipMode


@attrs.frozen(kw_only=True)
class AppRegistration:
    """An Entra app registration: its client ID and where its secret is kept."""

    client_id: Guid
    client_secret: SecretRef


@attrs.frozen(kw_only=True)
class Connection:
    """``[[modules.microsoft_csp.connections]]``: one CSP partner tenant."""

    name: str
    tenant_id: Guid
    #: The single-tenant app that signs in to Partner Center (guide 2).
    partner_center_app: AppRegistration
    #: The multi-tenant app consented in each customer tenant (guide 3).
    gdap_app: AppRegistration
    relationship_mode: RelationshipMode = RelationshipMode.GDAP_AND_DAP
    licence_import_type: LicenceImportType = LicenceImportType.SKUS


@attrs.frozen(kw_only=True)
class MicrosoftCspSettings:
    connections: tuple[Connection, ...] = ()


__all__ = [
    "AppRegistration",
    "Connection",
    "LicenceImportType",
    "MicrosoftCspSettings",
    "RelationshipMode",
]
