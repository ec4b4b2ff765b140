"""`csp tenants` and `csp map --auto`: the synced tenants, and mappings proposed from names.

The matching rules are tested as pure functions. The commands run through click's CliRunner
on a copy of the command line with the plugins' commands added as `main()` adds them, against
a store filled by a real sync from the emulator, without `create_customers_from_tenants`, so
the tenants stay unmapped until a mapping says otherwise. The customers to match are
inserted into the store directly, as a PSA would hold them.
"""

from __future__ import annotations

import copy
import json
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.config import ConfigError
from halo_integrator_core.store import Store, schema
from halo_microsoft_csp.commands import TENANT_FIELDS
from halo_microsoft_csp.mapping_proposals import (
    Ambiguity,
    CannotAppend,
    ProposedMapping,
    TenantName,
    append_mappings,
    normalise,
    propose,
)

# -- the matching rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Contoso Ltd", "contoso"),
        ("CONTOSO LIMITED", "contoso"),
        ("Contoso Holdings Ltd.", "contoso"),  # suffixes drop repeatedly from the end
        ("contoso, inc", "contoso"),
        ("Contoso   Corp", "contoso"),
        ("Smith & Jones LLP", "smith and jones"),
        ("Smith and Jones", "smith and jones"),
        ("Acme GmbH", "acme"),
        ("Acme, L.L.C.", "acme"),
        ("O'Neil Group PLC", "oneil"),
        ("Fourth Coffee LLP 3", "fourth coffee llp 3"),  # only a trailing suffix is dropped
        ("Group Contoso", "group contoso"),
        ("Holdings Ltd", "holdings"),  # a name is never reduced to nothing
        ("Co-operative Co", "co operative"),
        ("", ""),
    ],
)
def test_normalise(name, expected):
    assert normalise(name) == expected


TENANTS = [
    ("aaaaaaaa-0000-0000-0000-000000000001", "Fabrikam Ltd"),
    ("aaaaaaaa-0000-0000-0000-000000000002", "Coho Winery Holdings"),
    ("aaaaaaaa-0000-0000-0000-000000000003", "Relecloud Ltd"),
    ("aaaaaaaa-0000-0000-0000-000000000004", "Tailspin Toys"),
    ("aaaaaaaa-0000-0000-0000-000000000005", "Blue Yonder Inc"),
]
CUSTOMERS = [
    "Fabrikam Ltd",
    "Fabrikam Limited",  # normalises like the tenant, but the exact match wins
    "COHO WINERY",
    "Relecloud Limited",
    "relecloud, inc.",
    "Blue Yonder",
]


def test_propose_exact_then_normalised_and_never_an_ambiguous_name():
    proposals = propose(TENANTS, CUSTOMERS, {"aaaaaaaa-0000-0000-0000-000000000005"})
    assert proposals.mapped == (
        ProposedMapping(TENANTS[0][0], "Fabrikam Ltd", "Fabrikam Ltd", "exact"),
        ProposedMapping(TENANTS[1][0], "Coho Winery Holdings", "COHO WINERY", "normalised"),
    )
    assert proposals.ambiguous == (
        Ambiguity(TENANTS[2][0], "Relecloud Ltd", ("Relecloud Limited", "relecloud, inc.")),
    )
    assert proposals.unmatched == (TenantName(*TENANTS[3]),)
    # Mapped in the config already: kept, though "Blue Yonder" would match.
    assert proposals.already_mapped == (TenantName(*TENANTS[4]),)


def test_propose_keeps_every_mapped_tenant_and_considers_a_tenant_once():
    upper = TENANTS[1][0].upper()
    proposals = propose(
        [*TENANTS, (TENANTS[0][0], "Fabrikam Ltd")],  # one tenant through two connections
        CUSTOMERS,
        [upper, TENANTS[0][0]],  # tenant IDs compare case-insensitively
    )
    assert [(p.tenant_id, p.customer) for p in proposals.mapped] == [
        (TENANTS[4][0], "Blue Yonder")  # mapped by nobody now
    ]
    assert [t.tenant_id for t in proposals.already_mapped] == [TENANTS[0][0], TENANTS[1][0]]
    assert propose(TENANTS, [], ()).unmatched == tuple(TenantName(*t) for t in TENANTS)
    # Several tenants may map to one customer.
    twins = propose([("a", "Contoso"), ("b", "Contoso Ltd")], ["Contoso"], ())
    assert [(p.tenant_id, p.customer, p.match) for p in twins.mapped] == [
        ("a", "Contoso", "exact"),
        ("b", "Contoso", "normalised"),
    ]


def test_append_mappings_keeps_the_text_and_extends_split_arrays():
    text = (
        "# my config\n[[tenant_mappings]]\n# by hand\ntenant_id = 'a'\ncustomer = 'A'\n\n"
        '[store]\nurl = "sqlite:///x.db"  # here\n\n[[tenant_mappings]]\ntenant_id = "b"\n'
        "do_not_import = true"  # no newline at the end
    )
    proposal = ProposedMapping("c", 'Tenant "C"\nnext line', 'C "quoted" \\ Ltd', "normalised")
    combined = append_mappings(text, [proposal], date(2025, 1, 2))
    assert combined.startswith(text + "\n\n[[tenant_mappings]]\n")
    assert (
        '# proposed by csp map --auto on 2025-01-02: normalised match of "Tenant "C" next line"\n'
        in combined
    )
    assert tomllib.loads(combined)["tenant_mappings"] == [
        {"tenant_id": "a", "customer": "A"},
        {"tenant_id": "b", "do_not_import": True},
        {"tenant_id": "c", "customer": 'C "quoted" \\ Ltd'},
    ]
    assert append_mappings(text, [], date(2025, 1, 2)) == text
    with pytest.raises(CannotAppend, match="inline array"):
        append_mappings('tenant_mappings = [{ tenant_id = "a" }]\n', [proposal], date.today())


# -- the commands, against a synced store -----------------------------------------------------


class Setup:
    """A config pointing at the emulator, the command line, and the store a sync fills."""

    def __init__(self, emulator, tmp_path: Path, monkeypatch) -> None:
        self.emulator = emulator
        partner = next(iter(emulator.world.partners.values()))
        monkeypatch.setenv("TEST_PC_SECRET", partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", partner.gdap_app.secret)
        endpoints = "\n".join(f'{key} = "{value}"' for key, value in emulator.endpoints().items())
        self.path = tmp_path / "halo-integrator.toml"
        self.path.write_text(
            f"""# Our integrator. Comments must survive `csp map --auto`.
[endpoints]
{endpoints}

[integrator]
# Tenants stay unmapped until a mapping says otherwise.
create_customers_from_tenants = false

[modules.microsoft_csp]
enabled = true  # the CSP module

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{partner.tenant_id}"
partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{partner.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
""",
            encoding="utf-8",
        )
        self.db = tmp_path / "halo-integrator.db"
        self.customers = list(emulator.world.customers.values())

    def cli(self) -> click.Group:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str, exit_code: int = 0) -> Any:
        result = CliRunner().invoke(self.cli(), ["--config", str(self.path), *args])
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == exit_code, result.output
        return result

    def json(self, *args: str) -> Any:
        result = CliRunner().invoke(
            self.cli(), ["--config", str(self.path), "--log-level", "error", *args]
        )
        assert result.exit_code == 0, result.output + result.stderr
        return result

    def tenants(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.json("csp", "tenants", "--json").stdout)
        return {row["tenant_id"]: row for row in rows}

    def exported_tenants(self) -> dict[str, dict[str, Any]]:
        lines = self.json("export", "--what", "tenants").stdout.splitlines()
        return {row["tenant_id"]: row for row in map(json.loads, lines)}

    def add_customers(self, *names: str) -> None:
        store = Store.open(f"sqlite:///{self.db}")
        now = datetime.now(UTC)
        try:
            with store.unit() as db:
                for name in names:
                    db.execute(
                        sa.insert(schema.customers).values(
                            name=name, source="test", active=True, created_at=now, updated_at=now
                        )
                    )
        finally:
            store.close()

    def comments(self) -> list[str]:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if "#" in line and "proposed by csp map" not in line]


def expected_access(customer) -> str:
    if customer.gdap_status == "active":
        if not customer.consented:
            return "consent_missing"
        return "reseller_and_gdap" if customer.reseller else "gdap_only"
    if customer.gdap_status:
        return "gdap_expired"
    return "reseller_only"


@pytest.fixture
def setup(emulator, tmp_path, monkeypatch) -> Setup:
    return Setup(emulator, tmp_path, monkeypatch)


def test_before_any_sync_both_commands_say_to_sync_first(setup):
    result = setup.json("csp", "tenants", "--json")
    assert json.loads(result.stdout) == []
    assert "nothing synced yet" in result.stderr and "halo-integrator sync" in result.stderr
    assert "halo-integrator sync" in setup.run("csp", "tenants").output
    assert "nothing synced yet" in setup.run("csp", "map", "--auto").output
    assert not setup.db.exists()  # looking created no store


def test_map_without_auto_is_a_usage_error(setup):
    result = setup.run("csp", "map", exit_code=2)
    assert "--auto" in result.output and "by hand" in result.output
    assert "[[tenant_mappings]]" in result.output


def test_csp_tenants_lists_access_consent_and_mapping_after_a_sync(setup):
    setup.run("sync", "--only", "tenants")
    tenants = setup.tenants()
    assert set(tenants) == {c.tenant_id for c in setup.customers}
    consent = {
        "reseller_and_gdap": "consented",
        "gdap_only": "consented",
        "consent_missing": "consent_needed",
        "reseller_only": "not_applicable",
        "gdap_expired": "not_applicable",
    }
    for customer in setup.customers:
        row = tenants[customer.tenant_id]
        assert tuple(row) == TENANT_FIELDS
        assert row["name"] == customer.name
        assert row["connection"] == "main"
        assert row["access"] == expected_access(customer), customer.name
        assert row["consent"] == consent[row["access"]]
        assert (row["mapping"], row["customer"], row["mapping_source"]) == ("unmapped", None, None)
        assert row["active"] is True and row["pending"] is None
    assert {row["access"] for row in tenants.values()} == set(consent)
    missing = next(row for row in tenants.values() if row["access"] == "consent_missing")
    assert "/v2.0/adminconsent?" in missing["access_detail"]

    table = setup.run("csp", "tenants").output
    assert table.splitlines()[0].split() == [
        "TENANT",
        "ACCESS",
        "CONSENT",
        "MAPPING",
        "FROM",
        "LAST",
        "SYNC",
    ]
    for customer in setup.customers:
        assert customer.name in table and customer.tenant_id in table
    assert "consent needed" in table and f"csp consent {missing['tenant_id']}" in table
    assert "5 tenants, 5 unmapped" in table


def test_map_auto_dry_run_then_auto_then_sync(setup):
    setup.run("sync", "--only", "tenants")
    exact, normalised, ambiguous, unmatched, manual = setup.customers
    setup.add_customers(
        exact.name,
        normalised.name.upper() + ", Ltd.",
        ambiguous.name + " Group",  # these two normalise the same:
        ambiguous.name.upper() + " PLC",  # the tenant's name fits both
        manual.name + " Holdings",  # would match, but the config maps this tenant by hand
    )
    with setup.path.open("a", encoding="utf-8") as config:
        config.write(
            f'\n# mapped by hand\n[[tenant_mappings]]\ntenant_id = "{manual.tenant_id}"\n'
            'customer = "Hand Picked"\n'
        )
    before_text = setup.path.read_text(encoding="utf-8")
    before_comments = setup.comments()

    dry = setup.run("csp", "map", "--auto", "--dry-run").output
    assert setup.path.read_text(encoding="utf-8") == before_text  # a dry run writes nothing
    assert "would map 2 tenant(s)" in dry and "dry run" in dry

    result = setup.run("csp", "map", "--auto").output
    assert f'"{exact.name}" ({exact.tenant_id}) → "{exact.name}" (exact match)' in result
    assert f"({normalised.tenant_id}) → " in result and "(normalised match)" in result
    assert f'"{ambiguous.name}" ({ambiguous.tenant_id}) matches' in result
    assert f'"{ambiguous.name.upper()} PLC"' in result and f'"{ambiguous.name} Group"' in result
    assert "unmatched" in result and unmatched.tenant_id in result
    assert "already mapped in the config, left as they are: 1" in result

    after = setup.path.read_text(encoding="utf-8")
    assert after.startswith(before_text)  # appended: every comment and line kept in place
    assert setup.comments() == before_comments
    today = datetime.now(UTC).date().isoformat()
    assert (
        f'# proposed by csp map --auto on {today}: exact match of "{exact.name}"' in after
        and f'normalised match of "{normalised.name}"' in after
    )
    mappings = {m["tenant_id"]: m for m in tomllib.loads(after)["tenant_mappings"]}
    assert mappings == {
        manual.tenant_id: {"tenant_id": manual.tenant_id, "customer": "Hand Picked"},
        exact.tenant_id: {"tenant_id": exact.tenant_id, "customer": exact.name},
        normalised.tenant_id: {
            "tenant_id": normalised.tenant_id,
            "customer": normalised.name.upper() + ", Ltd.",
        },
    }

    again = setup.run("csp", "map", "--auto").output  # idempotent: nothing new
    assert "no new mappings to propose" in again
    assert "already mapped in the config, left as they are: 3" in again
    assert setup.path.read_text(encoding="utf-8") == after

    pending = setup.tenants()[exact.tenant_id]
    assert pending["mapping"] == "unmapped" and "next sync" in pending["pending"]

    setup.run("sync")
    exported = setup.exported_tenants()
    assert exported[exact.tenant_id]["customer"] == exact.name
    assert exported[normalised.tenant_id]["customer"] == normalised.name.upper() + ", Ltd."
    assert exported[manual.tenant_id]["customer"] == "Hand Picked"
    assert exported[ambiguous.tenant_id]["customer"] is None
    assert exported[unmatched.tenant_id]["customer"] is None
    listed = setup.tenants()
    assert (listed[exact.tenant_id]["mapping"], listed[exact.tenant_id]["mapping_source"]) == (
        "customer",
        "config",
    )
    assert listed[exact.tenant_id]["pending"] is None
    assert listed[ambiguous.tenant_id]["mapping"] == "unmapped"
    # The mappings went to the customers that were there: none was created for them.
    customers = [
        json.loads(line) for line in setup.json("export", "--what", "customers").stdout.splitlines()
    ]
    assert {c["name"]: c["source"] for c in customers}[exact.name] == "test"


def test_a_result_that_would_not_load_leaves_the_file_untouched(setup, monkeypatch):
    setup.run("sync", "--only", "tenants")
    setup.add_customers(setup.customers[0].name)
    before = setup.path.read_text(encoding="utf-8")

    def refuse(path):
        raise ConfigError(["tenant_mappings[0].customer: refused by this test"], source=path)

    monkeypatch.setattr("halo_microsoft_csp.commands.load_config", refuse)
    result = setup.run("csp", "map", "--auto", exit_code=2)
    assert "left as it was" in result.output and "refused by this test" in result.output
    assert setup.path.read_text(encoding="utf-8") == before
