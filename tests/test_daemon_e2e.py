"""The daemon end to end, as an MSP runs it: `halo-integrator run` against the emulator with
short intervals, two scheduled cycles of every module, `/healthz`, one signed Partner Center
webhook and one forged, SIGTERM, and then the store and both request logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from halo_integrator_core.config import load_config
from halo_integrator_core.store import Store, schema
from halo_microsoft_emulator import EmulatorServer, generate
from halo_microsoft_emulator.demo import authorize_through_emulator, write_demo_config
from halo_microsoft_emulator.partner_center import (
    PUBLIC_HOST,
    certificate_url,
    event_body,
    sign,
)

CLI = Path(sys.executable).parent / "halo-integrator"
MODULES = ("microsoft_csp", "consumption_billing", "subscription_pricing")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s")


def rows(db: Path, statement: Any) -> list[Any]:
    store = Store.open_existing(f"sqlite:///{db}") if db.exists() else None
    if store is None:
        return []
    try:
        with store.read() as connection:
            return connection.execute(statement).all()
    except sa.exc.OperationalError:  # being migrated by the daemon
        return []
    finally:
        store.close()


def test_the_daemon_runs_every_module_takes_one_true_webhook_and_stops_cleanly(tmp_path):
    world = generate(seed=3, customers=2, users=4, devices=2)
    with EmulatorServer(world) as server:
        path = write_demo_config(tmp_path / "d", server)
        port = free_port()
        with path.open("a", encoding="utf-8") as file:
            file.write(
                f'\n[server]\naddress = "127.0.0.1"\nport = {port}\n\n'
                "[modules.microsoft_csp.webhooks]\nenabled = true\n"
                f'allowed_certificate_hosts = ["127.0.0.1:{server.port}"]\n'
                f'trusted_ca_file = "{server.ca_bundle}"\n'
            )
        authorize_through_emulator(load_config(path), server)
        db = path.parent / "halo-integrator.db"
        env = {k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"}
        daemon = subprocess.Popen(
            [str(CLI), "--config", str(path), "--log-format", "json", "run", "--every", "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            runs = schema.sync_runs

            def two_cycles_each() -> bool:
                finished = rows(db, sa.select(runs).where(runs.c.finished_at.is_not(None)))
                return all(sum(r.module == m for r in finished) >= 2 for m in MODULES)

            wait_for(two_cycles_each, timeout=90)
            finished = rows(db, sa.select(runs).where(runs.c.finished_at.is_not(None)))
            assert all(r.outcome == "succeeded" for r in finished), [
                (r.module, r.error) for r in finished if r.outcome != "succeeded"
            ]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                health = json.loads(answer.read())
                assert answer.status == 200 and health["status"] == "ok"

            # Microsoft changes a quantity and says so; a forger says something else.
            customer = next(c for c in world.customers.values() if c.reseller and c.subscriptions)
            subscription = next(iter(customer.subscriptions.values()))
            world.set_quantity(customer.tenant_id, subscription.id, subscription.quantity + 7)
            uri = (
                f"{PUBLIC_HOST}/webhooks/v1/customers/{customer.tenant_id}"
                f"/subscriptions/{subscription.id}"
            )
            body = event_body(server.app, "subscription-updated", uri)
            headers = {
                "Content-Type": "application/json",
                "Authorization": "Signature " + sign(server.app, body),
                "X-MS-Certificate-Url": certificate_url(server.app),
                "X-MS-Signature-Algorithm": "rsa-sha256",
            }
            url = f"http://127.0.0.1:{port}/webhooks/microsoft_csp"
            forged = body.replace(subscription.id.encode(), b"0" * len(subscription.id))
            assert requests.post(url, data=forged, headers=headers, timeout=10).status_code == 401
            assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 200
            again = requests.post(url, data=body, headers=headers, timeout=10)
            assert again.status_code == 200 and "already" in again.json()["message"]

            subs = schema.subscriptions
            wait_for(
                lambda: rows(
                    db,
                    sa.select(subs.c.quantity).where(
                        subs.c.external_id == subscription.id,
                        subs.c.quantity == subscription.quantity,
                    ),
                ),
                timeout=30,
            )
            daemon.send_signal(signal.SIGTERM)
            _, stderr = daemon.communicate(timeout=90)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.communicate()
    assert daemon.returncode == 0, stderr[-3000:]

    # One event processed once; a refresh of that tenant's subscriptions ran for it.
    assert len(rows(db, sa.select(schema.webhook_events))) == 1
    refreshes = [
        r
        for r in rows(db, sa.select(runs))
        if (r.options or {}).get("tenant") == customer.tenant_id.lower()
        and (r.options or {}).get("only") == ["subscriptions"]
    ]
    assert refreshes and all(r.outcome == "succeeded" for r in refreshes)
    log = schema.request_log
    inbound = rows(db, sa.select(log).where(log.c.direction == "inbound"))
    webhooks = [r for r in inbound if r.url.startswith("/webhooks/")]
    assert sorted(r.status for r in webhooks) == [200, 200, 401]
    assert all(r.module == "microsoft_csp" for r in webhooks)
    outbound = rows(db, sa.select(log).where(log.c.direction == "outbound"))
    assert outbound and {r.module for r in outbound} >= set(MODULES)
    assert all("sig=" not in r.url or "sig=[redacted]" in r.url for r in outbound)
