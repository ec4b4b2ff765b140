"""`store.bulk` writes what SQLAlchemy's own executemany writes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.bulk import _column_processor, insert_rows, update_rows

NOW = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)


def _customer(connection) -> int:
    return connection.execute(
        sa.insert(schema.customers).values(
            name="Contoso", source="test", created_at=NOW, updated_at=NOW
        )
    ).inserted_primary_key[0]


def _users(customer_id: int, start: int, count: int, now: datetime) -> list[dict]:
    return [
        {
            "customer_id": customer_id,
            "external_id": f"u-{i}",
            "user_principal_name": f"user{i}@contoso.com",
            "display_name": f"User {i}" if i % 3 else None,
            "active": bool(i % 2),
            "created_at": now,  # one object for the batch, as the engine passes it
            "updated_at": now,
            "attributes": {"companyName": "Contoso", "n": i},
        }
        for i in range(start, start + count)
    ]


def _select_users(connection) -> list[tuple]:
    table = schema.users
    columns = [c for c in table.c if c.key != "id"]
    return sorted(
        tuple(row) for row in connection.execute(sa.select(*columns).order_by(table.c.external_id))
    )


def test_insert_rows_writes_what_sqlalchemy_writes(store: Store):
    with store.unit() as connection:
        customer = _customer(connection)
        # A zone other than UTC: the bind processor turns it to UTC as SQLAlchemy would.
        local = NOW.astimezone(timezone(timedelta(hours=2)))
        insert_rows(connection, schema.users, _users(customer, 0, 7, local))
        mine = _select_users(connection)
        connection.execute(sa.delete(schema.users))
        connection.execute(sa.insert(schema.users), _users(customer, 0, 7, local))
        theirs = _select_users(connection)
    assert mine == theirs
    assert len(mine) == 7


def test_text_that_copy_or_sql_could_mistake_is_written_as_sqlalchemy_writes_it(store: Store):
    # On PostgreSQL inserts go by COPY, whose text format has its own escapes: a tab ends a
    # value, a newline a row, \N is NULL, a backslash escapes.
    awkward = [
        "tab\there",
        "two\nlines",
        "back\\slash",
        "\\\\N",
        "\\N",
        "",
        "quote ' \" ;",
        "日本 ✓",
    ]
    with store.unit() as connection:
        customer = _customer(connection)
        rows = _users(customer, 0, len(awkward), NOW)
        for row, text in zip(rows, awkward, strict=True):
            row["display_name"] = text
            row["attributes"] = {"text": text, text or "empty": [text, None, 1.5, True]}
        insert_rows(connection, schema.users, rows)
        mine = _select_users(connection)
        connection.execute(sa.delete(schema.users))
        connection.execute(sa.insert(schema.users), rows)
        theirs = _select_users(connection)
        names = connection.execute(sa.select(schema.users.c.display_name)).scalars().all()
    assert mine == theirs
    assert sorted(names) == sorted(awkward)


def test_a_refused_insert_raises_as_sqlalchemy_raises_and_leaves_nothing(store: Store):
    rows = [
        {"name": name, "source": "test", "created_at": NOW, "updated_at": NOW}
        for name in ("Contoso", "Northwind", "Contoso")
    ]
    with pytest.raises(sa.exc.IntegrityError), store.unit() as connection:
        insert_rows(connection, schema.customers, rows)  # the duplicate in the batch
    with pytest.raises(sa.exc.IntegrityError), store.unit() as connection:
        insert_rows(connection, schema.customers, rows[:2])
        insert_rows(connection, schema.customers, rows[2:])  # a duplicate of a row just written
    with store.read() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(schema.customers)).scalar()
            == 0
        )


@pytest.mark.postgres
def test_a_server_connection_lost_mid_insert_is_reported_and_replaced(store: Store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    rows = [{"name": "Contoso", "source": "test", "created_at": NOW, "updated_at": NOW}]
    with pytest.raises(sa.exc.OperationalError) as raised, store.unit() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        admin = sa.create_engine(store.engine.url)
        with admin.begin() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        admin.dispose()
        insert_rows(connection, schema.customers, rows)
    # The COPY's own error, the connection invalidated at once: no rollback is tried on
    # it, whose "connection is lost" would hide what happened.
    assert "terminating connection due to administrator command" in str(raised.value)
    assert raised.value.connection_invalidated
    with store.unit() as connection:  # a new server connection
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
        insert_rows(connection, schema.customers, rows)
    with store.read() as connection:
        assert connection.execute(sa.select(schema.customers.c.name)).scalars().all() == ["Contoso"]


def test_left_out_columns_get_their_defaults(store: Store):
    with store.unit() as connection:
        customer = _customer(connection)
        rows = [
            {k: v for k, v in row.items() if k != "active"} for row in _users(customer, 0, 2, NOW)
        ]
        insert_rows(connection, schema.users, rows)
        found = connection.execute(
            sa.select(schema.users.c.active, schema.users.c.custom_fields)
        ).all()
    assert [tuple(row) for row in found] == [(True, {}), (True, {})]


def test_rows_with_different_columns_each_get_their_statement(store: Store):
    with store.unit() as connection:
        customer = _customer(connection)
        rows = _users(customer, 0, 4, NOW)
        rows[1]["email"] = "one@contoso.com"
        rows[3] = {k: v for k, v in rows[3].items() if k != "display_name"}
        insert_rows(connection, schema.users, rows)
        mails = dict(
            connection.execute(sa.select(schema.users.c.external_id, schema.users.c.email)).all()
        )
    assert mails == {"u-0": None, "u-1": "one@contoso.com", "u-2": None, "u-3": None}


def test_update_rows_sets_each_rows_values_by_its_key(store: Store):
    later = NOW + timedelta(hours=1)
    with store.unit() as connection:
        customer = _customer(connection)
        insert_rows(connection, schema.users, _users(customer, 0, 3, NOW))
        ids = dict(
            connection.execute(sa.select(schema.users.c.external_id, schema.users.c.id)).all()
        )
        update_rows(
            connection,
            schema.users,
            [
                {"id": ids["u-0"], "display_name": "Zero", "updated_at": later},
                {"id": ids["u-2"], "display_name": None, "updated_at": later},
            ],
        )
        found = {
            row.external_id: (row.display_name, row.updated_at)
            for row in connection.execute(sa.select(schema.users))
        }
    assert found == {"u-0": ("Zero", later), "u-1": ("User 1", NOW), "u-2": (None, later)}


def test_update_rows_by_a_composite_key(store: Store):
    with store.unit() as connection:
        customer = _customer(connection)
        tenant = connection.execute(
            sa.insert(schema.tenants).values(
                module="m",
                connection="",
                tenant_id="t",
                name="T",
                access="gdap_only",
                active=True,
                created_at=NOW,
                updated_at=NOW,
            )
        ).inserted_primary_key[0]
        insert_rows(connection, schema.users, _users(customer, 0, 2, NOW))
        user_ids = list(connection.execute(sa.select(schema.users.c.id)).scalars())
        licence = connection.execute(
            sa.insert(schema.licences).values(
                tenant_ref=tenant,
                external_id="sku",
                customer_id=customer,
                sku_part_number="E3",
                active=True,
                created_at=NOW,
                updated_at=NOW,
            )
        ).inserted_primary_key[0]
        table = schema.licence_assignments
        insert_rows(
            connection,
            table,
            [
                {
                    "licence_id": licence,
                    "user_id": u,
                    "active": True,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for u in user_ids
            ],
        )
        update_rows(
            connection,
            table,
            [
                {
                    "licence_id": licence,
                    "user_id": user_ids[1],
                    "active": False,
                    "inactive_since": NOW,
                }
            ],
            key=("licence_id", "user_id"),
        )
        found = dict(connection.execute(sa.select(table.c.user_id, table.c.active)).all())
    assert found == {user_ids[0]: True, user_ids[1]: False}


def test_a_column_is_processed_as_each_value_would_be_with_fewer_calls():
    calls = []

    def processor(value):
        calls.append(value)
        return ("processed", repr(value))

    process = _column_processor(processor)
    assert calls == [None]  # what None becomes is known from the start
    shared, a_dict, an_equal_dict = NOW, {"a": 1}, {"a": 1}
    column = [shared, shared, None, {}, [], {}, None, 7, 7, "x", a_dict, a_dict, an_equal_dict]
    column.append(shared)
    assert process(column) == [("processed", repr(v)) for v in column]
    # Again for an object only after another came between (an equal one is another); None
    # and the empty dict and list once.
    assert calls == [None, shared, {}, [], 7, "x", a_dict, an_equal_dict, shared]
    calls.clear()
    assert process([None, {}, []]) == [("processed", repr(v)) for v in (None, {}, [])]
    assert calls == []  # known from before


def test_a_processor_that_refuses_none_refuses_each_none():
    def processor(value):
        if value is None:
            raise ValueError("no None here")
        return value

    process = _column_processor(processor)
    assert process([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="no None here"):
        process([1, None])


def test_an_update_row_without_its_key_is_refused(store: Store):
    with store.unit() as connection, pytest.raises(ValueError, match="lacks its key"):
        update_rows(connection, schema.users, [{"display_name": "x"}])


def test_a_naive_time_is_refused_as_the_store_refuses_it(store: Store):
    with store.unit() as connection:
        customer = _customer(connection)
        rows = _users(customer, 0, 1, NOW)
        rows[0]["created_at"] = datetime(2026, 1, 1)
        with pytest.raises(ValueError, match="naive datetime"):
            insert_rows(connection, schema.users, rows)


def test_a_prepared_statement_is_built_once_per_key_and_runs_with_its_values(store):
    from halo_integrator_core.store.prepared import in_list, prepared

    built = []

    def build() -> sa.Select:
        built.append(1)
        return sa.select(schema.customers.c.name).where(
            in_list(schema.customers.c.name), schema.customers.c.active.is_(True)
        )

    key = ("test: customers named", id(store))
    first, again = prepared(key, build), prepared(key, build)
    assert first is again and built == [1]
    with store.unit() as connection:
        now = datetime.now(UTC)
        for name in ("Contoso", "Fabrikam", "Northwind"):
            connection.execute(
                sa.insert(schema.customers).values(
                    name=name, source="test", active=True, created_at=now, updated_at=now
                )
            )
        names = connection.execute(first, {"b_ids": ["Contoso", "Northwind", "Nobody"]})
        assert sorted(names.scalars()) == ["Contoso", "Northwind"]
        assert connection.execute(first, {"b_ids": []}).all() == []


def test_a_list_is_bound_as_one_parameter_whatever_its_length(store):
    from halo_integrator_core.store.prepared import in_list

    customers = schema.customers
    longest = "N" * customers.c.name.type.length  # as long as the column takes
    names = ["Contoso", "Fabrikam", 'Nörthwind "Traders", Ltd', "O'Brien & Co", "日本", longest]
    with store.unit() as connection:
        ids = {}
        for name in names:
            ids[name] = connection.execute(
                sa.insert(customers).values(
                    name=name, source="test", active=True, created_at=NOW, updated_at=NOW
                )
            ).inserted_primary_key[0]
        sent: list[str] = []

        @sa.event.listens_for(connection, "before_cursor_execute")
        def _sent(conn, cursor, statement, parameters, context, executemany) -> None:
            sent.append(statement)

        by_name = sa.select(customers.c.name).where(in_list(customers.c.name))
        not_by_id = sa.select(customers.c.name).where(in_list(customers.c.id, negate=True))
        lower = sa.func.lower(customers.c.name, type_=customers.c.name.type)
        by_lower = sa.select(customers.c.name).where(in_list(lower, "b_keys"))

        def run(statement, **values) -> list[str]:
            return sorted(connection.execute(statement, values).scalars())

        assert run(by_name, b_ids=names[2:]) == sorted(names[2:])
        assert run(by_name, b_ids=["Contoso"]) == ["Contoso"]
        assert run(by_name, b_ids=[]) == []
        assert run(by_name, b_ids=["contoso", "Nobody"]) == []
        assert run(by_name, b_ids=[longest + "N"]) == []  # longer than the column: no match
        assert run(by_name, b_ids=[longest]) == [longest]
        assert run(not_by_id, b_ids=[ids["Contoso"], ids["日本"], ids[longest]]) == sorted(
            names[1:4]
        )
        assert run(not_by_id, b_ids=[]) == sorted(names)
        assert run(by_lower, b_keys=["contoso", "o'brien & co"]) == ["Contoso", "O'Brien & Co"]
        # One statement text for lists of any length: nothing rendered per length.
        assert len(set(sent[:6])) == 1 and len(set(sent[6:8])) == 1
    with pytest.raises(TypeError, match="has no type"):
        in_list(sa.func.lower(customers.c.name))
