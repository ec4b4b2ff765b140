"""An in-test plugin: a small directory world the tests change between syncs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from halo_integrator_core import (
    LATEST_BOOKMARK,
    Checkpoint,
    DirectoryUser,
    Licence,
    ManagedDevice,
    ModuleSpec,
    RecordError,
    Removed,
    Subscription,
    Tenant,
    TenantAccess,
    hookimpl,
)

MODULE = "fake_directory"
TENANT_A = "aaaaaaaa-0000-4000-8000-000000000001"
TENANT_B = "bbbbbbbb-0000-4000-8000-000000000002"
SKU_E3 = "05e9a617-0261-4cee-bb44-138d3ef5d965"
SKU_BP = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46"


def user(object_id: str, upn: str, **fields: Any) -> DirectoryUser:
    return DirectoryUser(object_id=object_id, user_principal_name=upn, **fields)


@attrs.define(eq=False)  # pluggy keeps plugins in sets: identity, not value
class FakeDirectory:
    """Holds tenants and their entities; each hook yields them like a real plugin would.

    ``fail`` maps (hook, tenant_id) to an exception raised after ``fail_after`` records;
    ``bad`` maps tenant_id to RecordErrors yielded among the users; ``delta`` switches
    users to incremental rounds that yield ``changes`` (records and Removed) since the
    bookmark.
    """

    tenants: dict[str, Tenant] = attrs.field(factory=dict)
    users: dict[str, dict[str, DirectoryUser]] = attrs.field(factory=dict)
    licences: dict[str, dict[str, Licence]] = attrs.field(factory=dict)
    subscriptions: dict[str, dict[str, Subscription]] = attrs.field(factory=dict)
    devices: dict[str, dict[str, ManagedDevice]] = attrs.field(factory=dict)
    fail: dict[tuple[str, str], Exception] = attrs.field(factory=dict)
    fail_after: int = 0
    bad: dict[str, list[RecordError]] = attrs.field(factory=dict)
    delta: bool = False
    changes: dict[str, list[Any]] = attrs.field(factory=dict)
    round: int = 0
    calls: list[tuple[str, str | None, str | None]] = attrs.field(factory=list)
    #: The `UserQuery` each tenant's users were last fetched with.
    queries: dict[str, Any] = attrs.field(factory=dict)
    #: The `AssetQuery` each tenant's devices were last fetched with.
    asset_queries: dict[str, Any] = attrs.field(factory=dict)
    #: Notices yielded among a tenant's users.
    notices: dict[str, list[Any]] = attrs.field(factory=dict)

    @classmethod
    def small(cls) -> FakeDirectory:
        world = cls()
        world.tenants = {
            TENANT_A: Tenant(
                tenant_id=TENANT_A,
                name="Contoso",
                connection="main",
                default_domain="contoso.onmicrosoft.com",
                access=TenantAccess.RESELLER_AND_GDAP,
            ),
            TENANT_B: Tenant(
                tenant_id=TENANT_B,
                name="Fabrikam",
                connection="main",
                default_domain="fabrikam.onmicrosoft.com",
                access=TenantAccess.GDAP_ONLY,
            ),
        }
        world.licences = {
            TENANT_A: {
                SKU_E3: Licence(
                    sku_id=SKU_E3,
                    sku_part_number="SPE_E3",
                    name="Microsoft 365 E3",
                    total_units=10,
                    consumed_units=2,
                ),
            },
            TENANT_B: {
                SKU_BP: Licence(
                    sku_id=SKU_BP,
                    sku_part_number="SPB",
                    name="Microsoft 365 Business Premium",
                    total_units=5,
                    consumed_units=1,
                ),
            },
        }
        world.subscriptions = {
            TENANT_A: {
                "sub-1": Subscription(
                    subscription_id="sub-1",
                    name="Microsoft 365 E3",
                    quantity=10,
                    term_duration="P1Y",
                    billing_cycle="monthly",
                    status="active",
                )
            },
            TENANT_B: {},
        }
        world.users = {
            TENANT_A: {
                "u-1": user(
                    "u-1",
                    "adele@contoso.com",
                    display_name="Adele Vance",
                    mail="adele@contoso.com",
                    account_enabled=True,
                    assigned_sku_ids=(SKU_E3,),
                ),
                "u-2": user(
                    "u-2",
                    "alex@contoso.com",
                    display_name="Alex Wilber",
                    mail="alex@contoso.com",
                    account_enabled=True,
                    assigned_sku_ids=(SKU_E3,),
                ),
                "u-3": user(
                    "u-3", "room@contoso.com", display_name="Room 1", account_enabled=False
                ),
            },
            TENANT_B: {
                "u-9": user(
                    "u-9",
                    "megan@fabrikam.com",
                    display_name="Megan Bowen",
                    mail="megan@fabrikam.com",
                    account_enabled=True,
                    assigned_sku_ids=(SKU_BP,),
                ),
            },
        }
        world.devices = {
            TENANT_A: {
                "d-1": ManagedDevice(
                    device_id="d-1",
                    device_name="ADELE-LAPTOP",
                    serial_number="PF12345",
                    operating_system="Windows",
                    user_principal_name="adele@contoso.com",
                )
            },
            TENANT_B: {},
        }
        return world

    # -- hooks ---------------------------------------------------------------------------

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name=MODULE, title="Fake directory", default_interval_minutes=15)]

    @hookimpl
    def fetch_tenants(self, context: Any) -> Iterator[Any]:
        self.calls.append(("fetch_tenants", None, None))
        yield from self._maybe_fail("fetch_tenants", "", self.tenants.values())

    @hookimpl
    def fetch_licences(self, context: Any, tenant: Tenant, bookmark: str | None) -> Iterator[Any]:
        self.calls.append(("fetch_licences", tenant.tenant_id, bookmark))
        yield from self._maybe_fail(
            "fetch_licences", tenant.tenant_id, self.licences.get(tenant.tenant_id, {}).values()
        )

    @hookimpl
    def fetch_subscriptions(
        self, context: Any, tenant: Tenant, bookmark: str | None
    ) -> Iterator[Any]:
        self.calls.append(("fetch_subscriptions", tenant.tenant_id, bookmark))
        yield from self._maybe_fail(
            "fetch_subscriptions",
            tenant.tenant_id,
            self.subscriptions.get(tenant.tenant_id, {}).values(),
        )

    @hookimpl
    def fetch_users(
        self, context: Any, tenant: Tenant, bookmark: str | None, query: Any
    ) -> Iterator[Any]:
        self.calls.append(("fetch_users", tenant.tenant_id, bookmark))
        tenant_id = tenant.tenant_id
        self.queries[tenant_id] = query
        yield from self.notices.get(tenant_id, [])
        if bookmark == LATEST_BOOKMARK:
            yield Checkpoint(bookmark=f"delta-{self.round}", complete=False)
            return
        if self.delta and bookmark is not None:
            yield from self._maybe_fail("fetch_users", tenant_id, self.changes.get(tenant_id, []))
            yield Checkpoint(bookmark=f"delta-{self.round}", complete=False)
            return
        yield from self._maybe_fail(
            "fetch_users", tenant_id, self.users.get(tenant_id, {}).values()
        )
        yield from self.bad.get(tenant_id, [])
        yield Checkpoint(bookmark=f"delta-{self.round}" if self.delta else None, complete=True)

    @hookimpl
    def fetch_assets(
        self, context: Any, tenant: Tenant, bookmark: str | None, query: Any
    ) -> Iterator[Any]:
        self.calls.append(("fetch_assets", tenant.tenant_id, bookmark))
        self.asset_queries[tenant.tenant_id] = query
        yield from self._maybe_fail(
            "fetch_assets", tenant.tenant_id, self.devices.get(tenant.tenant_id, {}).values()
        )

    def _maybe_fail(self, hook: str, tenant_id: str, records: Any) -> Iterator[Any]:
        error = self.fail.get((hook, tenant_id))
        for index, record in enumerate(list(records)):
            if error is not None and index >= self.fail_after:
                raise error
            yield record
        if error is not None:
            raise error


__all__ = ["MODULE", "SKU_BP", "SKU_E3", "TENANT_A", "TENANT_B", "FakeDirectory", "Removed", "user"]
