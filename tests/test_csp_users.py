"""The Microsoft CSP module's users against the emulator: full and delta rounds, expired
and "latest" bookmarks, extra properties, transitive group memberships and sign-in dates
(`halo_microsoft_csp.users.fetch_users`, as the ``fetch_users`` hook runs it)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import pytest
import requests
import structlog
from structlog.testing import capture_logs

from halo_integrator_core import (
    LATEST_BOOKMARK,
    Checkpoint,
    DirectoryUser,
    ModuleContext,
    Notice,
    Removed,
    Tenant,
    TenantAccess,
    UserQuery,
    paging,
)
from halo_integrator_core.config import EndpointSettings, IntegratorSettings, SecretRef
from halo_integrator_core.errors import NotSupported
from halo_integrator_core.http import HttpClient
from halo_integrator_core.translation import parse_timestamp
from halo_microsoft_csp import plugin, users
from halo_microsoft_csp.settings import AppRegistration, Connection, MicrosoftCspSettings
from halo_microsoft_emulator import graph as emulated_graph
from halo_microsoft_emulator.world import Customer, World

GROUPS = ("All Staff", "Loc-London", "Finance Team")


@pytest.fixture
def context(emulator, monkeypatch, tmp_path):
    partner = next(iter(emulator.world.partners.values()))
    monkeypatch.setenv("USERS_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("USERS_GDAP_SECRET", partner.gdap_app.secret)
    connection = Connection(
        name="main",
        tenant_id=partner.tenant_id,
        partner_center_app=AppRegistration(
            client_id=partner.partner_center_app.client_id,
            client_secret=SecretRef(env="USERS_PC_SECRET"),
        ),
        gdap_app=AppRegistration(
            client_id=partner.gdap_app.client_id, client_secret=SecretRef(env="USERS_GDAP_SECRET")
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


def fetch(
    context: ModuleContext,
    customer: Customer,
    bookmark: str | None = None,
    query: UserQuery | None = None,
) -> tuple[list[Any], Checkpoint]:
    """One call of the hook: what it yielded before its checkpoint, and the checkpoint."""
    *records, checkpoint = users.fetch_users(context, tenant_of(customer), bookmark, query)
    assert isinstance(checkpoint, Checkpoint)
    assert not any(isinstance(r, Checkpoint) for r in records)
    return records, checkpoint


def by_id(records: list[Any]) -> dict[str, DirectoryUser]:
    found = [r for r in records if isinstance(r, DirectoryUser)]
    assert len(found) == len({u.object_id for u in found}), "a user yielded twice"
    return {u.object_id: u for u in found}


def notices(records: list[Any]) -> list[Notice]:
    return [r for r in records if isinstance(r, Notice)]


def live(customer: Customer) -> set[str]:
    return {u.id for u in customer.users.values() if u.removed is None}


def group_named(customer: Customer, name: str):
    return next(g for g in customer.groups.values() if g.displayName == name)


def transitive_users(customer: Customer, group_id: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    found: set[str] = set()
    for member in customer.groups[group_id].members:
        if member in customer.users:
            if customer.users[member].removed is None:
                found.add(member)
        elif member not in seen:
            seen.add(member)
            found |= transitive_users(customer, member, seen)
    return found


def expected_groups(customer: Customer, user_id: str, names=GROUPS) -> tuple[str, ...]:
    return tuple(
        name
        for name in names
        if any(
            user_id in transitive_users(customer, g.id)
            for g in customer.groups.values()
            if g.displayName == name and g.removed is None
        )
    )


def requested(emulator, fragment: str) -> list[str]:
    """Paths (decoded) of the requests served that contain ``fragment``."""
    return [unquote_plus(p) for _, p, _ in emulator.app.requests if fragment in unquote_plus(p)]


# -- full and delta rounds ----------------------------------------------------------------------


def test_a_full_listing_lists_everyone_and_ends_complete(emulator, context):
    customer = readable(emulator)
    records, checkpoint = fetch(context, customer)
    found = by_id(records)
    assert set(found) == live(customer)
    assert checkpoint.complete is True
    saved = json.loads(checkpoint.bookmark)
    assert saved["v"] == 1 and saved["users"].startswith("/v1.0/users/delta?$deltatoken=")
    user = customer.users[next(iter(found))]
    record = found[user.id]
    assert record.user_principal_name == user.userPrincipalName
    assert record.attributes == {"usageLocation": user.usageLocation}
    assert record.groups == () and record.last_sign_in_at is None
    assert record.assigned_sku_ids == tuple(a["skuId"] for a in user.assignedLicenses)


def test_each_kind_of_change_arrives_in_the_next_delta_round(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    tid = customer.tenant_id
    _, checkpoint = fetch(context, customer)
    members = sorted(u.id for u in customer.users.values() if u.userType == "Member")
    changed, disabled, soft, hard, back = members[:5]

    def next_round() -> list[Any]:
        nonlocal checkpoint
        records, checkpoint = fetch(context, customer, checkpoint.bookmark)
        assert checkpoint.complete is False
        return records

    added = world.add_user(tid, displayName="New Starter")
    [record] = next_round()
    assert record.object_id == added.id and record.display_name == "New Starter"

    world.modify_user(tid, changed, jobTitle="Chief Listener")
    [record] = next_round()
    assert (record.object_id, record.job_title) == (changed, "Chief Listener")

    world.disable_user(tid, disabled)
    [record] = next_round()
    assert (record.object_id, record.account_enabled) == (disabled, False)

    world.soft_delete_user(tid, soft)
    assert next_round() == [Removed(entity_id=soft, reason="changed")]

    world.hard_delete_user(tid, hard)
    assert next_round() == [Removed(entity_id=hard, reason="deleted")]

    world.soft_delete_user(tid, back)
    world.restore_user(tid, back)
    [record] = next_round()
    assert isinstance(record, DirectoryUser) and record.object_id == back

    upn = customer.users[hard].userPrincipalName
    again = world.add_user(tid, userPrincipalName=upn, displayName="Same Name Again")
    [record] = next_round()
    assert record.object_id == again.id != hard and record.user_principal_name == upn

    assert next_round() == []


def test_delta_rounds_never_ask_graph_for_minimal_items(emulator, context, monkeypatch):
    """A round's item is read as a whole user, an absent property as its default (see
    `_round`). With ``Prefer: return=minimal`` Graph would leave out the properties that did
    not change (user-delta.md, v1.0), and reading those as defaults would clear fields and
    licences: a round must not ask for it, or must first learn to merge."""
    sent: list[str] = []
    send = requests.Session.send

    def recording(session, request, **options):
        if "/users/delta" in request.url:
            sent.append(request.headers.get("Prefer", ""))
        return send(session, request, **options)

    monkeypatch.setattr(requests.Session, "send", recording)
    customer = readable(emulator)
    _, checkpoint = fetch(context, customer)
    member = min(u.id for u in customer.users.values() if u.userType == "Member")
    emulator.world.modify_user(customer.tenant_id, member, jobTitle="Changed")
    [record], _ = fetch(context, customer, checkpoint.bookmark)
    assert record.job_title == "Changed" and record.user_principal_name
    assert len(sent) >= 2, "the full round and the delta round were both seen"
    assert not [p for p in sent if "return=minimal" in p.lower()]


def test_an_expired_delta_link_starts_a_full_round(emulator, context):
    customer = readable(emulator)
    _, checkpoint = fetch(context, customer)
    emulator.world.expire_delta_tokens(customer.tenant_id)  # 410 Gone, syncStateNotFound
    with capture_logs() as logs:
        records, checkpoint = fetch(context, customer, checkpoint.bookmark)
    assert set(by_id(records)) == live(customer) and checkpoint.complete is True
    assert {
        "event": "csp.users_delta_expired",
        "log_level": "warning",
        "tenant": customer.tenant_id,
    } in logs

    # The "40X-series error with error codes such as syncStateNotFound" (a 400) too.
    emulator.app.inject("sync_state_not_found", endpoint="graph.users_delta", times=1)
    with capture_logs() as logs:
        records, checkpoint = fetch(context, customer, checkpoint.bookmark)
    assert set(by_id(records)) == live(customer) and checkpoint.complete is True
    assert any(entry["event"] == "csp.users_delta_expired" for entry in logs)
    records, checkpoint = fetch(context, customer, checkpoint.bookmark)
    assert records == [] and checkpoint.complete is False


def test_latest_yields_no_users_and_later_rounds_see_only_what_changes_after(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    before, after = sorted(live(customer))[:2]
    world.modify_user(customer.tenant_id, before, jobTitle="Before the reset")
    records, checkpoint = fetch(context, customer, LATEST_BOOKMARK)
    assert records == [] and checkpoint.complete is False and checkpoint.bookmark
    assert any("$deltatoken=latest" in path for path in requested(emulator, "/users/delta"))
    world.modify_user(customer.tenant_id, after, jobTitle="After the reset")
    records, checkpoint = fetch(context, customer, checkpoint.bookmark)
    assert [r.object_id for r in records] == [after] and checkpoint.complete is False


def test_a_legacy_plain_link_bookmark_still_works(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    _, checkpoint = fetch(context, customer)
    legacy = json.loads(checkpoint.bookmark)["users"]  # what the module stored before
    changed = sorted(live(customer))[0]
    world.modify_user(customer.tenant_id, changed, jobTitle="Still Here")
    query = UserQuery(groups=GROUPS)
    records, checkpoint = fetch(context, customer, legacy, query)
    [record] = records
    assert record.object_id == changed and record.job_title == "Still Here"
    assert record.groups == expected_groups(customer, changed)
    assert checkpoint.complete is False
    saved = json.loads(checkpoint.bookmark)
    staff = group_named(customer, "All Staff")
    assert staff.id in saved["groups"]  # group links start now

    # From now on, membership changes of unchanged users are seen.
    outsider = next(iter(live(customer) - transitive_users(customer, staff.id)))
    world.add_member(customer.tenant_id, staff.id, outsider)
    records, _ = fetch(context, customer, checkpoint.bookmark, query)
    assert [(r.object_id, "All Staff" in r.groups) for r in records] == [(outsider, True)]


def test_a_bookmark_made_for_another_query_starts_a_full_round(emulator, context):
    customer = readable(emulator)
    _, checkpoint = fetch(context, customer)
    query = UserQuery(properties=("mailNickname",))
    records, checkpoint = fetch(context, customer, checkpoint.bookmark, query)
    assert checkpoint.complete is True and set(by_id(records)) == live(customer)
    assert all(r.attributes["mailNickname"] for r in by_id(records).values())
    records, checkpoint = fetch(context, customer, checkpoint.bookmark, query)
    assert records == [] and checkpoint.complete is False


# -- extra properties ----------------------------------------------------------------------------


def test_extra_properties_are_selected_and_kept_in_attributes(emulator, context):
    customer = readable(emulator)
    query = UserQuery(properties=("mailNickname", "companyName", "department", "proxyAddresses"))
    records, _ = fetch(context, customer, query=query)
    for record in by_id(records).values():
        user = customer.users[record.object_id]
        assert record.attributes == {
            "usageLocation": user.usageLocation,
            "mailNickname": user.userPrincipalName.split("@", 1)[0],
            "companyName": None,  # empty in the directory
            "department": user.department,
            "proxyAddresses": [f"SMTP:{user.mail}"] if user.mail else None,
        }
    [path] = requested(emulator, "/users/delta")
    select = path.split("$select=", 1)[1].split("&", 1)[0].split(",")
    assert select.count("department") == 1 and "mailNickname" in select
    assert "companyName" in select and "signInActivity" not in select


def test_a_property_graph_serves_in_no_listing_fails_at_once_naming_it(emulator, context):
    """``skills`` lives outside the directory: Graph answers a listing that selects it 501
    (delta-query-overview.md). Asking again cannot help, so the round is not retried, and
    the error names the extra properties and the fix."""
    customer = readable(emulator)
    query = UserQuery(properties=("department", "skills"))
    with pytest.raises(NotSupported) as caught:
        fetch(context, customer, query=query)
    assert caught.value.status == 501 and caught.value.code == "NotImplemented"
    message = str(caught.value)
    assert "department, skills" in message and "field mappings" in message
    assert len(requested(emulator, "/users/delta")) == 1


# -- groups ------------------------------------------------------------------------------------------


def test_users_carry_their_transitive_memberships_of_the_groups_asked_for(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    tid = customer.tenant_id
    staff, london = group_named(customer, "All Staff"), group_named(customer, "Loc-London")
    assert london.id in staff.members  # Loc-London is nested in All Staff
    newcomer = world.add_user(tid, displayName="Only In London")
    world.add_member(tid, london.id, newcomer.id)
    # Two groups of one name: members of either are members; a quote in a name is doubled.
    finance_two = world.add_group(tid, "Finance Team", members=[newcomer.id])
    quoted = world.add_group(tid, "O'Brien's Team", members=[newcomer.id])
    names = (*GROUPS, "O'Brien's Team", "Loc-Leeds")
    records, checkpoint = fetch(context, customer, query=UserQuery(groups=names))

    found = by_id(records)
    assert set(found) == live(customer)
    for user_id, record in found.items():
        assert record.groups == expected_groups(customer, user_id, names), user_id
    assert found[newcomer.id].groups == (
        "All Staff",
        "Loc-London",
        "Finance Team",
        "O'Brien's Team",
    )
    [notice] = notices(records)
    assert notice.code == "group_not_found"
    assert "'Loc-Leeds'" in notice.message and tid in notice.message
    assert customer.name in notice.message
    assert checkpoint.complete is True
    saved = json.loads(checkpoint.bookmark)
    assert set(saved["names"]["Finance Team"]) == {
        group_named(customer, "Finance Team").id,
        finance_two.id,
    }
    assert saved["names"]["O'Brien's Team"] == [quoted.id] and saved["names"]["Loc-Leeds"] == []
    assert {staff.id, london.id, finance_two.id, quoted.id} <= set(saved["groups"])
    # Only the requested groups' members were listed: never the whole directory.
    assert not requested(emulator, "/v1.0/users?")


def test_a_membership_change_arrives_although_the_user_did_not_change(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    tid = customer.tenant_id
    query = UserQuery(groups=GROUPS)
    staff = group_named(customer, "All Staff")
    london, finance = group_named(customer, "Loc-London"), group_named(customer, "Finance Team")
    _, checkpoint = fetch(context, customer, query=query)

    def next_round() -> dict[str, DirectoryUser]:
        nonlocal checkpoint
        records, checkpoint = fetch(context, customer, checkpoint.bookmark, query)
        assert checkpoint.complete is False and not notices(records)
        found = by_id(records)
        for user_id, record in found.items():
            assert record.groups == expected_groups(customer, user_id), user_id
        return found

    joiner = next(iter(live(customer) - transitive_users(customer, finance.id)))
    leaver = next(iter(transitive_users(customer, london.id)))
    world.add_member(tid, finance.id, joiner)
    world.remove_member(tid, london.id, leaver)
    found = next_round()
    assert set(found) == {joiner, leaver}
    assert "Finance Team" in found[joiner].groups and "Loc-London" not in found[leaver].groups

    # Through a nested group: membership of the nested one, then nesting a new group.
    outsider = world.add_user(tid, displayName="Outsider")
    assert set(next_round()) == {outsider.id}
    world.add_member(tid, london.id, outsider.id)
    found = next_round()
    assert found[outsider.id].groups == ("All Staff", "Loc-London")
    contractor = world.add_user(tid, displayName="Contractor")
    contractors = world.add_group(tid, "Contractors", members=[contractor.id])
    next_round()  # the new user
    world.add_member(tid, staff.id, contractors.id)
    found = next_round()
    assert set(found) == {contractor.id} and found[contractor.id].groups == ("All Staff",)
    late = world.add_user(tid, displayName="Late Contractor")
    next_round()
    world.add_member(tid, contractors.id, late.id)  # tracked now that it is nested
    assert next_round()[late.id].groups == ("All Staff",)

    # Changed and moved in one round: yielded once.
    world.modify_user(tid, joiner, jobTitle="Moved and Changed")
    world.remove_member(tid, finance.id, joiner)
    found = next_round()
    assert set(found) == {joiner} and "Finance Team" not in found[joiner].groups

    # Expired group links start afresh; the users link's expiry means a full round.
    world.expire_delta_tokens(tid)
    records, checkpoint = fetch(context, customer, checkpoint.bookmark, query)
    assert checkpoint.complete is True and set(by_id(records)) == live(customer)
    world.add_member(tid, finance.id, joiner)
    assert set(next_round()) == {joiner}


def test_a_renamed_group_starts_a_full_round(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    query = UserQuery(groups=GROUPS)
    _, checkpoint = fetch(context, customer, query=query)
    world.add_group(customer.tenant_id, "Loc-London", members=[sorted(live(customer))[0]])
    records, checkpoint = fetch(context, customer, checkpoint.bookmark, query)
    assert checkpoint.complete is True and set(by_id(records)) == live(customer)


# -- sign-in activity ------------------------------------------------------------------------------


def grant_audit_log(emulator) -> None:
    partner = next(iter(emulator.world.partners.values()))
    partner.gdap_app.permissions.append("AuditLog.Read.All")


def last_sign_in(customer: Customer, user_id: str) -> datetime | None:
    activity = emulated_graph._sign_in_activity(customer.users[user_id])
    moments = [
        parse_timestamp(activity[key])
        for key in ("lastSignInDateTime", "lastNonInteractiveSignInDateTime")
    ]
    return max((m for m in moments if m is not None), default=None)


def test_sign_in_dates_come_with_the_users(emulator, context):
    world: World = emulator.world
    grant_audit_log(emulator)
    customer = readable(emulator)
    never = world.add_user(customer.tenant_id, lastSignInDateTime=None)
    for _ in range(20):
        world.add_user(customer.tenant_id)
    query = UserQuery(sign_in_activity=True)
    records, checkpoint = fetch(context, customer, query=query)
    found = by_id(records)
    assert set(found) == live(customer) and not notices(records)
    assert found[never.id].last_sign_in_at is None
    for user_id, record in found.items():
        assert record.last_sign_in_at == last_sign_in(customer, user_id)
    assert sum(r.last_sign_in_at is not None for r in found.values()) > len(found) // 2
    lookups = requested(emulator, "signInActivity")
    assert lookups and all("$filter=id in (" in path for path in lookups)
    assert all(path.split("in (", 1)[1].split(")")[0].count(",") < 15 for path in lookups)

    world.modify_user(customer.tenant_id, never.id, lastSignInDateTime=world.advance(hours=1))
    records, _ = fetch(context, customer, checkpoint.bookmark, query)
    [record] = records
    assert record.last_sign_in_at == last_sign_in(customer, never.id) is not None


def test_without_audit_log_permission_one_notice_and_the_listing_goes_on(emulator, context):
    world: World = emulator.world
    customer = readable(emulator)
    for _ in range(200):  # two delta pages
        world.add_user(customer.tenant_id)
    records, checkpoint = fetch(context, customer, query=UserQuery(sign_in_activity=True))
    found = by_id(records)
    assert set(found) == live(customer) and checkpoint.complete is True
    assert all(r.last_sign_in_at is None for r in found.values())
    [notice] = notices(records)
    assert notice.code == "sign_in_activity_unavailable"
    assert "AuditLog.Read.All" in notice.message and "consent" in notice.message
    assert customer.tenant_id in notice.message and customer.name in notice.message
    partner = next(iter(world.partners.values()))
    assert partner.gdap_app.client_id in notice.message
    assert len(requested(emulator, "signInActivity")) == 1  # not asked again per page


def test_a_tenant_without_entra_id_p1_gets_one_notice_and_others_keep_their_dates(
    emulator, context
):
    grant_audit_log(emulator)
    basic, premium = readable(emulator, 0), readable(emulator, 1)
    emulator.app.state["graph.non_premium_tenants"] = {basic.tenant_id}
    query = UserQuery(sign_in_activity=True, groups=("All Staff",))
    records, _ = fetch(context, basic, query=query)
    assert set(by_id(records)) == live(basic)
    assert all(r.last_sign_in_at is None for r in by_id(records).values())
    [notice] = notices(records)
    assert notice.code == "sign_in_activity_unavailable"
    assert "P1 or P2" in notice.message and basic.tenant_id in notice.message
    records, _ = fetch(context, premium, query=query)
    assert not notices(records)
    assert any(r.last_sign_in_at is not None for r in by_id(records).values())


# -- the hook --------------------------------------------------------------------------------------


def test_the_hook_passes_the_query_on(emulator, context):
    customer = readable(emulator)
    items = list(
        plugin.fetch_users(
            context=context,
            tenant=tenant_of(customer),
            bookmark=None,
            query=UserQuery(groups=("All Staff",)),
        )
    )
    staff = group_named(customer, "All Staff")
    found = by_id(items)
    assert {u for u, r in found.items() if r.groups == ("All Staff",)} == transitive_users(
        customer, staff.id
    )


def test_typed_pages_give_the_records_json_pages_give(emulator, context, monkeypatch, page_ways):
    """Users pages are decoded into GraphUser's typed form (`odata_pages`' ``typed``); the
    records are those of decoding the JSON and reading each payload from it."""
    customer = readable(emulator)

    def both(bookmark: str | None = None) -> tuple[list[Any], Checkpoint]:
        page_ways.clear()
        found = fetch(context, customer, bookmark)
        assert page_ways and all(page_ways)
        page_ways.clear()
        with monkeypatch.context() as json_only:
            json_only.setattr(paging, "_typed_decoder", lambda _cls: None)
            assert fetch(context, customer, bookmark)[0] == found[0]
        assert page_ways and not any(page_ways)
        return found

    records, checkpoint = both()
    assert len(records) == len(live(customer))
    emulator.world.modify_user(customer.tenant_id, sorted(live(customer))[0], jobTitle="Typed")
    [changed], _ = both(checkpoint.bookmark)
    assert changed.job_title == "Typed"
