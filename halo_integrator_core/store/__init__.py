"""The store: a SQLite file by default, any SQLAlchemy URL (PostgreSQL) by setting.

`Store.open` migrates the schema to the newest version before anything else touches it.
Work is done in units (`Store.unit`): one transaction each, or, in a dry run, one savepoint
each inside a transaction that is rolled back at the end, so a dry run computes exactly
what a real run would and writes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine

from . import schema


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoreError(Exception):
    """The store cannot be opened or migrated; the message says which and why."""


class Store:
    """One database, migrated, with units of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dry_connection: Connection | None = None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        engine = create_engine(url)
        store = cls(engine)
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------

    def _alembic(self, connection: Connection) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option(
            "script_location", str(resources.files("halo_integrator_core.store") / "migrations")
        )
        cfg.attributes["connection"] = connection
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (the newest by default)."""
        try:
            with self.engine.begin() as connection:
                command.upgrade(self._alembic(connection), revision)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the store at {self.describe()}: {exc.orig}") from None
        except CommandError as exc:
            raise StoreError(
                f"the store at {self.describe()} has a schema this version of halo-integrator "
                f"does not know ({exc}); it was probably written by a newer release: upgrade "
                "halo-integrator, or point [store] url at another database"
            ) from None

    def downgrade(self, revision: str) -> None:
        """Take the schema back to ``revision`` (``base`` empties it): for rolling back a release."""
        with self.engine.begin() as connection:
            command.downgrade(self._alembic(connection), revision)

    def describe(self) -> str:
        """The store's URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def schema_version(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_version(self) -> str | None:
        with self.engine.connect() as connection:
            return ScriptDirectory.from_config(self._alembic(connection)).get_current_head()

    # -- units of work ---------------------------------------------------------------------

    @contextlib.contextmanager
    def unit(self) -> Iterator[Connection]:
        """One unit of work: committed together, or not at all."""
        if self._dry_connection is not None:
            with self._dry_connection.begin_nested():
                yield self._dry_connection
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """Within this block every unit runs in a savepoint of one transaction rolled back."""
        with self.engine.connect() as connection:
            transaction = connection.begin()
            self._dry_connection = connection
            try:
                yield
            finally:
                self._dry_connection = None
                transaction.rollback()

    def read(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for reading (in a dry run, one that sees its uncommitted work)."""
        if self._dry_connection is not None:
            return contextlib.nullcontext(self._dry_connection)
        return self.engine.connect()


def create_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None hands transaction control to SQLAlchemy (below), which the
        # pysqlite driver otherwise takes over in a way that breaks savepoints.
        engine = sa.create_engine(url, connect_args={"isolation_level": None, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            if database and database != ":memory:":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


__all__ = ["Store", "StoreError", "create_engine", "schema", "utcnow"]
