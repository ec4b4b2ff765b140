"""Recorded Microsoft conversations, replayed with the network blocked.

Replay is the default. To re-record every cassette from the emulator (see
`cassette_support`), run::

    pytest tests/test_cassettes.py --record-mode=rewrite

The tests use the canonical Microsoft hosts when replaying, the emulator's when recording;
the world is generated from the same seed both times, so its IDs and credentials match.
"""

from __future__ import annotations

import socket
from typing import Any

import cassette_support
import pytest
from cassette_support import Microsoft
from pytest_recording import network

from halo_integrator_core.paging import odata_pages, partner_center_pages
from halo_microsoft_csp.auth import GRAPH_RESOURCE, PARTNER_CENTER_RESOURCE

pytestmark = [
    pytest.mark.vcr,
    pytest.mark.block_network(allowed_hosts=["127.0.0.1", "localhost", "::1"]),
]


def played(vcr: Any, record_mode: str) -> None:
    if record_mode == "none":
        assert vcr.play_count > 0, "the cassette was not played"
        assert vcr.all_played, "part of the cassette was not played"


def test_graph_users_pages_with_an_app_only_token(microsoft: Microsoft, vcr, record_mode):
    customer = microsoft.consented()
    with microsoft.http() as http:
        headers = microsoft.tokens(http).headers(customer.tenant_id, GRAPH_RESOURCE)
        pages = list(
            odata_pages(
                http,
                f"{microsoft.endpoints.url('graph')}/v1.0/users",
                params={"$select": "id,userPrincipalName,accountEnabled", "$top": "5"},
                headers=headers,
            )
        )
    ids = [user["id"] for page in pages for user in page.items]
    assert len(pages) >= 3
    assert sorted(ids) == sorted(u.id for u in microsoft.world.live_users(customer))
    played(vcr, record_mode)


def test_a_users_delta_round_ends_with_a_delta_link(microsoft: Microsoft, vcr, record_mode):
    customer = microsoft.consented()
    with microsoft.http() as http:
        headers = microsoft.tokens(http).headers(customer.tenant_id, GRAPH_RESOURCE)
        pages = list(
            odata_pages(
                http,
                f"{microsoft.endpoints.url('graph')}/v1.0/users/delta",
                params={"$select": "id,displayName,accountEnabled"},
                headers=headers,
            )
        )
    assert pages[-1].delta_link and "deltatoken=" in pages[-1].delta_link.lower()
    assert pages[-1].delta_link.startswith(microsoft.endpoints.url("graph"))
    assert sum(len(p.items) for p in pages) == sum(1 for _ in microsoft.world.live_users(customer))
    played(vcr, record_mode)


def test_partner_center_customers_page_with_the_continuation_token(
    microsoft: Microsoft, vcr, record_mode
):
    with microsoft.http() as http:
        headers = microsoft.tokens(http, "partner_center_app").headers(
            microsoft.partner, PARTNER_CENTER_RESOURCE
        )
        pages = list(
            partner_center_pages(
                http,
                microsoft.endpoints.url("partner_center"),
                "/v1/customers",
                params={"size": 1},
                headers=headers,
            )
        )
    names = sorted(c["companyProfile"]["companyName"] for page in pages for c in page.items)
    assert len(pages) >= 2
    assert names == sorted(c.name for c in microsoft.world.customers.values() if c.reseller)
    played(vcr, record_mode)


def test_throttling_is_replayed_and_retried_after_retry_after(
    microsoft: Microsoft, vcr, record_mode
):
    customer = microsoft.consented()
    if microsoft.server is not None:
        microsoft.server.app.inject("throttle", endpoint="graph.*", times=1, retry_after=2)
    with microsoft.http() as http:
        headers = microsoft.tokens(http).headers(customer.tenant_id, GRAPH_RESOURCE)
        body = http.json(
            "GET", f"{microsoft.endpoints.url('graph')}/v1.0/organization", headers=headers
        )
    assert body["value"][0]["id"] == customer.tenant_id
    assert microsoft.sleeps == [2.0]
    played(vcr, record_mode)


def test_replay_blocks_every_network_connection_but_loopback(record_mode):
    if record_mode != "none":
        pytest.skip("recording talks to the emulator")
    assert socket.socket.connect is not network._original_connect, "the network is not blocked"
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(Exception, match=r"(?i)network"):
            probe.connect(("graph.microsoft.com", 443))
    finally:
        probe.close()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with socket.create_connection(listener.getsockname(), timeout=2):
            pass
    finally:
        listener.close()


def test_no_cassette_holds_a_secret_or_the_emulators_address():
    files = sorted(cassette_support.CASSETTES.rglob("*.yaml"))
    assert len(files) >= 4, "the cassettes are missing: record them (see this module's docstring)"
    for path in files:
        leaks = cassette_support.leaks_in(path.read_text(encoding="utf-8"))
        assert not leaks, f"{path.name} holds {leaks[:3]}"


def test_the_secret_scan_finds_what_it_looks_for():
    planted = [
        "Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9",
        '"access_token": "emu.abcdefghijklmnopqrstuvwxyz"',
        "client_secret=pc-secret-11-0-deadbeef&grant_type=client_credentials",
        "https://login.microsoftonline.com/cb?code=0.AQsAabc&state=x",
        "https://store.blob.core.windows.net/x.json.gz?sv=1&sig=AbCd",
        "uri: https://127.0.0.1:8443/graph/v1.0/users",
    ]
    for text in planted:
        assert cassette_support.leaks_in(text), text
    clean = 'client_secret=SCRUBBED&x=1 "access_token": "SCRUBBED" ?code=SCRUBBED&sig=SCRUBBED'
    assert cassette_support.leaks_in(clean) == []
