"""The user import rules (guide 6): site mappings, field mappings, matching, statuses,
service accounts, deltas and leavers, driven through the sync engine with the in-test
directory plugin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fakes import MODULE, SKU_E3, TENANT_A, TENANT_B, FakeDirectory, Removed, user

from halo_integrator_core import LATEST_BOOKMARK, Notice
from halo_integrator_core.config import ConfigError, FilterOperator, PropertyFilter, load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.store import Store, schema, utcnow
from halo_integrator_core.sync.bookmarks import get_bookmark, save_bookmark
from halo_integrator_core.sync.engine import SyncEngine
from halo_integrator_core.sync.users import filter_holds

HEAD = f"""
[integrator]
create_customers_from_tenants = true

[[tenant_mappings]]
tenant_id = "{TENANT_A}"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "{TENANT_B}"
customer = "Fabrikam"

[modules.{MODULE}]
enabled = true
"""

CATCH_ALL = """
[[site_mappings]]
customer = "Contoso"
description = "everyone"

[[site_mappings]]
customer = "Fabrikam"
"""


@pytest.fixture
def world() -> FakeDirectory:
    return FakeDirectory.small()


@pytest.fixture
def sync(store: Store, write_config, host_factory, world: FakeDirectory):
    """Run one sync with ``text`` appended to the head of the config."""

    def run(text: str = CATCH_ALL, *, head: str = HEAD, dry_run: bool = False) -> Any:
        config = load_config(write_config(head + text))
        host = host_factory(config, (world, "fake"))
        [result] = SyncEngine(store, config, host).run(dry_run=dry_run)
        return result

    return run


def users(store: Store) -> dict[str, dict[str, Any]]:
    with store.read() as connection:
        return {
            row["external_id"] or f"psa-{row['id']}": row
            for row in export_rows(connection, "users")
        }


def sites(store: Store, customer: str) -> list[str]:
    with store.read() as connection:
        return sorted(
            r["name"] for r in export_rows(connection, "sites") if r["customer"] == customer
        )


def problems(result: Any, outcome: str | None = None) -> list[str]:
    return [p.reason for p in result.problems if outcome is None or p.outcome == outcome]


def psa_user(store: Store, customer: str, **values: Any) -> int:
    """A PSA user that exists before any sync (created by hand, or another integration)."""
    with store.unit() as connection:
        customer_id = connection.execute(
            sa.select(schema.customers.c.id).where(schema.customers.c.name == customer)
        ).scalar_one()
        now = utcnow()
        return connection.execute(
            sa.insert(schema.users).values(
                customer_id=customer_id,
                active=True,
                created_at=now,
                updated_at=now,
                attributes={},
                custom_fields={},
                is_service_account=False,
                **values,
            )
        ).inserted_primary_key[0]


# --- site mappings -----------------------------------------------------------------------


def test_a_customer_without_site_mappings_imports_no_users_and_says_how_to_fix_it(sync, store):
    result = sync("")
    assert result.counts["users"].added == 0
    assert result.counts["users"].skipped == 2  # one per tenant
    assert all("add [[site_mappings]]" in reason for reason in problems(result, "skipped"))
    assert users(store) == {}


def test_the_catch_all_option_imports_every_member_to_the_main_site(sync, store, world):
    world.users[TENANT_A]["u-g"] = user("u-g", "guest_x.com#EXT#@contoso.com", user_type="Guest")
    head = HEAD.replace("[integrator]", "[integrator]\ncreate_site_mappings_for_new_tenants = true")
    result = sync("", head=head)
    stored = users(store)
    assert set(stored) == {"u-1", "u-2", "u-3", "u-9"}
    assert {u["site"] for u in stored.values()} == {"Main"}
    assert result.counts["users"].skipped == 1  # the guest: no mapping includes externals


def test_a_user_lands_in_the_first_mapping_by_sequence_and_ties_go_in_file_order(
    sync, store, world
):
    world.users[TENANT_A]["u-1"] = user(
        "u-1", "adele@contoso.com", office_location="London", department="Sales"
    )
    result = sync(
        """
[[site_mappings]]
customer = "Contoso"
site = "Catch-all"
create_site = true
sequence = 90

[[site_mappings]]
customer = "Contoso"
site = "Sales"
create_site = true
sequence = 20
filters = [{ field = "department", value = "SALES" }]

[[site_mappings]]
customer = "Contoso"
site = "London"
create_site = true
sequence = 20
filters = [{ field = "officeLocation", operator = "starts_with", value = "lon" }]

[[site_mappings]]
customer = "Fabrikam"
"""
    )
    stored = users(store)
    # Both sequence-20 mappings accept Adele: the earlier one in the file wins.
    assert stored["u-1"]["site"] == "Sales"
    assert stored["u-2"]["site"] == "Catch-all"
    assert stored["u-9"]["site"] == "Main"
    assert result.counts["users"].added == 4


def test_a_group_mapping_takes_only_members_and_the_plugin_is_asked_for_that_group(
    sync, store, world
):
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", groups=("loc-london",))
    sync(
        """
[[site_mappings]]
customer = "Contoso"
site = "London"
create_site = true
group = "Loc-London"
sequence = 10
role = "Londoner"
values = { department = "London office", "custom_fields.region" = "UK" }

[[site_mappings]]
customer = "Contoso"
"""
    )
    stored = users(store)
    assert stored["u-1"]["site"] == "London" and stored["u-1"]["role"] == "Londoner"
    assert stored["u-1"]["department"] == "London office"
    assert stored["u-1"]["custom_fields"] == {"region": "UK"}
    assert stored["u-2"]["site"] == "Main" and stored["u-2"]["role"] is None
    assert world.queries[TENANT_A].groups == ("Loc-London",)
    # Fabrikam has no mapping here: its users are not imported, nor its groups asked for.
    assert "u-9" not in stored


def test_a_field_mapping_creates_a_site_per_value_and_a_blank_falls_through(sync, store, world):
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", office_location="London")
    world.users[TENANT_A]["u-2"] = user("u-2", "alex@contoso.com", office_location=" london ")
    world.users[TENANT_A]["u-4"] = user("u-4", "lee@contoso.com", attributes={"city": "Reading"})
    result = sync(
        """
[[site_mappings]]
customer = "Contoso"
type = "field"
site_field = "officeLocation"
sequence = 10

[[site_mappings]]
customer = "Contoso"
type = "field"
site_field = "city"
sequence = 20
"""
    )
    stored = users(store)
    assert stored["u-1"]["site"] == stored["u-2"]["site"] == "London"  # one site, any case
    assert stored["u-4"]["site"] == "Reading"
    assert "city" in world.queries[TENANT_A].properties
    # Room 1 has neither value: no mapping accepts it, so it is listed and not imported.
    assert "u-3" not in stored
    assert any("room@contoso.com" in reason for reason in problems(result, "skipped"))
    assert sites(store, "Contoso") == ["London", "Main", "Reading"]


def test_a_tenant_filter_splits_one_customers_tenants(sync, store):
    head = HEAD.replace('customer = "Fabrikam"', 'customer = "Contoso"')
    sync(
        f"""
[[site_mappings]]
customer = "Contoso"
site = "Fabrikam office"
create_site = true
tenant_id = "{TENANT_B}"
sequence = 10

[[site_mappings]]
customer = "Contoso"
""",
        head=head,
    )
    stored = users(store)
    assert stored["u-9"]["site"] == "Fabrikam office"
    assert stored["u-1"]["site"] == "Main"


def test_an_unknown_site_is_reported_and_places_no_one(sync, store):
    result = sync(
        """
[[site_mappings]]
customer = "Contoso"
site = "Lodnon"
sequence = 10

[[site_mappings]]
customer = "Contoso"
"""
    )
    assert any("has no site 'Lodnon'" in reason for reason in problems(result, "warning"))
    assert {u["site"] for u in users(store).values()} == {"Main"}
    assert sites(store, "Contoso") == ["Main"]


def test_a_user_no_mapping_accepts_any_more_keeps_its_record(sync, store, world):
    only_sales = """
[[site_mappings]]
customer = "Contoso"
filters = [{ field = "department", operator = "equals", value = "Sales" }]
"""
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", department="Sales")
    sync(only_sales)
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", department="Retail")
    result = sync(only_sales)
    assert users(store)["u-1"]["active"] is True
    assert users(store)["u-1"]["department"] == "Sales"
    assert result.counts["users"].deactivated == 0


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("equals", "london", True),
        ("equals", "Lon", False),
        ("not_equals", "Paris", True),
        ("contains", "OND", True),
        ("not_contains", "ond", False),
        ("starts_with", "lon", True),
        ("ends_with", "don", True),
        ("is_empty", None, False),
        ("is_not_empty", None, True),
    ],
)
def test_property_filter_operators_ignore_case(operator, value, expected):
    subject = user("u", "u@x.com", office_location="London")
    condition = PropertyFilter(
        field="officeLocation", operator=FilterOperator(operator), value=value
    )
    assert filter_holds(condition, subject) is expected


def test_filters_on_list_properties_and_missing_values():
    subject = user("u", "u@x.com", business_phones=("+44 1", "+44 2"))
    assert filter_holds(PropertyFilter(field="businessPhones", value="+44 2"), subject)
    assert filter_holds(
        PropertyFilter(field="companyName", operator=FilterOperator.IS_EMPTY), subject
    )


def test_site_mappings_are_validated_when_the_config_is_read(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(
            write_config(
                HEAD.replace("create_customers_from_tenants = true", "")
                + """
[[site_mappings]]
customer = "Contoso"
type = "field"

[[site_mappings]]
customer = "Contosso"
filters = [{ field = "offceLocation", value = "x" }, { field = "city", operator = "is_empty", value = "x" }]
values = { jobtitle = "x" }
"""
            )
        )
    text = "\n".join(caught.value.problems)
    assert "site_mappings[0].site_field:" in text
    assert "site_mappings[1].customer: no [[tenant_mappings]] maps a tenant to 'Contosso'" in text
    assert "did you mean 'Contoso'" in text
    assert (
        "site_mappings[1].filters[0].field: 'offceLocation' is not a directory user property; did you mean 'officeLocation'?"
        in text
    )
    assert "site_mappings[1].filters[1].value: operator 'is_empty' takes no value" in text
    assert "site_mappings[1].values.jobtitle: 'jobtitle' is not a PSA user field" in text


def test_deltas_need_the_beta_track(write_config):
    with pytest.raises(ConfigError, match=r'integrator\.track = "beta"'):
        load_config(write_config(HEAD + "[users]\nuse_deltas = true\n"))


# --- field mappings ----------------------------------------------------------------------


def test_default_field_mappings_and_a_blank_never_overwrites(sync, store, world):
    world.users[TENANT_A]["u-1"] = user(
        "u-1",
        "adele@contoso.com",
        display_name="Adele Vance",
        given_name="Adele",
        surname="Vance",
        mail="adele@contoso.com",
        job_title="Retail Manager",
        department="Retail",
        office_location="18/2111",
        business_phones=("+1 425 555 0109",),
        mobile_phone="+1 425 555 0110",
        employee_id="E-1",
    )
    sync()
    adele = users(store)["u-1"]
    assert {k: adele[k] for k in ("display_name", "first_name", "surname", "email")} == {
        "display_name": "Adele Vance",
        "first_name": "Adele",
        "surname": "Vance",
        "email": "adele@contoso.com",
    }
    assert adele["network_login"] == "adele@contoso.com"
    assert (adele["job_title"], adele["department"], adele["office_location"]) == (
        "Retail Manager",
        "Retail",
        "18/2111",
    )
    assert (adele["phone"], adele["mobile"], adele["employee_id"]) == (
        "+1 425 555 0109",
        "+1 425 555 0110",
        "E-1",
    )
    # Entra loses the job title and the department: the PSA keeps the job title, and the
    # department only because the config says a blank clears it.
    world.users[TENANT_A]["u-1"] = user(
        "u-1", "adele@contoso.com", display_name="Adele Vance", mail="adele@contoso.com"
    )
    sync(CATCH_ALL + '[users]\nclear_when_blank = ["department"]\n')
    adele = users(store)["u-1"]
    assert adele["job_title"] == "Retail Manager"
    assert adele["department"] is None


def test_field_text_is_stripped_cut_to_its_column_and_a_blank_one_keeps_the_stored(
    sync, store, world
):
    from halo_integrator_core.sync.users import _TEXT_LIMIT

    world.users[TENANT_A]["u-1"] = user(
        "u-1",
        "adele@contoso.com",
        job_title="  Retail Manager  ",
        department="D" * (_TEXT_LIMIT + 20),
        business_phones=("", "  +1 425 555 0109  ", "+1 425 555 0199"),
        mobile_phone="5" * 120,
    )
    sync()
    adele = users(store)["u-1"]
    assert adele["job_title"] == "Retail Manager"
    assert adele["department"] == "D" * _TEXT_LIMIT
    assert adele["phone"] == "+1 425 555 0109"  # the first item that is not blank, stripped
    assert adele["mobile"] == "5" * 100  # the phone columns are shorter
    world.users[TENANT_A]["u-1"] = user(
        "u-1", "adele@contoso.com", job_title="   ", department=" \t ", business_phones=()
    )
    sync()
    adele = users(store)["u-1"]
    assert (adele["job_title"], adele["department"], adele["phone"]) == (
        "Retail Manager",
        "D" * _TEXT_LIMIT,
        "+1 425 555 0109",
    )


def test_configured_field_mappings_replace_and_turn_off_defaults(sync, store, world):
    world.users[TENANT_A]["u-1"] = user(
        "u-1",
        "adele@contoso.com",
        job_title="Manager",
        attributes={"companyName": "Contoso Retail", "employeeType": "Contractor"},
    )
    sync(
        CATCH_ALL
        + """
[users.fields]
job_title = "companyName"
network_login = ""
[users.custom_fields]
kind = "employeeType"
"""
    )
    adele = users(store)["u-1"]
    assert adele["job_title"] == "Contoso Retail"
    assert adele["network_login"] is None
    assert adele["custom_fields"] == {"kind": "Contractor"}
    # The plugin is asked for the properties the defaults do not cover.
    assert {"companyName", "employeeType"} <= set(world.queries[TENANT_A].properties)


# --- matching ----------------------------------------------------------------------------


def test_matching_by_email_links_an_existing_psa_user_ignoring_case(sync, store):
    sync("")  # creates the customers; no users yet
    existing = psa_user(store, "Contoso", email="ADELE@Contoso.com", display_name="Adele (PSA)")
    result = sync(CATCH_ALL + '[users]\nmatching = "email"\n')
    stored = users(store)
    assert stored["u-1"]["id"] == existing
    assert stored["u-1"]["tenant_id"] == TENANT_A and stored["u-1"]["display_name"] == "Adele Vance"
    assert result.counts["users"].added == 3  # u-2, u-3 and Fabrikam's u-9
    assert len(stored) == 4


def test_matching_by_network_login(sync, store):
    sync("")
    existing = psa_user(store, "Contoso", network_login="Alex@contoso.com")
    sync(CATCH_ALL + '[users]\nmatching = "network_login"\n')
    assert users(store)["u-2"]["id"] == existing


def test_matching_by_object_id_leaves_unlinked_psa_users_alone(sync, store):
    sync("")
    existing = psa_user(store, "Contoso", email="adele@contoso.com")
    sync()
    stored = users(store)
    assert stored["u-1"]["id"] != existing
    assert stored[f"psa-{existing}"]["tenant_id"] is None


def test_an_ambiguous_match_is_reported_and_skipped(sync, store):
    sync("")
    first = psa_user(store, "Contoso", email="adele@contoso.com")
    second = psa_user(store, "Contoso", email="Adele@Contoso.com")
    result = sync(CATCH_ALL + '[users]\nmatching = "email"\n')
    assert "u-1" not in users(store)
    [reason] = [r for r in problems(result, "skipped") if "adele@contoso.com" in r]
    assert f"IDs {first}, {second}" in reason
    assert result.counts["users"].skipped == 1


def test_a_user_recreated_with_the_same_upn_continues_its_psa_user(sync, store, world):
    sync()
    before = users(store)["u-2"]
    del world.users[TENANT_A]["u-2"]
    world.users[TENANT_A]["u-2b"] = user(
        "u-2b", "Alex@contoso.com", display_name="Alex Wilber", account_enabled=True
    )
    result = sync()
    after = users(store)
    assert "u-2" not in after and after["u-2b"]["id"] == before["id"]
    assert after["u-2b"]["active"] is True
    assert result.counts["users"].added == 0


def test_the_upn_relink_searches_the_upn_index_instead_of_the_customers_users(sync, store, world):
    # Every delta asks it for each changed user without a PSA user yet (a guest no mapping
    # takes, say): walking the customer's users cost about 0.7 ms per 2,000 of them.
    sync()
    asked: list[tuple[str, Any]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if "lower(users.user_principal_name)" in statement and "seen_run_id" in statement:
            asked.append((statement, parameters))

    del world.users[TENANT_A]["u-2"]
    world.users[TENANT_A]["u-2b"] = user("u-2b", "Alex@contoso.com", display_name="Alex")
    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        sync()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert asked, "no relink query was made"
    if store.engine.dialect.name != "sqlite":
        return  # PostgreSQL plans by its statistics; the statement is the same
    with store.engine.connect() as connection:
        for statement, parameters in asked:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            details = [row[-1] for row in plan]
            assert any("USING INDEX ix_users_upn" in d for d in details), (statement, details)


def test_a_recreated_user_relinks_through_a_delta_round_in_either_order(sync, store, world):
    head = HEAD.replace("[integrator]", '[integrator]\ntrack = "beta"')
    deltas = CATCH_ALL + "[users]\nuse_deltas = true\n"
    world.delta = True
    sync(deltas, head=head)
    ids = {k: v["id"] for k, v in users(store).items()}
    world.round = 1
    world.changes[TENANT_A] = [
        user("u-2b", "alex@contoso.com", display_name="Alex again"),
        Removed(entity_id="u-2", reason="deleted"),
        Removed(entity_id="u-3", reason="changed"),
    ]
    sync(deltas, head=head)
    world.round = 2
    world.changes[TENANT_A] = [
        Removed(entity_id="u-3", reason="deleted"),
        user("u-3b", "room@contoso.com", display_name="Room 1 again"),
    ]
    sync(deltas, head=head)
    stored = users(store)
    assert stored["u-2b"]["id"] == ids["u-2"] and stored["u-2b"]["active"] is True
    assert stored["u-3b"]["id"] == ids["u-3"] and stored["u-3b"]["active"] is True


# --- statuses, sign-ins, service accounts -------------------------------------------------


def test_the_active_flag_follows_account_enabled_when_asked(sync, store, world):
    sync()
    assert users(store)["u-3"]["active"] is True  # a disabled account, flag not followed
    option = CATCH_ALL + "[users]\nset_active_from_account_enabled = true\n"
    result = sync(option)
    assert users(store)["u-3"]["active"] is False
    assert result.counts["users"].updated == 1
    world.users[TENANT_A]["u-3"] = user("u-3", "room@contoso.com", account_enabled=True)
    sync(option)
    assert users(store)["u-3"]["active"] is True


def test_last_sign_in_is_imported_and_a_missing_permission_warns_once(sync, store, world):
    when = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", last_sign_in_at=when)
    world.notices[TENANT_B] = [
        Notice(code="sign_in_activity_unavailable", message="grant AuditLog.Read.All")
    ]
    result = sync(CATCH_ALL + "[users]\nimport_last_sign_in = true\n")
    stored = users(store)
    assert stored["u-1"]["last_sign_in_at"] == when.isoformat()
    assert world.queries[TENANT_A].sign_in_activity is True
    assert problems(result, "warning") == ["grant AuditLog.Read.All"]
    assert stored["u-9"]["active"] is True  # the rest imported


def test_service_account_rules_with_licence_exceptions(sync, store, world):
    world.users[TENANT_A] |= {
        "u-4": user("u-4", "svc-backup@contoso.com", display_name="Backup"),
        "u-5": user("u-5", "scanner@contoso.com", display_name="Service Scanner",
                    assigned_sku_ids=("some-sku",)),
        "u-6": user("u-6", "svc-exec@contoso.com", assigned_sku_ids=(SKU_E3,)),
        "u-7": user("u-7", "ops@contoso.com", groups=("Service Accounts",),
                    assigned_sku_ids=("some-sku",)),
    }  # fmt: skip
    sync(
        CATCH_ALL
        + """
[users.service_accounts]
no_licence = true
upn_patterns = ["SVC-*"]
display_name_patterns = ["service *"]
groups = ["service accounts"]
sign_in_blocked = true
licence_exceptions = ["spe_e3"]
"""
    )
    flagged = {k for k, v in users(store).items() if v["is_service_account"]}
    # u-3 (no licence, sign-in blocked), u-4 (pattern, no licence), u-5 (display name),
    # u-7 (group); u-6 matches a pattern but holds E3, an exception; u-9 holds a licence.
    assert flagged == {"u-3", "u-4", "u-5", "u-7"}


# --- deltas and leavers ------------------------------------------------------------------


def test_full_sync_by_default_never_stores_a_delta_link(sync, store, world):
    world.delta = True
    sync()
    sync()
    assert [c for c in world.calls if c[0] == "fetch_users" and c[2] is not None] == []
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users", f"main/{TENANT_A}") is None


def test_a_full_reconcile_runs_when_the_last_full_listing_is_old(sync, store, world):
    head = HEAD.replace("[integrator]", '[integrator]\ntrack = "beta"')
    deltas = CATCH_ALL + "[users]\nuse_deltas = true\nfull_reconcile_hours = 24\n"
    world.delta = True
    sync(deltas, head=head)
    sync(deltas, head=head)
    assert ("fetch_users", TENANT_A, "delta-0") in world.calls  # a delta round
    key = f"main/{TENANT_A}"
    with store.unit() as connection:
        old = (utcnow() - timedelta(hours=25)).isoformat()
        save_bookmark(connection, MODULE, "users.full", key, old)
    world.calls.clear()
    del world.users[TENANT_A]["u-2"]
    result = sync(deltas, head=head)
    assert ("fetch_users", TENANT_A, None) in world.calls  # a full listing again
    assert result.counts["users"].deactivated == 1  # and absence counts as leaving
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users.full", key) > old


def test_the_latest_bookmark_is_handed_over_and_replaced(sync, store, world):
    head = HEAD.replace("[integrator]", '[integrator]\ntrack = "beta"')
    deltas = CATCH_ALL + "[users]\nuse_deltas = true\n"
    world.delta = True
    key = f"main/{TENANT_A}"
    sync(deltas, head=head)
    with store.unit() as connection:
        save_bookmark(connection, MODULE, "users", key, LATEST_BOOKMARK)
    world.round = 5
    result = sync(deltas, head=head)
    assert ("fetch_users", TENANT_A, LATEST_BOOKMARK) in world.calls
    assert result.counts["users"].deactivated == 0
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users", key) == "delta-5"


def test_leavers_are_deactivated_not_deleted_and_only_when_the_listing_succeeded(
    sync, store, world
):
    sync()
    del world.users[TENANT_A]["u-1"]
    world.fail[("fetch_users", TENANT_B)] = ConnectionError("reset")
    del world.users[TENANT_B]["u-9"]
    result = sync()
    stored = users(store)
    assert stored["u-1"]["active"] is False and stored["u-1"]["inactive_since"]
    assert stored["u-9"]["active"] is True  # its tenant's fetch failed: untouched
    assert result.outcome == "completed_with_errors"


def test_a_dry_run_writes_no_user_and_no_site(sync, store, world):
    sync("")
    world.users[TENANT_A]["u-1"] = user("u-1", "adele@contoso.com", office_location="Leeds")
    before = (users(store), sites(store, "Contoso"))
    result = sync(
        '[[site_mappings]]\ncustomer = "Contoso"\ntype = "field"\nsite_field = "officeLocation"\n',
        dry_run=True,
    )
    assert result.counts["users"].added == 1
    assert (users(store), sites(store, "Contoso")) == before


def test_the_catch_all_option_covers_a_tenant_its_customers_mappings_do_not_name(sync, store):
    head = HEAD.replace('customer = "Fabrikam"', 'customer = "Contoso"').replace(
        "[integrator]", "[integrator]\ncreate_site_mappings_for_new_tenants = true"
    )
    sync(
        f"""
[[site_mappings]]
customer = "Contoso"
tenant_id = "{TENANT_A}"
site = "A only"
create_site = true
""",
        head=head,
    )
    stored = users(store)
    assert stored["u-1"]["site"] == "A only"
    assert stored["u-9"]["site"] == "Main"  # tenant B: no mapping names it, the catch-all does


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (" Sales ", "Sales"),
        ("   ", None),
        (None, None),
        ([], None),
        ((), None),
        ([None, "", "+1 555 0100", "+1 555 0199"], "+1 555 0100"),
        ([None, ""], None),
        (["  "], None),  # the first item that is not None or "" decides, blank or not
        ([0, 1], "0"),
        ((False,), "false"),
        (True, "true"),
        ([datetime(2026, 1, 2, 3, 4, tzinfo=UTC)], "2026-01-02T03:04:00+00:00"),
        (42, "42"),
    ],
)
def test_a_source_value_becomes_psa_text_and_a_list_gives_its_first_non_blank_item(value, text):
    from halo_integrator_core.sync.mapping import text_value

    assert text_value(value) == text
