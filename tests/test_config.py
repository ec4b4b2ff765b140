"""Configuration: typed, strict, every problem at once with its key path; edited in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from halo_integrator_core.cli import cli
from halo_integrator_core.config import (
    CONFIG_ENV,
    ConfigError,
    SecretRef,
    find_config,
    load_config,
    redact_for_display,
)

GUID = "6f0b9a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def connection(**overrides: str) -> str:
    fields = {
        "name": '"main"',
        "tenant_id": f'"{GUID}"',
        "partner_center_app": f'{{ client_id = "{GUID}", client_secret = {{ env = "HALO_TEST_PC_SECRET" }} }}',
        "gdap_app": f'{{ client_id = "{GUID}", client_secret = {{ env = "HALO_TEST_GDAP_SECRET" }} }}',
    } | overrides
    body = "\n".join(f"{k} = {v}" for k, v in fields.items() if v is not None)
    return f"[[modules.microsoft_csp.connections]]\n{body}\n"


def test_every_problem_is_reported_at_once_with_its_key_path(write_config):
    path = write_config(
        """
[store]
url = "not a url"
urll = "sqlite:///x.db"

[logging]
level = 3

[integrator]
marketplace = "FR"

[[tenant_mappings]]
customer = "Contoso"

[modules.microsoft_csp]
enabled = true
interval = 5
"""
        + connection(tenant_id='"contoso"', gdap_app='"inline-secret"')
    )
    result = run("--config", str(path), "config", "check")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path.resolve()}: 8 configuration problems"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            "store.url: not a database URL: 'not a url' (for example sqlite:///halo.db or "
            "postgresql+psycopg://user@host/dbname)",
            "store.urll: unknown key",
            "logging.level: expected a string, got an integer (3)",
            "integrator.marketplace: expected one of 'GB', 'US', got a string ('FR')",
            "tenant_mappings[0].tenant_id: required key missing",
            "modules.microsoft_csp.interval: unknown key",
            "modules.microsoft_csp.connections[0].tenant_id: not a GUID: 'contoso' "
            "(expected 8-4-4-4-12 hex digits)",
            "modules.microsoft_csp.connections[0].gdap_app: expected a table, got a string ('inline-secret')",
        ]
    )


def test_an_inline_secret_is_refused_with_the_fix(write_config):
    bad = f'{{ client_id = "{GUID}", client_secret = "hunter2" }}'
    path = write_config(
        "[modules.microsoft_csp]\nenabled = true\n" + connection(partner_center_app=bad)
    )
    result = run("--config", str(path), "config", "check")
    assert result.exit_code == 2
    assert (
        "modules.microsoft_csp.connections[0].partner_center_app.client_secret: secrets are given "
        'by reference, not inline: use { env = "VARIABLE" } or { file = "/path/to/secret" }'
    ) in result.stderr
    assert "hunter2" not in result.stderr


def test_config_check_verifies_that_referenced_secrets_exist(write_config, tmp_path, monkeypatch):
    secret_file = tmp_path / "gdap-secret"
    secret_file.write_text("from-a-file\n")
    gdap = f'{{ client_id = "{GUID}", client_secret = {{ file = "{secret_file}" }} }}'
    path = write_config("[modules.microsoft_csp]\nenabled = true\n" + connection(gdap_app=gdap))
    monkeypatch.delenv("HALO_TEST_PC_SECRET", raising=False)
    result = run("--config", str(path), "config", "check")
    assert result.exit_code == 2
    assert (
        "modules.microsoft_csp.connections[0].partner_center_app.client_secret: "
        "environment variable HALO_TEST_PC_SECRET is not set or empty"
    ) in result.stderr
    assert "gdap_app" not in result.stderr

    result = run("--config", str(path), "config", "check", env={"HALO_TEST_PC_SECRET": "s3cr3t"})
    assert result.exit_code == 0, result.output
    assert "configuration OK (enabled modules: microsoft_csp)" in result.output


def test_secret_references_resolve_from_environment_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HALO_TEST_SECRET", "abc")
    assert SecretRef(env="HALO_TEST_SECRET").resolve() == "abc"
    (tmp_path / "s").write_text("  xyz\n")
    assert SecretRef(file=tmp_path / "s").resolve() == "xyz"
    with pytest.raises(ValueError, match="cannot read secret file"):
        SecretRef(file=tmp_path / "missing").resolve()


def test_config_show_prints_the_effective_config_without_secrets(write_config):
    path = write_config("[modules.microsoft_csp]\nenabled = true\n" + connection())
    result = run(
        "--config",
        str(path),
        "config",
        "show",
        env={"HALO_TEST_PC_SECRET": "s3cr3t-pc", "HALO_TEST_GDAP_SECRET": "s3cr3t-gdap"},
    )
    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output
    assert 'client_secret = {env = "HALO_TEST_PC_SECRET"}' in result.output
    assert 'relationship_mode = "gdap_and_dap"' in result.output  # a default, filled in
    assert f"sqlite:///{path.parent.resolve() / 'halo-integrator.db'}" in result.output
    assert redact_for_display({"api_key": "k", "password": "p", "name": "n"}) == {
        "api_key": "[redacted]",
        "password": "[redacted]",
        "name": "n",
    }


def test_the_config_is_found_by_option_then_environment_then_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert find_config(None) == tmp_path / "halo-integrator.toml"
    monkeypatch.setenv(CONFIG_ENV, "/etc/halo/from-env.toml")
    assert find_config(None) == Path("/etc/halo/from-env.toml")
    assert find_config(Path("explicit.toml")) == Path("explicit.toml")


def test_a_missing_or_broken_file_says_what_to_do(tmp_path, write_config):
    result = run("--config", str(tmp_path / "none.toml"), "config", "check")
    assert result.exit_code == 2
    assert "run `halo-integrator init`" in result.stderr
    broken = write_config("[store\nurl = 1\n")
    result = run("--config", str(broken), "config", "check")
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr and "line 1" in result.stderr


def test_init_writes_a_starter_that_passes_config_check(tmp_path):
    path = tmp_path / "halo-integrator.toml"
    assert run("--config", str(path), "init").exit_code == 0
    assert "[modules.microsoft_csp]" in path.read_text()
    result = run("--config", str(path), "config", "check")
    assert result.exit_code == 0, result.output
    again = run("--config", str(path), "init")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_disabling_a_module_keeps_every_comment_and_the_plugin_list_follows(tmp_path):
    path = tmp_path / "halo-integrator.toml"
    run("--config", str(path), "init")
    assert run("--config", str(path), "modules", "enable", "subscription_pricing").exit_code == 0
    enabled_text = path.read_text()
    assert load_config(path).module_enabled("subscription_pricing")

    assert run("--config", str(path), "modules", "disable", "subscription_pricing").exit_code == 0
    text = path.read_text()
    comments = lambda t: [line for line in t.splitlines() if line.lstrip().startswith("#")]  # noqa: E731
    assert comments(text) == comments(enabled_text)
    assert len(comments(text)) > 20
    assert text == enabled_text.replace(
        "[modules.subscription_pricing]\n# NCE prices of the marketplace above onto subscriptions "
        "(direct partners only).\nenabled = true",
        "[modules.subscription_pricing]\n# NCE prices of the marketplace above onto subscriptions "
        "(direct partners only).\nenabled = false",
    )
    listed = json.loads(run("--config", str(path), "plugins", "--json").output)
    [pricing] = [p for p in listed if p["name"] == "subscription_pricing"]
    assert pricing["modules"][0]["enabled"] is False and pricing["loaded"] is False


def test_enabling_an_unknown_module_is_refused(tmp_path):
    path = tmp_path / "halo-integrator.toml"
    run("--config", str(path), "init")
    before = path.read_text()
    result = run("--config", str(path), "modules", "enable", "microsoft_cps")
    assert result.exit_code == 2
    assert "no installed plugin provides a module named 'microsoft_cps'" in result.stderr
    assert "microsoft_csp" in result.stderr
    assert path.read_text() == before


def test_a_module_table_is_added_when_missing(write_config):
    path = write_config("# only a comment\n")
    assert run("--config", str(path), "modules", "enable", "consumption_billing").exit_code == 0
    assert path.read_text().startswith("# only a comment\n")
    assert load_config(path).module_enabled("consumption_billing")


def test_config_errors_are_exceptions_with_all_problems(write_config):
    path = write_config("[store]\nx = 1\ny = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["store.x: unknown key", "store.y: unknown key"]


def test_a_tenant_maps_to_one_customer_at_most(write_config):
    tenant = "aaaaaaaa-0000-4000-8000-000000000001"
    path = write_config(
        f'[[tenant_mappings]]\ntenant_id = "{tenant}"\ncustomer = "A"\n\n'
        f'[[tenant_mappings]]\ntenant_id = "{tenant.upper()}"\ncustomer = "B"\n\n'
        f'[[tenant_mappings]]\ntenant_id = "aaaaaaaa-0000-4000-8000-000000000002"\ncustomer = "A"\n'
        f'licence_import_type = "everything"\n\n'
        f'[[tenant_mappings]]\ntenant_id = "aaaaaaaa-0000-4000-8000-000000000003"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "tenant_mappings[2].licence_import_type: expected one of 'skus', 'subscriptions', "
        "'subscriptions_and_skus', got a string ('everything')"
    ]
    path.write_text(path.read_text().replace('licence_import_type = "everything"\n', ""))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"tenant_mappings[1].tenant_id: tenant {tenant} is already mapped by tenant_mappings[0]: a tenant "
        "maps to one customer at most",
        'tenant_mappings[3]: say which customer (customer = "...") or do_not_import = true',
    ]
