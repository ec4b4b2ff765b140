"""The store: a SQLite file by default, any SQLAlchemy URL (PostgreSQL) by setting.

`Store.open` migrates the schema to the newest version before anything else touches it.
Work is done in units (`Store.unit`): one transaction each, or, in a dry run, one savepoint
each inside a transaction that is rolled back at the end, so a dry run computes exactly
what a real run would and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import schema

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic (with Mako) is imported only to run or describe migrations: a new store is given
# its schema and stamped, and one at `HEAD_REVISION` opened, without it, so every command of
# the CLI starts faster.


def utcnow() -> datetime:
    return datetime.now(UTC)


#: The newest migration's revision (`tests/test_store.py` checks it against the scripts): a
#: store already there is opened without loading the migration scripts at all.
HEAD_REVISION = "0009"


class StoreError(Exception):
    """The store cannot be opened or migrated; the message says which and why."""


class Store:
    """One database, migrated, with units of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dry_connection: Connection | None = None
        self._write_lock = threading.Lock()
        self._writer: int | None = None  # the thread holding the write lock
        self._after_unit: list[Callable[[], None]] = []

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        engine = create_engine(url)
        store = cls(engine)
        if migrate:
            store.migrate()
        return store

    @classmethod
    def open_existing(cls, url: str) -> Store | None:
        """The store at ``url`` if a run has made one, as it is (not migrated); else ``None``.

        Creates nothing: for commands that only look (`config check`) or that have nothing
        to do in an empty store. Raises `StoreError` when the database cannot be reached.
        """
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if not database or database == ":memory:" or not Path(database).exists():
                return None
        store = cls(create_engine(url))
        try:
            version = store.schema_version()
        except sa.exc.SQLAlchemyError as exc:
            store.close()
            reason = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
            raise StoreError(f"cannot open the store at {store.describe()}: {reason}") from None
        if version is None:  # a database no run has written to yet
            store.close()
            return None
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------

    def _alembic(self, connection: Connection) -> AlembicConfig:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option(
            "script_location", str(resources.files("halo_integrator_core.store") / "migrations")
        )
        cfg.attributes["connection"] = connection
        return cfg

    def migrate(self, revision: str = "head", *, by_migrations: bool = False) -> None:
        """Bring the schema to ``revision`` (the newest by default).

        A new store (no schema version, none of our tables) is given the newest schema at
        once and stamped with its revision: the same tables the migrations would build
        (`tests/test_store.py` checks that they do), in a tenth of the time. With
        ``by_migrations`` every migration runs even then.
        """
        try:
            with self.engine.begin() as connection:
                if revision == "head" and not by_migrations:
                    versions = _versions(connection)
                    if versions == [HEAD_REVISION]:
                        return  # every run but the first after an upgrade
                    if not versions and _none_of_our_tables(connection):
                        schema.metadata.create_all(connection)
                        _stamp(connection, HEAD_REVISION)
                        return
                self._upgrade(connection, revision)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the store at {self.describe()}: {exc.orig}") from None

    def _upgrade(self, connection: Connection, revision: str) -> None:
        from alembic import command
        from alembic.util.exc import CommandError

        try:
            command.upgrade(self._alembic(connection), revision)
        except CommandError as exc:
            raise StoreError(
                f"the store at {self.describe()} has a schema this version of halo-integrator "
                f"does not know ({exc}); it was probably written by a newer release: upgrade "
                "halo-integrator, or point [store] url at another database"
            ) from None

    def downgrade(self, revision: str) -> None:
        """Take the schema back to ``revision`` (``base`` empties it): for rolling back a release."""
        from alembic import command

        with self.engine.begin() as connection:
            command.downgrade(self._alembic(connection), revision)

    def describe(self) -> str:
        """The store's URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def schema_version(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_version(self) -> str | None:
        from alembic.script import ScriptDirectory

        with self.engine.connect() as connection:
            return ScriptDirectory.from_config(self._alembic(connection)).get_current_head()

    # -- units of work ---------------------------------------------------------------------

    @property
    def serializes_writes(self) -> bool:
        """SQLite has one writer at a time: this process's units take turns."""
        return self.engine.dialect.name == "sqlite"

    def after_unit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each unit ends, outside it (to flush what waited for it)."""
        self._after_unit.append(callback)

    @contextlib.contextmanager
    def unit(self) -> Iterator[Connection]:
        """One unit of work: committed together, or not at all."""
        if self._dry_connection is not None:
            with self._dry_connection.begin_nested():
                yield self._dry_connection
            return
        try:
            with self._writing(), self.engine.connect() as connection:
                # On SQLite the write lock is taken at BEGIN (IMMEDIATE): a unit that read
                # first and wrote later would fail if another connection wrote in between.
                connection = connection.execution_options(halo_write=True)
                try:
                    transaction = connection.begin()
                except sa.exc.OperationalError as exc:
                    raise StoreError(self._cannot_write(exc)) from None
                with transaction:
                    yield connection
        finally:
            for callback in self._after_unit:
                callback()

    def _cannot_write(self, exc: sa.exc.OperationalError) -> str:
        reason = str(exc.orig if exc.orig is not None else exc).strip()
        if "locked" in reason.lower():
            return (
                f"the store at {self.describe()} is locked by another writer ({reason}): another "
                "halo-integrator process (the daemon, or a sync) is writing to it. Let it "
                "finish, or stop it, then run again"
            )
        return f"cannot write to the store at {self.describe()}: {reason}"

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        if not self.serializes_writes:
            yield
            return
        if self._writer == threading.get_ident():
            raise RuntimeError(
                "a unit of work was opened inside another on the same thread: SQLite has one "
                "writer at a time, so the inner one could never start"
            )
        with self._write_lock:
            self._writer = threading.get_ident()
            try:
                yield
            finally:
                self._writer = None

    def try_write(self) -> contextlib.AbstractContextManager[Connection] | None:
        """A connection to write with now, or ``None`` if a unit holds the store (SQLite).

        For small writes that can wait (the request log): they never block on a unit, which
        may be this very thread's.
        """
        if self.serializes_writes:
            if not self._write_lock.acquire(blocking=False):
                return None
            return _released(self._write_lock, self.engine.begin())
        return self.engine.begin()

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """Within this block every unit runs in a savepoint of one transaction rolled back."""
        with self._writing(), self.engine.connect() as connection:
            connection = connection.execution_options(halo_write=True)
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


@contextlib.contextmanager
def _released(
    lock: threading.Lock, begin: contextlib.AbstractContextManager[Connection]
) -> Iterator[Connection]:
    try:
        with begin as connection:
            yield connection
    finally:
        lock.release()


def create_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None hands transaction control to SQLAlchemy (below), which the
        # pysqlite driver otherwise takes over in a way that breaks savepoints.
        engine = sa.create_engine(
            url,
            connect_args={"isolation_level": None, "timeout": 30},
            json_serializer=json_text,
        )

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
            write = connection.get_execution_options().get("halo_write")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    engine = sa.create_engine(url, json_serializer=json_text)
    sa.event.listen(engine, "checkin", _checked_in)
    sa.event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if json.encoder.c_make_encoder is not None:
    # The arguments of `json.JSONEncoder.iterencode`'s own call, with json.dumps's defaults,
    # except that circular references are not looked for (a JSON column's value is built
    # from decoded JSON and text: one that held itself would end in a RecursionError).
    _encode = json.encoder.c_make_encoder(
        None, _not_serializable, json.encoder.encode_basestring_ascii, None, ": ", ", ",
        False, False, True,
    )  # fmt: skip

    def json_text(value: Any) -> str:
        """``json.dumps(value)``, the same text, for the store's JSON columns (every user's
        and device's attributes): `json.dumps` builds its C encoder anew for each call,
        which took two thirds of its 3.3 µs for a user's attributes; this one is built
        once (1.0 µs)."""
        return "".join(_encode(value, 0))

else:  # no C accelerator (another Python): json.dumps as it is
    json_text = json.dumps


#: A pooled server connection idle longer than this is tested before use (`_ping_if_idle`).
IDLE_PING_SECONDS = 10.0


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["halo_checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Test a pooled connection that has been idle a while before it is used, and have the
    pool replace it if the server dropped it (a restart, an idle timeout on the way).

    SQLAlchemy's ``pool_pre_ping`` tests every checkout: a round trip for each unit of
    work and each request-log entry, which took 8% of a 500-tenant sync's time on a local
    PostgreSQL, more on one across a network. A connection back in the pool a moment ago,
    as they are all through a sync, is used as it is; a new one needs no test either.
    """
    last = record.info.get("halo_checked_in")
    if last is None or time.monotonic() - last < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:
        # The pool discards this connection and checks out (or opens) another.
        raise sa.exc.DisconnectionError(f"a pooled connection was dropped: {exc}") from exc


__all__ = ["Store", "StoreError", "create_engine", "json_text", "schema", "utcnow"]


#: Alembic's table of the schema's version, as its ``stamp`` creates it.
_ALEMBIC_VERSION = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def _versions(connection: Connection) -> list[str]:
    """The schema versions alembic stamped the store with (one, or none for a new store),
    read without loading alembic."""
    if not sa.inspect(connection).has_table(_ALEMBIC_VERSION.name):
        return []
    return list(connection.execute(sa.select(_ALEMBIC_VERSION.c.version_num)).scalars())


def _none_of_our_tables(connection: Connection) -> bool:
    existing = set(sa.inspect(connection).get_table_names())
    return not existing & set(schema.metadata.tables)


def _stamp(connection: Connection, revision: str) -> None:
    """Record ``revision`` as the schema's version, as ``alembic stamp`` would."""
    _ALEMBIC_VERSION.create(connection, checkfirst=True)
    connection.execute(sa.delete(_ALEMBIC_VERSION))
    connection.execute(sa.insert(_ALEMBIC_VERSION).values(version_num=revision))
