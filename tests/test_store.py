"""The store: migrations, types and units of work, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.dialects.postgresql import dialect as postgresql_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.types import TypeDecorator

from halo_integrator_core.store import (
    HEAD_REVISION,
    Store,
    StoreError,
    json_text,
    schema,
    utcnow,
)


def _insert_customer(store: Store, name: str) -> None:
    now = utcnow()
    with store.unit() as connection:
        connection.execute(
            sa.insert(schema.customers).values(
                name=name, source="test", active=True, created_at=now, updated_at=now
            )
        )


# The one expression index SQLite cannot reflect is checked by its own test below.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index:sqlalchemy.exc.SAWarning")
def test_migrations_build_exactly_the_schema_on_an_empty_store(store_url):
    store = Store.open(store_url, migrate=False)
    try:
        store.migrate(by_migrations=True)
        assert store.schema_version() == store.head_version() is not None
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, schema.metadata) == []
    finally:
        store.close()


def _index_definition(connection: sa.Connection, name: str) -> str:
    if connection.dialect.name == "sqlite":
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        # This test's own schema: pg_indexes lists every schema's, and another test run
        # on the same server may hold one of the same name at the same time.
        query = (
            "SELECT indexdef FROM pg_indexes WHERE indexname = :name "
            "AND schemaname = current_schema()"
        )
    definition = connection.execute(sa.text(query), {"name": name}).scalar_one()
    # PostgreSQL spells the expression lower((user_principal_name)::text).
    return definition.lower().replace("((", "(").replace(")::text)", ")")


# SQLite cannot reflect an expression index, so compare_metadata skips this one (and says
# so): this test checks it on both, built by the migrations and at once.
@pytest.mark.parametrize("by_migrations", [True, False])
def test_the_users_upn_index_is_on_the_lowercase_upn(store_url, by_migrations):
    store = Store.open(store_url, migrate=False)
    try:
        store.migrate(by_migrations=by_migrations)
        with store.engine.connect() as connection:
            definition = _index_definition(connection, "ix_users_upn")
            assert "tenant_ref" in definition and "lower(user_principal_name)" in definition
            if connection.dialect.name == "sqlite":
                # The device owners' query (AssetRules.owners) seeks it.
                plan = connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id FROM users WHERE tenant_ref = 1 "
                    "AND active IS 1 AND lower(user_principal_name) IN ('a', 'b')"
                ).all()
                assert any("ix_users_upn" in row[-1] for row in plan), plan
    finally:
        store.close()


def test_the_known_head_is_the_newest_migration(store_url):
    # Store.migrate trusts HEAD_REVISION to skip the scripts of a store at head: a new
    # migration must move it, or its stores would never be migrated.
    store = Store.open(store_url, migrate=False)
    try:
        assert store.head_version() == HEAD_REVISION
    finally:
        store.close()


def test_a_new_store_and_one_at_head_are_opened_and_the_cli_loaded_without_alembic(store_url):
    # Alembic and Mako cost a CLI command a fifth of its start: only migrating needs them.
    probe = (
        "import sys\n"
        "import halo_integrator_core.cli\n"
        "from halo_integrator_core.store import Store\n"
        "Store.open(sys.argv[1]).close()  # new: the schema at once, stamped\n"
        "Store.open(sys.argv[1]).close()  # at head\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, store_url], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index:sqlalchemy.exc.SAWarning")
def test_a_new_store_gets_the_schema_at_once_stamped_with_the_newest_revision(store_url):
    store = Store.open(store_url)
    try:
        assert store.schema_version() == store.head_version() is not None
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, schema.metadata) == []
        # Stamped right: the migrations take it down and up again from there.
        store.downgrade("base")
        store.migrate(by_migrations=True)
        _insert_customer(store, "Contoso")
    finally:
        store.close()


def test_an_existing_store_is_migrated_in_place_and_keeps_its_data(store_url):
    store = Store.open(store_url, migrate=False)
    try:
        assert store.schema_version() is None
        store.migrate()
        _insert_customer(store, "Contoso")
        head = store.schema_version()
    finally:
        store.close()
    reopened = Store.open(store_url)  # migrates again: a no-op at head
    try:
        assert reopened.schema_version() == head
        with reopened.read() as connection:
            assert connection.execute(sa.select(schema.customers.c.name)).scalars().all() == [
                "Contoso"
            ]
    finally:
        reopened.close()


def test_migrations_run_down_and_up_again(store):
    store.downgrade("base")
    with store.engine.connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}
    store.migrate(by_migrations=True)
    _insert_customer(store, "Fabrikam")


def test_a_store_from_a_newer_release_is_refused_with_the_fix(store):
    with store.unit() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(StoreError, match="newer release: upgrade halo-integrator"):
        store.migrate()


def test_an_unreachable_store_names_itself_without_its_password():
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql+psycopg://halo:hunter2@127.0.0.1:1/halo")
    assert "127.0.0.1:1" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_timestamps_come_back_aware_and_money_exact(store):
    cet = timezone(timedelta(hours=1))
    started = datetime(2026, 3, 1, 12, 30, tzinfo=cet)
    now = utcnow()
    with store.unit() as connection:
        customer = connection.execute(
            sa.insert(schema.customers).values(
                name="Contoso", source="test", active=True, created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
        connection.execute(
            sa.insert(schema.invoice_lines).values(
                customer_id=customer,
                module="m",
                period="2026-03",
                group_key="all",
                description="Azure",
                quantity=Decimal("1"),
                cost=Decimal("0.1"),
                price=Decimal("12345678.123456"),
                currency="GBP",
                active=True,
                created_at=started,
                updated_at=started,
            )
        )
    with store.read() as connection:
        line = connection.execute(sa.select(schema.invoice_lines)).one()
    assert line.price == Decimal("12345678.123456")
    assert line.cost + line.cost + line.cost == Decimal("0.3")
    assert line.created_at == started and line.created_at.tzinfo is not None
    assert line.created_at.utcoffset() == timedelta(0)


def test_a_naive_timestamp_is_refused(store):
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.unit() as connection:
        connection.execute(
            sa.insert(schema.customers).values(
                name="x",
                source="t",
                active=True,
                created_at=datetime(2026, 1, 1),
                updated_at=utcnow(),
            )
        )


def test_a_unit_commits_together_or_not_at_all(store):
    _insert_customer(store, "kept")
    with pytest.raises(RuntimeError, match="crash"), store.unit() as connection:
        for name in ("rolled back", "and this"):
            connection.execute(
                sa.insert(schema.customers).values(
                    name=name, source="t", active=True, created_at=utcnow(), updated_at=utcnow()
                )
            )
        raise RuntimeError("crash")
    with store.read() as connection:
        names = connection.execute(sa.select(schema.customers.c.name)).scalars().all()
    assert names == ["kept"]


def test_units_take_turns_on_sqlite_and_a_nested_one_is_refused(store):
    if not store.serializes_writes:
        pytest.skip("PostgreSQL has row locks, not one writer")
    with store.unit(), pytest.raises(RuntimeError, match="one writer at a time"), store.unit():
        pass
    order: list[str] = []

    def second() -> None:
        with store.unit():
            order.append("second")

    with store.unit():
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=0.2)
        order.append("first")  # the other thread's unit waits for this one
    thread.join(timeout=5)
    assert order == ["first", "second"]


def test_a_dry_run_sees_its_own_work_and_leaves_nothing(store):
    with store.dry_run():
        _insert_customer(store, "ghost")
        with store.read() as connection:
            assert (
                connection.execute(
                    sa.select(sa.func.count()).select_from(schema.customers)
                ).scalar()
                == 1
            )
    with store.read() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(schema.customers)).scalar()
            == 0
        )


def test_the_default_sqlite_file_is_in_wal_mode(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'x' / 'halo-integrator.db'}")
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()
    assert (tmp_path / "x" / "halo-integrator.db").exists()


def test_utcnow_is_aware():
    assert utcnow().tzinfo is UTC


_TIMESTAMPS = [
    None,
    datetime(2026, 1, 31, 9, 5, tzinfo=UTC),
    datetime(2026, 1, 31, 9, 5, 0, 7, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, 15, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(1, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-11))),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(9999, 12, 31, 10, 0, tzinfo=timezone(timedelta(hours=8))),
]


@pytest.mark.parametrize("value", _TIMESTAMPS)
def test_sqlites_one_step_timestamp_processor_writes_what_the_two_in_turn_would(value):
    dialect = sqlite_dialect()
    stored = schema.UtcDateTime().dialect_impl(dialect)  # as SQLAlchemy and store.bulk take it
    one_step = stored.bind_processor(dialect)
    in_turn = TypeDecorator.bind_processor(stored, dialect)
    assert one_step is not None and in_turn is not None and one_step is not in_turn
    assert one_step(value) == in_turn(value)


def test_a_naive_timestamp_is_refused_on_every_path():
    naive = datetime(2026, 1, 31, 9, 5)
    for dialect in (sqlite_dialect(), postgresql_dialect()):
        process = schema.UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
        with pytest.raises(ValueError, match="naive datetime"):
            process(naive)


def test_timestamps_are_read_back_as_written(store):
    # Through the store: the one-step text on SQLite, the driver's own on PostgreSQL.
    values = [v for v in _TIMESTAMPS if v is not None]
    rows = [
        {"name": f"c{i}", "source": "test", "active": True, "created_at": v, "updated_at": v}
        for i, v in enumerate(values)
    ]
    with store.unit() as connection:
        connection.execute(sa.insert(schema.customers), rows)
    with store.read() as connection:
        found = connection.execute(
            sa.select(schema.customers.c.created_at).order_by(schema.customers.c.name)
        ).scalars()
        assert list(found) == values


_JSON_VALUES = [
    {},
    [],
    {"usageLocation": "NO", "assignedSkuIds": ["a", "b"], "groups": []},
    {"nested": {"deeper": [1, 2.5, -0.0, 10**30, True, False, None]}, "": "empty key"},
    'Ærøskøbing \u2603 \U0001f600 "quoted" back\\slash \n\t\x00',
    [math.inf, -math.inf, 1e-320, 0.1 + 0.2],
    {"1": 1, "2": {"3": [[], {}, [[[]]]]}},
    42,
    None,
    "x" * 10_000,
]


@pytest.mark.parametrize("value", _JSON_VALUES)
def test_json_text_writes_what_json_dumps_writes(value):
    assert json_text(value) == json.dumps(value)


def test_json_text_refuses_what_json_dumps_refuses():
    for value in ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, [Decimal("1.5")], {1j: 1}):
        with pytest.raises(TypeError) as ours:
            json_text(value)
        with pytest.raises(TypeError) as theirs:
            json.dumps(value)
        assert str(ours.value) == str(theirs.value)


def test_the_stores_json_columns_are_written_by_json_text(store):
    assert store.engine.dialect._json_serializer is json_text
    value = _JSON_VALUES[3] | {"text": _JSON_VALUES[4]}
    with store.unit() as connection:
        connection.execute(
            sa.insert(schema.sync_runs).values(
                module="m", started_at=utcnow(), outcome="running", options=value
            )
        )
    with store.read() as connection:
        options, text = connection.execute(
            sa.select(schema.sync_runs.c.options, sa.cast(schema.sync_runs.c.options, sa.Text))
        ).one()
    assert options == value
    assert text == json.dumps(value)


@pytest.mark.postgres
def test_a_pooled_server_connection_is_tested_only_after_idling_and_replaced_if_dropped(
    store, monkeypatch
):
    import halo_integrator_core.store as store_module

    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    pings = []
    ping = store_module._ping_if_idle

    def counted(dbapi_connection, record, proxy):
        before = record.info.get("halo_checked_in")
        if before is not None and store_module.time.monotonic() - before >= (
            store_module.IDLE_PING_SECONDS
        ):
            pings.append(1)  # it will test this one
        ping(dbapi_connection, record, proxy)

    sa.event.remove(store.engine, "checkout", ping)
    sa.event.listen(store.engine, "checkout", counted)

    def backend() -> int:
        with store.read() as connection:
            return connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()

    first = backend()
    assert [backend() for _ in range(5)] == [first] * 5  # one pooled connection, reused
    assert pings == []  # back in the pool a moment ago each time: not tested

    # The server drops it (a restart, say) while it idles past the threshold.
    admin = sa.create_engine(store.engine.url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"SELECT pg_terminate_backend({first})")
    admin.dispose()
    monkeypatch.setattr(store_module, "IDLE_PING_SECONDS", 0.0)
    replaced = backend()  # tested, found dropped, replaced: no error reaches the caller
    assert replaced != first and pings == [1]
