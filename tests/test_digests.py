"""Rows written from a record of the same digest are left alone, and everything the rules
read besides the record still reaches the rows: on SQLite and PostgreSQL."""

from __future__ import annotations

import marshal
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs
import pytest
from fakes import MODULE, SKU_BP, TENANT_A, FakeDirectory, user

from halo_integrator_core import Licence
from halo_integrator_core.config import load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.models import ManagedDevice
from halo_integrator_core.store import Store
from halo_integrator_core.sync import engine as engine_module
from halo_integrator_core.sync.assets import AssetRules
from halo_integrator_core.sync.digest import Digester, _encoder
from halo_integrator_core.sync.engine import SyncEngine
from halo_integrator_core.sync.users import UserRules

CONFIG = f"""
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[modules.{MODULE}]
enabled = true
"""

SITE_MAPPING = """
[[site_mappings]]
customer = "Contoso"
site = "Head Office"
create_site = true
filters = [{ field = "department", operator = "equals", value = "Finance" }]
sequence = 10

[[site_mappings]]
customer = "Contoso"
site = "Main"
sequence = 20
"""


@pytest.fixture
def world() -> FakeDirectory:
    return FakeDirectory.small()


@pytest.fixture
def make_engine(store: Store, write_config, host_factory, world: FakeDirectory):
    def build(text: str = CONFIG) -> SyncEngine:
        config = load_config(write_config(text))
        return SyncEngine(store, config, host_factory(config, (world, "fake")))

    return build


@pytest.fixture(params=["short batches", "listing batches"], autouse=True)
def batches(request, monkeypatch) -> None:
    """Both ways a unit reads its stored digests: per batch for the short batches of a
    delta or a small tenant, once a unit for a listing's full ones (here of 2 records)."""
    if request.param == "listing batches":
        monkeypatch.setattr(engine_module, "BATCH_SIZE", 2)


@pytest.fixture
def rule_calls(monkeypatch) -> dict[str, int]:
    """How often the user and asset rules turned a record into columns."""
    calls = {"users": 0, "assets": 0}
    user_columns, asset_columns = UserRules.columns, AssetRules.columns

    def counted_user(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["users"] += 1
        return user_columns(self, *args, **kwargs)

    def counted_asset(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["assets"] += 1
        return asset_columns(self, *args, **kwargs)

    monkeypatch.setattr(UserRules, "columns", counted_user)
    monkeypatch.setattr(AssetRules, "columns", counted_asset)
    return calls


def change(world: FakeDirectory, object_id: str, **fields: Any) -> None:
    """Change fields of a directory user of tenant A upstream (a new record, as Graph gives)."""
    users = world.users[TENANT_A]
    users[object_id] = attrs.evolve(users[object_id], **fields)


def by_id(store: Store, what: str) -> dict[str, dict[str, Any]]:
    with store.read() as connection:
        return {row["external_id"]: row for row in export_rows(connection, what)}


def test_an_unchanged_directory_runs_no_rules_and_rewrites_nothing(store, make_engine, rule_calls):
    engine = make_engine()
    engine.run()
    assert rule_calls == {"users": 4, "assets": 1}
    before = by_id(store, "users")
    [again] = engine.run()
    assert rule_calls == {"users": 4, "assets": 1}  # not called again
    assert again.counts["users"].unchanged == 4 and again.counts["assets"].unchanged == 1
    after = by_id(store, "users")
    assert {k: r["updated_at"] for k, r in after.items()} == {
        k: r["updated_at"] for k, r in before.items()
    }


def test_a_changed_record_is_written_and_the_others_are_not(store, make_engine, world, rule_calls):
    engine = make_engine()
    engine.run()
    change(world, "u-1", job_title="CFO")
    [again] = engine.run()
    assert rule_calls["users"] == 5  # only u-1's record went through the rules
    assert again.counts["users"].updated == 1 and again.counts["users"].unchanged == 3
    assert by_id(store, "users")["u-1"]["job_title"] == "CFO"


def test_a_changed_configuration_runs_the_rules_again(store, make_engine, rule_calls):
    make_engine().run()
    [again] = make_engine(CONFIG + "\n[users]\nfields = { job_title = 'department' }\n").run()
    assert rule_calls["users"] == 8
    assert again.counts["users"].unchanged == 4  # same columns: counted unchanged


def test_a_leaver_that_comes_back_unchanged_is_reactivated(store, make_engine, world):
    engine = make_engine()
    engine.run()
    gone = world.users[TENANT_A].pop("u-2")
    engine.run()
    assert by_id(store, "users")["u-2"]["active"] is False
    world.users[TENANT_A]["u-2"] = gone  # the very same record
    [back] = engine.run()
    assert back.counts["users"].updated == 1
    assert by_id(store, "users")["u-2"]["active"] is True


def test_a_device_follows_its_owner_to_another_site(store, make_engine, world):
    engine = make_engine(CONFIG + SITE_MAPPING)
    engine.run()
    assert by_id(store, "assets")["d-1"]["site"] == "Main"
    # Adele moves to Finance; her laptop's record is unchanged, its owner's site is not.
    change(world, "u-1", department="Finance")
    [again] = engine.run()
    assert by_id(store, "users")["u-1"]["site"] == "Head Office"
    assert again.counts["assets"].updated == 1
    assert by_id(store, "assets")["d-1"]["site"] == "Head Office"


def test_a_new_licence_reaches_unchanged_users(store, make_engine, world):
    engine = make_engine()
    world.users[TENANT_A]["u-3"] = user(
        "u-3", "room@contoso.com", display_name="Room 1", assigned_sku_ids=(SKU_BP,)
    )
    engine.run()  # the tenant has no SPB licence yet: no assignment for u-3
    assert (TENANT_A, SKU_BP) not in {(r["tenant_id"], r["external_id"]) for r in _licences(store)}
    world.licences[TENANT_A][SKU_BP] = Licence(
        sku_id=SKU_BP, sku_part_number="SPB", name="Microsoft 365 Business Premium"
    )
    engine.run()
    licences = {(r["tenant_id"], r["external_id"]): r for r in _licences(store)}
    assert licences[(TENANT_A, SKU_BP)]["assigned_users"] == 1


def _licences(store: Store) -> list[dict[str, Any]]:
    with store.read() as connection:
        return list(export_rows(connection, "licences"))


def test_a_per_site_run_neither_uses_nor_writes_digests(store, make_engine, rule_calls):
    engine = make_engine()
    engine.run()
    engine.run(site="Contoso/Main", only=["users"])
    assert rule_calls["users"] == 4 + 3  # every Contoso user through the rules again
    [again] = engine.run()
    assert again.counts["users"].unchanged == 4
    assert rule_calls["users"] == 7  # the per-site run left the digests as they were


def test_a_digest_names_the_record_and_its_rules():
    a = user("u-1", "adele@contoso.com", display_name="Adele")
    b = user("u-1", "adele@contoso.com", display_name="Adele V.")
    rules = Digester("rules one")
    assert rules.of(a) == rules.of(user("u-1", "adele@contoso.com", display_name="Adele"))
    assert rules.of(a) != rules.of(b)
    assert rules.of(a) != Digester("rules two").of(a)
    assert rules.of(a, "owner 1") != rules.of(a, "owner 2")
    assert len(rules.of(a)) == 32


def test_a_device_digest_follows_its_timestamps_to_the_microsecond():
    rules = Digester("rules")
    synced = datetime(2026, 1, 31, 9, 5, 0, 1, tzinfo=UTC)
    device = ManagedDevice(device_id="d-1", last_sync_at=synced)
    assert rules.of(device) == rules.of(ManagedDevice(device_id="d-1", last_sync_at=synced))
    later = ManagedDevice(device_id="d-1", last_sync_at=synced + timedelta(microseconds=1))
    assert rules.of(device) != rules.of(later)
    # The same instant in another zone: a rule might write it as text, offset and all.
    elsewhere = synced.astimezone(timezone(timedelta(hours=10)))
    assert rules.of(device) != rules.of(ManagedDevice(device_id="d-1", last_sync_at=elsewhere))
    assert rules.of(device) != rules.of(ManagedDevice(device_id="d-1"))


def test_the_core_records_are_digested_from_marshal_not_repr():
    # The faster encoding: a record falling back to repr would still be right, but slower.
    stamped = ManagedDevice(device_id="d-1", enrolled_at=datetime(2025, 1, 1, tzinfo=UTC))
    for record in (user("u-1", "adele@contoso.com", display_name="Adele"), stamped):
        assert marshal.loads(_encoder(type(record))(record))[0] == type(record).__qualname__


def test_a_record_holding_what_marshal_cannot_write_is_digested_by_repr():
    rules = Digester("rules")
    priced = user("u-1", "adele@contoso.com", attributes={"cost": Decimal("1.10")})
    assert rules.of(priced) == rules.of(
        user("u-1", "adele@contoso.com", attributes={"cost": Decimal("1.10")})
    )
    assert rules.of(priced) != rules.of(
        user("u-1", "adele@contoso.com", attributes={"cost": Decimal("1.20")})
    )


def test_rules_version_is_part_of_every_digest(monkeypatch):
    a = user("u-1", "adele@contoso.com")
    before = Digester("rules").of(a)
    monkeypatch.setattr("halo_integrator_core.sync.digest.RULES_VERSION", "2")
    assert Digester("rules").of(a) != before


def test_a_new_user_with_the_email_of_an_unchanged_one_does_not_take_its_row(
    store, make_engine, world
):
    # Rows left unchanged by their digest are this run's: marked seen before the batch's
    # other records are matched, so none is taken for a free PSA user by email.
    engine = make_engine(CONFIG.replace("[modules.", '[users]\nmatching = "email"\n\n[modules.'))
    engine.run()
    adele = world.users[TENANT_A]["u-1"]
    assert adele.mail
    world.users[TENANT_A]["u-new"] = user("u-new", "adele.v2@contoso.com", mail=adele.mail)
    [again] = engine.run()
    assert again.counts["users"].added == 1 and again.counts["users"].unchanged == 4
    users = by_id(store, "users")
    assert users["u-1"]["user_principal_name"] == adele.user_principal_name
    assert users["u-new"]["user_principal_name"] == "adele.v2@contoso.com"
