"""The Partner Center (App+User) authorization of a connection against the emulator.

MSAL runs for real; the test plays the browser: it opens the sign-in URL with requests
(the emulator signs in at once and redirects with a code) and hands the redirect's query to
`DelegatedTokens.complete`. Every request passes the emulator's CA as ``verify``.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from halo_integrator_core.config import EndpointSettings, Guid, HttpsUrl, SecretRef
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp import errors as csp_errors
from halo_microsoft_csp.auth import (
    PARTNER_API_RESOURCE,
    PARTNER_CENTER_RESOURCE,
)
from halo_microsoft_csp.delegated import (
    PARTNER_CENTER_SCOPE,
    AuthorizationFailed,
    DelegatedTokens,
    NotAuthorized,
    SecretUnreadable,
    cache_file,
    delegated_scope,
)
from halo_microsoft_csp.settings import AppRegistration, Connection

REDIRECT_URI = "http://localhost:8400/auth/callback"  # registered on the emulated apps


@pytest.fixture
def partner(emulator):
    return next(iter(emulator.world.partners.values()))


@pytest.fixture
def connection(partner, monkeypatch) -> Connection:
    monkeypatch.setenv("TEST_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("TEST_GDAP_SECRET", partner.gdap_app.secret)
    return Connection(
        name="main",
        tenant_id=Guid.parse(partner.tenant_id),
        partner_center_app=AppRegistration(
            client_id=Guid.parse(partner.partner_center_app.client_id),
            client_secret=SecretRef(env="TEST_PC_SECRET"),
        ),
        gdap_app=AppRegistration(
            client_id=Guid.parse(partner.gdap_app.client_id),
            client_secret=SecretRef(env="TEST_GDAP_SECRET"),
        ),
    )


@pytest.fixture
def endpoints(emulator) -> EndpointSettings:
    found = emulator.endpoints()
    return EndpointSettings(
        login=HttpsUrl.parse(found["login"]),
        graph=HttpsUrl.parse(found["graph"]),
        partner_center=HttpsUrl.parse(found["partner_center"]),
        partner_api=HttpsUrl.parse(found["partner_api"]),
        ca_bundle=Path(found["ca_bundle"]),
    )


@pytest.fixture
def http(emulator):
    with HttpClient(verify=str(emulator.ca_bundle), sleep=lambda _: None) as client:
        yield client


@pytest.fixture
def make_tokens(connection, endpoints, http, tmp_path):
    """A new `DelegatedTokens` on the same state folder: another process, as far as it knows."""

    def make(conn: Connection = connection) -> DelegatedTokens:
        return DelegatedTokens(conn, endpoints, http, tmp_path)

    return make


def sign_in(emulator, tokens: DelegatedTokens) -> tuple[dict, dict[str, str]]:
    """Start the flow and play the browser up to the redirect: (flow, redirect query)."""
    flow = tokens.begin(REDIRECT_URI)
    answer = requests.get(flow["auth_uri"], allow_redirects=False, verify=str(emulator.ca_bundle))
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    return flow, dict(parse_qsl(urlsplit(location).query))


def authorize(emulator, tokens: DelegatedTokens):
    flow, query = sign_in(emulator, tokens)
    return tokens.complete(flow, query)


def token_posts(emulator) -> int:
    return sum(
        1
        for method, path, _ in emulator.app.requests
        if method == "POST" and path.endswith("/oauth2/v2.0/token")
    )


def expire_cached_access_tokens(path: Path) -> None:
    """Make the cached access tokens look expired, as an hour later."""
    data = json.loads(path.read_text())
    for entry in data.get("AccessToken", {}).values():
        entry["expires_on"] = entry["extended_expires_on"] = str(int(time.time()) - 60)
    path.write_text(json.dumps(data))


def test_authorize_persists_a_private_cache_that_a_new_process_uses_silently(
    emulator, partner, make_tokens, tmp_path
):
    tokens = make_tokens()
    assert tokens.status() == (False, None, None)
    assert not tokens.path.exists()

    status = authorize(emulator, tokens)
    assert status.authorized and status.username == f"admin@{partner.domain}"
    assert status.expires_at is not None and status.expires_at.timestamp() > time.time() + 3000
    assert tokens.path == cache_file(tmp_path, "main") == tmp_path / "tokens" / "main.json"
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.path.parent.stat().st_mode) == 0o700
    assert not [p for p in tokens.path.parent.iterdir() if p != tokens.path]  # no temp files left

    posts = token_posts(emulator)
    again = make_tokens()  # a new process: everything it knows comes from the file
    assert again.status() == status
    token = again.token()
    assert token_posts(emulator) == posts  # from the cache, no request
    issued = emulator.app.tokens.find(token)
    assert issued is not None and not issued.app_only
    assert (issued.resource, issued.tenant, issued.scopes) == (
        PARTNER_CENTER_RESOURCE,
        partner.tenant_id,
        (PARTNER_CENTER_SCOPE,),
    )
    assert again.headers() == {"Authorization": f"Bearer {token}"}

    # Another resource comes from the refresh token, silently.
    other = again.token(PARTNER_API_RESOURCE)
    assert emulator.app.tokens.find(other).resource == PARTNER_API_RESOURCE
    assert token_posts(emulator) == posts + 1


def test_an_expired_access_token_is_renewed_with_the_refresh_token(emulator, make_tokens):
    tokens = make_tokens()
    authorize(emulator, tokens)
    old = tokens.token()
    emulator.app.tokens.expire_all()  # the service no longer takes it ...
    expire_cached_access_tokens(tokens.path)  # ... and an hour has passed

    posts = token_posts(emulator)
    later = make_tokens()
    assert later.status().expires_at.timestamp() < time.time()
    new = later.token()
    assert new != old
    assert emulator.app.tokens.find(old) is None
    assert emulator.app.tokens.find(new).resource == PARTNER_CENTER_RESOURCE
    assert token_posts(emulator) == posts + 1
    assert not any("/authorize" in path for _, path, _ in emulator.app.requests[-3:])
    # The renewed token (and the rotated refresh token) were written back.
    assert later.status().expires_at.timestamp() > time.time() + 3000
    assert make_tokens().token() == new

    # A token the service refused (401) is replaced on demand even if not yet expired.
    forced = later.token(force_refresh=True)
    assert forced != new and emulator.app.tokens.find(forced) is not None


def test_the_cache_is_written_only_when_it_changed(emulator, make_tokens):
    tokens = make_tokens()
    authorize(emulator, tokens)
    before = tokens.path.stat().st_mtime_ns
    time.sleep(0.01)
    tokens.token()
    tokens.status()
    assert tokens.path.stat().st_mtime_ns == before


def test_an_authorization_made_elsewhere_is_picked_up_and_a_disconnect_too(emulator, make_tokens):
    daemon = make_tokens()
    with pytest.raises(NotAuthorized):
        daemon.token()
    authorize(emulator, make_tokens())  # the command line, meanwhile
    assert daemon.status().authorized
    assert emulator.app.tokens.find(daemon.token()) is not None
    make_tokens().disconnect()
    assert not daemon.status().authorized
    with pytest.raises(NotAuthorized):
        daemon.token()


def test_disconnect_removes_the_account_and_the_file(emulator, make_tokens):
    tokens = make_tokens()
    authorize(emulator, tokens)
    assert tokens.disconnect() is True
    assert not tokens.path.exists()
    assert tokens.status() == (False, None, None)
    with pytest.raises(NotAuthorized) as caught:
        tokens.token()
    message = str(caught.value)
    assert "run `halo-integrator csp authorize main`" in message
    assert tokens.tenant_id in message and tokens.client_id in message
    assert make_tokens().disconnect() is False  # nothing left to remove


@pytest.mark.parametrize("damage", [b"{not json", b"[]", b"\xff\xfe", b'{"AccessToken": '], ids=str)
def test_a_damaged_cache_file_is_set_aside_and_means_authorize_again(emulator, make_tokens, damage):
    tokens = make_tokens()
    authorize(emulator, tokens)
    tokens.path.write_bytes(damage)
    again = make_tokens()
    assert again.status() == (False, None, None)  # no traceback: not authorized
    aside = tokens.path.with_name("main.json.damaged")
    assert aside.read_bytes() == damage and not tokens.path.exists()  # kept, for a look
    with pytest.raises(NotAuthorized) as caught:
        again.token()
    message = str(caught.value)
    assert f"damaged and was moved to {aside}" in message
    assert "run `halo-integrator csp authorize main`" in message
    # Signing in again writes a good file, and the damage is forgotten.
    assert authorize(emulator, again).authorized
    assert again.damaged is None and make_tokens().token()


def test_the_partner_tenants_discovery_is_kept_for_the_runs_after_authorize(
    emulator, connection, endpoints, http, tmp_path
):
    def discoveries() -> int:
        return sum(
            1 for method, path, _ in emulator.app.requests if path.endswith("openid-configuration")
        )

    def kept() -> DelegatedTokens:  # a process of its own, reading the connection's cache
        return DelegatedTokens.keeping_discovery(connection, endpoints, http, tmp_path)

    authorize(emulator, kept())
    before = discoveries()
    expire_cached_access_tokens(cache_file(tmp_path, "main"))
    assert kept().token()  # refreshed: a token request, no discovery
    assert discoveries() == before
    DelegatedTokens(connection, endpoints, http, tmp_path).token()  # without the cache
    assert discoveries() == before + 1


def test_a_refused_refresh_token_means_authorize_again(emulator, make_tokens):
    tokens = make_tokens()
    authorize(emulator, tokens)
    for grant in emulator.app.tokens.refresh.values():
        grant["revoked"] = True
    expire_cached_access_tokens(tokens.path)
    with pytest.raises(NotAuthorized) as caught:
        make_tokens().token()
    assert caught.value.code == "AADSTS700082"
    assert "csp authorize main" in str(caught.value)


def test_a_wrong_secret_is_a_typed_error_naming_connection_tenant_and_app(
    emulator, make_tokens, monkeypatch
):
    monkeypatch.setenv("TEST_PC_SECRET", "not-the-secret")
    tokens = make_tokens()
    flow, query = sign_in(emulator, tokens)
    with pytest.raises(csp_errors.SecretInvalid) as caught:
        tokens.complete(flow, query)
    message = str(caught.value)
    assert caught.value.code == "AADSTS7000215"
    assert tokens.tenant_id in message and tokens.client_id in message and "'main'" in message
    assert "not-the-secret" not in message
    assert not tokens.path.exists() and not tokens.status().authorized


def test_an_unreadable_secret_is_reported_and_status_needs_no_secret(
    emulator, make_tokens, monkeypatch
):
    tokens = make_tokens()
    authorize(emulator, tokens)
    monkeypatch.delenv("TEST_PC_SECRET")
    later = make_tokens()
    assert later.status().authorized  # offline, without the secret
    with pytest.raises(SecretUnreadable, match="TEST_PC_SECRET is not set"):
        later.token()


def test_an_answer_of_another_flow_or_an_error_answer_is_refused(emulator, make_tokens):
    tokens = make_tokens()
    flow, query = sign_in(emulator, tokens)
    with pytest.raises(AuthorizationFailed, match="csp authorize main"):
        tokens.complete(flow, {**query, "state": "forged"})
    refused = {
        "state": flow["state"],
        "error": "consent_required",
        "error_description": "AADSTS65001: The user or administrator has not consented.\r\nTrace ID: x",
    }
    with pytest.raises(csp_errors.ConsentRequired) as caught:
        tokens.complete(flow, refused)
    assert "Trace ID" not in str(caught.value)
    assert not tokens.status().authorized


def test_scopes_and_cache_file_names():
    assert delegated_scope(PARTNER_CENTER_RESOURCE) == (
        "https://api.partnercenter.microsoft.com/user_impersonation"
    )
    assert delegated_scope("https://api.partner.microsoft.com/") == (
        "https://api.partner.microsoft.com/user_impersonation"
    )
    assert delegated_scope("https://graph.microsoft.com") == "https://graph.microsoft.com/.default"
    assert cache_file(Path("/s"), "a/b c") == Path("/s/tokens/a_b_c.json")
