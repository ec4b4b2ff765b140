"""The emulated Microsoft Graph v1.0: paging, $select/$filter, delta rounds, permissions,
licences, Intune devices, GDAP, and conformance with Microsoft's documented samples."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from conformance import assert_conforms, load_sample

from halo_microsoft_emulator import app
from halo_microsoft_emulator.server import EmulatorServer
from halo_microsoft_emulator.world import Customer

GRAPH = "/graph/v1.0"
NEVER = "0001-01-01T00:00:00Z"


# -- helpers ---------------------------------------------------------------------------------------


def partner_of(server: EmulatorServer):
    return next(iter(server.world.partners.values()))


def customer(server: EmulatorServer, index: int = 0) -> Customer:
    return list(server.world.customers.values())[index]


def token(
    server: EmulatorServer,
    tenant: str | None = None,
    *,
    roles: tuple[str, ...] | None = None,
    extra: tuple[str, ...] = (),
    resource: str = app.GRAPH,
) -> str:
    partner = partner_of(server)
    issued = server.app.tokens.issue(
        client_id=partner.gdap_app.client_id,
        tenant=tenant or customer(server).tenant_id,
        resource=resource,
        scopes=("https://graph.microsoft.com/.default",),
        roles=(tuple(partner.gdap_app.permissions) if roles is None else roles) + extra,
    )
    return issued.value


def call(
    server: EmulatorServer, path: str, bearer: str | None, method: str = "GET", **kwargs: Any
) -> requests.Response:
    url = path if path.startswith("https://") else server.base_url + GRAPH + path
    headers = dict(kwargs.pop("headers", {}))
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return requests.request(
        method, url, headers=headers, verify=str(server.ca_bundle), timeout=30, **kwargs
    )


def get(server: EmulatorServer, path: str, bearer: str | None, **kwargs: Any) -> dict[str, Any]:
    response = call(server, path, bearer, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def pages(server: EmulatorServer, path: str, bearer: str) -> list[dict[str, Any]]:
    """Every page, following @odata.nextLink to the end."""
    found = [get(server, path, bearer)]
    while "@odata.nextLink" in found[-1]:
        link = found[-1]["@odata.nextLink"]
        assert link.startswith(server.base_url + "/graph/v1.0/"), link
        found.append(get(server, link, bearer))
        assert len(found) < 500, "runaway paging"
    return found


def delta_round(server: EmulatorServer, path: str, bearer: str) -> tuple[list[dict[str, Any]], str]:
    """The objects of one delta round and the deltaLink that ends it."""
    found = pages(server, path, bearer)
    for page in found[:-1]:
        assert "@odata.deltaLink" not in page
    assert "@odata.deltaLink" in found[-1] and "@odata.nextLink" not in found[-1]
    return [item for page in found for item in page["value"]], found[-1]["@odata.deltaLink"]


def error_of(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def live_users(tenant: Customer) -> set[str]:
    return {u.id for u in tenant.users.values() if u.removed is None}


def grow(server: EmulatorServer, tenant: Customer, count: int) -> None:
    for _ in range(count):
        server.world.add_user(tenant.tenant_id)


# -- users -------------------------------------------------------------------------------------------


def test_users_paging_follows_next_links_without_duplicates(emulator):
    tenant = customer(emulator)
    grow(emulator, tenant, 230)
    bearer = token(emulator)
    found = pages(emulator, "/users?$top=50&$select=id,displayName", bearer)
    sizes = [len(page["value"]) for page in found]
    assert all(size == 50 for size in sizes[:-1]) and 0 < sizes[-1] <= 50
    ids = [user["id"] for page in found for user in page["value"]]
    assert len(ids) == len(set(ids)) and set(ids) == live_users(tenant)
    assert ids == sorted(ids)
    assert all(
        page["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users(id,displayName)"
        for page in found
    )
    assert "$top=50" in found[0]["@odata.nextLink"] and "$skiptoken=" in found[0]["@odata.nextLink"]
    # The default page is 100; no next link on the last page.
    default = get(emulator, "/users", bearer)
    assert len(default["value"]) == 100 and "@odata.nextLink" in default


def test_top_out_of_bounds_is_refused_with_graphs_words(emulator):
    bearer = token(emulator)
    for bad in ("0", "1000", "abc"):
        message = error_of(
            call(emulator, f"/users?$top={bad}", bearer), 400, "Request_UnsupportedQuery"
        )
        assert (
            message == f"Invalid page size specified: '{bad}'. Must be between 1 and 999 inclusive."
        )
    assert len(get(emulator, "/users?$top=999", bearer)["value"]) == len(
        live_users(customer(emulator))
    )
    error_of(call(emulator, "/groups?$top=1000", bearer), 400, "Request_UnsupportedQuery")


def test_select_and_filter_on_users(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    body = get(
        emulator,
        "/users?$select=displayName,accountEnabled,userType,usageLocation,assignedLicenses"
        "&$filter=accountEnabled eq true and userType eq 'Member'",
        bearer,
    )
    assert body["@odata.context"].endswith(
        "#users(displayName,accountEnabled,userType,usageLocation,assignedLicenses)"
    )
    expected = {
        u.id
        for u in tenant.users.values()
        if u.removed is None and u.accountEnabled and u.userType == "Member"
    }
    assert {u["id"] for u in body["value"]} == expected
    for user in body["value"]:
        assert set(user) == {
            "displayName",
            "accountEnabled",
            "userType",
            "usageLocation",
            "assignedLicenses",
            "id",
        }
        assert all(
            set(licence) == {"disabledPlans", "skuId"} for licence in user["assignedLicenses"]
        )
    disabled = get(
        emulator, "/users?$filter=accountEnabled eq false&$select=id,accountEnabled", bearer
    )["value"]
    assert {u["id"] for u in disabled} == {
        u.id for u in tenant.users.values() if u.removed is None and not u.accountEnabled
    }
    guests = get(
        emulator, "/users?$filter=userType eq 'Guest'&$select=id,userType,usageLocation", bearer
    )["value"]
    assert all(u["userType"] == "Guest" and u["usageLocation"] is None for u in guests)
    # Unselected properties with no value are still there, as null.
    plain = get(emulator, "/users?$top=5", bearer)["value"]
    assert all("preferredLanguage" in u and u["preferredLanguage"] is None for u in plain)
    message = error_of(
        call(emulator, "/users?$select=displayName,favouriteColour", bearer),
        400,
        "Request_BadRequest",
    )
    assert "favouriteColour" in message
    error_of(
        call(emulator, "/users?$filter=startswith(displayName,'A')", bearer),
        400,
        "Request_UnsupportedQuery",
    )
    error_of(call(emulator, "/users?$select=skills", bearer), 501, "NotImplemented")
    counted = get(
        emulator, "/users?$count=true&$top=1", bearer, headers={"ConsistencyLevel": "eventual"}
    )
    assert counted["@odata.count"] == len(live_users(tenant))
    error_of(call(emulator, "/users?$count=true", bearer), 400, "Request_BadRequest")


def test_user_by_id_or_upn_and_removed_users_are_gone(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    user = next(u for u in tenant.users.values() if u.userType == "Member" and u.removed is None)
    by_id = get(emulator, f"/users/{user.id}", bearer)
    assert by_id["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    assert by_id["id"] == user.id and by_id["userPrincipalName"] == user.userPrincipalName
    by_upn = get(emulator, f"/users/{user.userPrincipalName.upper()}?$select=id,mail", bearer)
    assert by_upn == {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,mail)/$entity",
        "id": user.id,
        "mail": user.mail,
    }
    emulator.world.soft_delete_user(tenant.tenant_id, user.id)
    error_of(call(emulator, f"/users/{user.id}", bearer), 404, "Request_ResourceNotFound")
    purged = next(u for u in tenant.users.values() if u.removed is None and u.id != user.id)
    emulator.world.hard_delete_user(tenant.tenant_id, purged.id)
    listed = {
        u["id"] for page in pages(emulator, "/users?$select=id", bearer) for u in page["value"]
    }
    assert user.id not in listed and purged.id not in listed and listed == live_users(tenant)


# -- signInActivity -------------------------------------------------------------------------------------


def test_sign_in_activity_needs_audit_log_permission(emulator):
    tenant = customer(emulator)
    path = "/users?$select=displayName,signInActivity&$top=999"
    message = error_of(
        call(emulator, path, token(emulator)), 403, "Authentication_MSGraphPermissionMissing"
    )
    assert "AuditLog.Read.All" in message
    grow(emulator, tenant, 110)
    never = emulator.world.add_user(tenant.tenant_id, lastSignInDateTime=None)
    bearer = token(emulator, extra=("AuditLog.Read.All",))
    found = pages(emulator, path, bearer)
    assert (
        len(found[0]["value"]) == 120 and "@odata.nextLink" in found[0]
    )  # $top above 120 is capped
    users = {u["id"]: u for page in found for u in page["value"]}
    assert set(users) == live_users(tenant)
    activity = users[never.id]["signInActivity"]
    assert activity["lastSignInDateTime"] == NEVER and activity["lastSignInRequestId"] == ""
    signed_in = next(
        u for u in tenant.users.values() if u.lastSignInDateTime is not None and u.removed is None
    )
    assert users[signed_in.id]["signInActivity"]["lastSignInDateTime"] == app.iso(
        signed_in.lastSignInDateTime
    )
    # Delta refuses signInActivity whatever the permissions (microsoft-graph-explorer-v4#3189).
    message = error_of(
        call(emulator, "/users/delta?$select=id,signInActivity", bearer), 400, "BadRequest"
    )
    assert "not supported for the following properties: signInActivity" in message
    emulator.app.state["graph.non_premium_tenants"] = {tenant.tenant_id}
    error_of(
        call(emulator, path, bearer), 403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
    )


# -- delta -------------------------------------------------------------------------------------------------


def test_users_delta_rounds_yield_exactly_the_changes(emulator):
    world = emulator.world
    tenant = customer(emulator)
    grow(emulator, tenant, 230)  # more than one delta page
    bearer = token(emulator)
    first = get(emulator, "/users/delta?$select=displayName,jobTitle", bearer)
    assert "@odata.nextLink" in first and "@odata.deltaLink" not in first
    items, link = delta_round(emulator, "/users/delta?$select=displayName,jobTitle", bearer)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)) and set(ids) == live_users(tenant)
    assert all(set(i) == {"displayName", "jobTitle", "id"} for i in items)

    alive = sorted(live_users(tenant))
    changed, soft, hard, restored = alive[:4]
    added = world.add_user(tenant.tenant_id, displayName="Newly Added")
    world.modify_user(tenant.tenant_id, changed, jobTitle="Chief Delta Officer")
    world.soft_delete_user(tenant.tenant_id, soft)
    world.hard_delete_user(tenant.tenant_id, hard)
    world.soft_delete_user(tenant.tenant_id, restored)
    world.restore_user(tenant.tenant_id, restored)
    other = customer(emulator, 1)
    world.modify_user(other.tenant_id, next(iter(other.users)), jobTitle="elsewhere")

    items, link = delta_round(emulator, link, bearer)
    by_id = {i["id"]: i for i in items}
    assert set(by_id) == {added.id, changed, soft, hard, restored}
    assert by_id[added.id] == {
        "displayName": "Newly Added",
        "jobTitle": added.jobTitle,
        "id": added.id,
    }
    assert by_id[changed]["jobTitle"] == "Chief Delta Officer"
    assert by_id[soft] == {"id": soft, "@removed": {"reason": "changed"}}
    assert by_id[hard] == {"id": hard, "@removed": {"reason": "deleted"}}
    assert "@removed" not in by_id[restored] and by_id[restored]["displayName"]

    items, link = delta_round(emulator, link, bearer)
    assert items == []  # no changes: an empty page that still ends the round
    assert link.startswith(emulator.base_url + "/graph/v1.0/users/delta?$deltatoken=")


def test_delta_from_now_with_latest_and_id_filter(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    for spelling in ("$deltatoken=latest", "$deltaToken=latest"):
        body = get(emulator, f"/users/delta?{spelling}&$select=displayName", bearer)
        assert body["value"] == [] and "@odata.deltaLink" in body and "@odata.nextLink" not in body
    one, two = sorted(live_users(tenant))[:2]
    emulator.world.modify_user(tenant.tenant_id, two, displayName="Before the token")
    items, link = delta_round(emulator, body["@odata.deltaLink"], bearer)
    assert [i["id"] for i in items] == [two]  # changed after "latest" was taken
    items, link = delta_round(
        emulator, f"/users/delta?$filter=id eq '{one}'&$select=displayName", bearer
    )
    assert [i["id"] for i in items] == [one]
    emulator.world.modify_user(tenant.tenant_id, two, displayName="Not tracked")
    emulator.world.modify_user(tenant.tenant_id, one, displayName="Tracked")
    items, _ = delta_round(emulator, link, bearer)
    assert items == [{"displayName": "Tracked", "id": one}]


def test_delta_refuses_top_expand_orderby(emulator):
    bearer = token(emulator)
    for option in ("$top=10", "$expand=manager", "$orderby=displayName"):
        error_of(call(emulator, f"/users/delta?{option}", bearer), 400, "Request_UnsupportedQuery")


def test_expired_and_garbage_delta_tokens_answer_410_with_a_location(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    _, link = delta_round(emulator, "/users/delta?$select=displayName", bearer)
    emulator.world.expire_delta_tokens(tenant.tenant_id)
    response = call(emulator, link, bearer)
    error_of(response, 410, "syncStateNotFound")
    assert_conforms(load_sample("graph", "delta_token_expired"), response.json())
    location = response.headers["Location"]
    assert (
        location.startswith(emulator.base_url + "/graph/v1.0/users/delta")
        and "$select=displayName" in location
    )
    items, _ = delta_round(emulator, location, bearer)  # starting over works
    assert {i["id"] for i in items} == live_users(tenant)
    error_of(
        call(emulator, "/users/delta?$deltatoken=not-a-token", bearer), 410, "syncStateNotFound"
    )
    error_of(call(emulator, "/groups/delta?$skiptoken=Zm9v", bearer), 410, "syncStateNotFound")
    # A token of another tenant is not this tenant's sync state.
    other = token(emulator, customer(emulator, 1).tenant_id)
    error_of(call(emulator, link, other), 410, "syncStateNotFound")


def test_groups_delta_tracks_members(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    items, link = delta_round(emulator, "/groups/delta", bearer)
    staff = next(g for g in tenant.groups.values() if g.displayName == "All Staff")
    item = next(i for i in items if i["id"] == staff.id)
    members = {m["id"]: m["@odata.type"] for m in item["members@delta"]}
    assert members == {
        m: "#microsoft.graph.user" if m in tenant.users else "#microsoft.graph.group"
        for m in staff.members
    }
    leaver = next(m for m in staff.members if m in tenant.users)
    world.hard_delete_user(tenant.tenant_id, leaver)
    items, link = delta_round(emulator, link, bearer)
    item = next(i for i in items if i["id"] == staff.id)
    assert {
        "@odata.type": "#microsoft.graph.user",
        "id": leaver,
        "@removed": {"reason": "deleted"},
    } in item["members@delta"]
    assert all(i["id"] in tenant.groups for i in items)
    selected, _ = delta_round(emulator, "/groups/delta?$select=displayName", bearer)
    assert all(set(i) == {"displayName", "id"} for i in selected)


def test_groups_delta_lists_only_membership_changes_in_later_rounds(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    staff = next(g for g in tenant.groups.values() if g.displayName == "All Staff")
    finance = next(g for g in tenant.groups.values() if g.displayName == "Finance Team")
    path = f"/groups/delta?$filter=id eq '{staff.id}'&$select=displayName,members"
    items, link = delta_round(emulator, path, bearer)
    assert [i["id"] for i in items] == [staff.id] and len(items[0]["members@delta"]) == len(
        staff.members
    )
    outsider = world.add_user(tenant.tenant_id)
    leaver = next(m for m in staff.members if m in tenant.users)
    world.add_member(tenant.tenant_id, staff.id, outsider.id)
    world.remove_member(tenant.tenant_id, staff.id, leaver)
    world.add_member(tenant.tenant_id, finance.id, outsider.id)  # not tracked by the filter
    items, link = delta_round(emulator, link, bearer)
    assert items == [
        {
            "displayName": "All Staff",
            "id": staff.id,
            "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": outsider.id},
                {
                    "@odata.type": "#microsoft.graph.user",
                    "id": leaver,
                    "@removed": {"reason": "deleted"},
                },
            ],
        }
    ]
    items, _ = delta_round(emulator, link, bearer)
    assert items == []
    _, latest = delta_round(emulator, path + "&$deltatoken=latest", bearer)
    world.add_member(tenant.tenant_id, staff.id, finance.id)  # nesting a group
    items, _ = delta_round(emulator, latest, bearer)
    assert items[0]["members@delta"] == [
        {"@odata.type": "#microsoft.graph.group", "id": finance.id}
    ]


def test_admin_routes_change_group_membership(emulator):
    tenant = customer(emulator)
    admin = f"{emulator.base_url}/_admin/tenants/{tenant.tenant_id}/groups"
    verify = str(emulator.ca_bundle)
    user = sorted(live_users(tenant))[0]
    made = requests.post(
        admin, json={"displayName": "Contractors", "members": [user]}, verify=verify, timeout=30
    )
    assert made.status_code == 201, made.text
    group = tenant.groups[made.json()["id"]]
    assert group.displayName == "Contractors" and group.members == [user]
    staff = next(g for g in tenant.groups.values() if g.displayName == "All Staff")
    nested = requests.post(
        f"{admin}/{staff.id}/members", json={"id": group.id}, verify=verify, timeout=30
    )
    assert nested.status_code == 204 and group.id in staff.members
    gone = requests.delete(f"{admin}/{group.id}/members/{user}", verify=verify, timeout=30)
    assert gone.status_code == 204 and group.members == []
    unknown = requests.post(
        f"{admin}/{group.id}/members", json={"id": "no-such-object"}, verify=verify, timeout=30
    )
    assert unknown.status_code == 404


def test_filter_in_takes_up_to_fifteen_values(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    wanted = sorted(live_users(tenant))[:15]
    quoted = ",".join(f"'{i.upper()}'" for i in wanted)
    found = get(emulator, f"/users?$filter=id in ({quoted})&$select=id", bearer)
    assert sorted(u["id"] for u in found["value"]) == wanted
    extra = quoted + ",'00000000-0000-0000-0000-000000000000'"
    message = error_of(
        call(emulator, f"/users?$filter=id in ({extra})", bearer), 400, "Request_UnsupportedQuery"
    )
    assert "Max allowed: 15" in message
    group = next(iter(tenant.groups.values()))
    found = get(
        emulator, f"/groups?$filter=displayName in ('nobody', '{group.displayName}')", bearer
    )
    assert [g["id"] for g in found["value"]] == [group.id]


# -- groups -----------------------------------------------------------------------------------------------


def test_transitive_members_flatten_nested_groups(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    staff = next(g for g in tenant.groups.values() if g.displayName == "All Staff")
    nested = tenant.groups[next(m for m in staff.members if m in tenant.groups)]
    newcomer = world.add_user(tenant.tenant_id)
    with world.lock:
        nested.members.append(newcomer.id)  # only in the nested group
    found = pages(emulator, f"/groups/{staff.id}/transitiveMembers?$top=7", bearer)
    assert all(len(page["value"]) <= 7 for page in found)
    items = [i for page in found for i in page["value"]]
    by_id = {i["id"]: i for i in items}
    assert len(by_id) == len(items)
    assert by_id[nested.id]["@odata.type"] == "#microsoft.graph.group"
    assert by_id[newcomer.id]["@odata.type"] == "#microsoft.graph.user"
    direct_users = {
        m for m in staff.members if m in tenant.users and tenant.users[m].removed is None
    }
    assert {
        i for i, v in by_id.items() if v["@odata.type"] == "#microsoft.graph.user"
    } == direct_users | {newcomer.id}
    cast = (
        f"/groups/{staff.id}/transitiveMembers/microsoft.graph.user?$select=displayName,id&$top=999"
    )
    # An OData cast is an advanced query: ConsistencyLevel: eventual and $count=true, both.
    advanced = {"ConsistencyLevel": "eventual"}
    error_of(call(emulator, cast, bearer), 400, "Request_UnsupportedQuery")
    error_of(call(emulator, cast, bearer, headers=advanced), 400, "Request_UnsupportedQuery")
    error_of(call(emulator, cast + "&$count=true", bearer), 400, "Request_BadRequest")
    users = get(emulator, cast + "&$count=true", bearer, headers=advanced)
    assert (
        users["@odata.context"]
        == "https://graph.microsoft.com/v1.0/$metadata#users(displayName,id)"
    )
    assert {u["id"] for u in users["value"]} == direct_users | {newcomer.id}
    assert users["@odata.count"] == len(users["value"])
    assert all("@odata.type" not in u for u in users["value"])
    groups = get(
        emulator,
        f"/groups/{staff.id}/transitiveMembers/microsoft.graph.group?$select=id&$count=true",
        bearer,
        headers=advanced,
    )
    assert nested.id in {g["id"] for g in groups["value"]}
    assert newcomer.id not in {g["id"] for g in groups["value"]}
    error_of(
        call(emulator, "/groups/00000000-0000-4000-8000-000000000000/transitiveMembers", bearer),
        404,
        "Request_ResourceNotFound",
    )


def test_groups_list_select(emulator):
    tenant = customer(emulator)
    body = get(
        emulator,
        "/groups?$select=id,displayName,mail&$filter=securityEnabled eq true",
        token(emulator),
    )
    assert (
        body["@odata.context"]
        == "https://graph.microsoft.com/v1.0/$metadata#groups(id,displayName,mail)"
    )
    assert {g["id"] for g in body["value"]} == set(tenant.groups)


# -- licences -------------------------------------------------------------------------------------------


def _skus(server: EmulatorServer, bearer: str) -> dict[str, dict[str, Any]]:
    return {s["skuId"]: s for s in get(server, "/subscribedSkus", bearer)["value"]}


def test_assign_license_changes_consumed_units(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    sku_id = next(iter(tenant.skus))
    subscription = tenant.skus[sku_id].subscriptionIds[0]
    world.set_quantity(tenant.tenant_id, subscription, tenant.consumed(sku_id) + 1)
    before = _skus(emulator, bearer)[sku_id]
    assert before["consumedUnits"] == tenant.consumed(sku_id)
    assert before["id"] == f"{tenant.tenant_id}_{sku_id}"
    user = next(
        u
        for u in tenant.users.values()
        if u.removed is None
        and u.usageLocation
        and all(a["skuId"] != sku_id for a in u.assignedLicenses)
    )
    _, link = delta_round(emulator, "/users/delta?$select=assignedLicenses", bearer)
    body = {"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []}
    response = call(emulator, f"/users/{user.id}/assignLicense", bearer, method="POST", json=body)
    assert response.status_code == 200, response.text
    assert_conforms(load_sample("graph", "user_assign_license"), response.json())
    assert {"disabledPlans": [], "skuId": sku_id} in response.json()["assignedLicenses"]
    assert _skus(emulator, bearer)[sku_id]["consumedUnits"] == before["consumedUnits"] + 1
    items, _ = delta_round(emulator, link, bearer)
    assert [i["id"] for i in items] == [user.id]  # the change is in the world's log

    # No seat left now: the next user is refused.
    another = next(
        u
        for u in tenant.users.values()
        if u.removed is None
        and u.usageLocation
        and all(a["skuId"] != sku_id for a in u.assignedLicenses)
    )
    message = error_of(
        call(emulator, f"/users/{another.id}/assignLicense", bearer, method="POST", json=body),
        400,
        "Request_BadRequest",
    )
    assert message == f"Subscription with SKU {sku_id} does not have any available licenses."
    removal = {"addLicenses": [], "removeLicenses": [sku_id]}
    assert (
        call(
            emulator, f"/users/{user.id}/assignLicense", bearer, method="POST", json=removal
        ).status_code
        == 200
    )
    assert _skus(emulator, bearer)[sku_id]["consumedUnits"] == before["consumedUnits"]
    message = error_of(
        call(emulator, f"/users/{user.id}/assignLicense", bearer, method="POST", json=removal),
        400,
        "Request_BadRequest",
    )
    assert message == "User does not have a corresponding license."


def test_assign_license_errors(emulator):
    tenant = customer(emulator)
    bearer = token(emulator)
    member = next(u for u in tenant.users.values() if u.removed is None and u.usageLocation)
    unknown = "0118a350-71fc-4ec3-8f0c-6a1cb8867561"
    path = f"/users/{member.id}/assignLicense"
    body = {"addLicenses": [{"disabledPlans": [], "skuId": unknown}], "removeLicenses": []}
    message = error_of(
        call(emulator, path, bearer, method="POST", json=body), 400, "Request_BadRequest"
    )
    assert message == f"License {unknown} does not correspond to a valid company License."
    message = error_of(
        call(emulator, path, bearer, method="POST", json={"addLicenses": []}),
        400,
        "Request_BadRequest",
    )
    assert message.endswith("The missing parameters are: removeLicenses.")
    sku_id = next(iter(tenant.skus))
    guest = emulator.world.add_user(tenant.tenant_id, userType="Guest", usageLocation=None)
    good = {"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []}
    message = error_of(
        call(emulator, f"/users/{guest.id}/assignLicense", bearer, method="POST", json=good),
        400,
        "Request_BadRequest",
    )
    assert message == "License assignment cannot be done for user with invalid usage location."
    reader = token(emulator, roles=("User.Read.All",))
    error_of(
        call(emulator, path, reader, method="POST", json=good), 403, "Authorization_RequestDenied"
    )


def test_subscribed_skus_select(emulator):
    tenant = customer(emulator)
    body = get(
        emulator, "/subscribedSkus?$select=skuId,skuPartNumber,consumedUnits", token(emulator)
    )
    assert (
        body["@odata.context"]
        == "https://graph.microsoft.com/v1.0/$metadata#subscribedSkus(skuId,skuPartNumber,consumedUnits)"
    )
    assert {s["skuId"] for s in body["value"]} == set(tenant.skus)
    assert all(s["consumedUnits"] == tenant.consumed(s["skuId"]) for s in body["value"])
    error_of(
        call(emulator, "/subscribedSkus?$filter=skuPartNumber eq 'SPB'", token(emulator)),
        400,
        "Request_UnsupportedQuery",
    )


# -- Intune ------------------------------------------------------------------------------------------------


def test_managed_devices_page_filter_and_ms_sense(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    sensor = world.add_device(
        tenant.tenant_id, managementAgent="msSense", operatingSystem="Windows"
    )
    found = pages(emulator, "/deviceManagement/managedDevices?$top=4", bearer)
    assert all(len(page["value"]) <= 4 for page in found) and len(found) > 1
    devices = {d["id"]: d for page in found for d in page["value"]}
    assert set(devices) == set(tenant.devices)
    assert devices[sensor.id]["managementAgent"] == "msSense"
    assert all(d["@odata.type"] == "#microsoft.graph.managedDevice" for d in devices.values())
    windows = get(
        emulator,
        "/deviceManagement/managedDevices?$filter=operatingSystem eq 'Windows'&$select=id,operatingSystem",
        bearer,
    )
    assert (
        windows["@odata.context"]
        == "https://graph.microsoft.com/v1.0/$metadata#deviceManagement/managedDevices(id,operatingSystem)"
    )
    assert {d["id"] for d in windows["value"]} == {
        d.id for d in tenant.devices.values() if d.operatingSystem == "Windows"
    }
    assert len(get(emulator, "/deviceManagement/managedDevices", bearer)["value"]) == len(
        tenant.devices
    )  # default page 1000
    tenant.has_intune = False
    message = error_of(
        call(emulator, "/deviceManagement/managedDevices", bearer), 400, "BadRequest"
    )
    assert message == "Request not applicable to target tenant."


def test_a_users_managed_devices_are_those_listing_the_user(emulator):
    world = emulator.world
    tenant = customer(emulator)
    bearer = token(emulator)
    owner, other = sorted(
        (u for u in tenant.users.values() if u.removed is None and u.userType == "Member"),
        key=lambda u: u.id,
    )[:2]
    for _ in range(5):
        world.add_device(
            tenant.tenant_id, userId=owner.id, userPrincipalName=owner.userPrincipalName
        )
    shared = world.add_device(tenant.tenant_id, userId=other.id, sharedWith=[owner.id])
    emulator.app.state["graph.device_page"] = 2
    found = pages(emulator, f"/users/{owner.id}/managedDevices", bearer)
    assert len(found) > 1 and all(len(page["value"]) <= 2 for page in found)
    assert found[0]["@odata.context"] == (
        f"https://graph.microsoft.com/v1.0/$metadata#users('{owner.id}')/managedDevices"
    )
    ids = [d["id"] for page in found for d in page["value"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {
        d.id for d in tenant.devices.values() if d.userId == owner.id or owner.id in d.sharedWith
    }
    assert shared.id in ids
    by_upn = pages(
        emulator, f"/users/{owner.userPrincipalName}/managedDevices?$select=id,serialNumber", bearer
    )
    assert {d["id"] for page in by_upn for d in page["value"]} == set(ids)
    assert set(by_upn[0]["value"][0]) == {"@odata.type", "id", "serialNumber"}
    assert shared.id in {
        d["id"]
        for page in pages(emulator, f"/users/{other.id}/managedDevices", bearer)
        for d in page["value"]
    }
    error_of(
        call(emulator, "/users/00000000-0000-4000-8000-000000000000/managedDevices", bearer),
        404,
        "Request_ResourceNotFound",
    )
    unprivileged = token(emulator, roles=("User.Read.All",))
    error_of(call(emulator, f"/users/{owner.id}/managedDevices", unprivileged), 403, "Forbidden")
    tenant.has_intune = False
    error_of(call(emulator, f"/users/{owner.id}/managedDevices", bearer), 400, "BadRequest")


def test_a_device_that_never_synced_says_never(emulator):
    tenant = customer(emulator)
    device = emulator.world.add_device(tenant.tenant_id, lastSyncDateTime=None)
    body = get(emulator, f"/deviceManagement/managedDevices/{device.id}", token(emulator))
    assert body["lastSyncDateTime"] == NEVER


def test_odd_serials_are_given_deterministically_by_seed():
    from halo_microsoft_emulator.world import JUNK_SERIALS, ODD_SERIALS, generate

    world = generate(seed=11, customers=2, users=5, devices=3, odd_serials=True)
    again = generate(seed=11, customers=2, users=5, devices=3, odd_serials=True)
    for tenant, twin in zip(world.customers.values(), again.customers.values(), strict=True):
        assert tenant.odd_serials == twin.odd_serials and len(tenant.odd_serials) == 7
        serials = [tenant.devices[i].serialNumber for i in tenant.odd_serials]
        assert sorted(s for s in serials if s in ODD_SERIALS) == sorted(ODD_SERIALS)
        [(duplicate, count)] = [(s, serials.count(s)) for s in set(serials) if s not in ODD_SERIALS]
        assert count == 2 and duplicate not in JUNK_SERIALS
        everywhere = [d.serialNumber for d in tenant.devices.values()]
        assert everywhere.count(duplicate) == 2
    # Without the option the world is what it always was.
    plain = generate(seed=11, customers=2, users=5, devices=3)
    assert all(not c.odd_serials for c in plain.customers.values())
    assert [c.tenant_id for c in plain.customers.values()] == list(world.customers)


def test_odd_serials_through_the_admin_api(emulator):
    tenant = customer(emulator)
    response = requests.post(
        f"{emulator.base_url}/_admin/tenants/{tenant.tenant_id}/odd-serials",
        verify=str(emulator.ca_bundle),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json() == tenant.odd_serials and len(tenant.odd_serials) == 7


# -- organization and GDAP ---------------------------------------------------------------------------------------


def test_organization_of_the_tenant(emulator):
    tenant = customer(emulator)
    body = get(emulator, "/organization", token(emulator))
    (org,) = body["value"]
    assert org["id"] == tenant.tenant_id and org["displayName"] == tenant.name
    assert org["verifiedDomains"][0]["name"] == tenant.domain and org["tenantType"] == "AAD"
    partner = partner_of(emulator)
    (own,) = get(
        emulator, "/organization?$select=id,partnerTenantType", token(emulator, partner.tenant_id)
    )["value"]
    assert own == {"id": partner.tenant_id, "partnerTenantType": "ResellerPartnerDelegatedAdmin"}


def test_gdap_relationships_and_access_assignments(emulator):
    world = emulator.world
    partner = partner_of(emulator)
    bearer = token(emulator, partner.tenant_id)
    mine = [
        c
        for c in world.customers.values()
        if c.partner_tenant == partner.tenant_id and c.gdap_status
    ]
    found = pages(emulator, "/tenantRelationships/delegatedAdminRelationships?$top=2", bearer)
    relationships = {r["id"]: r for page in found for r in page["value"]}
    assert set(relationships) == {c.relationship_id for c in mine}
    for tenant in mine:
        relationship = relationships[tenant.relationship_id]
        assert relationship["status"] == tenant.gdap_status
        assert relationship["customer"] == {
            "tenantId": tenant.tenant_id,
            "displayName": tenant.name,
        }
        assert [
            r["roleDefinitionId"] for r in relationship["accessDetails"]["unifiedRoles"]
        ] == tenant.gdap_roles
    active = get(
        emulator,
        "/tenantRelationships/delegatedAdminRelationships?$filter=status eq 'active'",
        bearer,
    )["value"]
    assert {r["id"] for r in active} == {
        c.relationship_id for c in mine if c.gdap_status == "active"
    }
    error_of(
        call(emulator, "/tenantRelationships/delegatedAdminRelationships?$top=301", bearer),
        400,
        "BadRequest",
    )
    chosen = next(c for c in mine if c.gdap_status == "active")
    assignments = get(
        emulator,
        f"/tenantRelationships/delegatedAdminRelationships/{chosen.relationship_id}/accessAssignments",
        bearer,
    )
    (assignment,) = assignments["value"]
    assert (
        assignment["status"] == "active"
        and assignment["accessContainer"]["accessContainerType"] == "securityGroup"
    )
    expired = next(c for c in mine if c.gdap_status == "expired")
    path = f"/tenantRelationships/delegatedAdminRelationships/{expired.relationship_id}/accessAssignments"
    assert get(emulator, path, bearer)["value"] == []
    error_of(
        call(
            emulator,
            "/tenantRelationships/delegatedAdminRelationships/nope/accessAssignments",
            bearer,
        ),
        404,
        "NotFound",
    )


# -- authorization -----------------------------------------------------------------------------------------------


def test_tokens_are_checked(emulator):
    error_of(call(emulator, "/users", None), 401, "InvalidAuthenticationToken")
    wrong = token(emulator, resource=app.PARTNER_CENTER)
    error_of(call(emulator, "/users", wrong), 401, "InvalidAuthenticationToken")
    unprivileged = token(emulator, roles=("Organization.Read.All",))
    message = error_of(call(emulator, "/users", unprivileged), 403, "Authorization_RequestDenied")
    assert message == "Insufficient privileges to complete the operation."
    # Intune refuses in its own words: a JSON document naming the scopes it wants.
    denied = json.loads(
        error_of(call(emulator, "/deviceManagement/managedDevices", unprivileged), 403, "Forbidden")
    )
    assert denied["_version"] == 3
    assert denied["Message"].startswith(
        "Application is not authorized to perform this operation. Application must have one "
        "of the following scopes: DeviceManagementManagedDevices.Read.All, "
        "DeviceManagementManagedDevices.ReadWrite.All - "
    )
    error_of(
        call(emulator, "/users", token(emulator, partner_of(emulator).tenant_id)),
        403,
        "Authorization_RequestDenied",
    )
    error_of(
        call(emulator, "/users", token(emulator, "00000000-0000-4000-8000-00000000abcd")),
        401,
        "InvalidAuthenticationToken",
    )
    error_of(
        call(emulator, "/users?$skiptoken=garbage", token(emulator)),
        400,
        "Directory_ExpiredPageToken",
    )


# -- conformance with Microsoft's samples ----------------------------------------------------------------------------


def _sample_response(server: EmulatorServer, name: str) -> dict[str, Any]:
    world = server.world
    tenant = customer(server)
    bearer = token(server, extra=("AuditLog.Read.All",))
    partner = partner_of(server)
    staff = next(g for g in tenant.groups.values() if g.displayName == "All Staff")
    if name == "delegated_admin_relationships_list":
        return get(
            server,
            "/tenantRelationships/delegatedAdminRelationships",
            token(server, partner.tenant_id),
        )
    if name == "access_assignments_list":
        chosen = next(
            c
            for c in world.customers.values()
            if c.gdap_status == "active" and c.partner_tenant == partner.tenant_id
        )
        path = f"/tenantRelationships/delegatedAdminRelationships/{chosen.relationship_id}/accessAssignments"
        return get(server, path, token(server, partner.tenant_id))
    if name == "users_list":
        return get(server, "/users", bearer)
    if name == "users_list_assigned_licenses":
        return get(server, "/users?$select=id,mail,assignedLicenses", bearer)
    if name == "users_list_sign_in_activity":
        return get(server, "/users?$select=displayName,userPrincipalName,signInActivity", bearer)
    if name == "users_delta_initial":
        return get(server, "/users/delta?$select=displayName,givenName,surname", bearer)
    if name in ("users_delta_removed", "users_delta_final_page"):
        _, link = delta_round(server, "/users/delta?$select=displayName,givenName,surname", bearer)
        if name == "users_delta_removed":
            world.hard_delete_user(tenant.tenant_id, next(iter(live_users(tenant))))
        else:
            world.modify_user(
                tenant.tenant_id, next(iter(live_users(tenant))), displayName="Changed"
            )
        return get(server, link, bearer)
    if name == "delta_token_expired":
        return call(server, "/users/delta?$deltatoken=expired", bearer).json()
    if name == "subscribed_skus_list":
        return get(server, "/subscribedSkus", bearer)
    if name == "user_assign_license":
        sku_id = next(iter(tenant.skus))
        world.set_quantity(tenant.tenant_id, tenant.skus[sku_id].subscriptionIds[0], 10_000)
        user = next(u for u in tenant.users.values() if u.usageLocation and u.removed is None)
        body = {"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []}
        return call(
            server, f"/users/{user.id}/assignLicense", bearer, method="POST", json=body
        ).json()
    if name == "groups_list":
        return get(server, "/groups", bearer)
    if name == "groups_delta":
        return get(server, "/groups/delta", bearer)
    if name == "group_transitive_members":
        return get(server, f"/groups/{staff.id}/transitiveMembers", bearer)
    if name == "group_transitive_member_users":
        return get(
            server,
            f"/groups/{staff.id}/transitiveMembers/microsoft.graph.user"
            "?$count=true&$select=displayName,id",
            bearer,
            headers={"ConsistencyLevel": "eventual"},
        )
    if name == "managed_devices_list":
        return get(server, "/deviceManagement/managedDevices", bearer)
    if name == "organization_list":
        return get(server, "/organization", bearer)
    raise AssertionError(f"no request for sample {name}")


SAMPLES = sorted(
    p.stem
    for p in (
        __import__("pathlib").Path(__file__).parent / "data" / "microsoft_docs" / "graph"
    ).glob("*.json")
)


@pytest.mark.parametrize("name", SAMPLES)
def test_conforms_to_the_documented_sample(emulator, name):
    sample = load_sample("graph", name)
    actual = _sample_response(emulator, name)
    assert actual.get("value") != [], f"{name}: nothing to compare"
    assert_conforms(sample, actual)
    context = sample["response"].get("@odata.context")
    if context and name not in ("users_delta_final_page",):
        assert actual["@odata.context"] == context, name


def test_every_route_names_its_doc_page(emulator):
    graph_routes = {
        name: doc for name, (_, doc) in emulator.app.handlers.items() if name.startswith("graph.")
    }
    assert len(graph_routes) >= 15
    assert all(
        doc and doc.startswith("api-reference/v1.0/api/") and doc.endswith(".md")
        for doc in graph_routes.values()
    )
