"""The asset import rules (guide 7): types, user matching, field mappings, the global
matching field, statuses and Sense exclusion, driven through the sync engine with the
in-test directory plugin."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from fakes import MODULE, TENANT_A, TENANT_B, FakeDirectory

from halo_integrator_core import ManagedDevice
from halo_integrator_core.config import ConfigError, load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.store import Store, schema, utcnow
from halo_integrator_core.sync.engine import SyncEngine, SyncError

HEAD = f"""
[[tenant_mappings]]
tenant_id = "{TENANT_A}"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "{TENANT_B}"
customer = "Fabrikam"

[modules.{MODULE}]
enabled = true

[[site_mappings]]
customer = "Contoso"
type = "field"
site_field = "officeLocation"
sequence = 10

[[site_mappings]]
customer = "Contoso"

[[site_mappings]]
customer = "Fabrikam"
"""


def device(device_id: str, **fields: Any) -> ManagedDevice:
    fields.setdefault("device_name", device_id.upper())
    fields.setdefault("serial_number", f"SN-{device_id}")
    fields.setdefault("operating_system", "Windows")
    fields.setdefault("management_agent", "mdm")
    return ManagedDevice(device_id=device_id, **fields)


@pytest.fixture
def world() -> FakeDirectory:
    world = FakeDirectory.small()
    world.devices[TENANT_A] = {
        "d-1": device("d-1", user_principal_name="ADELE@contoso.com", model="Surface Laptop 5"),
        "d-2": device("d-2", operating_system="iOS", model="iPhone 15", user_id="u-2"),
        "d-3": device("d-3", operating_system="Android", email_address="alex@contoso.com"),
    }
    return world


@pytest.fixture
def sync(store: Store, write_config, host_factory, world: FakeDirectory):
    def run(text: str = "", *, dry_run: bool = False, **options: Any) -> Any:
        config = load_config(write_config(HEAD + text))
        host = host_factory(config, (world, "fake"))
        [result] = SyncEngine(store, config, host).run(dry_run=dry_run, **options)
        return result

    return run


def assets(store: Store) -> dict[str, dict[str, Any]]:
    with store.read() as connection:
        return {
            row["external_id"] or f"other-{row['id']}": row
            for row in export_rows(connection, "assets")
        }


def problems(result: Any, outcome: str) -> list[str]:
    return [p.reason for p in result.problems if p.outcome == outcome]


def other_integration_asset(store: Store, customer: str, serial: str) -> int:
    """An asset an RMM integration imported before Intune's."""
    with store.unit() as connection:
        customer_id = connection.execute(
            sa.select(schema.customers.c.id).where(schema.customers.c.name == customer)
        ).scalar_one()
        now = utcnow()
        return connection.execute(
            sa.insert(schema.assets).values(
                customer_id=customer_id,
                source="rmm",
                serial_number=serial,
                match_key=serial.strip().casefold(),
                device_name="FROM-RMM",
                status="In use",
                active=True,
                created_at=now,
                updated_at=now,
                attributes={},
                custom_fields={},
            )
        ).inserted_primary_key[0]


# --- asset types -------------------------------------------------------------------------


def test_one_type_for_every_device_by_default(sync, store):
    sync()
    assert {a["asset_type"] for a in assets(store).values()} == {"Intune Device"}
    assert {a["status"] for a in assets(store).values()} == {"Active"}


def test_types_from_an_intune_field_with_created_and_fallback_types(sync, store, world):
    text = """
[assets]
type_method = "field"
type_field = "operatingSystem"
type_values = { windows = "Workstation", IOS = "Mobile" }
"""
    sync(text)
    stored = assets(store)
    assert stored["d-1"]["asset_type"] == "Workstation"
    assert stored["d-2"]["asset_type"] == "Mobile"
    assert stored["d-3"]["asset_type"] == "Android"  # unmapped value: a type of its name
    sync(text + 'unmapped_values = "fallback"\ntype = "Other device"\n')
    assert assets(store)["d-3"]["asset_type"] == "Other device"


def rules(extra: str = "") -> str:
    return '[assets]\ntype_method = "rules"\ntype = "Unclassified"\n' + extra + RULES


RULES = """
[[assets.type_rules]]
type = "Laptop"
conditions = [{ field = "operatingSystem", value = "windows" }, { field = "model", operator = "matches", value = "laptop|book" }]
[[assets.type_rules]]
type = "Phone"
conditions = [{ field = "model", operator = "starts_with", value = "iphone" }]
"""


def test_rules_classify_in_order_and_unmatched_fall_back_or_are_left_out(sync, store):
    sync(rules())
    stored = assets(store)
    assert (stored["d-1"]["asset_type"], stored["d-2"]["asset_type"]) == ("Laptop", "Phone")
    assert stored["d-3"]["asset_type"] == "Unclassified"

    result = sync(rules('unmatched = "exclude"\n'))
    assert result.counts["assets"].skipped == 1
    assert any("no [[assets.type_rules]] rule matches" in r for r in problems(result, "skipped"))
    # Left out now, but still in Intune: its asset is kept as it was, not deactivated.
    assert assets(store)["d-3"]["active"] is True


def test_existing_types_can_be_kept(sync, store):
    sync()
    result = sync(rules("keep_existing_type = true\n"))
    assert {a["asset_type"] for a in assets(store).values()} == {"Intune Device"}
    assert result.counts["assets"].updated == 0
    sync(rules())
    assert assets(store)["d-1"]["asset_type"] == "Laptop"


def test_asset_rules_are_validated(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(
            write_config(
                HEAD
                + """
[assets]
type_method = "rules"
[[assets.type_rules]]
type = "X"
conditions = [{ field = "serial", value = "1" }, { field = "model", operator = "matches", value = "(" }]
[assets.fields]
serial = "serialNumber"
"""
            )
        )
    text = "\n".join(caught.value.problems)
    assert (
        "conditions[0].field: 'serial' is not an Intune managed-device property; did you mean 'serialNumber'?"
        in text
    )
    assert "conditions[1].value: not a regular expression" in text
    assert (
        "assets.fields.serial: 'serial' is not a PSA asset field (did you mean 'serial_number'?"
        in text
    )


# --- user matching -----------------------------------------------------------------------


def test_the_asset_method_finds_the_user_by_the_chosen_field(sync, store, world):
    world.users[TENANT_A]["u-2"] = type(world.users[TENANT_A]["u-2"])(
        object_id="u-2", user_principal_name="alex@contoso.com", mail="alex@contoso.com",
        office_location="Leeds",
    )  # fmt: skip
    sync()
    stored = assets(store)
    assert stored["d-1"]["user"] == "adele@contoso.com"  # by UPN, ignoring case
    assert stored["d-1"]["site"] == "Main"
    assert stored["d-2"]["user"] is None and stored["d-2"]["site"] == "Main"  # no UPN on it
    sync('[assets]\nuser_field = "userId"\ndefault_site = "Unassigned devices"\n')
    stored = assets(store)
    assert stored["d-2"]["user"] == "alex@contoso.com" and stored["d-2"]["site"] == "Leeds"
    assert stored["d-1"]["user"] is None and stored["d-1"]["site"] == "Unassigned devices"
    sync('[assets]\nuser_field = "emailAddress"\n')
    assert assets(store)["d-3"]["user"] == "alex@contoso.com"


def test_the_user_method_asks_for_devices_per_user(sync, store, world):
    sync('[assets]\nuser_matching = "user"\n')
    assert world.asset_queries[TENANT_A].per_user is True
    stored = assets(store)
    assert stored["d-2"]["user"] == "alex@contoso.com"  # by the user whose list held it
    assert stored["d-1"]["user"] is None  # no user_id given: the default site
    assert stored["d-1"]["site"] == "Main"


# --- field mappings ----------------------------------------------------------------------


def test_default_and_configured_field_mappings(sync, store, world):
    world.devices[TENANT_A]["d-1"] = device(
        "d-1",
        manufacturer="Microsoft",
        model="Surface Laptop 5",
        os_version="10.0.22631",
        compliance_state="compliant",
        imei="35 209900 176148 1",
        wifi_mac="00:11:22:33:44:55",
        azure_ad_device_id="aad-1",
        attributes={"deviceCategoryDisplayName": "Finance", "notes": "spare"},
    )
    sync(
        """
[assets.fields]
model = "deviceCategoryDisplayName"
imei = ""
[assets.custom_fields]
notes = "notes"
"""
    )
    d1 = assets(store)["d-1"]
    assert (d1["device_name"], d1["serial_number"], d1["manufacturer"]) == (
        "D-1",
        "SN-d-1",
        "Microsoft",
    )
    assert d1["model"] == "Finance" and d1["imei"] is None
    assert (d1["os_version"], d1["compliance_state"], d1["wifi_mac"]) == (
        "10.0.22631",
        "compliant",
        "00:11:22:33:44:55",
    )
    assert d1["azure_ad_device_id"] == "aad-1" and d1["custom_fields"] == {"notes": "spare"}
    assert {"deviceCategoryDisplayName", "notes"} <= set(world.asset_queries[TENANT_A].properties)


# --- matching across integrations --------------------------------------------------------


def test_an_asset_of_another_integration_is_updated_not_duplicated(sync, store, world):
    sync("", only=["tenants"])  # the customers exist; no assets yet
    rmm = other_integration_asset(store, "Contoso", " sn-D-1 ")
    world.devices[TENANT_A]["d-1"] = device("d-1", serial_number="SN-D-1")
    result = sync()
    stored = assets(store)
    assert stored["d-1"]["id"] == rmm and stored["d-1"]["device_name"] == "D-1"
    assert stored["d-1"]["status"] == "In use"  # its status is the other integration's
    assert result.counts["assets"].added == 2 and len(stored) == 3


def test_junk_serials_never_match(sync, store, world):
    sync("", only=["tenants"])
    for serial in ("To Be Filled By O.E.M.", "0000000", "WHATEVER"):
        other_integration_asset(store, "Contoso", serial)
    world.devices[TENANT_A] = {
        "d-1": device("d-1", serial_number="to be filled by o.e.m."),
        "d-2": device("d-2", serial_number="0000000"),
        "d-3": device("d-3", serial_number="whatever"),
    }
    result = sync('[assets]\njunk_serials = ["Whatever"]\n')
    assert result.counts["assets"].added == 3
    assert len(assets(store)) == 6


def test_two_devices_with_one_serial_are_reported_and_keep_their_own_assets(sync, store, world):
    world.devices[TENANT_A]["d-2"] = device("d-2", serial_number="SN-d-1")
    result = sync()
    stored = assets(store)
    assert stored["d-1"]["id"] != stored["d-2"]["id"]
    assert stored["d-1"]["device_name"] == "D-1" and stored["d-2"]["device_name"] == "D-2"
    [warning] = problems(result, "warning")
    assert "'sn-d-1'" in warning and "each keeps its own asset" in warning
    sync()  # and again next run: still two assets
    assert len(assets(store)) == 3


# --- statuses ----------------------------------------------------------------------------


def test_a_deleted_device_gets_the_deleted_status_and_comes_back_active(sync, store, world):
    text = '[assets]\nnew_status = "Live"\ndeleted_status = "Gone from Intune"\n'
    sync(text)
    gone = world.devices[TENANT_A].pop("d-1")
    result = sync(text)
    d1 = assets(store)["d-1"]
    assert (d1["active"], d1["status"]) == (False, "Gone from Intune")
    assert result.counts["assets"].deactivated == 1
    world.devices[TENANT_A]["d-1"] = gone
    sync(text)
    d1 = assets(store)["d-1"]
    assert (d1["active"], d1["status"], d1["inactive_since"]) == (True, "Live", None)


def test_devices_managed_by_sense_can_be_left_out(sync, store, world):
    world.devices[TENANT_A]["d-4"] = device("d-4", management_agent="msSense")
    sync()
    assert "d-4" in assets(store)
    result = sync("[assets]\nexclude_sense = true\n")
    assert result.counts["assets"].skipped == 1
    assert any("Sense" in r for r in problems(result, "skipped"))


# --- per-site runs, dry runs -------------------------------------------------------------


def test_a_per_site_run_touches_only_that_site(sync, store, world):
    sync('[assets]\nuser_field = "userId"\ndefault_site = "Spare"\n')
    world.devices[TENANT_A]["d-1"] = device("d-1", device_name="RENAMED")  # at Spare
    world.devices[TENANT_A].pop("d-3")  # at Spare too
    world.devices[TENANT_A]["d-2"] = device("d-2", device_name="NOT-NOW", user_id="u-2")
    result = sync(
        '[assets]\nuser_field = "userId"\ndefault_site = "Spare"\n',
        only=["assets"],
        site="contoso/spare",
    )
    stored = assets(store)
    assert stored["d-1"]["device_name"] == "RENAMED" and stored["d-3"]["active"] is False
    assert stored["d-2"]["device_name"] == "D-2"  # another site's: not this run's
    assert result.counts["assets"].deactivated == 1
    with pytest.raises(SyncError, match="has no site 'Nowhere'"):
        sync(site="Contoso/Nowhere")
    with pytest.raises(SyncError, match="--site narrows users and assets only"):
        sync(site="Contoso/Main", only=["licences"])


def test_a_dry_run_writes_no_asset_type_site_or_asset(sync, store):
    with store.read() as connection:
        before = connection.execute(
            sa.select(sa.func.count()).select_from(schema.asset_types)
        ).scalar()
    result = sync('[assets]\ndefault_site = "Spare"\n', dry_run=True)
    assert result.counts["assets"].added == 3
    assert assets(store) == {}
    with store.read() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(schema.asset_types)).scalar()
            == before
        )
        assert not connection.execute(
            sa.select(schema.sites).where(schema.sites.c.name == "Spare")
        ).first()
