"""Assets end to end: Intune devices of the emulator into the store through the sync
engine, with placeholder and duplicated serials, an asset another integration made, a
device that leaves and comes back, Sense exclusion and both user-matching methods."""

from __future__ import annotations

from typing import Any

import attrs
import sqlalchemy as sa
from test_csp_sync import csp_config, exported, secrets  # noqa: F401 (a fixture)

from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import schema, utcnow
from halo_integrator_core.sync.engine import SyncEngine
from halo_microsoft_emulator.world import ODD_SERIALS


def sync(store, config, **options: Any) -> Any:
    [result] = SyncEngine(store, config, PluginHost.load(config)).run(**options)
    return result


def assets(store) -> dict[str, dict[str, Any]]:
    return {a["external_id"] or f"other-{a['id']}": a for a in exported(store, "assets")}


def readable(world):
    return [c for c in world.customers.values() if c.gdap_status == "active" and c.consented]


def test_devices_become_assets_of_their_users_sites_and_types(
    emulator,
    store,
    write_config,
    secrets,  # noqa: F811
):
    config = csp_config(
        emulator,
        write_config,
        extra='[assets]\ntype_method = "field"\ntype_field = "operatingSystem"\n'
        'type_values = { Windows = "Workstation" }\ndefault_site = "Unassigned"\n',
    )
    result = sync(store, config)
    assert result.outcome == "succeeded", result.problems
    world = emulator.world
    stored = assets(store)
    expected = {d.id: d for c in readable(world) for d in c.devices.values()}
    assert set(stored) == set(expected)
    users = {u["user_principal_name"].lower(): u for u in exported(store, "users")}
    for device_id, device in expected.items():
        asset = stored[device_id]
        wanted = "Workstation" if device.operatingSystem == "Windows" else device.operatingSystem
        assert asset["asset_type"] == wanted and asset["status"] == "Active"
        owner = users.get((device.userPrincipalName or "").lower())
        if owner is not None:
            assert (asset["user"], asset["site"]) == (owner["user_principal_name"], owner["site"])
        else:
            assert (asset["user"], asset["site"]) == (None, "Unassigned")
        assert asset["device_name"] == device.deviceName


def test_the_user_method_links_devices_through_each_users_list(
    emulator,
    store,
    write_config,
    secrets,  # noqa: F811
):
    config = csp_config(emulator, write_config, extra='[assets]\nuser_matching = "user"\n')
    sync(store, config)
    world = emulator.world
    users = {u["external_id"]: u["user_principal_name"] for u in exported(store, "users")}
    stored = assets(store)
    owned = [d for c in readable(world) for d in c.devices.values() if d.userId in users]
    assert owned
    for device in owned:
        assert stored[device.id]["user"] == users[device.userId]


def test_serials_decide_matching_across_integrations(
    emulator,
    store,
    write_config,
    secrets,  # noqa: F811
):
    world = emulator.world
    customer = readable(world)[0]
    odd = world.give_odd_serials(customer.tenant_id)
    config = csp_config(emulator, write_config)
    sync(store, config, only=["tenants", "licences"])  # the customers, no assets yet
    # Another integration (an RMM) knows one real device and the placeholder serials.
    real = next(
        d
        for d in customer.devices.values()
        if d.id not in odd and d.serialNumber and d.serialNumber not in ODD_SERIALS
    )
    with store.unit() as connection:
        customer_id = connection.execute(
            sa.select(schema.customers.c.id).where(schema.customers.c.name == customer.name)
        ).scalar_one()
        now = utcnow()
        for serial in [f"  {real.serialNumber.lower()} ", *(s for s in ODD_SERIALS if s)]:
            connection.execute(
                sa.insert(schema.assets).values(
                    customer_id=customer_id,
                    source="rmm",
                    serial_number=serial,
                    match_key=serial.strip().casefold(),
                    active=True,
                    created_at=now,
                    updated_at=now,
                    attributes={},
                    custom_fields={},
                )
            )
    result = sync(store, config)
    stored = assets(store)
    rmm = [a for a in stored.values() if a["source"] == "rmm"]
    linked = [a for a in rmm if a["external_id"]]
    assert [a["external_id"] for a in linked] == [real.id]  # the real serial, only
    assert all(stored[device_id]["source"] == "intune" for device_id in odd)
    shared = {v for v in odd.values() if v not in ODD_SERIALS}
    twins = [device_id for device_id, serial in odd.items() if serial in shared]
    assert len({stored[d]["id"] for d in twins}) == 2  # each keeps its own asset
    warnings = [p.reason for p in result.problems if p.outcome == "warning"]
    assert any("each keeps its own asset" in w for w in warnings)


def test_a_device_that_leaves_and_returns_and_sense_devices(
    emulator,
    store,
    write_config,
    secrets,  # noqa: F811
):
    world = emulator.world
    customer = readable(world)[0]
    device = next(iter(customer.devices.values()))
    sense = world.add_device(customer.tenant_id, managementAgent="msSense")
    config = csp_config(emulator, write_config)
    sync(store, config)
    assert assets(store)[sense.id]["active"] is True

    world.remove_device(customer.tenant_id, device.id)
    excluding = csp_config(emulator, write_config, extra="[assets]\nexclude_sense = true\n")
    result = sync(store, excluding)
    stored = assets(store)
    assert (stored[device.id]["active"], stored[device.id]["status"]) == (False, "Deleted")
    assert stored[sense.id]["active"] is True  # left out, not taken for gone
    assert any("Sense" in p.reason for p in result.problems if p.outcome == "skipped")

    world.add_device(customer.tenant_id, **_fields_of(device))
    sync(store, excluding)
    back = assets(store)[device.id]
    assert (back["active"], back["status"], back["id"]) == (True, "Active", stored[device.id]["id"])


def _fields_of(device: Any) -> dict[str, Any]:
    return {f.name: getattr(device, f.name) for f in attrs.fields(type(device))}
