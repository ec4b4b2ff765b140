"""`csp licence assign|remove` and `csp subscription set-quantity` against the emulator.

Each test syncs a store from the emulator through the command line, then acts: Microsoft is
called (Graph's assignLicense, Partner Center's PATCH), and the store follows only once
Microsoft has accepted. Refusals (no units left, a missing permission, no usage location, the
new-commerce decrease window, an indirect partner) are explained and change nothing.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conformance import assert_conforms, load_sample

from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.updates import (
    LicenceCounts,
    record_licence_assignment,
    record_subscription_quantity,
)
from halo_microsoft_csp import management
from halo_microsoft_emulator import app as emulator_app


class Setup:
    """A config pointing at the emulator (one connection), run through the command line."""

    def __init__(self, emulator, tmp_path: Path, monkeypatch) -> None:
        self.emulator = emulator
        self.world = emulator.world
        self.partner = next(iter(self.world.partners.values()))
        monkeypatch.setenv("TEST_PC_SECRET", self.partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", self.partner.gdap_app.secret)
        self.dir = tmp_path
        self.path = tmp_path / "halo-integrator.toml"
        self.write()
        # The customer reached by reseller and GDAP relationship, consented.
        self.customer = next(iter(self.world.customers.values()))
        assert self.customer.reseller and self.customer.consented

    def write(self, *, manage_licences: bool = True, licences: str = "subscriptions_and_skus"):
        endpoints = "\n".join(f'{k} = "{v}"' for k, v in self.emulator.endpoints().items())
        p = self.partner
        self.path.write_text(
            f"""
[endpoints]
{endpoints}

[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[modules.microsoft_csp]
enabled = true
manage_licences = {"true" if manage_licences else "false"}

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{p.tenant_id}"
licence_import_type = "{licences}"
partner_center_app = {{ client_id = "{p.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{p.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
""",
            encoding="utf-8",
        )

    def cli(self) -> click.Group:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str, exit_code: int = 0) -> str:
        result = CliRunner().invoke(self.cli(), ["--config", str(self.path), *args])
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == exit_code, result.output
        return result.output

    def store(self) -> Store:
        return Store.open(f"sqlite:///{self.dir / 'halo-integrator.db'}")

    def calls(self, method: str, fragment: str) -> list[tuple[str, str, int]]:
        return [r for r in self.emulator.app.requests if r[0] == method and fragment in r[1]]

    # -- what the store holds ----------------------------------------------------------------

    def licence_row(self, sku_id: str) -> Any:
        lic, t = schema.licences, schema.tenants
        store = self.store()
        try:
            with store.read() as db:
                return db.execute(
                    sa.select(lic)
                    .join(t, t.c.id == lic.c.tenant_ref)
                    .where(t.c.tenant_id == self.customer.tenant_id, lic.c.external_id == sku_id)
                ).one()
        finally:
            store.close()

    def assignment(self, user_id: str, sku_id: str) -> bool | None:
        """Whether the store has the user's assignment of the SKU active (None: no row)."""
        a, u = schema.licence_assignments, schema.users
        licence = self.licence_row(sku_id)
        store = self.store()
        try:
            with store.read() as db:
                row = db.execute(
                    sa.select(a.c.active)
                    .join(u, u.c.id == a.c.user_id)
                    .where(u.c.external_id == user_id, a.c.licence_id == licence.id)
                ).first()
        finally:
            store.close()
        return None if row is None else bool(row.active)

    def stored_quantity(self, subscription_id: str) -> int:
        s = schema.subscriptions
        store = self.store()
        try:
            with store.read() as db:
                return db.execute(
                    sa.select(s.c.quantity).where(s.c.external_id == subscription_id)
                ).scalar_one()
        finally:
            store.close()


@pytest.fixture
def setup(emulator, tmp_path, monkeypatch) -> Setup:
    return Setup(emulator, tmp_path, monkeypatch)


def a_member_without(setup: Setup) -> tuple[Any, Any]:
    """A member user of the customer and a SKU it does not hold, with units to spare."""
    customer = setup.customer
    for user in customer.users.values():
        if user.userType != "Member" or not user.usageLocation:
            continue
        held = {a["skuId"] for a in user.assignedLicenses}
        for sku in customer.skus.values():
            if sku.skuId not in held:
                sku.enabled += 5
                return user, sku
    raise AssertionError("the generated world has no member without some SKU")


def synced(setup: Setup) -> None:
    setup.run("sync")


# -- licences --------------------------------------------------------------------------------


def test_assign_then_remove_call_graph_and_then_update_the_store(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    assert setup.assignment(user.id, sku.skuId) is None
    before = setup.licence_row(sku.skuId).consumed_units

    out = setup.run(
        "csp", "licence", "assign", "--user", user.userPrincipalName, "--sku", sku.skuPartNumber
    )
    assert f"assigned {sku.skuPartNumber} to {user.userPrincipalName}" in out
    assert any(a["skuId"] == sku.skuId for a in user.assignedLicenses)
    [call] = setup.calls("POST", f"/users/{user.id}/assignLicense")
    assert call[2] == 200
    assert setup.assignment(user.id, sku.skuId) is True
    row = setup.licence_row(sku.skuId)
    assert row.consumed_units == before + 1 == setup.customer.consumed(sku.skuId)
    assert row.total_units == sku.enabled

    # By SKU ID and the user's object ID, the other way.
    out = setup.run("csp", "licence", "remove", "--user", user.id, "--sku", sku.skuId.upper())
    assert f"removed {sku.skuPartNumber} from {user.userPrincipalName}" in out
    assert not any(a["skuId"] == sku.skuId for a in user.assignedLicenses)
    assert setup.assignment(user.id, sku.skuId) is False
    assert setup.licence_row(sku.skuId).consumed_units == before

    # Both calls are in the outbound request log, with the tenant.
    logged = setup.run("logs", "outbound", "--tenant", setup.customer.tenant_id, "--limit", "0")
    assert logged.count("/assignLicense") == 2


def test_a_dry_run_reads_but_changes_nothing(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        "--dry-run",
    )
    assert "dry run: would assign" in out
    assert not setup.calls("POST", "/assignLicense")
    assert not any(a["skuId"] == sku.skuId for a in user.assignedLicenses)
    assert setup.assignment(user.id, sku.skuId) is None


def test_a_licence_held_already_is_not_assigned_again(setup):
    """Assigning again would replace the user's disabled plans with none."""
    user, sku = a_member_without(setup)
    user.assignedLicenses.append(
        {"disabledPlans": ["11b0131d-43c8-4bbb-b2c8-e80f9a50834a"], "skuId": sku.skuId}
    )
    synced(setup)
    out = setup.run(
        "csp", "licence", "assign", "--user", user.userPrincipalName, "--sku", sku.skuPartNumber
    )
    assert "already holds" in out and "nothing to change" in out
    assert not setup.calls("POST", "/assignLicense")
    [held] = [a for a in user.assignedLicenses if a["skuId"] == sku.skuId]
    assert held["disabledPlans"] == ["11b0131d-43c8-4bbb-b2c8-e80f9a50834a"]
    assert setup.assignment(user.id, sku.skuId) is True


def test_no_available_units_is_explained_and_nothing_is_stored(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    sku.enabled, sku.warning = setup.customer.consumed(sku.skuId), 0
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        exit_code=1,
    )
    assert f"has no {sku.skuPartNumber} unit left to assign" in out
    assert "does not have any available licenses" in out  # Microsoft's own words
    assert "set-quantity" in out  # the fix: buy more, or free one
    [call] = setup.calls("POST", "/assignLicense")
    assert call[2] == 400
    assert setup.assignment(user.id, sku.skuId) is None


def test_a_missing_permission_names_the_one_needed(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    setup.partner.gdap_app.permissions.remove("LicenseAssignment.ReadWrite.All")
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        exit_code=1,
    )
    assert "may not assign licences in tenant" in out
    assert "LicenseAssignment.ReadWrite.All" in out and "Application" in out
    assert f"halo-integrator csp consent {setup.customer.tenant_id}" in out
    assert setup.partner.gdap_app.client_id in out  # names the app
    assert setup.assignment(user.id, sku.skuId) is None


def test_a_user_without_usage_location_is_explained(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    user.usageLocation = None
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        "--dry-run",
    )
    assert "would refuse" in out and "no usage location" in out
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        exit_code=1,
    )
    assert "has no usage location" in out and "Usage location" in out
    assert setup.assignment(user.id, sku.skuId) is None


def test_licence_management_is_refused_while_the_setting_is_off(setup):
    user, sku = a_member_without(setup)
    synced(setup)
    setup.write(manage_licences=False)
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        sku.skuPartNumber,
        exit_code=2,
    )
    assert "manage_licences" in out and "Allow licences to be managed" in out
    assert not setup.calls("GET", f"/users/{user.id}")
    assert not setup.calls("POST", "/assignLicense")


def test_an_unknown_user_or_licence_lists_candidates(setup):
    user, _sku = a_member_without(setup)
    synced(setup)
    local = user.userPrincipalName.split("@")[0]
    out = setup.run(
        "csp", "licence", "assign", "--user", f"{local}@nowhere.example", "--sku", "X", exit_code=2
    )
    assert "no synced user is" in out and user.userPrincipalName in out  # a similar one
    out = setup.run(
        "csp",
        "licence",
        "assign",
        "--user",
        user.userPrincipalName,
        "--sku",
        "NO_SUCH_SKU",
        exit_code=2,
    )
    assert "has no licence 'NO_SUCH_SKU'" in out
    for known in setup.customer.skus.values():
        assert known.skuPartNumber in out
    assert not setup.calls("POST", "/assignLicense")


def test_before_any_sync_the_commands_say_to_sync(setup):
    out = setup.run("csp", "licence", "assign", "--user", "a@b.c", "--sku", "X", exit_code=2)
    assert "nothing synced yet" in out
    out = setup.run("csp", "subscription", "set-quantity", "x", "3", exit_code=2)
    assert "nothing synced yet" in out


# -- subscription quantities -----------------------------------------------------------------


def a_subscription(setup: Setup, *, days_old: int) -> Any:
    subscription = next(iter(setup.customer.subscriptions.values()))
    subscription.creationDate = setup.world.now - timedelta(days=days_old)
    subscription.termDuration = "P1Y"
    subscription.quantity = 20
    return subscription


def test_an_increase_is_patched_and_stored_from_microsofts_answer(setup):
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    assert setup.stored_quantity(subscription.id) == 20
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "23")
    assert "from 20 to 23 licences" in out and "the store is updated" in out
    assert subscription.quantity == 23
    assert setup.stored_quantity(subscription.id) == 23
    [patch] = setup.calls("PATCH", f"/subscriptions/{subscription.id}")
    assert patch[2] == 200
    # Its SKU's bounds were read from the catalogue first.
    assert setup.calls("GET", "/partnercenter/v1/products/")
    # The same quantity again: nothing to change, no PATCH.
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "23")
    assert "nothing to change" in out
    assert len(setup.calls("PATCH", "/subscriptions/")) == 1


def test_a_decrease_within_the_window_is_made(setup):
    subscription = a_subscription(setup, days_old=2)
    synced(setup)
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "12", "--dry-run")
    assert "would change" in out and "would refuse" not in out
    assert subscription.quantity == 20
    setup.run("csp", "subscription", "set-quantity", subscription.id, "12")
    assert subscription.quantity == 12 and setup.stored_quantity(subscription.id) == 12


def test_a_decrease_outside_the_window_is_explained_and_the_store_kept(setup):
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "15", "--dry-run")
    assert "Partner Center would refuse the decrease" in out
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "15", exit_code=1)
    assert "800090" in out and "Subscription quantity cannot be decreased." in out
    assert "within 7 days (168 hours) of purchase or renewal" in out
    window_end = subscription.creationDate + timedelta(days=7)  # purchase + 7 days
    assert f"ended on {window_end:%Y-%m-%d}" in out
    assert "reduce it at renewal" in out
    assert subscription.quantity == 20 and setup.stored_quantity(subscription.id) == 20
    [patch] = setup.calls("PATCH", f"/subscriptions/{subscription.id}")
    assert patch[2] == 400

    # Licences added mid-term may be taken back within 7 days, and no more than those.
    setup.run("csp", "subscription", "set-quantity", subscription.id, "24")
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "19", exit_code=1)
    assert "Only 4 can still be removed now" in out and "lower it to 20 now" in out
    setup.run("csp", "subscription", "set-quantity", subscription.id, "20")
    assert subscription.quantity == 20 and setup.stored_quantity(subscription.id) == 20


def test_a_quantity_outside_the_skus_bounds_is_refused_before_any_change(setup):
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "301", exit_code=1)
    assert "1 to 300" in out and "maximumQuantity" in out
    assert not setup.calls("PATCH", "/subscriptions/")
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "0", exit_code=2)
    assert "0" in out


def test_an_accepted_change_is_polled_until_it_shows(setup, monkeypatch):
    monkeypatch.setattr(management, "POLL_INTERVAL", 0.0)
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    setup.emulator.app.state["pc_patch_async"] = True
    setup.emulator.app.state["pc_patch_pending_polls"] = 2
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "25")
    assert "accepted with 202 and confirmed" in out
    assert subscription.quantity == 25 and setup.stored_quantity(subscription.id) == 25
    [patch] = setup.calls("PATCH", f"/subscriptions/{subscription.id}")
    assert patch[2] == 202
    reads = setup.calls("GET", f"/subscriptions/{subscription.id}")
    assert len(reads) == 3  # before the PATCH, then the Location until the change landed


def test_a_change_still_in_progress_leaves_the_store_at_microsofts_quantity(setup, monkeypatch):
    monkeypatch.setattr(management, "POLL_INTERVAL", 0.0)
    monkeypatch.setattr(management, "POLL_ATTEMPTS", 3)
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    setup.emulator.app.state["pc_patch_async"] = True
    setup.emulator.app.state["pc_patch_pending_polls"] = 10
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "26")
    assert "(202) and is still processing it: it shows 20 so far" in out
    assert setup.stored_quantity(subscription.id) == 20
    assert len(setup.calls("GET", f"/subscriptions/{subscription.id}")) == 1 + 3


def test_a_failing_read_after_the_202_reports_the_change_in_progress_not_refused(
    setup, monkeypatch
):
    """Partner Center accepted the change (202): a read of it that then fails ends the
    waiting, and the change is reported as still processing, not as refused."""
    monkeypatch.setattr(management, "POLL_INTERVAL", 0.0)
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    setup.emulator.app.state["pc_patch_async"] = True
    setup.emulator.app.state["pc_patch_pending_polls"] = 10
    location = management._location

    def then_failing(base, value):
        setup.emulator.app.inject("forbidden", endpoint="partner_center.subscription")
        return location(base, value)

    monkeypatch.setattr(management, "_location", then_failing)
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "26")
    assert "(202) and is still processing it: it shows 20 so far" in out
    assert "no longer has" not in out and "refused" not in out.lower()
    assert setup.stored_quantity(subscription.id) == 20


def test_an_indirect_partner_is_refused(setup):
    subscription = a_subscription(setup, days_old=40)
    synced(setup)
    # By its configuration: "All Subscribed SKUs", the import type of indirect partners.
    setup.write(licences="skus")
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "22", exit_code=2)
    assert "direct (Tier 1) partners only" in out and 'licence_import_type = "skus"' in out
    assert not setup.calls("GET", f"/subscriptions/{subscription.id}")
    # By Partner Center's answer: an indirect reseller has no commerce relationship.
    setup.write()
    setup.partner.direct = False
    out = setup.run("csp", "subscription", "set-quantity", subscription.id, "22", exit_code=1)
    assert "no commerce relationship" in out and "indirect provider" in out and "20002" in out
    assert not setup.calls("PATCH", "/subscriptions/")
    assert subscription.quantity == 20 and setup.stored_quantity(subscription.id) == 20


def test_a_subscription_is_found_by_its_name_when_unambiguous(setup):
    subscription = a_subscription(setup, days_old=2)
    subscription.offerName = "Contoso Unique Plan"
    twins = [
        s
        for c in list(setup.world.customers.values())[1:]
        for s in c.subscriptions.values()
        if c.reseller
    ][:1]
    assert twins
    synced(setup)
    setup.run("csp", "subscription", "set-quantity", "contoso unique plan", "21")
    assert subscription.quantity == 21
    out = setup.run("csp", "subscription", "set-quantity", "Unique", "3", exit_code=2)
    assert "no synced subscription is 'Unique'" in out and "Contoso Unique Plan" in out  # similar
    for twin in twins:  # two subscriptions of one name: the IDs are asked for
        twin.offerName = "Contoso Unique Plan"
        synced(setup)
        out = setup.run(
            "csp", "subscription", "set-quantity", "Contoso Unique Plan", "3", exit_code=2
        )
        assert "names 2 subscriptions" in out and subscription.id in out and twin.id in out


# -- pieces ----------------------------------------------------------------------------------


def test_a_location_elsewhere_is_not_followed():
    base = "https://api.partnercenter.microsoft.com"
    assert management._location(base, f"{base}/v1/customers/a/subscriptions/b") == (
        f"{base}/v1/customers/a/subscriptions/b"
    )
    assert management._location(base, "/customers/a/subscriptions/b") == (
        f"{base}/v1/customers/a/subscriptions/b"
    )
    assert management._location(base, "https://evil.example/steal") is None
    assert management._location(base, None) is None


def test_the_decrease_window_reads_partner_centers_answer():
    now = datetime(2026, 3, 1, tzinfo=UTC)
    closed = management.DecreaseWindow.of(
        {
            "refundableQuantity": {"totalQuantity": 0, "details": []},
            "cancellationAllowedUntilDate": "2026-01-12T09:00:00Z",
            "commitmentEndDate": "2026-12-31T00:00:00Z",
        }
    )
    assert closed.allows(10, 9) is False and closed.allows(10, 11) is True
    assert "ended on 2026-01-12 09:00 UTC" in closed.explain(10, now)
    assert "2026-12-31" in closed.fix(10)
    legacy = management.DecreaseWindow.of({"quantity": 10})
    assert legacy.refundable is None and legacy.allows(10, 1) is None


def test_store_updates_follow_microsoft(store):
    now = datetime.now(UTC)
    with store.unit() as db:
        customer = db.execute(
            sa.insert(schema.customers).values(
                name="C", source="test", created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
        tenant = db.execute(
            sa.insert(schema.tenants).values(
                module="microsoft_csp",
                tenant_id="t",
                name="T",
                access="gdap_only",
                created_at=now,
                updated_at=now,
                attributes={},
            )
        ).inserted_primary_key[0]
        common = {
            "tenant_ref": tenant,
            "customer_id": customer,
            "created_at": now,
            "updated_at": now,
            "attributes": {},
        }
        licence = db.execute(
            sa.insert(schema.licences).values(
                external_id="sku",
                sku_part_number="SPE_E3",
                total_units=5,
                consumed_units=1,
                **common,
            )
        ).inserted_primary_key[0]
        user = db.execute(
            sa.insert(schema.users).values(external_id="u", custom_fields={}, **common)
        ).inserted_primary_key[0]
        sub = db.execute(
            sa.insert(schema.subscriptions).values(
                external_id="s", name="S", quantity=3, status="active", **common
            )
        ).inserted_primary_key[0]
    counts = LicenceCounts(total_units=6, consumed_units=2, capability_status="Enabled")
    record_licence_assignment(store, licence_id=licence, user_id=user, assigned=True, counts=counts)
    record_licence_assignment(store, licence_id=licence, user_id=user, assigned=False)
    with store.read() as db:
        row = db.execute(sa.select(schema.licence_assignments)).one()
        lic = db.execute(sa.select(schema.licences)).one()
    assert row.active is False and row.inactive_since is not None
    assert (lic.total_units, lic.consumed_units, lic.capability_status) == (6, 2, "Enabled")
    assert record_subscription_quantity(store, subscription_id=sub, quantity=7) is True
    assert record_subscription_quantity(store, subscription_id=sub, quantity=7) is False
    with pytest.raises(LookupError):
        record_subscription_quantity(store, subscription_id=sub + 100, quantity=1)


# -- the emulator ----------------------------------------------------------------------------


def test_emulator_serves_a_skus_quantity_bounds_as_documented(emulator):
    partner = next(iter(emulator.world.partners.values()))
    token = emulator.app.tokens.issue(
        client_id=partner.partner_center_app.client_id,
        tenant=partner.tenant_id,
        resource=emulator_app.PARTNER_CENTER,
        scopes=(f"{emulator_app.PARTNER_CENTER}/.default",),
    )
    headers = {"Authorization": f"Bearer {token.value}", "Accept": "application/json"}
    sku = next(iter(next(iter(emulator.world.customers.values())).skus.values()))

    def get(path: str) -> requests.Response:
        return requests.get(
            f"{emulator.base_url}/partnercenter{path}",
            headers=headers,
            verify=str(emulator.ca_bundle),
            timeout=10,
        )

    answer = get(f"/v1/products/{sku.productId}/skus/{sku.catalogSkuId}?country=GB")
    assert answer.status_code == 200
    assert_conforms(load_sample("partner_center", "sku_get"), answer.json())
    assert (answer.json()["minimumQuantity"], answer.json()["maximumQuantity"]) == (1, 300)
    assert get(f"/v1/products/{sku.productId}/skus/ZZZZ?country=GB").json()["code"] == 400018
    assert get(f"/v1/products/NOPE/skus/{sku.catalogSkuId}?country=GB").json()["code"] == 400013
    assert get(f"/v1/products/{sku.productId}/skus/{sku.catalogSkuId}").status_code == 400
