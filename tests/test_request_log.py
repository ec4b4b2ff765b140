"""The outbound request log of a sync against the emulator: every call, no secret."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from halo_integrator_core import DirectoryUser, ModuleSpec, Tenant, hookimpl
from halo_integrator_core.config import load_config
from halo_integrator_core.paging import odata_pages
from halo_integrator_core.store import schema
from halo_integrator_core.sync.engine import SyncEngine
from halo_microsoft_csp.auth import GRAPH_RESOURCE, AppTokens


class GraphUsers:
    """A small plugin: tenants from the world, users from emulated Graph via context.http."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        partner = next(iter(emulator.world.partners.values()))
        self.app = partner.gdap_app
        self.tokens: AppTokens | None = None

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="graph_users", title="Graph users")]

    @hookimpl
    def fetch_tenants(self, context: Any) -> Any:
        for customer in self.emulator.world.customers.values():
            if customer.consented:
                yield Tenant(
                    tenant_id=customer.tenant_id, name=customer.name, connection="emulator"
                )

    @hookimpl
    def fetch_users(self, context: Any, tenant: Tenant, bookmark: str | None) -> Any:
        if self.tokens is None:
            self.tokens = AppTokens(
                client_id=self.app.client_id,
                secret=lambda: self.app.secret,
                authority=context.endpoints.url("login"),
                http=context.http,
                app_name=self.app.name,
            )
        headers = self.tokens.headers(tenant.tenant_id, GRAPH_RESOURCE)
        url = f"{context.endpoints.url('graph')}/v1.0/users"
        for page in odata_pages(context.http, url, params={"$top": "7"}, headers=headers):
            for user in page.items:
                yield DirectoryUser(
                    object_id=user["id"], user_principal_name=user["userPrincipalName"]
                )


def test_every_call_of_a_sync_is_logged_with_no_secret(emulator, store, write_config, host_factory):
    endpoints = "\n".join(f'{key} = "{value}"' for key, value in emulator.endpoints().items())
    config = load_config(
        write_config(
            f"[endpoints]\n{endpoints}\n\n[integrator]\ncreate_customers_from_tenants = true\ncreate_site_mappings_for_new_tenants = true\n\n"
            "[modules.graph_users]\nenabled = true\n"
        )
    )
    plugin = GraphUsers(emulator)
    engine = SyncEngine(store, config, host_factory(config, (plugin, "graph_users")))
    served_before = len(emulator.app.requests)
    [result] = engine.run()
    assert result.outcome == "succeeded", result.problems
    served = emulator.app.requests[served_before:]

    with store.read() as connection:
        logged = connection.execute(
            sa.select(schema.request_log).order_by(schema.request_log.c.id)
        ).all()
    assert len(logged) == len(served) > 0
    # Tenants are synced side by side: the calls of different tenants interleave.
    assert sorted((row.method, row.status) for row in logged) == sorted(
        (method, status) for method, _, status in served
    )
    consented = {c.tenant_id for c in emulator.world.customers.values() if c.consented}
    assert {row.tenant_id for row in logged} == consented
    assert all(row.direction == "outbound" and row.module == "graph_users" for row in logged)
    assert all(row.connection == "emulator" and row.duration_ms >= 0 for row in logged)
    # Members are imported; guests are not, as no site mapping includes external users.
    live = [u for t in consented for u in emulator.world.live_users(emulator.world.customer(t))]
    members = [u for u in live if u.userType == "Member"]
    assert result.counts["users"].added == len(members)
    assert result.counts["users"].skipped == len(live) - len(members) > 0

    secrets = [plugin.app.secret, "emu.", "Bearer", "client_secret="]
    for row in logged:
        for value in row._mapping.values():
            for secret in secrets:
                assert secret not in str(value), (secret, row)
