"""The user import commands: `deltas reset`, `csp site-mappings generate` and `list`, and
what `config check` says about site mappings.

`deltas reset` runs against a store filled by syncs of the in-test FakeDirectory plugin, on
SQLite and PostgreSQL. The site-mapping commands are the CSP plugin's, added to a copy of the
command line as `main()` adds them; their store is filled with SQLAlchemy inserts, as a sync
from tenant mappings would leave it, so no Microsoft is needed.
"""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fakes import MODULE, TENANT_A, TENANT_B, FakeDirectory

from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.config import SiteMapping, load_config
from halo_integrator_core.config_edit import CannotAppend
from halo_integrator_core.models import LATEST_BOOKMARK
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import Store, schema
from halo_microsoft_csp.site_mappings import (
    MappedTenant,
    append_site_mappings,
    plan,
    processing_order,
)


def invoke(group: click.Group, path: Path, *args: str, exit_code: int = 0) -> Any:
    result = CliRunner().invoke(group, ["--config", str(path), "--log-level", "error", *args])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == exit_code, result.output
    return result


# -- deltas reset -------------------------------------------------------------------------------

DELTAS = """
[store]
url = "{url}"

[integrator]
track = "beta"
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[users]
use_deltas = {use_deltas}

[modules.{module}]
enabled = true
"""


@pytest.fixture
def world(monkeypatch) -> FakeDirectory:
    """Every host the command line builds gets the in-test plugin, and no entry points."""
    world = FakeDirectory.small()
    world.delta = True
    load = PluginHost.load.__func__

    def load_with_fake(cls, config, *, entry_points=True):
        host = load(cls, config, entry_points=False)
        host.register(world, name="fake")
        return host

    monkeypatch.setattr(PluginHost, "load", classmethod(load_with_fake))
    return world


@pytest.fixture
def deltas(world, write_config, store_url):
    """A config with deltas on, the store it syncs into, and a way to read its bookmarks."""

    class Deltas:
        path = write_config(DELTAS.format(url=store_url, use_deltas="true", module=MODULE))

        def run(self, *args: str, exit_code: int = 0) -> Any:
            return invoke(cli, self.path, *args, exit_code=exit_code)

        def bookmarks(self) -> dict[tuple[str, str], str]:
            store = Store.open(store_url)
            try:
                with store.read() as db:
                    rows = db.execute(
                        sa.select(schema.bookmarks).where(schema.bookmarks.c.module == MODULE)
                    )
                    return {(row.stream, row.tenant_key): row.value for row in rows}
            finally:
                store.close()

        def users_bookmark_calls(self) -> dict[str, str | None]:
            return {
                tenant: bookmark for hook, tenant, bookmark in world.calls if hook == "fetch_users"
            }

    return Deltas()


KEY_A, KEY_B = f"main/{TENANT_A}", f"main/{TENANT_B}"


def test_deltas_reset_now_forgets_the_links_and_the_next_run_lists_everyone(deltas, world):
    deltas.run("sync")
    before = deltas.bookmarks()
    assert before[("users", KEY_A)] == before[("users", KEY_B)] == "delta-0"
    assert {("users.full", KEY_A), ("users.full", KEY_B)} <= before.keys()

    dry = deltas.run("deltas", "reset", "--now", "--dry-run").output
    assert f"{MODULE}: would reset the users delta links of 2 tenants" in dry
    assert "(dry run: nothing changed)" in dry
    assert deltas.bookmarks() == before

    result = deltas.run("deltas", "reset", "--now").output
    assert f"{MODULE}: reset the users delta links of 2 tenants: the next run lists all" in result
    after = deltas.bookmarks()
    assert not [key for key in after if key[0] in ("users", "users.full")]
    assert after == {
        key: value for key, value in before.items() if key[0] not in ("users", "users.full")
    }

    world.calls.clear()
    world.round = 1
    deltas.run("sync", "--only", "users")
    assert deltas.users_bookmark_calls() == {TENANT_A: None, TENANT_B: None}
    assert deltas.bookmarks()[("users", KEY_A)] == "delta-1"

    again = deltas.run("deltas", "reset", "--now", "--tenant", TENANT_B.upper()).output
    assert f"{MODULE}: reset the users delta links of 1 tenant:" in again
    assert ("users", KEY_B) not in deltas.bookmarks() and ("users", KEY_A) in deltas.bookmarks()


def test_deltas_reset_latest_skips_one_tenant_to_now_and_warns(deltas, world):
    deltas.run("sync")
    result = deltas.run("deltas", "reset", "--latest", "--tenant", "contoso.onmicrosoft.com")
    assert f"{MODULE}: set the users delta links of 1 tenant to the latest changes" in result.output
    assert "will not be imported" in result.output  # the guide's caution
    stored = deltas.bookmarks()
    assert stored[("users", KEY_A)] == LATEST_BOOKMARK
    assert stored[("users", KEY_B)] == "delta-0"  # the other tenant is left as it was
    assert ("users.full", KEY_A) in stored  # a full listing still happened when it did

    world.calls.clear()
    world.round = 1
    deltas.run("sync", "--only", "users")
    assert deltas.users_bookmark_calls() == {TENANT_A: LATEST_BOOKMARK, TENANT_B: "delta-0"}
    assert deltas.bookmarks()[("users", KEY_A)] == "delta-1"

    everyone = deltas.run("deltas", "reset", "--latest").output
    assert f"{MODULE}: set the users delta links of 2 tenants to the latest changes" in everyone


def test_deltas_reset_latest_leaves_a_tenant_with_no_link_alone(deltas):
    deltas.run("sync", "--only", "tenants")  # tenants stored; no users listed yet
    result = deltas.run("deltas", "reset", "--latest", "--tenant", TENANT_A).output
    assert (
        f"{MODULE}: nothing to reset: no users delta link is stored of tenant {TENANT_A}" in result
    )
    assert "will not be imported" not in result
    assert deltas.bookmarks() == {}


def test_deltas_reset_options_are_checked(deltas):
    for flags in ((), ("--now", "--latest")):
        result = deltas.run("deltas", "reset", *flags, exit_code=2)
        assert "exactly one of --now" in result.output
    deltas.run("sync", "--only", "tenants")
    result = deltas.run("deltas", "reset", "--now", "--tenant", "nowhere.example", exit_code=2)
    assert "'nowhere.example'" in result.output and "export --what tenants" in result.output
    result = deltas.run("deltas", "reset", "--now", "--module", "nope", exit_code=2)
    assert f"enabled modules: {MODULE}" in result.output


def test_deltas_reset_before_any_sync_creates_no_store(world, write_config, tmp_path):
    path = write_config(
        DELTAS.format(url=f"sqlite:///{tmp_path / 'none.db'}", use_deltas="true", module=MODULE)
    )
    assert "nothing has been synced yet" in invoke(cli, path, "deltas", "reset", "--now").output
    result = invoke(cli, path, "deltas", "reset", "--latest", "--tenant", TENANT_A, exit_code=2)
    assert "no tenants are stored yet" in result.output
    assert not (tmp_path / "none.db").exists()


def test_deltas_reset_latest_is_refused_while_deltas_are_off(world, write_config, store_url):
    world.delta = False
    path = write_config(DELTAS.format(url=store_url, use_deltas="false", module=MODULE))
    invoke(cli, path, "sync")
    result = invoke(cli, path, "deltas", "reset", "--latest", exit_code=2)
    assert "use_deltas is off" in result.output and "already a full listing" in result.output
    result = invoke(cli, path, "deltas", "reset", "--now").output
    assert f"{MODULE}: nothing to reset" in result and "use_deltas is off" in result


# -- site mappings: the rules -----------------------------------------------------------------

T1, T2, T3 = (f"{n}0000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))


def test_plan_skips_tenants_a_mapping_of_their_customer_covers():
    tenants = [
        MappedTenant(T1, "Contoso Ltd", "Contoso"),
        MappedTenant(T2, "Contoso EU", "Contoso"),
        MappedTenant(T3, "Fabrikam", "Fabrikam"),
        MappedTenant(T3.upper(), "Fabrikam", "Fabrikam"),  # the same tenant, another connection
    ]
    mappings = [
        SiteMapping(customer="Contoso", tenant_id=T2),  # this tenant only
        SiteMapping(customer="Fabrikam", site="Leeds"),  # every tenant of Fabrikam
        SiteMapping(customer="Other", tenant_id=T1),  # another customer's: does not count
    ]
    found = plan(tenants, mappings)
    assert found.added == (tenants[0],)
    assert [(c.tenant.tenant_id, c.index) for c in found.covered] == [(T2, 0), (T3, 1)]


def test_generated_tables_are_appended_after_the_text():
    text = "# mine\n[[site_mappings]]\ncustomer = 'A'  # by hand\n\n[store]\nurl = 'sqlite:///x.db'"
    tenant = MappedTenant(T1, 'Contoso "Main"\nLtd', 'C "quoted" \\ Ltd')
    combined = append_site_mappings(text, [tenant], date(2025, 1, 2))
    assert combined.startswith(text + "\n\n[[site_mappings]]\n")
    assert "# generated by csp site-mappings generate on 2025-01-02\n" in combined
    assert tomllib.loads(combined)["site_mappings"] == [
        {"customer": "A"},
        {
            "customer": 'C "quoted" \\ Ltd',
            "tenant_id": T1,
            "description": 'Generated: all users of Contoso "Main" Ltd',
        },
    ]
    with pytest.raises(CannotAppend, match="inline array"):
        append_site_mappings('site_mappings = [{ customer = "A" }]\n', [tenant], date.today())


def test_processing_order_is_by_sequence_then_file_order_per_customer():
    mappings = [
        SiteMapping(customer="b", sequence=50),
        SiteMapping(customer="A", sequence=50, description="catch-all"),
        SiteMapping(customer="A", sequence=10, description="first"),
        SiteMapping(customer="A", sequence=50, description="second catch-all"),
    ]
    order = processing_order(mappings)
    assert list(order) == ["A", "b"]
    assert [index for index, _ in order["A"]] == [2, 1, 3]


# -- site mappings: the commands ----------------------------------------------------------------

CSP_CONFIG = f"""# Our integrator. Comments must survive `csp site-mappings generate`.
[integrator]
create_customers_from_tenants = false  # tenants are mapped by hand

[modules.microsoft_csp]
enabled = true

[[tenant_mappings]]
tenant_id = "{T1}"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "{T2}"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "{T3}"
customer = "Fabrikam"

# Fabrikam's users are placed by hand.
[[site_mappings]]
customer = "Fabrikam"
site = "Leeds"
group = "Loc-Leeds"
sequence = 10
description = "Leeds staff"
"""


class Csp:
    """A config with the CSP module enabled, its command line, and a store to fill."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "halo-integrator.toml"
        self.path.write_text(CSP_CONFIG, encoding="utf-8")
        self.db = tmp_path / "halo-integrator.db"

    def cli(self) -> click.Group:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str, exit_code: int = 0) -> Any:
        return invoke(self.cli(), self.path, *args, exit_code=exit_code)

    def append(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as config:
            config.write(text)

    def fill(self) -> None:
        """What a sync of three mapped tenants leaves, plus one not imported and one unmapped."""
        store = Store.open(f"sqlite:///{self.db}")
        now = datetime.now(UTC)
        stamp = {"active": True, "created_at": now, "updated_at": now}
        try:
            with store.unit() as db:
                ids = {}
                for name in ("Contoso", "Fabrikam"):
                    ids[name] = db.execute(
                        sa.insert(schema.customers).values(name=name, source="config", **stamp)
                    ).inserted_primary_key[0]
                for customer, site, main in (
                    ("Contoso", "Main", True),
                    ("Contoso", "London", False),
                    ("Fabrikam", "Main", True),
                    ("Fabrikam", "Leeds", False),
                ):
                    db.execute(
                        sa.insert(schema.sites).values(
                            customer_id=ids[customer], name=site, is_main=main, **stamp
                        )
                    )
                for tenant_id, name, customer, skip in (
                    (T1, "Contoso Ltd", "Contoso", False),
                    (T2, "Contoso Europe", "Contoso", False),
                    (T3, "Fabrikam Inc", "Fabrikam", False),
                    ("40000000-0000-4000-8000-000000000004", "Skipped Ltd", None, True),
                    ("50000000-0000-4000-8000-000000000005", "Unmapped Ltd", None, False),
                ):
                    db.execute(
                        sa.insert(schema.tenants).values(
                            module="microsoft_csp",
                            connection="main",
                            tenant_id=tenant_id,
                            name=name,
                            access="gdap_only",
                            customer_id=ids.get(customer),
                            do_not_import=skip,
                            **stamp,
                        )
                    )
        finally:
            store.close()


@pytest.fixture
def csp(tmp_path) -> Csp:
    return Csp(tmp_path)


def test_generate_before_any_sync_says_to_sync_first(csp):
    result = csp.run("csp", "site-mappings", "generate")
    assert "nothing synced yet" in result.output and "halo-integrator sync" in result.output
    assert not csp.db.exists()
    assert csp.path.read_text(encoding="utf-8") == CSP_CONFIG
    listed = csp.run("csp", "site-mappings", "list").output
    assert "site_mappings[0]" in listed and "listed after a sync" in listed


def test_generate_dry_run_then_generate_then_again_then_config_check(csp):
    csp.fill()
    dry = csp.run("csp", "site-mappings", "generate", "--dry-run").output
    assert "would append 2 site mapping(s)" in dry and "dry run: the config is unchanged" in dry
    assert (
        f'tenant_id = "{T1}"' in dry
        and 'description = "Generated: all users of Contoso Ltd"' in dry
    )
    assert f'"Fabrikam Inc" ({T3}): site_mappings[0] of customer "Fabrikam"' in dry
    assert csp.path.read_text(encoding="utf-8") == CSP_CONFIG

    result = csp.run("csp", "site-mappings", "generate").output
    assert "added 2 site mapping(s)" in result
    assert f'"Contoso" ← "Contoso Ltd" ({T1})' in result
    assert f'"Contoso" ← "Contoso Europe" ({T2})' in result
    assert "already covered by a site mapping, skipped (1)" in result
    text = csp.path.read_text(encoding="utf-8")
    assert text.startswith(CSP_CONFIG)  # appended: every comment and line kept in place
    assert "# generated by csp site-mappings generate on " in text
    generated = tomllib.loads(text)["site_mappings"][1:]  # by customer, then tenant name
    assert [(m["customer"], m["tenant_id"], m["description"]) for m in generated] == [
        ("Contoso", T2, "Generated: all users of Contoso Europe"),
        ("Contoso", T1, "Generated: all users of Contoso Ltd"),
    ]

    again = csp.run("csp", "site-mappings", "generate").output
    assert "no new site mappings" in again and "skipped (3)" in again
    assert csp.path.read_text(encoding="utf-8") == text

    check = csp.run("config", "check").output
    assert "configuration OK" in check and "warning" not in check
    assert load_config(csp.path).site_mappings[2].tenant_id == T1


def test_a_catch_all_of_the_customer_covers_all_its_tenants(csp):
    csp.fill()
    csp.append('\n[[site_mappings]]\ncustomer = "Contoso"\ntype = "field"\nsite_field = "city"\n')
    result = csp.run("csp", "site-mappings", "generate").output
    assert "no new site mappings" in result and "skipped (3)" in result


def test_generate_with_no_mapped_tenant_says_to_map_them(csp):
    store = Store.open(f"sqlite:///{csp.db}")  # an empty store: nothing synced into it
    store.close()
    result = csp.run("csp", "site-mappings", "generate").output
    assert "no microsoft_csp tenant in the store is mapped to a customer yet" in result
    assert "csp map --auto" in result and "sync --only tenants" in result


def test_list_shows_processing_order_and_tenants_no_mapping_places(csp):
    csp.fill()
    csp.append(
        f"""
[[site_mappings]]
customer = "Contoso"
tenant_id = "{T2}"
type = "field"
site_field = "officeLocation"
filters = [{{ field = "userType", operator = "equals", value = "Member" }}]

[[site_mappings]]
customer = "Fabrikam"
sequence = 5
include_external_users = true
"""
    )
    lines = csp.run("csp", "site-mappings", "list").output.splitlines()
    fabrikam = lines.index('customer "Fabrikam":')
    assert lines[fabrikam + 1].split()[:3] == ["SEQ", "MAPPING", "TYPE"]
    first, second = lines[fabrikam + 2].split(), lines[fabrikam + 3].split()
    assert first[:5] == ["5", "site_mappings[2]", "site", "Main", "all"]
    assert "guests included" in lines[fabrikam + 2]
    assert second[:6] == ["10", "site_mappings[0]", "site", "Leeds", "all", "Loc-Leeds"]
    assert "Leeds staff" in lines[fabrikam + 3]
    contoso = lines.index('customer "Contoso":')
    row = lines[contoso + 2]
    assert row.split()[:6] == ["50", "site_mappings[1]", "field", "by", "officeLocation", T2]
    assert "userType equals 'Member'" in row
    # T1 of Contoso: Contoso has a mapping, but only for T2.
    tail = "\n".join(lines[lines.index(row) :])
    assert "site mappings all name other tenants" in tail
    assert f'"Contoso": "Contoso Ltd" ({T1})' in tail
    assert "Contoso Europe" not in tail and "Skipped Ltd" not in tail and "Unmapped" not in tail


def test_list_names_customers_with_no_site_mapping(csp):
    csp.fill()
    text = csp.path.read_text(encoding="utf-8").replace(
        "[integrator]\n", "[integrator]\ncreate_site_mappings_for_new_tenants = true\n"
    )
    csp.path.write_text(text, encoding="utf-8")
    result = csp.run("csp", "site-mappings", "list").output
    assert "customers of mapped tenants with no site mapping (their users go to" in result
    assert f'"Contoso": "Contoso Ltd" ({T1})' in result
    assert f'"Contoso": "Contoso Europe" ({T2})' in result
    csp.run("csp", "site-mappings", "generate")
    result = csp.run("csp", "site-mappings", "list").output
    assert "every mapped tenant (3) has a site mapping" in result


# -- config check -------------------------------------------------------------------------------

CHECKED = """
[store]
url = "{url}"

[[tenant_mappings]]
tenant_id = "10000000-0000-4000-8000-000000000001"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "20000000-0000-4000-8000-000000000002"
customer = "Northwind"
"""


def fill_customers(url: str) -> None:
    """Contoso with its Main and London sites, as a sync and a PSA would leave them."""
    store = Store.open(url)
    now = datetime.now(UTC)
    stamp = {"active": True, "created_at": now, "updated_at": now}
    try:
        with store.unit() as db:
            customer = db.execute(
                sa.insert(schema.customers).values(name="Contoso", source="config", **stamp)
            ).inserted_primary_key[0]
            for name, main in (("London", False), ("Main", True)):
                db.execute(
                    sa.insert(schema.sites).values(
                        customer_id=customer, name=name, is_main=main, **stamp
                    )
                )
    finally:
        store.close()


def test_config_check_reports_an_unknown_site_and_warns(write_config, store_url):
    fill_customers(store_url)
    good = CHECKED.format(url=store_url) + (
        '\n[[site_mappings]]\ncustomer = "Contoso"\nsite = "london"\nsequence = 10\n'
        '\n[[site_mappings]]\ncustomer = "Contoso"\n'  # Main
        '\n[[site_mappings]]\ncustomer = "Contoso"\nsite = "Paris"\ncreate_site = true\n'
        '\n[[site_mappings]]\ncustomer = "Northwind"\nsite = "Oslo"\n'  # not synced yet
    )
    result = invoke(cli, write_config(good), "config", "check")
    assert "configuration OK" in result.output
    assert (
        "warning: site_mappings[3].customer: customer 'Northwind' is not in the store yet; the "
        "first sync creates it, with only its Main site: create site 'Oslo'" in result.output
    )
    assert "warning: site_mappings[2]: same sequence (50) as site_mappings[1]" in result.output

    bad = good + '\n[[site_mappings]]\ncustomer = "Contoso"\nsite = "Leeds"\nsequence = 60\n'
    result = invoke(cli, write_config(bad), "config", "check", exit_code=2)
    assert (
        "site_mappings[4].site: customer 'Contoso' has no site 'Leeds' (its sites: Main, "
        "London); name one of them, or set create_site = true" in result.output
    )
    assert "configuration OK" not in result.output


def test_config_check_creates_no_store_and_notes_one_it_cannot_reach(write_config, tmp_path):
    mapping = '\n[[site_mappings]]\ncustomer = "Contoso"\nsite = "Leeds"\n'
    missing = tmp_path / "never" / "halo.db"
    result = invoke(
        cli, write_config(CHECKED.format(url=f"sqlite:///{missing}") + mapping), "config", "check"
    )
    assert "configuration OK" in result.output and "warning" not in result.output
    assert not missing.parent.exists()

    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    result = invoke(cli, write_config(CHECKED.format(url=unreachable) + mapping), "config", "check")
    assert "configuration OK" in result.output
    assert (
        "note: site mappings not checked against the store: cannot open the store" in result.output
    )
