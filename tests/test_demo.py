"""`halo-integrator demo`: the README's main job, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
