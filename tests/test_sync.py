"""The sync engine against an in-test plugin, on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
import threading
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from fakes import MODULE, SKU_E3, TENANT_A, TENANT_B, FakeDirectory, user

from halo_integrator_core import RecordError, Removed
from halo_integrator_core.config import load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.store import Store, schema
from halo_integrator_core.sync import engine as engine_module
from halo_integrator_core.sync.bookmarks import get_bookmark
from halo_integrator_core.sync.collector import YOUNG_THRESHOLD
from halo_integrator_core.sync.engine import Change, Reporter, SyncEngine, SyncError, tenant_lock

MAPPED = f"""
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[[tenant_mappings]]
tenant_id = "{TENANT_B}"
customer = "Fabrikam Inc"

[modules.{MODULE}]
enabled = true
"""


DELTAS = (
    MAPPED.replace("[integrator]", '[integrator]\ntrack = "beta"') + "[users]\nuse_deltas = true\n"
)


class Recorder(Reporter):
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def change(self, change: Change) -> None:
        self.changes.append(change)


@pytest.fixture
def world() -> FakeDirectory:
    return FakeDirectory.small()


@pytest.fixture
def make_engine(store: Store, write_config, host_factory, world: FakeDirectory):
    def build(config_text: str = MAPPED, reporter: Reporter | None = None) -> SyncEngine:
        config = load_config(write_config(config_text))
        host = host_factory(config, (world, "fake"))
        return SyncEngine(store, config, host, reporter=reporter)

    return build


def rows(store: Store, what: str, **where: Any) -> list[dict[str, Any]]:
    with store.read() as connection:
        found = list(export_rows(connection, what))
    return [r for r in found if all(r.get(k) == v for k, v in where.items())]


def by_id(store: Store, what: str) -> dict[str, dict[str, Any]]:
    return {r["external_id"]: r for r in rows(store, what)}


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    with store.read() as connection:
        return {
            table.name: sorted(
                (tuple(str(v) for v in row) for row in connection.execute(sa.select(table))),
            )
            for table in schema.metadata.sorted_tables
        }


def counts(result: Any) -> dict[str, dict[str, int]]:
    return {kind: c.as_dict() for kind, c in result.counts.items()}


def test_first_sync_adds_everything_and_the_second_changes_nothing(store, make_engine):
    engine = make_engine()
    [first] = engine.run()
    assert first.outcome == "succeeded"
    assert counts(first)["tenants"]["added"] == 2
    assert counts(first)["users"]["added"] == 4
    assert counts(first)["licences"]["added"] == 2
    assert counts(first)["subscriptions"]["added"] == 1
    assert counts(first)["assets"]["added"] == 1

    users = by_id(store, "users")
    assert users["u-1"]["customer"] == "Contoso"  # created from the tenant
    assert users["u-9"]["customer"] == "Fabrikam Inc"  # from the config mapping
    assert users["u-1"]["site"] == "Main"
    assert users["u-1"]["network_login"] == "adele@contoso.com"

    [second] = engine.run()
    assert second.outcome == "succeeded"
    for kind, c in counts(second).items():
        assert c["added"] == c["updated"] == c["deactivated"] == 0, kind
    assert counts(second)["users"]["unchanged"] == 4


def test_changes_reach_a_reporter_that_hears_them_and_are_not_built_for_one_that_does_not(
    make_engine, world, monkeypatch
):
    from halo_integrator_core import cli
    from halo_integrator_core.sync import engine as engine_module

    built: list[tuple] = []

    class Counting(Change):
        def __init__(self, *args, **kwargs) -> None:
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine_module, "Change", Counting)
    assert not Reporter().hears_changes
    assert not cli.TerminalReporter(dry_run=False).hears_changes
    assert cli.TerminalReporter(dry_run=True).hears_changes
    [first] = make_engine(reporter=cli.TerminalReporter(dry_run=False)).run()
    assert counts(first)["users"]["added"] == 4
    assert built == []  # a change per record added, none of them built

    world.users[TENANT_A]["u-1"] = attrs.evolve(world.users[TENANT_A]["u-1"], job_title="CFO")
    recorder = Recorder()
    assert recorder.hears_changes  # it overrides `change`
    make_engine(reporter=recorder).run()
    assert [(c.entity_id, c.action, c.fields) for c in recorder.changes] == [
        ("u-1", "updated", ("job_title",))
    ]
    assert len(built) == 1


def test_a_changed_record_is_updated_and_names_its_fields(store, make_engine, world):
    recorder = Recorder()
    engine = make_engine(reporter=recorder)
    engine.run()
    world.users[TENANT_A]["u-1"] = user(
        "u-1",
        "adele@contoso.com",
        display_name="Adele V.",
        mail="adele@contoso.com",
        account_enabled=True,
        assigned_sku_ids=(SKU_E3,),
        job_title="CFO",
    )
    recorder.changes.clear()
    [result] = engine.run()
    assert counts(result)["users"] == {
        "added": 0,
        "updated": 1,
        "unchanged": 3,
        "deactivated": 0,
        "skipped": 0,
        "failed": 0,
    }
    [change] = [c for c in recorder.changes if c.kind == "users"]
    assert (change.entity_id, change.action) == ("u-1", "updated")
    assert set(change.fields) == {"display_name", "job_title"}
    assert by_id(store, "users")["u-1"]["job_title"] == "CFO"


def test_what_leaves_a_complete_listing_is_deactivated_never_deleted(store, make_engine, world):
    engine = make_engine()
    engine.run()
    gone = world.users[TENANT_A].pop("u-2")
    world.devices[TENANT_A].clear()
    [result] = engine.run()
    assert counts(result)["users"]["deactivated"] == 1
    assert counts(result)["assets"]["deactivated"] == 1
    users = by_id(store, "users")
    assert users["u-2"]["active"] is False and users["u-2"]["inactive_since"]
    assert users["u-1"]["active"] is True
    assert len(users) == 4  # kept, only marked
    assert by_id(store, "assets")["d-1"]["active"] is False

    world.users[TENANT_A]["u-2"] = gone
    [again] = engine.run()
    assert counts(again)["users"]["updated"] == 1
    assert by_id(store, "users")["u-2"]["active"] is True
    assert by_id(store, "users")["u-2"]["inactive_since"] is None


def test_users_stay_active_when_deactivating_is_turned_off(store, make_engine, world):
    engine = make_engine(
        MAPPED.replace("[integrator]", "[integrator]\ndeactivate_users_not_found = false")
    )
    engine.run()
    world.users[TENANT_A].pop("u-2")
    [result] = engine.run()
    assert counts(result)["users"]["deactivated"] == 0
    assert by_id(store, "users")["u-2"]["active"] is True


def test_a_delta_round_applies_changes_and_removals_and_moves_the_bookmark(
    store, make_engine, world
):
    world.delta = True
    engine = make_engine(DELTAS)
    engine.run()
    key = f"main/{TENANT_A}"
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users", key) == "delta-0"

    world.round = 1
    world.changes[TENANT_A] = [
        user("u-4", "new@contoso.com", display_name="New Starter", account_enabled=True),
        Removed(entity_id="u-2", reason="deleted"),
    ]
    [result] = engine.run()
    assert counts(result)["users"]["added"] == 1
    assert counts(result)["users"]["deactivated"] == 1
    # An incremental round is not a complete listing: users it does not mention stay.
    users = by_id(store, "users")
    assert users["u-1"]["active"] is True and users["u-3"]["active"] is True
    assert users["u-2"]["active"] is False
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users", key) == "delta-1"
    assert ("fetch_users", TENANT_A, "delta-0") in world.calls


def test_a_crash_mid_stream_commits_nothing_and_a_rerun_ends_as_if_uninterrupted(
    store, make_engine, world, tmp_path, write_config, host_factory
):
    world.delta = True
    world.fail[("fetch_users", TENANT_A)] = ConnectionError("connection dropped mid-page")
    world.fail_after = 2
    engine = make_engine()
    [result] = engine.run()
    assert result.outcome == "completed_with_errors"
    assert counts(result)["users"]["failed"] == 1
    # Nothing of the failed unit landed, and its bookmark did not move ...
    assert rows(store, "users", tenant_id=TENANT_A) == []
    with store.read() as connection:
        assert get_bookmark(connection, MODULE, "users", f"main/{TENANT_A}") is None
    # ... while the other tenant, and the tenant's other kinds, went on.
    assert [u["external_id"] for u in rows(store, "users", tenant_id=TENANT_B)] == ["u-9"]
    assert rows(store, "licences", tenant_id=TENANT_A)
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert "connection dropped mid-page" in tenant["last_error"]
    [problem] = result.problems
    assert (problem.kind, problem.tenant_id, problem.outcome) == ("users", TENANT_A, "failed")

    world.fail.clear()
    [rerun] = engine.run()
    assert rerun.outcome == "succeeded"

    clean_store = Store.open(f"sqlite:///{tmp_path / 'clean.db'}")
    try:
        config = load_config(write_config(MAPPED, name="clean.toml"))
        clean_world = FakeDirectory.small()
        clean_world.delta = True
        SyncEngine(clean_store, config, host_factory(config, (clean_world, "clean"))).run()
        fields = ("external_id", "tenant_id", "customer", "user_principal_name", "active")
        project = lambda s: sorted(tuple(r[f] for f in fields) for r in rows(s, "users"))  # noqa: E731
        assert project(store) == project(clean_store)
    finally:
        clean_store.close()


def test_a_bad_record_is_counted_and_skipped_and_not_taken_for_gone(store, make_engine, world):
    engine = make_engine()
    engine.run()
    world.users[TENANT_A].pop("u-2")
    world.bad[TENANT_A] = [
        RecordError(entity_id="u-2", reason="$.accountEnabled: expected a boolean")
    ]
    [result] = engine.run()
    assert result.outcome == "completed_with_errors"
    assert counts(result)["users"]["failed"] == 1
    assert counts(result)["users"]["deactivated"] == 0
    assert by_id(store, "users")["u-2"]["active"] is True
    with store.read() as connection:
        stored = connection.execute(sa.select(schema.sync_problems)).one()
    assert stored.entity_id == "u-2"
    assert stored.tenant_id == TENANT_A
    assert "$.accountEnabled" in stored.reason


def test_an_unmapped_tenant_is_skipped_with_a_reason(store, make_engine, world):
    engine = make_engine(MAPPED.replace("create_customers_from_tenants = true", ""))
    [result] = engine.run()
    assert result.outcome == "succeeded"
    assert counts(result)["tenants"]["skipped"] == 1
    [problem] = result.problems
    assert problem.tenant_id == TENANT_A and problem.outcome == "skipped"
    assert "[[tenant_mappings]]" in problem.reason
    assert rows(store, "users", tenant_id=TENANT_A) == []
    assert not any(call[1] == TENANT_A for call in world.calls)
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert tenant["customer"] is None


def test_do_not_import_keeps_a_tenant_out(store, make_engine, world):
    text = MAPPED + f'\n[[tenant_mappings]]\ntenant_id = "{TENANT_A}"\ndo_not_import = true\n'
    # The mapping must come before the [modules] table in TOML; rebuild the text.
    text = MAPPED.replace(
        "[modules.",
        f'[[tenant_mappings]]\ntenant_id = "{TENANT_A}"\ndo_not_import = true\n\n[modules.',
    )
    engine = make_engine(text)
    [result] = engine.run()
    assert counts(result)["tenants"]["skipped"] == 1
    assert "do not import" in result.problems[0].reason
    assert rows(store, "users", tenant_id=TENANT_A) == []
    assert [c["name"] for c in rows(store, "customers")] == ["Fabrikam Inc"]


def test_an_unchanged_run_marks_its_tenants_seen_at_once_and_writes_no_bookmark(
    store, make_engine, world
):
    # Per-tenant statements multiply by the hundreds of tenants an MSP has.
    engine = make_engine()
    engine.run()
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        [result] = engine.run()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert counts(result)["tenants"]["unchanged"] == 2
    seen = [s for s in statements if s.startswith("UPDATE tenants SET seen_run_id")]
    assert len(seen) == 1 and "tenants.id IN" in seen[0]
    # The tenants' outcomes: one statement for both (up to OUTCOMES_PER_WRITE at a time).
    assert len([s for s in statements if s.startswith("UPDATE tenants SET last_synced_at")]) == 1
    synced = {t["tenant_id"]: t["last_synced_at"] for t in rows(store, "tenants")}
    assert len(synced) == 2 and all(synced.values())
    # Licences and subscriptions list in full: no bookmark to delete, run after run.
    assert not [
        s for s in statements if s.startswith(("DELETE FROM bookmarks", "UPDATE bookmarks"))
    ]
    with store.read() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(schema.bookmarks)).scalar()
            == 0
        )
        assert {
            row.seen_run_id for row in connection.execute(sa.select(schema.tenants.c.seen_run_id))
        } == {result.run_id}


def test_a_tenant_listed_twice_in_a_batch_is_stored_once_as_last_listed(store, make_engine, world):
    first = world.tenants[TENANT_A]
    renamed = attrs.evolve(first, name="Contoso Renamed")

    class Twice(dict):  # what the fake's fetch_tenants lists: Contoso first and last
        def values(self):
            return [first, *super().values(), renamed]

    world.tenants = Twice(world.tenants)
    [result] = make_engine().run()
    assert counts(result)["tenants"]["added"] == 2
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert tenant["name"] == "Contoso Renamed"


def test_tenant_outcomes_are_written_in_batches_and_when_the_run_fails(
    store, make_engine, world, monkeypatch
):
    monkeypatch.setattr(engine_module, "OUTCOMES_PER_WRITE", 1)  # each tenant at once
    make_engine().run()
    assert all(t["last_synced_at"] for t in rows(store, "tenants"))

    # A run that dies after its first tenant still writes that tenant's outcome.
    monkeypatch.setattr(engine_module, "OUTCOMES_PER_WRITE", 50)
    stamp = {t["tenant_id"]: t["last_synced_at"] for t in rows(store, "tenants")}
    finished = engine_module._ModuleRun.finish_tenant

    def then_die(self, *args):
        finished(self, *args)
        raise KeyboardInterrupt  # not an Exception: ends the run as a signal would

    monkeypatch.setattr(engine_module._ModuleRun, "finish_tenant", then_die)
    with pytest.raises(KeyboardInterrupt):
        make_engine(MAPPED.replace("[integrator]", "[integrator]\nparallel_tenants = 1")).run()
    after = {t["tenant_id"]: t["last_synced_at"] for t in rows(store, "tenants")}
    assert len([t for t in after if after[t] != stamp[t]]) == 1


def test_a_changed_tenant_mapping_is_written_to_the_stored_tenant(store, make_engine, world):
    # The stored tenant is written only when its mapping changes it: both ways here.
    make_engine().run()
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert (tenant["do_not_import"], tenant["customer"]) == (False, "Contoso")
    excluded = MAPPED.replace(
        "[modules.",
        f'[[tenant_mappings]]\ntenant_id = "{TENANT_A}"\ndo_not_import = true\n\n[modules.',
    )
    make_engine(excluded).run()
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert (tenant["do_not_import"], tenant["customer"]) == (True, None)
    make_engine().run()
    [tenant] = rows(store, "tenants", tenant_id=TENANT_A)
    assert (tenant["do_not_import"], tenant["customer"]) == (False, "Contoso")


def test_a_tenant_gone_from_the_listing_is_deactivated_and_not_synced(store, make_engine, world):
    engine = make_engine()
    engine.run()
    world.tenants.pop(TENANT_A)
    world.calls.clear()
    [result] = engine.run()
    assert counts(result)["tenants"]["deactivated"] == 1
    assert rows(store, "tenants", tenant_id=TENANT_A)[0]["active"] is False
    assert {call[1] for call in world.calls if call[1]} == {TENANT_B}


def test_a_failing_tenant_listing_falls_back_to_the_stored_tenants(store, make_engine, world):
    engine = make_engine()
    engine.run()
    world.fail[("fetch_tenants", "")] = RuntimeError("Partner Center is down")
    world.fail_after = 0
    [result] = engine.run()
    assert result.outcome == "completed_with_errors"
    assert counts(result)["tenants"]["failed"] == 1
    assert counts(result)["users"]["unchanged"] == 4
    assert all(t["active"] for t in rows(store, "tenants"))


def test_licence_assignments_follow_the_users_skus(store, make_engine, world):
    engine = make_engine()
    engine.run()
    [e3] = rows(store, "licences", external_id=SKU_E3)
    assert e3["assigned_users"] == 2
    world.users[TENANT_A]["u-2"] = user(
        "u-2",
        "alex@contoso.com",
        display_name="Alex Wilber",
        mail="alex@contoso.com",
        account_enabled=True,
    )
    engine.run()
    [e3] = rows(store, "licences", external_id=SKU_E3)
    assert e3["assigned_users"] == 1
    world.users[TENANT_A].pop("u-1")
    engine.run()
    [e3] = rows(store, "licences", external_id=SKU_E3)
    assert e3["assigned_users"] == 0


def test_licences_of_users_whose_rows_exist_are_assigned_by_the_ids_matching_found(
    store, make_engine, world
):
    engine = make_engine()
    engine.run()  # every user new: their rows' IDs are read after the insert

    def holders() -> set[str]:
        assignments, users = schema.licence_assignments, schema.users
        with store.read() as connection:
            return set(
                connection.execute(
                    sa.select(users.c.external_id)
                    .join(assignments, assignments.c.user_id == users.c.id)
                    .where(assignments.c.active.is_(True))
                ).scalars()
            )

    assert holders() == {"u-1", "u-2", "u-9"}
    # u-3 gets E3: an update, whose row matching found already.
    world.users[TENANT_A]["u-3"] = attrs.evolve(
        world.users[TENANT_A]["u-3"], assigned_sku_ids=(SKU_E3,)
    )
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        engine.run()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert holders() == {"u-1", "u-2", "u-3", "u-9"}
    assert not [s for s in statements if s.startswith("SELECT users.external_id, users.id ")]


def test_a_device_goes_to_its_users_site(store, make_engine):
    make_engine().run()
    [asset] = rows(store, "assets")
    assert asset["user"] == "adele@contoso.com"
    assert asset["site"] == "Main" and asset["customer"] == "Contoso"


def test_only_and_tenant_narrow_a_run(store, make_engine, world):
    engine = make_engine()
    engine.run()
    world.calls.clear()
    [result] = engine.run(only=["users"], tenant="fabrikam.onmicrosoft.com")
    assert world.calls == [("fetch_users", TENANT_B, None)]
    assert set(result.counts) == {"users"}
    with pytest.raises(SyncError, match="not an entity kind"):
        engine.run(only=["people"])
    with pytest.raises(SyncError, match="not enabled"):
        engine.run(module="nope")


def test_a_dry_run_writes_nothing_and_reports_each_change(store, make_engine, world):
    recorder = Recorder()
    engine = make_engine(reporter=recorder)
    # On an empty store ...
    before = snapshot(store)
    [result] = engine.run(dry_run=True)
    assert result.dry_run and counts(result)["users"]["added"] == 4
    assert snapshot(store) == before
    assert {(c.kind, c.action) for c in recorder.changes} >= {
        ("users", "added"),
        ("tenants", "added"),
    }

    # ... and on one that has data.
    engine.run()
    world.users[TENANT_A].pop("u-2")
    world.users[TENANT_B]["u-10"] = user("u-10", "lee@fabrikam.com", account_enabled=True)
    before = snapshot(store)
    recorder.changes.clear()
    [result] = engine.run(dry_run=True)
    assert snapshot(store) == before
    user_changes = {(c.entity_id, c.action) for c in recorder.changes if c.kind == "users"}
    assert user_changes == {("u-2", "deactivated"), ("u-10", "added")}
    assert counts(result)["users"]["deactivated"] == 1


def test_each_run_is_recorded_with_counts(store, make_engine):
    engine = make_engine()
    engine.run()
    engine.run(dry_run=True)  # leaves no record
    [run] = rows(store, "runs")
    assert run["module"] == MODULE
    assert run["outcome"] == "succeeded"
    assert run["finished_at"] >= run["started_at"]
    assert run["added"] == 2 + 2 + 1 + 4 + 1


def test_imported_tenants_join_the_sso_allowed_list_once_when_asked(store, make_engine):
    engine = make_engine(
        MAPPED.replace("[integrator]", "[integrator]\nadd_tenants_to_sso_allowed_list = true")
    )
    engine.run()
    engine.run()
    allowed = rows(store, "sso-tenants")
    assert sorted((r["tenant_id"], r["customer"]) for r in allowed) == [
        (TENANT_A, "Contoso"),
        (TENANT_B, "Fabrikam Inc"),
    ]


def test_the_sso_allowed_list_stays_empty_by_default(store, make_engine):
    make_engine().run()
    assert rows(store, "sso-tenants") == []


def test_a_run_collects_garbage_seldom_and_restores_the_collector_after(make_engine):
    seen: list[tuple[tuple[int, ...], int]] = []

    class Watching(Reporter):
        def change(self, change: Change) -> None:  # called by the writer, mid-run
            seen.append((gc.get_threshold(), gc.get_freeze_count()))

    before = gc.get_threshold(), gc.get_freeze_count()
    make_engine(reporter=Watching()).run()
    assert seen
    assert all(threshold[0] >= YOUNG_THRESHOLD and frozen > 0 for threshold, frozen in seen)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_a_stop_request_ends_the_run_between_tenants(store, make_engine, world):
    engine = make_engine()
    engine.stop.set()
    [result] = engine.run()
    assert result.note and "stopped on request: 2 tenant(s) left" in result.note
    assert result.outcome == "succeeded"
    assert "users" not in result.counts  # no tenant was started
    engine.stop.clear()
    [again] = engine.run()
    assert again.counts["users"].added == 4  # the next run picks up where it stopped


def test_a_tenant_is_never_synced_by_two_runs_at_once(store, make_engine, world):
    engine = make_engine()
    engine.run(only=["tenants"])
    lock = tenant_lock(TENANT_A)
    lock.acquire()  # another job holds tenant A
    done = threading.Event()
    thread = threading.Thread(target=lambda: (engine.run(tenant=TENANT_A), done.set()))
    thread.start()
    assert not done.wait(0.5)  # waits for the other job
    lock.release()
    assert done.wait(10)
    thread.join()
