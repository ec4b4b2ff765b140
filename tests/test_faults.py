"""Every fault the emulator injects reaches the caller as a typed error (or is ridden out)."""

from __future__ import annotations

import pytest
import requests

from halo_integrator_core import errors
from halo_integrator_core.http import HttpClient, RetryPolicy
from halo_microsoft_csp import errors as csp_errors
from halo_microsoft_csp.auth import GRAPH_RESOURCE, PARTNER_CENTER_RESOURCE, AppTokens


@pytest.fixture
def http(emulator):
    sleeps: list[float] = []
    client = HttpClient(
        verify=str(emulator.ca_bundle),
        retry=RetryPolicy(max_attempts=3, max_total_seconds=30),
        sleep=sleeps.append,
        timeout=(2.0, 0.5),
    )
    client.sleeps = sleeps
    yield client
    client.close()


def graph_call(emulator, http, path: str = "/v1.0/users"):
    partner = next(iter(emulator.world.partners.values()))
    tenant = next(c for c in emulator.world.customers.values() if c.consented).tenant_id
    tokens = AppTokens(
        client_id=partner.gdap_app.client_id,
        secret=lambda: partner.gdap_app.secret,
        authority=emulator.endpoints()["login"],
        http=http,
        app_name=partner.gdap_app.name,
    )
    headers = tokens.headers(tenant, GRAPH_RESOURCE)
    return lambda: http.get(f"{emulator.endpoints()['graph']}{path}", headers=headers), tenant


def partner_center_call(emulator, http, path: str = "/v1/customers"):
    partner = next(iter(emulator.world.partners.values()))
    tokens = AppTokens(
        client_id=partner.partner_center_app.client_id,
        secret=lambda: partner.partner_center_app.secret,
        authority=emulator.endpoints()["login"],
        http=http,
        app_name=partner.partner_center_app.name,
    )
    headers = tokens.headers(partner.tenant_id, PARTNER_CENTER_RESOURCE)
    return lambda: http.get(f"{emulator.endpoints()['partner_center']}{path}", headers=headers)


def test_a_passing_throttle_is_waited_out_for_retry_after(emulator, http):
    call, _ = graph_call(emulator, http)
    emulator.app.inject("throttle", endpoint="graph.users", times=2, retry_after=4)
    assert call().status_code == 200
    assert http.sleeps == [4.0, 4.0]


def test_graph_throttling_that_lasts_is_rate_limited(emulator, http):
    call, _ = graph_call(emulator, http)
    emulator.app.inject("throttle", endpoint="graph.users", retry_after=1)
    with pytest.raises(errors.RateLimited) as caught:
        call()
    assert caught.value.code == "TooManyRequests" and caught.value.attempts == 3


def test_partner_center_throttling_in_its_own_body_is_rate_limited(emulator, http):
    call = partner_center_call(emulator, http)
    emulator.app.inject("throttle", endpoint="partner_center.customers", retry_after=2)
    with pytest.raises(errors.RateLimited, match="Rate limit is exceeded"):
        call()
    assert http.sleeps == [2.0, 2.0]


def test_503_that_lasts_is_service_unavailable(emulator, http):
    call, _ = graph_call(emulator, http)
    emulator.app.inject("unavailable", endpoint="graph.users")
    with pytest.raises(errors.ServiceUnavailable):
        call()


def test_a_slow_answer_past_the_read_timeout_is_a_failed_connection(emulator, http):
    call, _ = graph_call(emulator, http)
    emulator.app.inject("slow", endpoint="graph.users", delay=1.0)
    with pytest.raises(errors.ConnectionFailed, match=r"(?i)timed? ?out"):
        call()


def test_a_connection_dropped_mid_page_is_retried_then_fails_typed(emulator, http):
    call, _ = graph_call(emulator, http)
    emulator.app.inject("drop", endpoint="graph.users", times=1)
    assert call().status_code == 200  # dropped once, retried
    emulator.app.inject("drop", endpoint="graph.users")
    with pytest.raises(errors.ConnectionFailed):
        call()


def test_a_lapsed_reseller_relationship_is_explained(emulator, http):
    customer = next(c for c in emulator.world.customers.values() if c.reseller)
    call = partner_center_call(emulator, http, f"/v1/customers/{customer.tenant_id}")
    emulator.app.inject("forbidden", endpoint="partner_center.customer", tenant=customer.tenant_id)
    with pytest.raises(errors.PermissionDenied) as caught:
        call()
    explained = csp_errors.call_error(
        caught.value, api="partner_center", tenant=customer.tenant_id, app="pc"
    )
    assert isinstance(explained, csp_errors.ResellerRelationshipMissing)
    assert caught.value.code == "20002" and customer.tenant_id in caught.value.detail


def test_insufficient_privileges_are_explained(emulator, http):
    call, tenant = graph_call(emulator, http)
    emulator.app.inject("denied", endpoint="graph.users")
    with pytest.raises(errors.PermissionDenied) as caught:
        call()
    explained = csp_errors.call_error(caught.value, api="graph", tenant=tenant, app="gdap")
    assert isinstance(explained, csp_errors.InsufficientPrivileges)


def test_sign_in_activity_without_the_audit_permission_is_explained(emulator, http):
    call, tenant = graph_call(emulator, http, "/v1.0/users?$select=id,signInActivity")
    with pytest.raises(errors.PermissionDenied) as caught:
        call()
    assert caught.value.code == "Authentication_MSGraphPermissionMissing"
    explained = csp_errors.call_error(caught.value, api="graph", tenant=tenant, app="gdap")
    assert isinstance(explained, csp_errors.InsufficientPrivileges)


def test_an_unknown_fault_kind_is_refused_when_injected(emulator):
    with pytest.raises(ValueError, match="unknown fault kind 'explode'"):
        emulator.app.inject("explode")
    answer = requests.post(
        f"{emulator.base_url}/_admin/faults",
        json={"kind": "explode"},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert answer.status_code == 400 and "unknown fault kind" in answer.text
