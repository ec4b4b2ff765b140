"""Plugins: discovery through entry points, per-module enabling, refusal, routing.

The entry-point tests run the real console script (or a fresh interpreter) in a subprocess,
so that what is imported, and which distributions `importlib.metadata` sees, is exactly what
a user's installation would give. Third-party plugins are "installed" by writing a package
and its ``.dist-info`` directory into a temporary folder put on ``PYTHONPATH``. The other
tests register small in-test plugins on a host built without entry points.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog

from halo_integrator_core import ModuleContext, ModuleSpec, Tenant, hookimpl
from halo_integrator_core.config import ConfigError, IntegratorSettings, load_config

CLI = Path(sys.executable).parent / "halo-integrator"

#: The first-party modules: name → (title, default interval in minutes).
FIRST_PARTY = {
    "consumption_billing": ("Consumption billing", 24 * 60),
    "microsoft_csp": ("Microsoft CSP", 60),
    "subscription_pricing": ("Subscription pricing", 24 * 60),
}

ACME_TENANT = "acacacac-0000-4000-8000-0000000000a1"

#: A third party's plugin: a module-level plugin using only what the host package exports.
ACME_PLUGIN = f'''
"""Acme RMM: managed devices from Acme's (imaginary) RMM, as a halo-integrator module."""

from halo_integrator_core import ManagedDevice, ModuleSpec, Tenant, TenantAccess, hookimpl


@hookimpl
def declare_modules():
    return [ModuleSpec(name="acme_rmm", title="Acme RMM", default_interval_minutes=30)]


@hookimpl
def fetch_tenants(context):
    yield Tenant(tenant_id="{ACME_TENANT}", name="Acme Tenant", access=TenantAccess.UNKNOWN)


@hookimpl
def fetch_assets(context, tenant, bookmark):
    yield ManagedDevice(device_id="acme-dev-1", device_name="ACME-LAPTOP-1", serial_number="AC-001")
    yield ManagedDevice(device_id="acme-dev-2", device_name="ACME-DESKTOP-2", serial_number="AC-002")
'''

BROKEN_PLUGIN = """
raise ImportError("acme_sdk is not installed")
"""


# --- helpers -----------------------------------------------------------------------------


def install_distribution(
    site: Path, *, name: str, version: str, package: str, source: str, module: str
) -> None:
    """Write ``package`` and an installed-distribution record offering entry point ``module``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[halo_integrator]\n{module} = {package}\n", encoding="utf-8"
    )


def run(args: list[str], *, cwd: Path, site: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HALO_INTEGRATOR_CONFIG", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def halo(config: Path, *args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script with ``config`` (cwd is the config's folder)."""
    command = [str(CLI), "--config", str(config), "--log-format", "json", *args]
    return run(command, cwd=config.parent, site=site)


def plugins_json(config: Path, *, site: Path | None = None) -> dict[str, dict[str, Any]]:
    result = halo(config, "plugins", "--json", site=site)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def context_for(module: str) -> ModuleContext:
    return ModuleContext(
        module=module,
        settings=None,
        integrator=IntegratorSettings(),
        log=structlog.get_logger("test").bind(module=module),
    )


# --- discovery through the real entry-point group ----------------------------------------


def test_first_party_plugins_are_discovered_through_entry_points(tmp_path: Path) -> None:
    config = tmp_path / "halo-integrator.toml"
    config.write_text(
        "".join(f"[modules.{name}]\nenabled = true\n\n" for name in FIRST_PARTY),
        encoding="utf-8",
    )

    rows = plugins_json(config)

    assert set(FIRST_PARTY) <= set(rows)
    version = importlib.metadata.version("halo-integrator")
    for name, (title, interval) in FIRST_PARTY.items():
        row = rows[name]
        assert row["distribution"] == "halo-integrator"
        assert isinstance(row["version"], str) and row["version"] == version
        assert row["enabled"] is True
        assert row["loaded"] is True
        assert row["error"] is None
        assert "declare_modules" in row["hooks"]
        assert row["modules"] == [
            {"name": name, "title": title, "enabled": True, "interval_minutes": interval}
        ]


DISABLED_NEVER_IMPORTED = """
import json, sys
from pathlib import Path

from click.testing import CliRunner

from halo_integrator_core.cli import cli
from halo_integrator_core.config import load_config
from halo_integrator_core.plugins import PluginHost

names = ("halo_microsoft_csp", "halo_subscription_pricing", "halo_consumption_billing")

def imported():
    return {name: name in sys.modules for name in names}

path = Path(sys.argv[1])
report = {"before": imported()}
host = PluginHost.load(load_config(path))
report["after_load"] = imported()
report["infos"] = {info.name: [info.enabled, info.loaded, info.error] for info in host.plugins()}
result = CliRunner().invoke(cli, ["--config", str(path), "plugins", "--json"])
report["exit_code"] = result.exit_code
report["plugins"] = json.loads(result.stdout)
report["after_cli"] = imported()
print(json.dumps(report))
"""


def test_a_disabled_module_is_never_imported(tmp_path: Path) -> None:
    config = tmp_path / "halo-integrator.toml"
    # subscription_pricing is disabled explicitly; consumption_billing is not mentioned.
    config.write_text(
        "[modules.microsoft_csp]\nenabled = true\n\n[modules.subscription_pricing]\nenabled = false\n",
        encoding="utf-8",
    )

    result = run([sys.executable, "-c", DISABLED_NEVER_IMPORTED, str(config)], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == {
        "halo_microsoft_csp": False,
        "halo_subscription_pricing": False,
        "halo_consumption_billing": False,
    }
    for stage in ("after_load", "after_cli"):
        assert report[stage] == {
            "halo_microsoft_csp": True,
            "halo_subscription_pricing": False,
            "halo_consumption_billing": False,
        }, stage
    assert report["infos"]["microsoft_csp"] == [True, True, None]
    assert report["infos"]["subscription_pricing"] == [False, False, None]
    assert report["infos"]["consumption_billing"] == [False, False, None]

    assert report["exit_code"] == 0
    rows = {row["name"]: row for row in report["plugins"]}
    assert rows["microsoft_csp"]["loaded"] is True
    for name in ("subscription_pricing", "consumption_billing"):
        row = rows[name]
        assert row["enabled"] is False
        assert row["loaded"] is False
        assert row["hooks"] == []
        assert row["error"] is None
        assert row["distribution"] == "halo-integrator"  # known without importing it
        assert [module["enabled"] for module in row["modules"]] == [False]


# --- third-party plugins -----------------------------------------------------------------


def test_a_third_party_distribution_is_discovered_and_synced(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_distribution(
        site,
        name="acme-rmm",
        version="1.2.3",
        package="acme_rmm_plugin",
        source=ACME_PLUGIN,
        module="acme_rmm",
    )
    config = tmp_path / "halo-integrator.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[tenant_mappings]]
            tenant_id = "{ACME_TENANT}"
            customer = "Acme Customer"

            [modules.acme_rmm]
            enabled = true
            """
        ),
        encoding="utf-8",
    )

    rows = plugins_json(config, site=site)
    acme = rows["acme_rmm"]
    assert acme["distribution"] == "acme-rmm"
    assert acme["version"] == "1.2.3"
    assert acme["loaded"] is True
    assert acme["error"] is None
    assert acme["hooks"] == ["declare_modules", "fetch_assets", "fetch_tenants"]
    assert acme["modules"] == [
        {"name": "acme_rmm", "title": "Acme RMM", "enabled": True, "interval_minutes": 30}
    ]

    synced = halo(config, "sync", site=site)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "acme_rmm: succeeded" in synced.stdout
    assert (tmp_path / "halo-integrator.db").is_file()

    exported = halo(config, "export", "--what", "assets", site=site)
    assert exported.returncode == 0, exported.stderr
    assets = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    assert sorted(
        (a["module"], a["tenant_id"], a["customer"], a["external_id"], a["device_name"])
        for a in assets
        if a["active"]
    ) == [
        ("acme_rmm", ACME_TENANT, "Acme Customer", "acme-dev-1", "ACME-LAPTOP-1"),
        ("acme_rmm", ACME_TENANT, "Acme Customer", "acme-dev-2", "ACME-DESKTOP-2"),
    ]
    assert len(assets) == 2


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_carry_on(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    install_distribution(
        site,
        name="broken-rmm",
        version="0.1.0",
        package="broken_rmm_plugin",
        source=BROKEN_PLUGIN,
        module="broken_rmm",
    )
    config = tmp_path / "halo-integrator.toml"
    # broken_rmm sorts before the first-party plugins, so they load after its failure.
    config.write_text(
        "[modules.broken_rmm]\nenabled = true\n\n"
        "[modules.consumption_billing]\nenabled = true\n\n"
        "[modules.subscription_pricing]\nenabled = true\n",
        encoding="utf-8",
    )

    rows = plugins_json(config, site=site)
    broken = rows["broken_rmm"]
    assert broken["loaded"] is False
    assert broken["enabled"] is True
    assert broken["distribution"] == "broken-rmm"
    assert "ImportError" in broken["error"]
    assert "acme_sdk is not installed" in broken["error"]
    assert "broken_rmm_plugin" in broken["error"]
    for name in ("consumption_billing", "subscription_pricing"):
        assert rows[name]["loaded"] is True, rows[name]
        assert rows[name]["error"] is None
    assert rows["microsoft_csp"]["loaded"] is False  # disabled: listed, not loaded

    synced = halo(config, "sync", site=site)
    assert synced.returncode == 2, synced.stdout + synced.stderr
    # The broken plugin's problem, then each loaded module's own (`check_config`): both
    # work through the Microsoft CSP module, which this file leaves off.
    problems = synced.stderr.split("configuration problems\n", 1)[1].splitlines()
    assert [line.strip().split(":", 1)[0] for line in problems] == [
        "modules.broken_rmm",
        "modules.consumption_billing",
        "modules.subscription_pricing",
    ]
    assert "modules.broken_rmm: the plugin failed to load" in synced.stderr
    assert "acme_sdk is not installed" in synced.stderr
    assert all("enable [modules.microsoft_csp]" in line for line in problems[1:])


# --- in-test plugins ---------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path):
    def build(text: str = ""):
        path = tmp_path / "halo-integrator.toml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return load_config(path)

    return build


class MisspeltHook:
    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="typo", title="Typo")]

    @hookimpl
    def fetch_userz(self, context: Any, tenant: Tenant, bookmark: str | None) -> list[Any]:
        return []


class NotASpec:
    @hookimpl
    def declare_modules(self) -> list[Any]:
        return [{"name": "not_a_spec", "title": "Not a spec"}]


class OtherModuleName:
    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="something_else", title="Something else")]


@attrs.define(eq=False)  # pluggy keeps plugins in sets: identity, not value
class Directory:
    module: str
    tenant: Tenant
    calls: list[str] = attrs.field(factory=list)

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name=self.module, title=self.module.replace("_", " ").title())]

    @hookimpl
    def fetch_tenants(self, context: ModuleContext) -> Iterator[Tenant]:
        self.calls.append(context.module)
        yield self.tenant


TENANT_A = Tenant(tenant_id="aaaaaaaa-0000-4000-8000-0000000000aa", name="Tenant A")
TENANT_B = Tenant(tenant_id="bbbbbbbb-0000-4000-8000-0000000000bb", name="Tenant B")


@pytest.mark.parametrize(
    ("plugin", "name", "entry_point", "fragments"),
    [
        pytest.param(MisspeltHook, "typo", False, ["unknown hook 'fetch_userz'"], id="misspelt"),
        pytest.param(NotASpec, "not_a_spec", False, ["not a ModuleSpec"], id="not-a-spec"),
        pytest.param(
            OtherModuleName,
            "acme_rmm",
            True,
            ["declares modules ['something_else']", "must be named after the module"],
            id="entry-point-of-another-name",
        ),
    ],
)
def test_an_invalid_plugin_is_refused_and_reported(
    config, host_factory, plugin: type, name: str, entry_point: bool, fragments: list[str]
) -> None:
    host = host_factory(config())
    instance = plugin()

    assert host.register(instance, name=name, entry_point=entry_point) is False

    assert not host.pm.is_registered(instance)
    assert host.module_specs() == {}
    [info] = host.plugins()
    assert info.name == name
    assert info.loaded is False
    assert info.error is not None
    for fragment in fragments:
        assert fragment in info.error
    # Nothing of the refused plugin lingers: a good plugin still registers after it.
    good = Directory("module_a", TENANT_A)
    assert host.register(good, name="plugin_a", entry_point=False) is True
    assert set(host.module_specs()) == {"module_a"}


def test_a_valid_entry_point_plugin_is_accepted(config, host_factory) -> None:
    """The counterpart of the refusals above: named after its module, it registers."""
    host = host_factory(config())
    plugin = Directory("acme_rmm", TENANT_A)

    assert host.register(plugin, name="acme_rmm", entry_point=True) is True

    [info] = host.plugins()
    assert (info.name, info.loaded, info.error) == ("acme_rmm", True, None)
    assert info.hooks == ("declare_modules", "fetch_tenants")
    assert info.modules == ("acme_rmm",)


def test_hook_for_reaches_only_the_plugin_of_that_module(config, host_factory) -> None:
    a = Directory("module_a", TENANT_A)
    b = Directory("module_b", TENANT_B)
    host = host_factory(
        config(
            """
            [modules.module_a]
            enabled = true

            [modules.module_b]
            enabled = true
            """
        ),
        (a, "plugin_a"),
        (b, "plugin_b"),
    )

    results = host.hook_for("module_a").fetch_tenants(context=context_for("module_a"))
    assert [tenant for stream in results for tenant in stream] == [TENANT_A]
    assert (a.calls, b.calls) == (["module_a"], [])

    results = host.hook_for("module_b").fetch_tenants(context=context_for("module_b"))
    assert [tenant for stream in results for tenant in stream] == [TENANT_B]
    assert (a.calls, b.calls) == (["module_a"], ["module_b"])

    # Without the routing, a call reaches both plugins.
    results = host.pm.hook.fetch_tenants(context=context_for("module_a"))
    assert sorted(tenant.name for stream in results for tenant in stream) == [
        "Tenant A",
        "Tenant B",
    ]


def test_an_enabled_module_no_plugin_provides_is_a_config_error(config, host_factory) -> None:
    a = Directory("module_a", TENANT_A)
    host = host_factory(
        config(
            """
            [modules.module_a]
            enabled = true

            [modules.ghost]
            enabled = true

            [modules.disabled_ghost]
            enabled = false
            """
        ),
        (a, "plugin_a"),
    )

    with pytest.raises(ConfigError) as raised:
        host.active_modules()

    [problem] = raised.value.problems
    assert problem.startswith("modules.ghost: ")
    assert "no installed plugin" in problem
    assert "installed: plugin_a" in problem
    assert "modules.ghost" in str(raised.value)

    # The same host with the ghost left out: the provided module is active.
    healthy = host_factory(config("[modules.module_a]\nenabled = true\n"))
    b = Directory("module_a", TENANT_A)
    assert healthy.register(b, name="plugin_a")
    assert set(healthy.active_modules()) == {"module_a"}


def test_registering_a_taken_name_or_the_same_plugin_twice_leaves_the_first_intact(
    config, host_factory
) -> None:
    host = host_factory(config())
    a = Directory("module_a", TENANT_A)
    assert host.register(a, name="plugin_a") is True

    assert host.register(a, name="plugin_a_again") is False
    assert host.register(Directory("module_x", TENANT_B), name="plugin_a") is False

    assert host.pm.get_plugin("plugin_a") is a
    assert host.implements("module_a", "fetch_tenants")
    [info] = host.plugins()
    assert (info.name, info.loaded, info.error) == ("plugin_a", True, None)
    assert set(host.module_specs()) == {"module_a"}


def test_a_disabled_modules_name_cannot_be_registered(config) -> None:
    from halo_integrator_core.plugins import PluginHost

    host = PluginHost.load(config("[modules.microsoft_csp]\nenabled = false\n"))
    plugin = Directory("microsoft_csp", TENANT_A)
    try:
        assert host.register(plugin, name="microsoft_csp") is False
        assert not host.pm.is_registered(plugin)
        [info] = [p for p in host.plugins() if p.name == "microsoft_csp"]
        assert info.loaded is False and "is disabled" in info.error
    finally:
        if host.pm.is_registered(plugin):
            host.pm.unregister(plugin)


def test_a_plugins_distribution_name_and_version_are_read_from_its_metadata_headers():
    import importlib.metadata

    from halo_integrator_core.plugins import _name_and_version

    for dist in importlib.metadata.distributions():
        assert _name_and_version(dist) == (dist.name, dist.version)

    class Written(importlib.metadata.Distribution):
        def __init__(self, text: str) -> None:
            self.text = text

        def read_text(self, filename: str) -> str | None:
            return self.text if filename == "METADATA" else None

        def locate_file(self, path):  # pragma: no cover - not read
            raise AssertionError(path)

    body = "Metadata-Version: 2.1\nName: halo-extra\nVersion: 2.0\n\nName: not-a-header\n"
    assert _name_and_version(Written(body)) == ("halo-extra", "2.0")
    # Folded or missing headers: the email parser decides, as dist.name would.
    odd = "Metadata-Version: 2.1\nVersion: 3.1\nSummary: x\n"
    assert _name_and_version(Written(odd)) == (None, "3.1")
    assert _name_and_version(None) == (None, None)
