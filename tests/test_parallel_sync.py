"""Tenants synced side by side (`integrator.parallel_tenants`), on SQLite and PostgreSQL:
the same store as one after another, fetching never waits for another tenant's writing,
and the spool that holds a unit's records until its turn to write."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from fakes import MODULE, SKU_E3, FakeDirectory, user

from halo_integrator_core import Licence, ManagedDevice, Tenant, TenantAccess, hookimpl
from halo_integrator_core.config import ConfigError, load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.models import DirectoryUser, RecordError
from halo_integrator_core.store import Store
from halo_integrator_core.sync import spool as spool_module
from halo_integrator_core.sync.engine import SyncEngine
from halo_integrator_core.sync.spool import Spool, Unspoolable

CONFIG = """
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true
parallel_tenants = {parallel}

[modules.{module}]
enabled = true
"""

#: What differs between two stores holding the same data: row IDs, times, run numbers.
VOLATILE = {"id", "created_at", "updated_at", "last_synced_at", "seen_run_id", "inactive_since"}


def wide_world(
    tenants: int = 6, users: int = 40, devices: int = 7, cls: type[FakeDirectory] = FakeDirectory
) -> Any:
    world = cls()
    for t in range(tenants):
        tenant_id = f"{t:08x}-0000-4000-8000-{t:012x}"
        world.tenants[tenant_id] = Tenant(
            tenant_id=tenant_id,
            name=f"Customer {t}",
            connection="main",
            default_domain=f"customer{t}.onmicrosoft.com",
            access=TenantAccess.RESELLER_AND_GDAP,
        )
        world.licences[tenant_id] = {
            SKU_E3: Licence(sku_id=SKU_E3, sku_part_number="SPE_E3", name="Microsoft 365 E3")
        }
        world.subscriptions[tenant_id] = {}
        world.users[tenant_id] = {
            f"u-{t}-{u}": user(
                f"u-{t}-{u}",
                f"user{u}@customer{t}.com",
                display_name=f"User {u}",
                mail=f"user{u}@customer{t}.com",
                account_enabled=u % 5 != 0,
                assigned_sku_ids=(SKU_E3,) if u % 2 else (),
            )
            for u in range(users)
        }
        world.devices[tenant_id] = {
            f"d-{t}-{d}": ManagedDevice(
                device_id=f"d-{t}-{d}",
                device_name=f"PC-{t}-{d}",
                serial_number=f"SN{t:03d}{d:04d}",
                operating_system="Windows",
                user_principal_name=f"user{d}@customer{t}.com",
            )
            for d in range(devices)
        }
    return world


def engine_for(store: Store, write_config, host_factory, world, parallel: int) -> SyncEngine:
    config = load_config(write_config(CONFIG.format(parallel=parallel, module=MODULE)))
    return SyncEngine(store, config, host_factory(config, (world, "fake")))


def contents(store: Store) -> dict[str, list[str]]:
    """Each export, its rows without what differs between equal stores, sorted."""
    found = {}
    with store.read() as connection:
        for what in ("tenants", "customers", "users", "assets", "licences"):
            found[what] = sorted(
                repr(sorted((k, v) for k, v in row.items() if k not in VOLATILE))
                for row in export_rows(connection, what)
            )
    return found


def test_side_by_side_leaves_the_store_one_after_another_leaves(
    store, write_config, host_factory, tmp_path
):
    world = wide_world()
    sequential = Store.open(f"sqlite:///{tmp_path / 'sequential.db'}")
    try:
        [one] = engine_for(sequential, write_config, host_factory, world, 1).run()
        expected = contents(sequential)
    finally:
        sequential.close()
    engine = engine_for(store, write_config, host_factory, world, 4)
    [many] = engine.run()
    assert many.outcome == one.outcome == "succeeded"
    assert {k: c.as_dict() for k, c in many.counts.items()} == {
        k: c.as_dict() for k, c in one.counts.items()
    }
    assert many.counts["users"].added == 6 * 40
    assert contents(store) == expected
    # And again, nothing changed upstream: nothing written.
    [again] = engine.run()
    assert again.counts["users"].unchanged == 6 * 40
    assert again.counts["users"].added == again.counts["users"].updated == 0
    assert contents(store) == expected


@attrs.define(eq=False)
class GatedDirectory(FakeDirectory):
    """The first tenant's users listing waits until ``released`` is set."""

    released: threading.Event = attrs.field(factory=threading.Event)

    @hookimpl
    def fetch_users(
        self, context: Any, tenant: Tenant, bookmark: str | None, query: Any
    ) -> Iterator[Any]:
        if tenant.tenant_id == next(iter(self.tenants)):
            # Were a unit to hold the store while fetching, the other could never write.
            assert self.released.wait(20), "tenant 1 never wrote while tenant 0 was fetching"
        yield from super().fetch_users(context, tenant, bookmark, query)


def test_a_slow_listing_never_holds_up_another_tenants_writes(store, write_config, host_factory):
    world = wide_world(tenants=2, users=3, devices=1, cls=GatedDirectory)
    second = list(world.tenants)[1]
    engine = engine_for(store, write_config, host_factory, world, 2)
    engine.run(only=["tenants"])
    watcher = threading.Thread(target=_release_when_stored, args=(store, second, world.released))
    watcher.start()
    [result] = engine.run()
    watcher.join()
    assert result.outcome == "succeeded", result.problems
    assert result.counts["users"].added == 6


def _release_when_stored(store: Store, tenant_id: str, released: threading.Event) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with store.read() as connection:
            users = [r for r in export_rows(connection, "users") if r.get("tenant_id") == tenant_id]
        if len(users) == 3:
            released.set()
            return
        time.sleep(0.02)


def test_a_stop_request_starts_no_further_tenant(store, write_config, host_factory):
    world = wide_world(tenants=5, users=2, devices=0)
    engine = engine_for(store, write_config, host_factory, world, 3)
    engine.run(only=["tenants"])
    engine.stop.set()
    [result] = engine.run()
    assert result.note and "stopped on request: 5 tenant(s) left" in result.note
    assert "users" not in result.counts
    engine.stop.clear()
    [again] = engine.run()
    assert again.counts["users"].added == 10


def test_parallel_tenants_out_of_range_is_a_config_error(write_config):
    for value in (0, 300):
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(f"[integrator]\nparallel_tenants = {value}\n"))
        assert any("integrator.parallel_tenants" in p for p in caught.value.problems)


# -- the spool ------------------------------------------------------------------------------


def _users(start: int, count: int) -> list[DirectoryUser]:
    return [
        user(f"u-{i}", f"user{i}@example.com", display_name=f"User {i}")
        for i in range(start, start + count)
    ]


def test_the_spool_gives_back_what_it_took_in_order_memory_then_disk():
    batches = [_users(i * 3, 3) for i in range(5)]
    with Spool(memory_records=4) as spool:
        for batch in batches:
            spool.add(batch)
        assert spool._file is not None  # past four records it spilled
        assert list(spool) == batches


def test_the_spool_stands_in_for_what_cannot_be_pickled():
    odd = threading.Lock()
    with Spool(memory_records=0) as spool:
        spool.add([*_users(0, 1), odd, RecordError(entity_id="x", reason="bad")])
        [back] = list(spool)
    assert back[0] == _users(0, 1)[0]
    assert back[1] == Unspoolable("lock")
    assert back[2] == RecordError(entity_id="x", reason="bad")


@attrs.frozen
class _Elsewhere:
    """An attrs class of another module than the core's records: pickled whole."""

    name: str


def test_a_spilled_batch_comes_back_whole_records_by_their_fields_the_rest_as_pickled(
    monkeypatch,
):
    from datetime import UTC, datetime

    from halo_integrator_core.models import Checkpoint, DirectoryUser, Notice, Removed

    device = ManagedDevice(
        device_id="d-1",
        device_name="LAPTOP-1",
        enrolled_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        attributes={"nested": {"list": [1, 2**70, None]}},
    )
    batch = [
        *_users(0, 2),
        device,
        *_users(2, 1),
        Removed(entity_id="gone"),
        Notice(code="partial", message="an optional field is empty"),
        RecordError(entity_id="x", reason="bad"),
        _Elsewhere("kept"),
        {"a": "dict"},
        Checkpoint(bookmark="https://graph.example/delta?token=1", complete=True),
    ]

    def refused(self):
        raise AssertionError("a record's state was pickled one by one")

    monkeypatch.setattr(DirectoryUser, "__getstate__", refused)
    monkeypatch.setattr(ManagedDevice, "__getstate__", refused)
    with Spool(memory_records=0) as spool:
        spool.add(batch)
        assert spool._file is not None
        [back] = list(spool)
    assert back == batch
    assert [type(item) for item in back] == [type(item) for item in batch]
    assert back[2].enrolled_at == device.enrolled_at and back[2].attributes == device.attributes
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        back[0].display_name = "changed"  # still frozen


def test_an_unpicklable_item_is_still_reported_by_its_type(
    store, write_config, host_factory, monkeypatch
):
    monkeypatch.setattr(spool_module, "MEMORY_RECORDS", 0)
    monkeypatch.setattr(Spool.__init__, "__defaults__", (0,))
    world = wide_world(tenants=2, users=2, devices=0)
    first = next(iter(world.tenants))
    world.bad[first] = [threading.Lock()]  # type: ignore[list-item]
    [result] = engine_for(store, write_config, host_factory, world, 2).run()
    reasons = [p.reason for p in result.problems if p.outcome == "failed"]
    assert any("the plugin yielded lock" in r for r in reasons), reasons
    assert result.counts["users"].added == 4


@attrs.define(eq=False)
class HeldDirectory(FakeDirectory):
    """Every licences listing waits at ``gate``; ``entered`` counts those waiting."""

    gate: threading.Event = attrs.field(factory=threading.Event)
    entered: threading.Semaphore = attrs.field(factory=lambda: threading.Semaphore(0))

    @hookimpl
    def fetch_licences(self, context: Any, tenant: Tenant, bookmark: str | None) -> Iterator[Any]:
        self.entered.release()
        assert self.gate.wait(20)
        yield from super().fetch_licences(context, tenant, bookmark)


def test_a_stop_mid_run_finishes_the_tenants_in_hand_and_starts_no_other(
    store, write_config, host_factory
):
    world = wide_world(tenants=3, users=2, devices=0, cls=HeldDirectory)
    engine = engine_for(store, write_config, host_factory, world, 2)
    engine.run(only=["tenants"])
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.extend(engine.run()))
    runner.start()
    for _ in range(2):  # both workers are in a tenant
        assert world.entered.acquire(timeout=10)
    engine.stop.set()
    world.gate.set()
    runner.join(20)
    [result] = outcome
    assert result.outcome == "succeeded"
    assert result.note == "stopped on request: 1 tenant(s) left for the next run"
    assert result.counts["users"].added == 4  # the two tenants in hand were finished
