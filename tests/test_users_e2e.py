"""Users end to end: every kind of directory change, made in the emulator, reaches the store
through a full sync and through a delta sync, and an expired delta link recovers by itself."""

from __future__ import annotations

from typing import Any

import pytest
from test_csp_sync import csp_config, exported, secrets, sync  # noqa: F401 (a fixture)

from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import schema, utcnow
from halo_integrator_core.sync.bookmarks import get_bookmark
from halo_integrator_core.sync.engine import SyncEngine


def users(store) -> dict[str, dict[str, Any]]:
    return {u["external_id"]: u for u in exported(store, "users")}


@pytest.fixture(params=["full", "delta"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def config(emulator, write_config, mode):
    extra = 'track = "beta"\n[users]\nuse_deltas = true\n' if mode == "delta" else "[users]\n"
    return csp_config(
        emulator, write_config, extra=extra + "set_active_from_account_enabled = true\n"
    )


def test_each_directory_change_reaches_the_store(emulator, store, config, mode, secrets):  # noqa: F811
    world = emulator.world
    customer = next(
        c for c in world.customers.values() if c.gdap_status == "active" and c.consented
    )
    tenant = customer.tenant_id
    sync(store, config)
    members = [u for u in world.live_users(customer) if u.userType == "Member"]
    modified, disabled, soft, hard = members[:4]
    before = users(store)
    assert {u.id for u in members} <= set(before)

    new = world.add_user(tenant, displayName="New Starter", accountEnabled=True)
    world.modify_user(tenant, modified.id, jobTitle="Chief Listener")
    world.disable_user(tenant, disabled.id)
    world.soft_delete_user(tenant, soft.id)
    world.hard_delete_user(tenant, hard.id)
    result = sync(store, config)
    assert result.outcome == "succeeded", result.problems
    counts = result.counts["users"]
    assert (counts.added, counts.deactivated) == (1, 2)
    assert counts.updated == 2  # the job title; the disabled account
    after = users(store)
    assert after[new.id]["active"] and after[new.id]["display_name"] == "New Starter"
    assert after[modified.id]["job_title"] == "Chief Listener"
    assert after[disabled.id]["active"] is False and after[disabled.id]["account_enabled"] is False
    assert after[soft.id]["active"] is False and after[hard.id]["active"] is False
    delta_calls = [p for _, p, _ in emulator.app.requests if "deltatoken" in p.lower()]
    assert bool(delta_calls) == (mode == "delta")

    # Restored from the recycle bin; recreated with the UPN of the hard-deleted user.
    world.restore_user(tenant, soft.id)
    again = world.add_user(
        tenant, userPrincipalName=hard.userPrincipalName, displayName="Back", accountEnabled=True
    )
    result = sync(store, config)
    after = users(store)
    assert after[soft.id]["active"] is True
    assert after[again.id]["id"] == before[hard.id]["id"]  # the same PSA user, relinked
    assert after[again.id]["active"] is True and after[again.id]["display_name"] == "Back"
    assert hard.id not in after
    assert result.counts["users"].added == 0


def test_an_expired_delta_link_starts_a_full_listing_by_itself(
    emulator,
    store,
    write_config,
    secrets,  # noqa: F811
):
    config = csp_config(
        emulator, write_config, extra='track = "beta"\n[users]\nuse_deltas = true\n'
    )
    world = emulator.world
    customer = next(
        c for c in world.customers.values() if c.gdap_status == "active" and c.consented
    )
    sync(store, config)
    gone = next(u for u in world.live_users(customer) if u.userType == "Member")
    world.expire_delta_tokens(customer.tenant_id)
    world.hard_delete_user(customer.tenant_id, gone.id)
    result = sync(store, config)
    assert result.outcome == "succeeded", result.problems
    assert users(store)[gone.id]["active"] is False  # seen by absence from the full listing
    key = f"main/{customer.tenant_id}"
    with store.read() as connection:
        assert get_bookmark(connection, "microsoft_csp", "users", key)
        assert get_bookmark(connection, "microsoft_csp", "users.full", key)


def test_the_user_rules_against_the_emulator(emulator, store, write_config, secrets):  # noqa: F811
    """Site mappings by group (nested), property filter and field; email matching; service
    accounts with a licence exception; and a dry run that writes nothing."""
    world = emulator.world
    customer = next(
        c for c in world.customers.values() if c.gdap_status == "active" and c.consented
    )
    tenant = customer.tenant_id
    members = [u for u in world.live_users(customer) if u.userType == "Member"]
    london, leeds, svc, licensed_svc = members[:4]
    inner = world.add_group(tenant, "Loc-London-Floor2", members=[london.id])
    world.add_group(tenant, "Loc-London", members=[inner.id])  # london is in it transitively
    world.modify_user(tenant, leeds.id, officeLocation="Leeds", department="Ops")
    world.modify_user(tenant, svc.id, userPrincipalName=f"svc-backup@{customer.domain}",
                      assignedLicenses=[])  # fmt: skip
    world.modify_user(tenant, licensed_svc.id, userPrincipalName=f"svc-exec@{customer.domain}")
    sku = next(iter(licensed_svc.assignedLicenses))["skuId"]
    sync(store, csp_config(emulator, write_config, mode="gdap_only"))  # customers exist now
    # A newcomer the PSA knew before the directory did (created by hand, say).
    shared = world.add_user(
        tenant, displayName="Newcomer", mail=f"newcomer@{customer.domain}", accountEnabled=True
    )
    with store.unit() as connection:
        customer_id = (
            connection.execute(
                schema.customers.select().where(schema.customers.c.name == customer.name)
            )
            .one()
            .id
        )
        now = utcnow()
        existing = connection.execute(
            schema.users.insert().values(
                customer_id=customer_id, email=shared.mail.upper(), active=True, created_at=now,
                updated_at=now, attributes={}, custom_fields={}, is_service_account=False,
            )
        ).inserted_primary_key[0]  # fmt: skip
    rules = f"""
[[site_mappings]]
customer = "{customer.name}"
site = "London"
create_site = true
group = "Loc-London"
sequence = 10

[[site_mappings]]
customer = "{customer.name}"
type = "field"
site_field = "officeLocation"
sequence = 20
filters = [{{ field = "department", operator = "equals", value = "ops" }}]

[[site_mappings]]
customer = "{customer.name}"
sequence = 90

[users]
matching = "email"
[users.service_accounts]
upn_patterns = ["svc-*"]
licence_exceptions = ["{sku}"]
"""
    config = csp_config(emulator, write_config, mode="gdap_only", extra="\n" + rules)
    before = users(store)
    [dry] = SyncEngine(store, config, PluginHost.load(config)).run(dry_run=True)
    assert dry.counts["users"].added + dry.counts["users"].updated > 0
    assert users(store) == before  # the dry run wrote nothing
    sync(store, config)
    stored = users(store)
    assert stored[london.id]["site"] == "London"
    assert stored[leeds.id]["site"] == "Leeds"
    assert stored[members[5].id]["site"] == "Main"
    assert stored[shared.id]["display_name"] == "Newcomer"
    assert stored[svc.id]["is_service_account"] is True
    assert stored[licensed_svc.id]["is_service_account"] is False  # holds the exception SKU
    assert stored[shared.id]["id"] == existing  # matched by email, ignoring case
