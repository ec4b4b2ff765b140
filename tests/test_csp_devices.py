"""The Microsoft CSP module's Intune managed devices against the emulator: the tenant
listing and the older per-user method, extra properties, paging, refusals (a missing
permission, a tenant without Intune, a property v1.0 does not know) and bad payloads
(`halo_microsoft_csp.devices.fetch_assets`, as the ``fetch_assets`` hook runs it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import attrs
import pytest
import structlog

from halo_integrator_core import (
    AssetQuery,
    Checkpoint,
    ManagedDevice,
    ModuleContext,
    Notice,
    RecordError,
    SkipTenant,
    Tenant,
    TenantAccess,
    paging,
)
from halo_integrator_core.config import EndpointSettings, IntegratorSettings, SecretRef
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp import devices, plugin
from halo_microsoft_csp.errors import InsufficientPrivileges
from halo_microsoft_csp.settings import AppRegistration, Connection, MicrosoftCspSettings
from halo_microsoft_emulator.world import ODD_SERIALS, Customer, Device, World

FIELDS = [
    "id",
    "deviceName",
    "serialNumber",
    "manufacturer",
    "model",
    "operatingSystem",
    "osVersion",
    "complianceState",
    "lastSyncDateTime",
    "enrolledDateTime",
    "imei",
    "wiFiMacAddress",
    "azureADDeviceId",
    "managementAgent",
    "userId",
    "userPrincipalName",
    "emailAddress",
]


@pytest.fixture
def context(emulator, monkeypatch, tmp_path):
    partner = next(iter(emulator.world.partners.values()))
    monkeypatch.setenv("DEVICES_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("DEVICES_GDAP_SECRET", partner.gdap_app.secret)
    connection = Connection(
        name="main",
        tenant_id=partner.tenant_id,
        partner_center_app=AppRegistration(
            client_id=partner.partner_center_app.client_id,
            client_secret=SecretRef(env="DEVICES_PC_SECRET"),
        ),
        gdap_app=AppRegistration(
            client_id=partner.gdap_app.client_id,
            client_secret=SecretRef(env="DEVICES_GDAP_SECRET"),
        ),
    )
    endpoints = EndpointSettings(**emulator.endpoints())
    with HttpClient(verify=endpoints.verify, sleep=lambda seconds: None) as http:
        yield ModuleContext(
            module="microsoft_csp",
            settings=MicrosoftCspSettings(connections=(connection,)),
            integrator=IntegratorSettings(),
            log=structlog.get_logger("test"),
            endpoints=endpoints,
            http=http,
            state_dir=tmp_path,
        )


def readable(emulator, index: int = 0) -> Customer:
    found = [
        c for c in emulator.world.customers.values() if c.gdap_status == "active" and c.consented
    ]
    return found[index]


def tenant_of(customer: Customer) -> Tenant:
    return Tenant(
        tenant_id=customer.tenant_id,
        name=customer.name,
        connection="main",
        access=TenantAccess.RESELLER_AND_GDAP,
        attributes={"reseller": True},
    )


def fetch(context: ModuleContext, customer: Customer, query: AssetQuery | None = None) -> list[Any]:
    """What one call of the hook yielded before its checkpoint, which must end it complete."""
    *records, checkpoint = devices.fetch_assets(context, tenant_of(customer), None, query)
    assert checkpoint == Checkpoint(bookmark=None, complete=True)
    assert not any(isinstance(r, Checkpoint) for r in records)
    return records


def by_id(records: list[Any]) -> dict[str, ManagedDevice]:
    found = [r for r in records if isinstance(r, ManagedDevice)]
    assert len(found) == len({d.device_id for d in found}), "a device yielded twice"
    return {d.device_id: d for d in found}


def requests_to(emulator, fragment: str) -> list[str]:
    """Paths (decoded) of the requests served that contain ``fragment``."""
    return [unquote_plus(p) for _, p, _ in emulator.app.requests if fragment in unquote_plus(p)]


def selected(path: str) -> list[str]:
    return parse_qs(urlsplit(path).query)["$select"][0].split(",")


def blank(value: str) -> str | None:
    return value or None


def assert_translated(record: ManagedDevice, device: Device) -> None:
    assert record.device_name == device.deviceName
    assert record.serial_number == blank(device.serialNumber)
    assert record.manufacturer == device.manufacturer
    assert record.model == device.model
    assert record.operating_system == device.operatingSystem
    assert record.os_version == device.osVersion
    assert record.compliance_state == device.complianceState
    assert record.last_sync_at == device.lastSyncDateTime
    assert record.enrolled_at == device.enrolledDateTime
    assert record.imei == blank(device.imei)
    assert record.wifi_mac == device.wiFiMacAddress
    assert record.azure_ad_device_id == device.azureADDeviceId
    assert record.management_agent == device.managementAgent
    assert record.user_principal_name == blank(device.userPrincipalName)
    assert record.email_address == blank(device.emailAddress)


# -- the tenant listing ------------------------------------------------------------------------


def test_a_listing_yields_every_device_translated_and_ends_complete(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    userless = world.add_device(
        customer.tenant_id,
        userId=None,
        userPrincipalName="",
        emailAddress="",
        userDisplayName="",
        serialNumber="",
        imei="",
        lastSyncDateTime=None,
    )
    sensor = world.add_device(customer.tenant_id, managementAgent="msSense")
    found = by_id(fetch(context, customer))
    assert set(found) == set(customer.devices)
    for device_id, record in found.items():
        device = customer.devices[device_id]
        assert_translated(record, device)
        assert record.user_id == device.userId
        assert record.attributes == {}
    assert found[userless.id] == ManagedDevice(
        device_id=userless.id,
        device_name=userless.deviceName,
        manufacturer=userless.manufacturer,
        model=userless.model,
        operating_system=userless.operatingSystem,
        os_version=userless.osVersion,
        compliance_state=userless.complianceState,
        enrolled_at=userless.enrolledDateTime,
        wifi_mac=userless.wiFiMacAddress,
        azure_ad_device_id=userless.azureADDeviceId,
        management_agent=userless.managementAgent,
    )  # "" and "0001-01-01T00:00:00Z" came as None
    assert found[sensor.id].management_agent == "msSense"
    assert all(r.last_sync_at is None or r.last_sync_at.tzinfo is UTC for r in found.values())
    [path] = requests_to(emulator, "/deviceManagement/managedDevices")
    assert selected(path) == FIELDS
    assert "$top" not in path  # Intune's own page size (1000)


def test_junk_and_duplicated_serials_come_through_as_intune_has_them(emulator, context):
    customer = readable(emulator)
    given = emulator.world.give_odd_serials(customer.tenant_id)
    found = by_id(fetch(context, customer))
    for device_id, serial in given.items():
        assert found[device_id].serial_number == (serial or None)
    assert {found[i].serial_number for i in given} >= {s for s in ODD_SERIALS if s}
    shared = [s for s in given.values() if s not in ODD_SERIALS]
    assert len(shared) == 2 and len(set(shared)) == 1


def test_extra_properties_are_selected_once_and_kept_in_attributes(emulator, context):
    customer = readable(emulator)
    query = AssetQuery(
        properties=(
            "managedDeviceOwnerType",
            "isEncrypted",
            "phoneNumber",
            "totalStorageSpaceInBytes",
            "serialNumber",
            "SERIALNUMBER",
            "isEncrypted",
        )
    )
    found = by_id(fetch(context, customer, query))
    assert set(found) == set(customer.devices)
    [path] = requests_to(emulator, "/deviceManagement/managedDevices")
    assert selected(path) == [
        *FIELDS,
        "managedDeviceOwnerType",
        "isEncrypted",
        "phoneNumber",
        "totalStorageSpaceInBytes",
    ]
    for device_id, record in found.items():
        device = customer.devices[device_id]
        assert record.attributes["managedDeviceOwnerType"] in ("company", "personal")
        assert record.attributes["isEncrypted"] is (device.complianceState == "compliant")
        assert record.attributes["phoneNumber"] is None  # Intune's "" is None here too
        assert isinstance(record.attributes["totalStorageSpaceInBytes"], int)
        assert record.attributes["serialNumber"] == blank(device.serialNumber)
        assert record.attributes["SERIALNUMBER"] == blank(device.serialNumber)


def test_a_property_v1_does_not_have_is_left_empty_with_one_notice(emulator, context):
    customer = readable(emulator)
    emulator.app.state["graph.device_page"] = 3
    query = AssetQuery(properties=("deviceType", "isEncrypted", "chassisType"))
    records = fetch(context, customer, query)
    found = by_id(records)
    assert set(found) == set(customer.devices)
    notices = [r for r in records if isinstance(r, Notice)]
    assert [n.code for n in notices] == ["device_property_unknown"] * 2
    assert "'deviceType'" in notices[0].message and "'chassisType'" in notices[1].message
    assert customer.tenant_id in notices[0].message and "beta" in notices[0].message
    for record in found.values():
        assert record.attributes["deviceType"] is None and record.attributes["chassisType"] is None
        assert isinstance(record.attributes["isEncrypted"], bool)
    paths = requests_to(emulator, "/deviceManagement/managedDevices")
    assert selected(paths[-1]) == [*FIELDS, "isEncrypted"]


def test_paging_follows_every_next_link(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    for _ in range(10):
        world.add_device(customer.tenant_id)
    emulator.app.state["graph.device_page"] = 4
    found = by_id(fetch(context, customer))
    assert set(found) == set(customer.devices)
    pages = requests_to(emulator, "/deviceManagement/managedDevices")
    assert len(pages) == -(-len(customer.devices) // 4)
    assert all("$skiptoken=" in path for path in pages[1:])


def test_a_bad_payload_is_a_record_error_and_the_rest_go_on(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    emulator.app.state["graph.device_page"] = 5
    bad = world.add_device(customer.tenant_id)
    world.change_device(customer.tenant_id, bad.id, serialNumber=12345)
    named = world.add_device(customer.tenant_id)
    world.change_device(customer.tenant_id, named.id, deviceName=["LAPTOP-1", "LAPTOP-2"])
    records = fetch(context, customer)
    errors = {r.entity_id: r.reason for r in records if isinstance(r, RecordError)}
    assert errors.keys() == {bad.id, named.id}
    assert errors[bad.id].startswith("$.serialNumber: expected a string")
    assert errors[named.id].startswith("$.deviceName: expected a string")
    assert set(by_id(records)) == set(customer.devices) - {bad.id, named.id}


# -- refusals ----------------------------------------------------------------------------------


def revoke_device_permission(emulator) -> str:
    partner = next(iter(emulator.world.partners.values()))
    partner.gdap_app.permissions.remove(devices.DEVICE_PERMISSION)
    return partner.gdap_app.client_id


@pytest.mark.parametrize("per_user", [False, True])
def test_without_the_device_permission_the_error_names_it_the_app_and_the_tenant(
    emulator, context, per_user
):
    client_id = revoke_device_permission(emulator)
    customer = readable(emulator)
    with pytest.raises(InsufficientPrivileges) as raised:
        fetch(context, customer, AssetQuery(per_user=per_user))
    message = str(raised.value)
    assert "DeviceManagementManagedDevices.Read.All" in message
    assert client_id in message
    assert customer.tenant_id in message and customer.name in message
    assert f"halo-integrator csp consent-url {customer.tenant_id}" in message
    assert message.startswith("Forbidden: ")  # Intune's code, not the directory's
    assert "_version" not in message  # Intune's JSON document stays in .detail
    assert "Application is not authorized" in raised.value.detail


def test_once_the_permission_is_given_the_next_listing_has_it(emulator, context):
    """The token refused for lacking the permission is dropped with the refusal, so the
    next listing asks for a new one, which carries the permission added since, rather than
    failing until the refused token ends (an hour at most)."""
    revoke_device_permission(emulator)
    customer = readable(emulator)
    with pytest.raises(InsufficientPrivileges):
        fetch(context, customer)
    partner = next(iter(emulator.world.partners.values()))
    partner.gdap_app.permissions.append(devices.DEVICE_PERMISSION)
    assert set(by_id(fetch(context, customer))) == set(customer.devices)


@pytest.mark.parametrize("per_user", [False, True])
def test_a_tenant_without_intune_is_skipped_with_the_reason(emulator, context, per_user):
    customer = readable(emulator)
    customer.has_intune = False
    with pytest.raises(SkipTenant) as raised:
        fetch(context, customer, AssetQuery(per_user=per_user))
    message = str(raised.value)
    assert "no Intune licence" in message and "Request not applicable to target tenant" in message
    assert customer.tenant_id in message and customer.name in message
    assert "left as they are" in message


# -- the user method ---------------------------------------------------------------------------


def live_ids(customer: Customer) -> list[str]:
    return sorted(u.id for u in customer.users.values() if u.removed is None)


def test_the_user_method_lists_each_users_devices_once(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    first, second, third = (customer.users[i] for i in live_ids(customer)[:3])
    shared = world.add_device(
        customer.tenant_id,
        userId=third.id,
        userPrincipalName=third.userPrincipalName,
        sharedWith=[second.id, first.id],
    )
    nameless = world.add_device(
        customer.tenant_id, userId=second.id, userPrincipalName="", emailAddress=""
    )
    userless = world.add_device(customer.tenant_id, userId=None, userPrincipalName="")
    emulator.app.state["graph.device_page"] = 2
    found = by_id(fetch(context, customer, AssetQuery(per_user=True, properties=("notes",))))
    live = set(live_ids(customer))
    listed = {
        d.id: min({d.userId, *d.sharedWith} & live)
        for d in customer.devices.values()
        if {d.userId, *d.sharedWith} & live
    }
    assert set(found) == set(listed) and userless.id not in found
    for device_id, record in found.items():
        assert record.user_id == listed[device_id]
        device = customer.devices[device_id]
        if not device.userPrincipalName:
            upn = customer.users[record.user_id].userPrincipalName
            device = attrs.evolve(device, userPrincipalName=upn)
        assert_translated(record, device)
        assert record.attributes == {"notes": None}
    # A shared device comes under the first user listing it, with its own UPN kept.
    assert found[shared.id].user_id == first.id
    assert found[shared.id].user_principal_name == third.userPrincipalName
    # A device with no UPN of its own takes the UPN of the user whose list held it.
    assert found[nameless.id].user_principal_name == second.userPrincipalName
    assert found[nameless.id].email_address is None
    [users] = requests_to(emulator, "/v1.0/users?")
    assert parse_qs(urlsplit(users).query) == {"$select": ["id,userPrincipalName"], "$top": ["999"]}
    per_user = requests_to(emulator, "/managedDevices")
    assert not any("/deviceManagement/" in path for path in per_user)
    assert all(selected(path) == [*FIELDS, "notes"] for path in per_user)


def test_the_user_method_goes_on_past_a_user_deleted_meanwhile(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    ids = live_ids(customer)
    for user_id in (ids[0], ids[-1]):
        world.add_device(customer.tenant_id, userId=user_id)
    stream = devices.fetch_assets(context, tenant_of(customer), None, AssetQuery(per_user=True))
    records = []
    for record in stream:
        records.append(record)
        if len(records) == 1:
            # The users page is read; the last user goes before their devices are asked for.
            world.soft_delete_user(customer.tenant_id, ids[-1])
    assert records[-1] == Checkpoint(bookmark=None, complete=True)
    assert ("GET", f"/graph/v1.0/users/{ids[-1]}/managedDevices", 404) in [
        (method, path.split("?")[0], status) for method, path, status in emulator.app.requests
    ]
    found = by_id(records[:-1])
    assert {r.user_id for r in found.values()} <= set(ids[:-1])
    assert any(r.user_id == ids[0] for r in found.values())


# -- the hook ----------------------------------------------------------------------------------


def test_the_hook_passes_the_query_on(emulator, context):
    customer = readable(emulator)
    items = list(
        plugin.fetch_assets(
            context=context,
            tenant=tenant_of(customer),
            bookmark="ignored",
            query=AssetQuery(per_user=True, properties=("isEncrypted",)),
        )
    )
    assert items[-1] == Checkpoint(bookmark=None, complete=True)
    found = by_id(items)
    assert found and all("isEncrypted" in r.attributes for r in found.values())
    assert requests_to(emulator, "/v1.0/users?") and not requests_to(
        emulator, "/deviceManagement/managedDevices"
    )


def test_never_synced_is_none_and_timestamps_are_utc(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    never = world.add_device(customer.tenant_id, lastSyncDateTime=None)
    zero = world.add_device(customer.tenant_id, lastSyncDateTime=datetime(1, 1, 1, tzinfo=UTC))
    found = by_id(fetch(context, customer))
    assert found[never.id].last_sync_at is None and found[zero.id].last_sync_at is None
    assert found[never.id].enrolled_at == never.enrolledDateTime


def test_typed_pages_give_the_records_json_pages_give(emulator, context, monkeypatch, page_ways):
    """Device pages are decoded into GraphManagedDevice's typed form; the records are those
    of decoding the JSON and reading each payload from it, by either listing method."""
    customer = readable(emulator)
    for query in (None, AssetQuery(per_user=True)):
        page_ways.clear()
        found = fetch(context, customer, query)
        assert page_ways and all(page_ways) and by_id(found)
        page_ways.clear()
        with monkeypatch.context() as json_only:
            json_only.setattr(paging, "_typed_decoder", lambda _cls: None)
            assert fetch(context, customer, query) == found
        assert page_ways and not any(page_ways)
