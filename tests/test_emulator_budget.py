"""The emulator's Graph budget per app per tenant (429 with Retry-After, a sliding window, the
admin counters), and the client's pacing measured against it on loopback."""

from __future__ import annotations

import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from click.testing import CliRunner
from emulator_process import emulator_process
from test_csp_sync import csp_config, secrets, sync  # noqa: F401 (a fixture)

from halo_integrator_core.cli import cli
from halo_integrator_core.config import EndpointSettings, structure
from halo_integrator_core.http import HttpClient
from halo_integrator_core.pacing import Pacer
from halo_microsoft_emulator.app import GRAPH
from halo_microsoft_emulator.budget import BudgetLimit, TenantBudget

CLI = Path(sys.executable).parent / "halo-integrator"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(emulator, tenant: str, *, app: str = "gdap") -> dict[str, str]:
    partner = next(iter(emulator.world.partners.values()))
    registration = partner.gdap_app if app == "gdap" else partner.partner_center_app
    token = emulator.app.tokens.issue(
        client_id=registration.client_id,
        tenant=tenant,
        resource=GRAPH,
        scopes=("https://graph.microsoft.com/.default",),
        roles=tuple(partner.gdap_app.permissions),
    )
    return {"Authorization": f"Bearer {token.value}"}


def customers(emulator) -> list[str]:
    return [c.tenant_id for c in emulator.world.customers.values() if c.consented]


def get(emulator, path: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(
        emulator.base_url + path, headers=headers, verify=str(emulator.ca_bundle), timeout=10
    )


def admin(emulator) -> dict[str, Any]:
    return get(emulator, "/_admin/budget").json()


def budget_on_fake_clock(emulator, requests_: int, window: float) -> FakeClock:
    clock = FakeClock()
    emulator.app.budget = TenantBudget(BudgetLimit(requests_, window), clock=clock)
    return clock


# -- the budget ---------------------------------------------------------------------------------


def test_over_budget_graph_answers_429_in_graphs_shape_with_a_retry_after_that_admits(emulator):
    emulator.app.budget.limit = BudgetLimit(3, 0.5)
    tenant = customers(emulator)[0]
    headers = bearer(emulator, tenant)
    for _ in range(3):
        assert get(emulator, "/graph/v1.0/organization", headers).status_code == 200
    refused = get(emulator, "/graph/v1.0/organization", headers)
    assert refused.status_code == 429
    # 0.5 s rounded up to the whole seconds Retry-After is given in (concepts/throttling.md).
    assert refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "TooManyRequests" and error["message"]
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    # Not budgeted: the admin API, login, Partner Center, and requests with no Graph token.
    for path in ("/_admin/world", "/partnercenter/v1/customers", "/graph/v1.0/users"):
        assert get(emulator, path).status_code != 429
    time.sleep(int(refused.headers["Retry-After"]))
    assert get(emulator, "/graph/v1.0/organization", headers).status_code == 200


def test_the_window_slides_rather_than_restarting(emulator):
    clock = budget_on_fake_clock(emulator, 2, 10.0)
    headers = bearer(emulator, customers(emulator)[0])

    def status_at(moment: float) -> tuple[int, str | None]:
        clock.now = 1000.0 + moment
        answer = get(emulator, "/graph/v1.0/organization", headers)
        return answer.status_code, answer.headers.get("Retry-After")

    assert status_at(0) == (200, None)
    assert status_at(4) == (200, None)
    assert status_at(6.5) == (429, "4")  # the request of 0 leaves at 10: 3.5 s, rounded up
    assert status_at(10) == (200, None)  # it has left; the one of 4 still counts
    assert status_at(11) == (429, "3")  # so the next place is at 14, not a window after 10
    assert status_at(14) == (200, None)


def test_each_app_and_tenant_has_a_budget_of_its_own(emulator):
    budget_on_fake_clock(emulator, 1, 10.0)
    first, second = customers(emulator)[:2]
    assert get(emulator, "/graph/v1.0/organization", bearer(emulator, first)).status_code == 200
    assert get(emulator, "/graph/v1.0/organization", bearer(emulator, first)).status_code == 429
    assert get(emulator, "/graph/v1.0/organization", bearer(emulator, second)).status_code == 200
    other_app = bearer(emulator, first, app="partner_center")
    assert get(emulator, "/graph/v1.0/organization", other_app).status_code == 200


def test_counters_tell_admitted_throttled_and_wasted_and_reset_keeps_the_budget(emulator):
    clock = budget_on_fake_clock(emulator, 1, 10.0)
    tenant, other = customers(emulator)[:2]
    headers = bearer(emulator, tenant)

    def at(moment: float, path: str) -> int:
        clock.now = 1000.0 + moment
        return get(emulator, f"/graph/v1.0/{path}", headers).status_code

    assert at(0, "organization") == 200
    assert at(1, "users") == 429  # told: not before 10
    assert at(2, "subscribedSkus") == 429  # a first try, so no retry wasted
    assert at(3, "users") == 429  # a retry before the moment it was told: wasted
    assert at(9.5, "subscribedSkus") == 429  # wasted too
    assert at(10, "users") == 200  # on time
    get(emulator, "/graph/v1.0/organization", bearer(emulator, other))
    assert admin(emulator) == {
        "budget": {"requests": 1, "window_seconds": 10.0},
        "tenants": {
            tenant: {"requests": 2, "throttled": 4, "wasted": 2},
            other: {"requests": 1, "throttled": 0, "wasted": 0},
        },
    }
    reset = requests.post(
        emulator.base_url + "/_admin/budget/reset", verify=str(emulator.ca_bundle), timeout=10
    )
    assert reset.status_code == 204
    assert admin(emulator) == {"budget": {"requests": 1, "window_seconds": 10.0}, "tenants": {}}


def test_without_a_budget_requests_are_counted_and_the_budget_is_null(emulator):
    tenant = customers(emulator)[0]
    for _ in range(3):
        get(emulator, "/graph/v1.0/organization", bearer(emulator, tenant))
    assert admin(emulator) == {
        "budget": None,
        "tenants": {tenant: {"requests": 3, "throttled": 0, "wasted": 0}},
    }


# -- the client's pacing against it -------------------------------------------------------------


def hammer(emulator, pacer: Pacer, *, threads: int, each: int) -> None:
    """``threads`` threads of one tenant send ``each`` Graph requests apiece, all different."""
    graph = emulator.endpoints()["graph"]
    tenant = customers(emulator)[0]
    headers = bearer(emulator, tenant)
    live = emulator.world.customers[tenant].users.values()
    users = [u.id for u in live if u.removed is None][: threads * each]
    assert len(users) == threads * each
    failures: list[BaseException] = []

    def run(mine: list[str]) -> None:
        try:
            with structlog.contextvars.bound_contextvars(tenant=tenant):
                for user in mine:
                    http.get(f"{graph}/v1.0/users/{user}", headers=headers)
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    with HttpClient(verify=str(emulator.ca_bundle), pacer=pacer) as http:
        workers = [threading.Thread(target=run, args=(users[i::threads],)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert not failures, failures


def test_a_client_paced_to_the_budget_is_never_throttled(emulator):
    emulator.app.budget.limit = BudgetLimit(5, 0.5)
    graph = emulator.endpoints()["graph"]
    tenant = customers(emulator)[0]
    started = time.monotonic()
    hammer(emulator, Pacer([graph], requests=5, window_seconds=0.5), threads=3, each=5)
    elapsed = time.monotonic() - started
    counts = admin(emulator)["tenants"][tenant]
    assert counts == {"requests": 15, "throttled": 0, "wasted": 0}
    assert elapsed >= 1.0  # 15 requests at 5 per half second take two more windows at least


def test_a_client_pacing_by_retry_after_alone_wastes_no_retry(emulator):
    emulator.app.budget.limit = BudgetLimit(6, 0.5)
    graph = emulator.endpoints()["graph"]
    tenant = customers(emulator)[0]
    hammer(emulator, Pacer([graph]), threads=4, each=4)
    counts = admin(emulator)["tenants"][tenant]
    assert counts["requests"] == 16
    assert counts["throttled"] > 0
    assert counts["wasted"] == 0


@pytest.mark.usefixtures("secrets")
def test_a_sync_paced_by_its_throttling_settings_meets_no_429(emulator, store, write_config):
    emulator.app.budget.limit = BudgetLimit(1, 0.3)
    config = csp_config(
        emulator,
        write_config,
        extra="[throttling]\ngraph_requests = 1\ngraph_window_seconds = 0.3\n",
    )
    assert sync(store, config).outcome == "succeeded"
    tenants = admin(emulator)["tenants"]
    assert max(c["requests"] for c in tenants.values()) > 1  # the budget had work to do
    assert all(c["throttled"] == 0 for c in tenants.values()), tenants


# -- the command line ---------------------------------------------------------------------------


def test_the_emulator_command_refuses_a_budget_it_cannot_read():
    result = CliRunner().invoke(cli, ["emulator", "--port", "0", "--tenant-budget", "ten/2"])
    assert result.exit_code == 2
    assert "--tenant-budget" in result.output and "REQUESTS/SECONDS" in result.output


def test_the_emulator_command_serves_with_the_budget_given(tmp_path):
    with emulator_process(tmp_path, "--customers", "1", "--tenant-budget", "10/2") as snippet:
        endpoints = structure(tomllib.loads(snippet)["endpoints"], EndpointSettings)
        base = endpoints.url("graph").rsplit("/graph", 1)[0]
        answer = requests.get(f"{base}/_admin/budget", verify=endpoints.verify, timeout=10)
        assert answer.json() == {"budget": {"requests": 10, "window_seconds": 2.0}, "tenants": {}}


@pytest.mark.parametrize("text", ["10", "0/2", "10/0", "x/y"])
def test_a_budget_is_requests_per_seconds_both_above_zero(text):
    with pytest.raises(ValueError, match="budget"):
        BudgetLimit.parse(text)
