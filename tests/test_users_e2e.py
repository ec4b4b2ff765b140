"""Users end to end: every kind of directory change, made in the emulator, reaches the store
through a full sync and through a delta sync, and an expired delta link recovers by itself."""

from __future__ import annotations

from typing import Any

import pytest
from test_csp_sync import csp_config, exported, secrets, sync  # noqa: F401 (a fixture)

from halo_integrator_core.sync.bookmarks import get_bookmark


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
