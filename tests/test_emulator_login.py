"""The emulated Entra ID login service, driven by the real MSAL client wherever MSAL is the client.

Every HTTP call passes ``verify=<the emulator's CA>`` itself: this machine sets
REQUESTS_CA_BUNDLE, which would override ``Session.verify``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msal
import pytest
import requests
from conformance import assert_conforms, load_sample
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from halo_microsoft_emulator.app import GRAPH, PARTNER_API, PARTNER_CENTER, AuthFailure
from halo_microsoft_emulator.login import FAULT_KINDS, fault_token_error

# MSAL recommends response_mode=form_post; these tests read the code from the query instead.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")

PC_SCOPE = f"{PARTNER_CENTER}/user_impersonation"
GRAPH_DEFAULT = f"{GRAPH}/.default"


class CaHttp:
    """MSAL's ``http_client``: a Session that passes the emulator's CA with each request."""

    def __init__(self, ca_bundle: str) -> None:
        self.session = requests.Session()
        self.verify = ca_bundle

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.get(url, verify=self.verify, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.post(url, verify=self.verify, **kwargs)

    def close(self) -> None:
        self.session.close()


# -- the world ---------------------------------------------------------------------------------


def partner(server):
    return next(iter(server.world.partners.values()))


def customer(server, *, gdap: str | None, consented: bool):
    return next(
        c
        for c in server.world.customers.values()
        if c.gdap_status == gdap and c.consented is consented
    )


def admin_upn(server) -> str:
    return f"admin@{partner(server).domain}"


# -- HTTP --------------------------------------------------------------------------------------


def confidential(server, client_id: str, secret: str, tenant: str, cache=None):
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=f"{server.endpoints()['login']}/{tenant}",
        instance_discovery=False,
        http_client=CaHttp(str(server.ca_bundle)),
        token_cache=cache,
    )


def get(server, url: str, **params: str) -> requests.Response:
    return requests.get(
        url, params=params or None, allow_redirects=False, verify=str(server.ca_bundle)
    )


def login_url(server, path: str) -> str:
    return f"{server.endpoints()['login']}{path}"


def raw_token(server, tenant: str, **form: str) -> requests.Response:
    return requests.post(
        login_url(server, f"/{tenant}/oauth2/v2.0/token"), data=form, verify=str(server.ca_bundle)
    )


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_in(server, app, scopes: list[str], redirect_uri: str, tenant: str, cache=None):
    """Run MSAL's auth code flow up to the redirect: (MSAL app, flow, auth response)."""
    client = confidential(server, app.client_id, app.secret, tenant, cache)
    flow = client.initiate_auth_code_flow(scopes=scopes, redirect_uri=redirect_uri)
    answer = get(server, flow["auth_uri"])
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(redirect_uri + "?"), location
    return client, flow, query(location)


def bearer(server, token: str, resource: str, **options: Any):
    """What `Emulator.authorize` (used by every API route) makes of ``token``."""
    environ = EnvironBuilder(path="/", headers={"Authorization": f"Bearer {token}"}).get_environ()
    return server.app.authorize(Request(environ), resource, **options)


def assert_entra_error(result: dict, error: str, code: int, *mentions: str) -> None:
    assert "access_token" not in result, result
    assert result["error"] == error, result
    assert result["error_codes"] == [code], result
    assert result["error_description"].startswith(f"AADSTS{code}: "), result
    for text in mentions:
        assert text in result["error_description"], (text, result["error_description"])


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_names_the_tenant_by_id_and_refuses_unknown_tenants(emulator):
    home = partner(emulator)
    by_domain = get(
        emulator, login_url(emulator, f"/{home.domain}/v2.0/.well-known/openid-configuration")
    )
    assert by_domain.status_code == 200
    document = by_domain.json()
    authority = login_url(emulator, f"/{home.tenant_id}")
    assert document["token_endpoint"] == f"{authority}/oauth2/v2.0/token"
    assert document["authorization_endpoint"] == f"{authority}/oauth2/v2.0/authorize"
    assert document["device_authorization_endpoint"] == f"{authority}/oauth2/v2.0/devicecode"
    assert document["end_session_endpoint"] == f"{authority}/oauth2/v2.0/logout"
    assert document["issuer"] == f"{authority}/v2.0"
    assert "code" in document["response_types_supported"]
    assert get(emulator, document["jwks_uri"]).json() == {"keys": []}

    organizations = get(
        emulator, login_url(emulator, "/organizations/v2.0/.well-known/openid-configuration")
    ).json()
    assert organizations["token_endpoint"] == login_url(
        emulator, "/organizations/oauth2/v2.0/token"
    )
    assert organizations["issuer"] == login_url(emulator, "/{tenantid}/v2.0")

    unknown = str(uuid.uuid4())
    refused = get(
        emulator, login_url(emulator, f"/{unknown}/v2.0/.well-known/openid-configuration")
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_tenant"
    assert refused.json()["error_codes"] == [90002]
    assert f"Tenant '{unknown}' not found" in refused.json()["error_description"]

    client = confidential(emulator, home.gdap_app.client_id, home.gdap_app.secret, home.domain)
    assert client.authority.token_endpoint == document["token_endpoint"]
    with pytest.raises(ValueError, match="Unable to get authority configuration") as refusal:
        confidential(emulator, home.gdap_app.client_id, home.gdap_app.secret, unknown)
    assert "AADSTS90002" in str(refusal.value.__context__)  # MSAL's discovery error, chained


# -- client credentials ------------------------------------------------------------------------


def test_msal_client_credentials_for_graph_in_a_consented_customer(emulator):
    gdap = partner(emulator).gdap_app
    target = customer(emulator, gdap="active", consented=True)
    client = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id)

    result = client.acquire_token_for_client([GRAPH_DEFAULT])
    assert result.get("token_type") == "Bearer", result
    assert result["token_source"] == "identity_provider"
    assert result["expires_in"] == 3599 and result["ext_expires_in"] == 3599
    assert "refresh_token" not in result and "id_token" not in result
    token = emulator.app.tokens.find(result["access_token"])
    assert token is not None and token.app_only
    assert (token.resource, token.tenant, token.client_id) == (
        GRAPH,
        target.tenant_id,
        gdap.client_id,
    )
    assert token.roles == tuple(gdap.permissions)

    assert bearer(emulator, result["access_token"], GRAPH) == token
    with pytest.raises(AuthFailure):
        bearer(emulator, result["access_token"], PARTNER_CENTER)
    with pytest.raises(AuthFailure):
        bearer(emulator, result["access_token"], GRAPH, delegated=True)
    assert client.acquire_token_for_client([GRAPH_DEFAULT])["token_source"] == "cache"


def test_msal_client_credentials_for_partner_center_in_the_partner_tenant(emulator):
    home = partner(emulator)
    app = home.partner_center_app
    client = confidential(emulator, app.client_id, app.secret, home.tenant_id)
    result = client.acquire_token_for_client([f"{PARTNER_CENTER}/.default"])
    token = emulator.app.tokens.find(result.get("access_token", ""))
    assert token is not None, result
    assert (token.resource, token.tenant, token.roles) == (
        PARTNER_CENTER,
        home.tenant_id,
        tuple(app.permissions),
    )
    assert bearer(emulator, result["access_token"], PARTNER_CENTER) == token


def test_msal_keeps_client_tokens_of_two_tenants_apart_in_one_cache(emulator):
    gdap = partner(emulator).gdap_app
    first, second = [c for c in emulator.world.customers.values() if c.consented][:2]
    cache = msal.TokenCache()
    for target in (first, second):
        client = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id, cache)
        result = client.acquire_token_for_client([GRAPH_DEFAULT])
        assert emulator.app.tokens.find(result["access_token"]).tenant == target.tenant_id


def test_client_credentials_refusals_reach_msal_as_entra_words_them(emulator):
    home = partner(emulator)
    gdap, pc = home.gdap_app, home.partner_center_app
    consented = customer(emulator, gdap="active", consented=True)
    unconsented = customer(emulator, gdap="active", consented=False)
    expired_gdap = customer(emulator, gdap="expired", consented=False)
    stranger = str(uuid.uuid4())
    cases = [
        # (client_id, secret, tenant, status, error, code, words in the description)
        (stranger, gdap.secret, consented.tenant_id, 400, "unauthorized_client", 700016, [stranger]),
        (gdap.client_id, "not-the-secret", consented.tenant_id, 401, "invalid_client", 7000215, [gdap.client_id]),
        (gdap.client_id, gdap.secret, unconsented.tenant_id, 401, "invalid_client", 7000229, [gdap.client_id, unconsented.tenant_id, "missing service principal"]),
        (gdap.client_id, gdap.secret, expired_gdap.tenant_id, 401, "invalid_client", 7000229, [expired_gdap.tenant_id]),
        (pc.client_id, pc.secret, consented.tenant_id, 400, "unauthorized_client", 700016, [pc.client_id, consented.name]),
    ]  # fmt: skip
    for client_id, secret, tenant, status, error, code, mentions in cases:
        result = confidential(emulator, client_id, secret, tenant).acquire_token_for_client(
            [GRAPH_DEFAULT]
        )
        assert_entra_error(result, error, code, *mentions)
        raw = raw_token(
            emulator,
            tenant,
            grant_type="client_credentials",
            client_id=client_id,
            client_secret=secret,
            scope=GRAPH_DEFAULT,
        )
        assert raw.status_code == status, (code, raw.text)

    with emulator.world.lock:
        gdap.secret_expired = True
    result = confidential(
        emulator, gdap.client_id, gdap.secret, consented.tenant_id
    ).acquire_token_for_client([GRAPH_DEFAULT])
    assert_entra_error(result, "invalid_client", 7000222, "expired", gdap.client_id)


def test_token_endpoint_protocol_errors(emulator):
    home = partner(emulator)
    gdap = home.gdap_app
    base = {"client_id": gdap.client_id, "client_secret": gdap.secret}

    def refused(tenant: str, status: int, error: str, code: int, **form: str) -> str:
        answer = raw_token(emulator, tenant, **{**base, **form})
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert (body["error"], body["error_codes"]) == (error, [code]), body
        assert body["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
        assert answer.headers["Cache-Control"] == "no-store, no-cache"
        return body["error_description"]

    tid = home.tenant_id
    assert "'password'" in refused(tid, 400, "unsupported_grant_type", 70003, grant_type="password")
    assert "'grant_type'" in refused(tid, 400, "invalid_request", 900144)
    assert "Tenant 'nowhere.example'" in refused(
        "nowhere.example", 400, "invalid_request", 90002, grant_type="client_credentials"
    )
    scope = f"{GRAPH}/User.Read.All"
    assert scope in refused(
        tid, 400, "invalid_scope", 70011, grant_type="client_credentials", scope=scope
    )
    refused(
        tid,
        400,
        "invalid_scope",
        70011,
        grant_type="client_credentials",
        scope="https://foo.microsoft.com/.default",
    )
    refused(
        tid,
        400,
        "invalid_scope",
        700022,
        grant_type="client_credentials",
        scope=f"{GRAPH_DEFAULT} {PARTNER_CENTER}/.default",
    )
    refused(
        "common",
        400,
        "invalid_request",
        9001023,
        grant_type="client_credentials",
        scope=GRAPH_DEFAULT,
    )
    refused(
        tid,
        401,
        "invalid_client",
        7000218,
        grant_type="client_credentials",
        scope=GRAPH_DEFAULT,
        client_secret="",
    )
    refused(tid, 400, "invalid_grant", 9002313, grant_type="refresh_token", refresh_token="junk")
    get_answer = get(emulator, login_url(emulator, f"/{tid}/oauth2/v2.0/token"))
    assert (get_answer.status_code, get_answer.json()["error_codes"]) == (400, [900561])
    # HTTP Basic client authentication (RFC 6749 section 2.3.1) is accepted too.
    basic = requests.post(
        login_url(emulator, f"/{tid}/oauth2/v2.0/token"),
        data={"grant_type": "client_credentials", "scope": GRAPH_DEFAULT},
        auth=(gdap.client_id, gdap.secret),
        verify=str(emulator.ca_bundle),
    )
    assert basic.status_code == 200, basic.text


# -- injected faults ---------------------------------------------------------------------------

FAULT_ANSWERS = {
    "aadsts7000229": ("invalid_client", 7000229),
    "aadsts700016": ("unauthorized_client", 700016),
    "aadsts7000222": ("invalid_client", 7000222),
    "aadsts7000215": ("invalid_client", 7000215),
    "aadsts50011": ("invalid_client", 50011),
    "aadsts65001": ("invalid_grant", 65001),
    "aadsts650057": ("invalid_client", 650057),
    "invalid_client": ("invalid_client", 70002),
}


def test_every_injected_token_fault_reaches_msal_and_matches_the_rule_based_error(emulator):
    assert set(FAULT_ANSWERS) == set(FAULT_KINDS)
    gdap = partner(emulator).gdap_app
    target = customer(emulator, gdap="active", consented=True)
    for kind, (error, code) in FAULT_ANSWERS.items():
        emulator.app.inject(kind, endpoint="login.token", times=1)
        client = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id)
        assert_entra_error(client.acquire_token_for_client([GRAPH_DEFAULT]), error, code)
    fresh = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id)
    assert "access_token" in fresh.acquire_token_for_client([GRAPH_DEFAULT])

    # A fault answers exactly as the rule it stands for: status, error, code and wording.
    unconsented = customer(emulator, gdap="active", consented=False)
    rules = {
        "aadsts7000215": (target.tenant_id, gdap.client_id, "wrong"),
        "aadsts7000229": (unconsented.tenant_id, gdap.client_id, gdap.secret),
        "aadsts700016": (target.tenant_id, str(uuid.uuid4()), gdap.secret),
    }
    for kind, (tenant, client_id, secret) in rules.items():
        form = {"grant_type": "client_credentials", "scope": GRAPH_DEFAULT}
        rule = raw_token(emulator, tenant, client_id=client_id, client_secret=secret, **form)
        emulator.app.inject(kind, endpoint="login.token", times=1)
        fault = raw_token(
            emulator, tenant, client_id=gdap.client_id, client_secret=gdap.secret, **form
        )
        assert rule.status_code == fault.status_code
        rule_body, fault_body = rule.json(), fault.json()
        assert (rule_body["error"], rule_body["error_codes"]) == (
            fault_body["error"],
            fault_body["error_codes"],
        )
        template = fault_body["error_description"].split("\r\n")[0]
        pattern = re.sub(
            r"<\w+>", ".+", re.escape(template).replace(r"\<", "<").replace(r"\>", ">")
        )
        assert re.fullmatch(pattern, rule_body["error_description"].split("\r\n")[0]), (
            template,
            rule_body,
        )


def test_unknown_fault_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"aadsts12345.*aadsts7000229.*invalid_client"):
        fault_token_error("aadsts12345")
    assert fault_token_error("AADSTS65001").status_code == 400
    assert json.loads(fault_token_error("aadsts65001").get_data())["suberror"] == "consent_required"


# -- authorization code with PKCE, and refresh -------------------------------------------------


def test_msal_auth_code_flow_with_pkce_then_silent_token_for_another_resource(emulator):
    home = partner(emulator)
    app = home.partner_center_app
    redirect_uri = app.redirect_uris[1]
    client, flow, response = sign_in(emulator, app, [PC_SCOPE], redirect_uri, home.tenant_id)
    assert {"code", "state", "session_state"} <= set(response)
    assert response["state"] == flow["state"]

    result = client.acquire_token_by_auth_code_flow(flow, response)
    assert "access_token" in result, result
    claims = result["id_token_claims"]
    assert claims["aud"] == app.client_id and claims["tid"] == home.tenant_id
    assert claims["ver"] == "2.0" and claims["preferred_username"] == admin_upn(emulator)
    assert claims["iss"] == login_url(emulator, f"/{home.tenant_id}/v2.0")
    assert claims["exp"] > claims["iat"] and claims["nbf"] <= claims["iat"]
    assert claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()  # echoed as sent
    info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert info == {"uid": claims["oid"], "utid": home.tenant_id}
    assert PC_SCOPE in result["scope"].split()
    token = emulator.app.tokens.find(result["access_token"])
    assert token is not None and not token.app_only
    assert (token.resource, token.tenant, token.user, token.scopes) == (
        PARTNER_CENTER,
        home.tenant_id,
        claims["oid"],
        (PC_SCOPE,),
    )
    assert bearer(emulator, result["access_token"], PARTNER_CENTER, delegated=True) == token

    [account] = client.get_accounts()
    assert account["username"] == admin_upn(emulator)
    other = client.acquire_token_silent([f"{PARTNER_API}/user_impersonation"], account=account)
    assert other is not None and other["token_source"] == "identity_provider", other
    assert other["refresh_token"] != result["refresh_token"]  # rotated
    second = emulator.app.tokens.find(other["access_token"])
    assert (second.resource, second.user) == (PARTNER_API, token.user)
    assert ("POST", f"/login/{home.tenant_id}/oauth2/v2.0/token", 200) in emulator.app.requests
    again = client.acquire_token_silent([PC_SCOPE], account=account)
    assert again["token_source"] == "cache"


def test_codes_are_bound_to_pkce_and_redirect_single_use_and_short_lived(emulator):
    home = partner(emulator)
    app = home.partner_center_app
    first, second = app.redirect_uris[:2]

    client, flow, response = sign_in(emulator, app, [PC_SCOPE], first, home.tenant_id)
    wrong = client.acquire_token_by_auth_code_flow({**flow, "code_verifier": "x" * 43}, response)
    assert_entra_error(wrong, "invalid_grant", 501481, "Code_Verifier")
    assert "access_token" in client.acquire_token_by_auth_code_flow(flow, response)
    replay = client.acquire_token_by_auth_code_flow(flow, response)
    assert_entra_error(replay, "invalid_grant", 54005, "already redeemed")

    client, flow, response = sign_in(emulator, app, [PC_SCOPE], first, home.tenant_id)
    moved = client.acquire_token_by_auth_code_flow({**flow, "redirect_uri": second}, response)
    assert_entra_error(moved, "invalid_client", 50011, second, app.client_id)

    client, flow, response = sign_in(emulator, app, [PC_SCOPE], first, home.tenant_id)
    emulator.app.state["login"]["codes"][response["code"]]["expires"] = 0
    stale = client.acquire_token_by_auth_code_flow(flow, response)
    assert_entra_error(stale, "invalid_grant", 70008, "expired")


def test_authorize_shows_errors_it_cannot_redirect_and_redirects_the_rest(emulator):
    home = partner(emulator)
    app = home.partner_center_app
    verifier, challenge = pkce()
    good = {
        "client_id": app.client_id,
        "response_type": "code",
        "redirect_uri": app.redirect_uris[0],
        "scope": f"{PC_SCOPE} openid offline_access",
        "state": "12345",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    url = login_url(emulator, f"/{home.tenant_id}/oauth2/v2.0/authorize")

    def page(answer: requests.Response, code: int) -> None:
        assert answer.status_code == 400 and "Location" not in answer.headers
        assert answer.headers["Content-Type"].startswith("text/html")
        assert f"AADSTS{code}:" in answer.text

    evil = "https://evil.example/callback"
    page(get(emulator, url, **{**good, "redirect_uri": evil}), 50011)
    assert evil in get(emulator, url, **{**good, "redirect_uri": evil}).text
    page(get(emulator, url, **{**good, "client_id": str(uuid.uuid4())}), 700016)
    single_tenant_elsewhere = login_url(
        emulator,
        f"/{customer(emulator, gdap='active', consented=True).tenant_id}/oauth2/v2.0/authorize",
    )
    page(get(emulator, single_tenant_elsewhere, **good), 700016)

    def redirected(answer: requests.Response, error: str, code: int) -> None:
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith(app.redirect_uris[0] + "?")
        params = query(answer.headers["Location"])
        assert params["error"] == error and params["state"] == "12345", params
        assert params["error_description"].startswith(f"AADSTS{code}: "), params

    no_pkce = {k: v for k, v in good.items() if not k.startswith("code_challenge")}
    redirected(get(emulator, url, **no_pkce), "invalid_request", 900144)
    redirected(
        get(emulator, url, **{**good, "code_challenge_method": "plain"}), "invalid_request", 90100
    )
    redirected(
        get(emulator, url, **{**good, "response_type": "token"}), "unsupported_response_type", 70005
    )

    gdap = home.gdap_app
    unconsented = customer(emulator, gdap="active", consented=False)
    answer = get(
        emulator,
        login_url(emulator, f"/{unconsented.tenant_id}/oauth2/v2.0/authorize"),
        **{**good, "client_id": gdap.client_id, "redirect_uri": gdap.redirect_uris[0]},
    )
    assert query(answer.headers["Location"])["error"] == "consent_required"

    ok = get(emulator, url, **{**good, "client_info": "1", "response_mode": "fragment"})
    fragment = parse_qs(urlsplit(ok.headers["Location"]).fragment)
    assert set(fragment) == {"code", "client_info", "state", "session_state"}
    redeemed = raw_token(
        emulator,
        home.tenant_id,
        grant_type="authorization_code",
        client_id=app.client_id,
        client_secret=app.secret,
        code=fragment["code"][0],
        redirect_uri=app.redirect_uris[0],
        code_verifier=verifier,
        scope=PC_SCOPE,
    )
    assert redeemed.status_code == 200, redeemed.text


def test_one_refresh_token_reaches_customers_as_in_the_secure_application_model(emulator):
    home = partner(emulator)
    gdap = home.gdap_app
    _, flow, response = sign_in(emulator, gdap, [PC_SCOPE], gdap.redirect_uris[0], home.tenant_id)
    client = confidential(emulator, gdap.client_id, gdap.secret, home.tenant_id)
    signed_in = client.acquire_token_by_auth_code_flow(flow, response)
    refresh = signed_in["refresh_token"]

    reachable = customer(emulator, gdap="active", consented=True)
    in_customer = confidential(emulator, gdap.client_id, gdap.secret, reachable.tenant_id)
    result = in_customer.acquire_token_by_refresh_token(refresh, [GRAPH_DEFAULT])
    token = emulator.app.tokens.find(result.get("access_token", ""))
    assert token is not None, result
    assert (token.resource, token.tenant, token.user) == (
        GRAPH,
        reachable.tenant_id,
        signed_in["id_token_claims"]["oid"],
    )
    assert token.roles == () and not token.app_only
    assert result["refresh_token"] != refresh
    # The old refresh token is not revoked by use (v2-oauth2-auth-code-flow.md).
    assert "access_token" in client.acquire_token_by_refresh_token(refresh, [PC_SCOPE])

    unconsented = customer(emulator, gdap="active", consented=False)
    denied = confidential(
        emulator, gdap.client_id, gdap.secret, unconsented.tenant_id
    ).acquire_token_by_refresh_token(refresh, [GRAPH_DEFAULT])
    assert_entra_error(denied, "invalid_grant", 65001, gdap.client_id)
    assert denied["suberror"] == "consent_required"

    expired = customer(emulator, gdap="expired", consented=False)
    lapsed = confidential(
        emulator, gdap.client_id, gdap.secret, expired.tenant_id
    ).acquire_token_by_refresh_token(refresh, [GRAPH_DEFAULT])
    assert_entra_error(lapsed, "invalid_grant", 50020, admin_upn(emulator), expired.name)

    pc = home.partner_center_app
    borrowed = confidential(
        emulator, pc.client_id, pc.secret, home.tenant_id
    ).acquire_token_by_refresh_token(refresh, [PC_SCOPE])
    assert_entra_error(borrowed, "invalid_grant", 70000)


# -- admin consent -----------------------------------------------------------------------------


def test_admin_consent_v1_gives_the_service_principal_then_client_credentials_work(emulator):
    gdap = partner(emulator).gdap_app
    target = customer(emulator, gdap="active", consented=False)
    before = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id)
    assert_entra_error(before.acquire_token_for_client([GRAPH_DEFAULT]), "invalid_client", 7000229)

    redirect_uri = gdap.redirect_uris[0]
    answer = get(
        emulator,
        login_url(emulator, f"/{target.tenant_id}/adminconsent"),
        client_id=gdap.client_id,
        redirect_uri=redirect_uri,
        state="12345",
    )
    assert answer.status_code == 302
    expected = f"{redirect_uri}?admin_consent=True&tenant={target.tenant_id}&state=12345#"
    assert answer.headers["Location"] == expected
    assert target.consented is True

    after = confidential(emulator, gdap.client_id, gdap.secret, target.tenant_id)
    token = emulator.app.tokens.find(
        after.acquire_token_for_client([GRAPH_DEFAULT])["access_token"]
    )
    assert (token.tenant, token.roles) == (target.tenant_id, tuple(gdap.permissions))


def test_admin_consent_v2_by_domain_answers_the_tenant_id_and_scope(emulator):
    gdap = partner(emulator).gdap_app
    target = customer(emulator, gdap="active", consented=False)
    redirect_uri = gdap.redirect_uris[1]
    answer = get(
        emulator,
        login_url(emulator, f"/{target.domain}/v2.0/adminconsent"),
        client_id=gdap.client_id,
        scope=GRAPH_DEFAULT,
        redirect_uri=redirect_uri,
        state="12345",
    )
    assert answer.status_code == 302
    expected = urlencode(
        {
            "admin_consent": "True",
            "tenant": target.tenant_id,
            "scope": GRAPH_DEFAULT,
            "state": "12345",
        }
    )
    assert answer.headers["Location"] == f"{redirect_uri}?{expected}"
    assert target.consented is True
    after = confidential(emulator, gdap.client_id, gdap.secret, target.domain)
    assert "access_token" in after.acquire_token_for_client([GRAPH_DEFAULT])


def test_admin_consent_errors_redirect_with_admin_consent_true(emulator):
    gdap = partner(emulator).gdap_app
    target = customer(emulator, gdap="active", consented=False)
    expired = customer(emulator, gdap="expired", consented=False)
    redirect_uri = gdap.redirect_uris[0]
    consent = {"client_id": gdap.client_id, "redirect_uri": redirect_uri, "state": "12345"}

    def failed(path: str, error: str, code: int, **extra: str) -> None:
        answer = get(emulator, login_url(emulator, path), **{**consent, **extra})
        assert answer.status_code == 302, answer.text
        location = answer.headers["Location"]
        assert location.startswith(
            f"{redirect_uri}?admin_consent=True&error={error}&error_description=AADSTS{code}"
        )
        params = query(location)
        assert params["state"] == "12345" and "tenant" not in params
        assert "\r\nTrace ID: " in params["error_description"]

    failed(f"/{target.tenant_id}/v2.0/adminconsent", "invalid_request", 900144)  # no scope
    failed("/common/v2.0/adminconsent", "invalid_request", 90130, scope=GRAPH_DEFAULT)
    failed(f"/{expired.tenant_id}/adminconsent", "access_denied", 50020)
    emulator.app.state["login"]["deny_consent"] = True
    failed(f"/{target.tenant_id}/v2.0/adminconsent", "consent_required", 65004, scope=GRAPH_DEFAULT)
    assert target.consented is False and expired.consented is False

    shown = get(
        emulator,
        login_url(emulator, f"/{target.tenant_id}/adminconsent"),
        **{**consent, "redirect_uri": "https://evil.example/"},
    )
    assert shown.status_code == 400 and "Location" not in shown.headers
    assert "AADSTS50011:" in shown.text


# -- Microsoft's documented samples ------------------------------------------------------------


def test_responses_conform_to_microsoft_doc_samples(emulator):
    home = partner(emulator)
    gdap, pc = home.gdap_app, home.partner_center_app
    tid = home.tenant_id

    credentials = raw_token(
        emulator,
        tid,
        grant_type="client_credentials",
        client_id=gdap.client_id,
        client_secret=gdap.secret,
        scope=GRAPH_DEFAULT,
    )
    assert_conforms(load_sample("login", "client_credentials_token"), credentials.json())

    verifier, challenge = pkce()
    authorized = get(
        emulator,
        login_url(emulator, f"/{tid}/oauth2/v2.0/authorize"),
        client_id=pc.client_id,
        response_type="code",
        redirect_uri=pc.redirect_uris[0],
        scope=f"{PC_SCOPE} openid profile offline_access",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    form = {"client_id": pc.client_id, "client_secret": pc.secret, "scope": PC_SCOPE}
    code = query(authorized.headers["Location"])["code"]
    redeemed = raw_token(
        emulator,
        tid,
        grant_type="authorization_code",
        code=code,
        redirect_uri=pc.redirect_uris[0],
        code_verifier=verifier,
        **form,
    ).json()
    assert_conforms(load_sample("login", "auth_code_token"), redeemed)
    assert redeemed["scope"] == f"{PC_SCOPE} openid profile"
    header = json.loads(base64.urlsafe_b64decode(redeemed["id_token"].split(".")[0] + "=="))
    assert header == {"typ": "JWT", "alg": "none"}

    refreshed = raw_token(
        emulator, tid, grant_type="refresh_token", refresh_token=redeemed["refresh_token"], **form
    )
    assert_conforms(load_sample("login", "refresh_token_token"), refreshed.json())

    error = raw_token(
        emulator,
        tid,
        grant_type="client_credentials",
        client_id=gdap.client_id,
        client_secret=gdap.secret,
        scope="https://example.contoso.com/activity.read",
    )
    assert error.status_code == 400
    assert_conforms(load_sample("login", "token_error"), error.json())

    discovery = get(emulator, login_url(emulator, "/common/v2.0/.well-known/openid-configuration"))
    assert_conforms(load_sample("login", "openid_configuration"), discovery.json())
