"""The Microsoft CSP module's tenants, licences and subscriptions, synced from the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from halo_integrator_core.config import load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.sync.engine import SyncEngine


def csp_config(
    emulator,
    write_config,
    *,
    mode: str = "gdap_and_dap",
    licences: str = "subscriptions_and_skus",
    extra: str = "",
) -> Any:
    partner = next(iter(emulator.world.partners.values()))
    endpoints = "\n".join(f'{key} = "{value}"' for key, value in emulator.endpoints().items())
    return load_config(
        write_config(
            f"""
[endpoints]
{endpoints}

[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true
{extra}
[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{partner.tenant_id}"
relationship_mode = "{mode}"
licence_import_type = "{licences}"
partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{partner.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
"""
        )
    )


@pytest.fixture
def secrets(emulator, monkeypatch):
    partner = next(iter(emulator.world.partners.values()))
    monkeypatch.setenv("TEST_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("TEST_GDAP_SECRET", partner.gdap_app.secret)


def sync(store, config):
    host = PluginHost.load(config)
    [result] = SyncEngine(store, config, host).run()
    return result


def exported(store, what: str) -> list[dict[str, Any]]:
    with store.read() as connection:
        return list(export_rows(connection, what))


def expected_access(customer) -> str:
    if customer.gdap_status == "active":
        if not customer.consented:
            return "consent_missing"
        return "reseller_and_gdap" if customer.reseller else "gdap_only"
    if customer.gdap_status:
        return "gdap_expired"
    return "reseller_only"


def test_gdap_and_dap_mode_unites_both_sources_with_each_access_state(
    emulator, store, write_config, secrets
):
    result = sync(store, csp_config(emulator, write_config))
    tenants = {t["tenant_id"]: t for t in exported(store, "tenants")}
    world = emulator.world.customers
    assert set(tenants) == set(world)  # reseller customers ∪ GDAP relationships
    for tenant_id, customer in world.items():
        assert tenants[tenant_id]["access"] == expected_access(customer), customer.name
        assert tenants[tenant_id]["connection"] == "main"
        assert tenants[tenant_id]["name"] == customer.name
    states = {t["access"] for t in tenants.values()}
    assert {
        "reseller_and_gdap",
        "gdap_only",
        "reseller_only",
        "gdap_expired",
        "consent_missing",
    } <= states
    consent = next(t for t in tenants.values() if t["access"] == "consent_missing")
    assert (
        "/v2.0/adminconsent?client_id=" in consent["access_detail"]
        and "AADSTS7000229" in consent["access_detail"]
    )
    # Consent missing is the user's to fix: skipped, with the reason, and nothing failed.
    assert result.outcome == "succeeded", result.problems
    skipped = {(p.kind, p.tenant_id) for p in result.problems if p.outcome == "skipped"}
    assert ("licences", consent["tenant_id"]) in skipped


def test_gdap_only_mode_needs_no_reseller_relationship(emulator, store, write_config, secrets):
    sync(store, csp_config(emulator, write_config, mode="gdap_only"))
    tenants = {t["tenant_id"] for t in exported(store, "tenants")}
    assert tenants == {t for t, c in emulator.world.customers.items() if c.gdap_status}
    assert not any(
        req[1].startswith("/partnercenter/v1/customers?") for req in emulator.app.requests
    )


def test_missing_gdap_roles_are_reported_per_tenant(emulator, store, write_config, secrets):
    customer = next(c for c in emulator.world.customers.values() if c.consented)
    customer.gdap_roles = ["62e90394-69f5-4237-9190-012177145e10"]  # Global Administrator only
    sync(store, csp_config(emulator, write_config))
    [tenant] = [t for t in exported(store, "tenants") if t["tenant_id"] == customer.tenant_id]
    assert "none of the roles the modules need" in tenant["access_detail"]
    assert "Directory Readers" in tenant["access_detail"]


def test_skus_come_from_the_directory_with_their_units(emulator, store, write_config, secrets):
    sync(store, csp_config(emulator, write_config, licences="skus"))
    licences = exported(store, "licences")
    readable = [
        c for c in emulator.world.customers.values() if c.gdap_status == "active" and c.consented
    ]
    assert {(row["tenant_id"], row["external_id"]) for row in licences} == {
        (c.tenant_id, sku) for c in readable for sku in c.skus
    }
    for licence in licences:
        customer = emulator.world.customers[licence["tenant_id"]]
        sku = customer.skus[licence["external_id"]]
        assert licence["sku_part_number"] == sku.skuPartNumber
        assert licence["name"] == sku.name  # a readable product name, not the part number
        assert licence["total_units"] == sku.enabled
        assert licence["consumed_units"] == customer.consumed(sku.skuId)
    assert exported(store, "subscriptions") == []


def test_subscriptions_come_from_partner_center_with_term_and_cycle(
    emulator, store, write_config, secrets
):
    sync(store, csp_config(emulator, write_config, licences="subscriptions"))
    subscriptions = exported(store, "subscriptions")
    resellers = [c for c in emulator.world.customers.values() if c.reseller]
    assert {s["external_id"] for s in subscriptions} == {
        s for c in resellers for s in c.subscriptions
    }
    for row in subscriptions:
        source = emulator.world.customers[row["tenant_id"]].subscriptions[row["external_id"]]
        assert row["quantity"] == source.quantity
        assert row["term_duration"] == source.termDuration
        assert row["billing_cycle"] == source.billingCycle
        assert row["offer_id"] == source.offerId
        assert row["status"] == "active" and row["auto_renew"] is True
        assert row["started_at"] and row["commitment_end"]
    assert exported(store, "licences") == []


def test_a_quantity_change_and_a_vanished_subscription_follow(
    emulator, store, write_config, secrets
):
    config = csp_config(emulator, write_config)
    sync(store, config)
    customer = next(c for c in emulator.world.customers.values() if c.reseller and c.subscriptions)
    first = next(iter(customer.subscriptions))
    emulator.world.set_quantity(customer.tenant_id, first, 42)
    result = sync(store, config)
    assert result.counts["subscriptions"].updated >= 1
    rows = {s["external_id"]: s for s in exported(store, "subscriptions")}
    assert rows[first]["quantity"] == 42
    with emulator.world.lock:
        del customer.subscriptions[first]
    sync(store, config)
    rows = {s["external_id"]: s for s in exported(store, "subscriptions")}
    assert rows[first]["active"] is False and rows[first]["inactive_since"]


def test_one_failing_connection_keeps_its_tenants_and_is_reported(
    emulator, store, write_config, secrets
):
    config = csp_config(emulator, write_config)
    sync(store, config)
    emulator.app.inject("forbidden", endpoint="partner_center.customers")
    result = sync(store, config)
    assert result.counts["tenants"].failed == 1
    [problem] = [p for p in result.problems if p.kind == "tenants"]
    assert "connection main" in problem.reason and "reseller relationship" in problem.reason
    assert all(t["active"] for t in exported(store, "tenants"))


def test_a_customer_partner_center_garbles_is_left_as_stored_and_no_tenant_is_deactivated(
    emulator, store, write_config, secrets
):
    """One customer record Partner Center sends unreadable (no company name) is reported;
    its tenant is not taken for one without a reseller relationship (which would drop its
    subscriptions), nor, the listing not being whole, is any tenant taken for gone."""
    config = csp_config(emulator, write_config)
    sync(store, config)
    before = {t["tenant_id"]: t for t in exported(store, "tenants")}
    garbled = next(
        c
        for c in emulator.world.customers.values()
        if c.reseller and c.gdap_status == "active" and c.consented
    )
    garbled.name = None
    result = sync(store, config)
    after = {t["tenant_id"]: t for t in exported(store, "tenants")}
    assert after[garbled.tenant_id]["access"] == "reseller_and_gdap"
    assert after[garbled.tenant_id]["name"] == before[garbled.tenant_id]["name"]
    assert all(t["active"] for t in after.values())
    [problem] = [p for p in result.problems if p.kind == "tenants"]
    assert "companyName" in problem.reason or "company_name" in problem.reason
    assert result.counts["tenants"].deactivated == 0
    subscriptions = [s for s in exported(store, "subscriptions") if s["active"]]
    assert any(s["tenant_id"] == garbled.tenant_id for s in subscriptions)


def test_a_mapping_overrides_the_licence_import_type_and_relationship_type(
    emulator, store, write_config, secrets
):
    resellers = [
        c
        for c in emulator.world.customers.values()
        if c.reseller and c.consented and c.gdap_status == "active"
    ]
    skus_only, gdap_only = resellers[0], resellers[1] if len(resellers) > 1 else None
    extra = f'\n[[tenant_mappings]]\ntenant_id = "{skus_only.tenant_id}"\ncustomer = "SKUs Only Ltd"\nlicence_import_type = "skus"\n'
    if gdap_only is not None:
        extra += f'\n[[tenant_mappings]]\ntenant_id = "{gdap_only.tenant_id}"\ncustomer = "GDAP Only Ltd"\nrelationship_type = "gdap_only"\n'
    result = sync(store, csp_config(emulator, write_config, extra=extra))
    subscriptions = {s["tenant_id"] for s in exported(store, "subscriptions")}
    licences = {l_["tenant_id"] for l_ in exported(store, "licences")}
    assert skus_only.tenant_id not in subscriptions and skus_only.tenant_id in licences
    others = {c.tenant_id for c in emulator.world.customers.values() if c.reseller} - {
        skus_only.tenant_id
    }
    if gdap_only is not None:
        assert gdap_only.tenant_id not in subscriptions
        assert any(
            "imported as GDAP only" in p.reason
            for p in result.problems
            if p.tenant_id == gdap_only.tenant_id
        )
        others -= {gdap_only.tenant_id}
    assert others <= subscriptions
    customers = {t["tenant_id"]: t["customer"] for t in exported(store, "tenants")}
    assert customers[skus_only.tenant_id] == "SKUs Only Ltd"


def test_users_arrive_by_delta_rounds_and_licences_know_their_users(
    emulator, store, write_config, secrets
):
    world = emulator.world
    readable = [c for c in world.customers.values() if c.gdap_status == "active" and c.consented]
    config = csp_config(
        emulator,
        write_config,
        extra='track = "beta"\n[users]\nuse_deltas = true\n',
    )
    sync(store, config)
    users = {u["external_id"]: u for u in exported(store, "users")}
    assert set(users) == {
        u.id for c in readable for u in world.live_users(c) if u.userType == "Member"
    }
    for licence in exported(store, "licences"):
        customer = world.customers[licence["tenant_id"]]
        assert licence["assigned_users"] == customer.consumed(licence["external_id"])

    customer = readable[0]
    alive = [u for u in world.live_users(customer) if u.userType == "Member"]
    added = world.add_user(customer.tenant_id, displayName="New Starter")
    world.modify_user(customer.tenant_id, alive[0].id, jobTitle="Chief Listener")
    world.soft_delete_user(customer.tenant_id, alive[1].id)
    world.hard_delete_user(customer.tenant_id, alive[2].id)
    result = sync(store, config)
    counts = result.counts["users"]
    assert (counts.added, counts.updated, counts.deactivated) == (1, 1, 2)
    users = {u["external_id"]: u for u in exported(store, "users")}
    assert users[added.id]["active"] and users[alive[0].id]["job_title"] == "Chief Listener"
    assert not users[alive[1].id]["active"] and not users[alive[2].id]["active"]
    delta_rounds = [
        p for _, p, _ in emulator.app.requests if "/users/delta" in p and "deltatoken" in p.lower()
    ]
    assert delta_rounds, "the second sync should follow the stored delta link"

    # A delta link Graph no longer knows starts a full round again; nothing is lost.
    world.expire_delta_tokens(customer.tenant_id)
    world.restore_user(customer.tenant_id, alive[1].id)
    result = sync(store, config)
    users = {u["external_id"]: u for u in exported(store, "users")}
    assert users[alive[1].id]["active"] and not users[alive[2].id]["active"]
    assert result.outcome == "succeeded"


def test_a_tenant_without_consent_is_asked_for_a_token_once_a_run(
    emulator, store, write_config, secrets
):
    # Once a run, not once a kind: the consent check's refusal stands for the run's
    # licences, users and devices; the next run asks again, and a consent given meanwhile
    # is used at once.
    world = emulator.world
    [customer] = [
        c for c in world.customers.values() if c.gdap_status == "active" and not c.consented
    ]
    token_path = f"/{customer.tenant_id}/oauth2/v2.0/token"

    def token_requests() -> int:
        return sum(1 for _, path, _ in emulator.app.requests if path.endswith(token_path))

    config = csp_config(emulator, write_config)
    engine = SyncEngine(store, config, PluginHost.load(config))  # one engine, as the daemon's
    [result] = engine.run()
    assert token_requests() == 1
    skipped = {
        p.kind
        for p in result.problems
        if p.tenant_id == customer.tenant_id and p.reason.startswith("consent needed")
    }
    assert skipped == {"licences", "users", "assets"}

    [result] = engine.run(only=["users"])  # no consent check: the kind asks, once
    assert token_requests() == 2

    customer.consented = True
    [result] = engine.run()
    assert token_requests() == 3
    assert not [p for p in result.problems if p.reason.startswith("consent needed")]
    assert [u for u in exported(store, "users") if u["tenant_id"] == customer.tenant_id]
