"""Shared fixtures: stores on SQLite and PostgreSQL, configs, a host with in-test plugins."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from halo_integrator_core import paging
from halo_integrator_core.config import Config, load_config
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import Store

#: A PostgreSQL URL to run the store tests against as well, e.g.
#: postgresql+psycopg://postgres@127.0.0.1:5432/test (each test gets a schema of its own).
POSTGRES_ENV = "HALO_INTEGRATOR_TEST_POSTGRES_URL"


def _postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def pytest_report_header(config: pytest.Config) -> str:
    url = _postgres_url()
    return f"store backends: sqlite, {'postgresql (' + url + ')' if url else 'postgresql skipped: set ' + POSTGRES_ENV}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'halo-integrator.db'}"
        return
    base = _postgres_url()
    if base is None:
        pytest.skip(f"set {POSTGRES_ENV} to run the store tests on PostgreSQL")
    schema = f"halo_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store.open(store_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config file from TOML text and return its path."""

    def write(text: str, name: str = "halo-integrator.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def make_config(write_config, text: str) -> Config:
    return load_config(write_config(text))


@pytest.fixture
def host_factory():
    """Build plugin hosts with in-test plugins registered and no entry points loaded."""
    hosts: list[PluginHost] = []

    def build(config: Config, *plugins: tuple[object, str]) -> PluginHost:
        host = PluginHost.load(config, entry_points=False)
        for plugin, name in plugins:
            assert host.register(plugin, name=name), host.plugins()
        hosts.append(host)
        return host

    yield build
    for host in hosts:
        for info in host.plugins():
            host.unregister(info.name)


@pytest.fixture
def emulator():
    """A fresh emulated Microsoft cloud on loopback (5 customers), stopped after the test.

    ``emulator.world`` is its `World` (change it between calls), ``emulator.app`` the WSGI
    app (``emulator.app.inject(...)`` injects faults), ``emulator.ca_bundle`` the CA file to
    pass as ``verify=`` with every request.
    """
    from halo_microsoft_emulator import EmulatorServer, generate

    server = EmulatorServer(generate(seed=7, customers=5, users=30, devices=12)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vcr_config():
    """Cassettes: secrets scrubbed and emulator URLs made canonical on the way in."""
    from cassette_support import VCR_CONFIG

    return VCR_CONFIG


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    from cassette_support import CASSETTES

    return str(CASSETTES / request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture
def microsoft(record_mode: str):
    """The emulator while recording cassettes; Microsoft's hosts (the cassette) while replaying."""
    import cassette_support

    from halo_integrator_core.config import EndpointSettings
    from halo_microsoft_emulator import EmulatorServer, generate

    world = generate(seed=cassette_support.SEED, **cassette_support.SIZE)
    if record_mode == "none":
        yield cassette_support.Microsoft(world, EndpointSettings(), None, [])
        return
    with EmulatorServer(world) as server:
        cassette_support.record_from(server)
        try:
            yield cassette_support.Microsoft(
                world, EndpointSettings(**server.endpoints()), server, []
            )
        finally:
            cassette_support.recording_origins.clear()


@pytest.fixture
def page_ways(monkeypatch) -> list[bool]:
    """How each OData page translated during the test came, in order: ``True`` in a typed
    form, ``False`` as JSON objects (`ODataPage.translated`)."""
    ways: list[bool] = []
    real = paging.ODataPage.translated

    def noting(page: paging.ODataPage, translate: Any) -> list[Any]:
        ways.append(page.typed is not None)
        return real(page, translate)

    monkeypatch.setattr(paging.ODataPage, "translated", noting)
    return ways
