"""App-only tokens of the CSP module through MSAL, the shared client and the emulator."""

from __future__ import annotations

import threading

import pytest

from halo_integrator_core.http import HttpClient
from halo_microsoft_csp import errors as csp_errors
from halo_microsoft_csp.auth import GRAPH_RESOURCE, PARTNER_CENTER_RESOURCE, AppTokens


@pytest.fixture
def http(emulator):
    with HttpClient(verify=str(emulator.ca_bundle), sleep=lambda _: None) as client:
        yield client


def gdap_tokens(emulator, http, secret=None) -> AppTokens:
    partner = next(iter(emulator.world.partners.values()))
    app = partner.gdap_app
    return AppTokens(
        client_id=app.client_id,
        secret=lambda: secret or app.secret,
        authority=emulator.endpoints()["login"],
        http=http,
        app_name=f"{app.name} ({app.client_id})",
    )


def token_requests(emulator) -> int:
    return sum(
        1
        for method, path, _ in emulator.app.requests
        if method == "POST" and path.endswith("/oauth2/v2.0/token")
    )


def test_tokens_per_tenant_and_resource_are_fetched_once_and_cached(emulator, http):
    tokens = gdap_tokens(emulator, http)
    a, b = [c for c in emulator.world.customers.values() if c.consented][:2]
    first = tokens.token(a.tenant_id, GRAPH_RESOURCE)
    assert tokens.token(a.tenant_id, GRAPH_RESOURCE) == first
    other = tokens.token(b.tenant_id, GRAPH_RESOURCE)
    assert emulator.app.tokens.find(first).tenant == a.tenant_id
    assert emulator.app.tokens.find(other).tenant == b.tenant_id
    assert token_requests(emulator) == 2
    assert tokens.headers(a.tenant_id, GRAPH_RESOURCE) == {"Authorization": f"Bearer {first}"}


def test_two_threads_asking_at_once_fetch_one_token(emulator, http):
    tokens = gdap_tokens(emulator, http)
    tenant = next(c for c in emulator.world.customers.values() if c.consented).tenant_id
    emulator.app.inject("slow", endpoint="login.token", delay=0.3, times=1)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(tokens.token(tenant, GRAPH_RESOURCE)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert token_requests(emulator) == 1


def test_a_tenant_without_consent_is_a_typed_error_naming_tenant_and_app(emulator, http):
    tokens = gdap_tokens(emulator, http)
    unconsented = next(
        c
        for c in emulator.world.customers.values()
        if not c.consented and c.gdap_status == "active"
    )
    with pytest.raises(csp_errors.ConsentMissing) as caught:
        tokens.token(unconsented.tenant_id, GRAPH_RESOURCE)
    assert unconsented.tenant_id in str(caught.value)
    assert tokens.app_name in str(caught.value)
    assert caught.value.code == "AADSTS7000229"


def test_a_wrong_secret_is_a_typed_error(emulator, http):
    tokens = gdap_tokens(emulator, http, secret="not-the-secret")
    partner = next(iter(emulator.world.partners))
    with pytest.raises(csp_errors.SecretInvalid):
        tokens.token(partner, PARTNER_CENTER_RESOURCE)


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("aadsts7000229", csp_errors.ConsentMissing),
        ("aadsts700016", csp_errors.ApplicationNotFound),
        ("aadsts7000222", csp_errors.SecretExpired),
        ("aadsts7000215", csp_errors.SecretInvalid),
        ("aadsts50011", csp_errors.RedirectUriMismatch),
        ("aadsts65001", csp_errors.ConsentRequired),
        ("invalid_client", csp_errors.ClientInvalid),
    ],
)
def test_each_injected_token_fault_reaches_the_caller_typed(emulator, http, kind, error_type):
    tokens = gdap_tokens(emulator, http)
    tenant = next(c for c in emulator.world.customers.values() if c.consented).tenant_id
    emulator.app.inject(kind, endpoint="login.token")
    with pytest.raises(error_type) as caught:
        tokens.token(tenant, GRAPH_RESOURCE)
    assert tenant in str(caught.value) and tokens.app_name in str(caught.value)
