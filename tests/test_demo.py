"""`halo-integrator demo`: the README's main job, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

CLI = Path(sys.executable).parent / "halo-integrator"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"}
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_demo_syncs_the_emulator_and_leaves_a_store_to_read(tmp_path):
    demo = run("demo", "--dir", "d", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "authorized the Partner Center connection as admin@" in demo.stdout
    assert "microsoft_csp: succeeded" in demo.stdout
    config = tmp_path / "d" / "halo-integrator.toml"
    assert f"halo-integrator --config {config} export --what tenants" in demo.stdout
    assert (tmp_path / "d" / "halo-integrator.db").exists()
    for secret in (tmp_path / "d" / "secrets").iterdir():
        assert secret.stat().st_mode & 0o777 == 0o600
    assert "secret" not in config.read_text().split("[endpoints]")[1].split("client_secret")[0]

    def export(what: str) -> list[dict]:
        answer = run(
            "--config", str(config), "export", "--what", what, "--format", "json", cwd=tmp_path
        )
        assert answer.returncode == 0, answer.stderr
        return [json.loads(line) for line in answer.stdout.splitlines()]

    tenants = export("tenants")
    assert len(tenants) == 5
    assert {
        "reseller_and_gdap",
        "gdap_only",
        "reseller_only",
        "gdap_expired",
        "consent_missing",
    } == {t["access"] for t in tenants}
    licences = export("licences")
    assert licences and all(
        row["sku_part_number"] and row["name"] and row["total_units"] >= row["consumed_units"]
        for row in licences
    )
    subscriptions = export("subscriptions")
    assert subscriptions and all(
        row["term_duration"] in ("P1M", "P1Y")
        and row["billing_cycle"] in ("monthly", "annual")
        and row["quantity"] >= 1
        and row["commitment_end"]
        for row in subscriptions
    )
    users = export("users")
    readable = {
        t["tenant_id"] for t in tenants if t["access"] in ("reseller_and_gdap", "gdap_only")
    }
    assert {u["tenant_id"] for u in users} == readable
    assert all(
        u["site"] == "Main"
        and u["customer"]
        and len(u["external_id"]) == 36
        and u["active"] is True
        and u["is_service_account"] is False
        and u["display_name"]
        and u["network_login"] == u["user_principal_name"]
        and u["user_type"] == "Member"  # guests are not taken by the catch-all
        for u in users
    )
    assert any(u["email"] and u["job_title"] and u["department"] for u in users)
    user_names = {u["user_principal_name"] for u in users}
    assets = export("assets")
    assert {a["tenant_id"] for a in assets} <= readable and assets
    assert all(
        a["asset_type"] == "Intune Device"
        and a["status"] == "Active"
        and a["customer"]
        and a["site"]
        and a["device_name"]
        and a["operating_system"]
        for a in assets
    )
    assert any(a["user"] in user_names for a in assets)
    status = run("--config", str(config), "csp", "status", cwd=tmp_path)
    assert status.returncode == 0 and "authorized as admin@" in status.stdout

    again = run("demo", "--dir", "d", cwd=tmp_path)  # a second run finds everything unchanged
    assert again.returncode == 0, again.stderr
    [tenants_row] = [
        line.split() for line in again.stdout.splitlines() if line.strip().startswith("tenants ")
    ]
    added, updated, unchanged = (int(n) for n in tenants_row[1:4])
    # Nothing new; only the consent-missing tenant's consent URL names the emulator's new port.
    assert (added, updated + unchanged) == (0, 5) and updated <= 1

    # Subscription pricing ran after the sync: each subscription has the GB sheet's price,
    # a sell price 20% above it, and the emulator's planned price changes are listed.
    assert "subscription_pricing: succeeded" in demo.stdout
    assert "subscription_pricing: succeeded" in again.stdout
    priced = export("subscriptions")
    assert priced and all(
        row["cost_price"] is not None
        and row["currency"] == "GBP"
        and row["price_market"] == "GB"
        and row["price_effective_start"]
        and row["price_note"] is None
        and row["sell_price_rule"] == "markup 20%"
        and Decimal(row["sell_price"])
        == (Decimal(row["cost_price"]) * Decimal("1.2")).quantize(Decimal("0.01"))
        for row in priced
    )
    changes = run("--config", str(config), "pricing", "changes", "--format", "json", cwd=tmp_path)
    assert changes.returncode == 0, changes.stderr
    planned = [json.loads(line) for line in changes.stdout.splitlines()]
    assert planned and {row["status"] for row in planned} == {"planned"}
    # Each from the subscription's renewal on or after the change (new commerce holds a
    # price for its term): its next renewal or a later one, never before February 1st.
    assert all(row["effective"] >= row["renews_on"] for row in planned)
    assert all(row["effective"] >= "2026-02-01" for row in planned)
    assert all(Decimal(row["new_price"]) > Decimal(row["old_price"]) for row in planned)
    assert {row["subscription_id"] for row in planned} <= {row["external_id"] for row in priced}


def test_the_demo_bills_azure_usage_and_reports_it(tmp_path):
    """The demo imports the emulated partner's Azure usage as invoice lines; the billing
    report's per-customer costs add up to exactly what the usage rows of mapped tenants cost."""
    from halo_microsoft_emulator import generate

    demo = run("demo", "--dir", "d", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "consumption_billing: succeeded" in demo.stdout
    assert "consumption_billing — 2026-01 (open)" in demo.stdout  # the report it shows
    assert "halo-integrator --config" in demo.stdout and " billing report" in demo.stdout
    config = tmp_path / "d" / "halo-integrator.toml"

    at = ("--config", str(config))
    exported = run(*at, "export", "--what", "invoice-lines", "--format", "json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    in_force = [line for line in lines if line["active"]]
    assert in_force and all(
        line["module"] == "consumption_billing"
        and line["customer"]
        and line["period"] in ("2025-12", "2026-01")
        and line["description"].startswith("Azure usage: ")
        and Decimal(line["price"]) >= Decimal(line["cost"]) * Decimal("1.15") - Decimal("0.01")
        for line in in_force
    )
    # Last month is billed on its invoices; this month is an estimate so far.
    assert {line["status"] for line in in_force if line["period"] == "2025-12"} == {"billed"}
    assert {line["status"] for line in in_force if line["period"] == "2026-01"} == {"estimate"}

    # The demo's world: every tenant with usage (a reseller customer) is mapped to a customer.
    world = generate(seed=1, customers=5, users=25, devices=10)
    for month, period in (("2025-12", "last"), ("2026-01", "current")):
        report = run(*at, "billing", "report", "--period", month, "--format", "json", cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        data = json.loads(report.stdout)
        assert data["customers"] and data["unmatched"] == []
        usage: dict[str, Decimal] = {}
        for row in world.usage:
            if row.period == period and world.customers[row.customer_tenant].reseller:
                currency = row.fields["BillingCurrency"]
                usage[currency] = usage.get(currency, Decimal(0)) + Decimal(
                    row.fields["BillingPreTaxTotal"]
                )
        costs: dict[str, Decimal] = {}
        for customer in data["customers"]:
            costs[customer["currency"]] = costs.get(customer["currency"], Decimal(0)) + Decimal(
                customer["cost"]
            )
        assert costs == usage
        assert {c: Decimal(t["cost"]) for c, t in data["totals"].items()} == usage
    table = run(*at, "billing", "report", "--period", "2025-12", cwd=tmp_path)
    assert table.returncode == 0 and "total" in table.stdout and "margin" in table.stdout
