"""`halo-integrator sync` and `export` end to end through the command line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from fakes import MODULE, TENANT_A, FakeDirectory

from halo_integrator_core import cli as cli_module
from halo_integrator_core.plugins import PluginHost

CONFIG = f"""
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[modules.{MODULE}]
enabled = true
"""


@pytest.fixture
def world(monkeypatch) -> FakeDirectory:
    """Every host the command line builds gets the in-test plugin, and no entry points."""
    world = FakeDirectory.small()
    load = PluginHost.load.__func__

    def load_with_fake(cls, config, *, entry_points=True):
        host = load(cls, config, entry_points=False)
        host.register(world, name="fake")
        return host

    monkeypatch.setattr(PluginHost, "load", classmethod(load_with_fake))
    return world


def run(path, *args: str):
    return CliRunner().invoke(
        cli_module.cli, ["--config", str(path), "--log-level", "error", *args]
    )


def test_sync_prints_a_summary_and_export_shows_what_landed(world, write_config):
    path = write_config(CONFIG)
    result = run(path, "sync")
    assert result.exit_code == 0, result.output
    assert f"{MODULE}: succeeded" in result.output
    summary = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert summary["kind"] == ["added", "updated", "unchanged", "deactivated", "skipped", "failed"]
    assert summary["users"] == ["4", "0", "0", "0", "0", "0"]

    users = [
        json.loads(line) for line in run(path, "export", "--what", "users").output.splitlines()
    ]
    assert sorted(u["user_principal_name"] for u in users) == [
        "adele@contoso.com",
        "alex@contoso.com",
        "megan@fabrikam.com",
        "room@contoso.com",
    ]
    table = list(
        csv.DictReader(
            io.StringIO(run(path, "export", "--what", "tenants", "--format", "csv").output)
        )
    )
    assert {t["tenant_id"] for t in table} == set(world.tenants)
    assert {t["customer"] for t in table} == {"Contoso", "Fabrikam"}


def test_a_failure_makes_sync_exit_1_and_names_the_tenant(world, write_config):
    world.fail[("fetch_users", TENANT_A)] = ConnectionError("connection reset")
    result = run(write_config(CONFIG), "sync")
    assert result.exit_code == 1
    assert f"failed: users tenant {TENANT_A}: ConnectionError: connection reset" in result.output


def test_a_dry_run_lists_each_change_and_writes_nothing(world, write_config):
    path = write_config(CONFIG)
    result = run(path, "sync", "--dry-run", "--only", "tenants,users")
    assert result.exit_code == 0, result.output
    assert f"would add users u-1 of tenant {TENANT_A}" in result.output
    assert "(dry run: nothing written)" in result.output
    assert run(path, "export", "--what", "users").output == ""
    assert run(path, "export", "--what", "runs").output == ""


def test_bad_options_exit_2_with_the_choices(world, write_config):
    path = write_config(CONFIG)
    result = run(path, "sync", "--only", "people")
    assert result.exit_code == 2
    assert (
        "not an entity kind (choose from tenants, licences, subscriptions, users, assets)"
        in result.output
    )
    result = run(path, "sync", "--module", "nope")
    assert result.exit_code == 2 and f"enabled modules: {MODULE}" in result.output
