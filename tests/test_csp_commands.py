"""`halo-integrator csp ...` against the emulator, and the `register_commands` hook.

The commands run through click's CliRunner on a copy of the command line with the plugins'
commands added as `main()` adds them. The browser is played by a stand-in for
`webbrowser.open`: it opens the sign-in or consent URL with requests (the emulator answers
at once with a redirect) and follows the redirect to the command's loopback endpoint.
"""

from __future__ import annotations

import copy
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import click
import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.config import EndpointSettings, HttpsUrl
from halo_integrator_core.http import HttpClient
from halo_integrator_core.store import Store, schema
from halo_microsoft_csp import errors as csp_errors
from halo_microsoft_csp.auth import GRAPH_RESOURCE, AppTokens
from halo_microsoft_csp.callbacks import CallbackApp, RedirectUriError, loopback_address
from halo_microsoft_csp.consent import (
    ConsentResult,
    consent_url,
    parse_consent_callback,
    record_consent,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Setup:
    """A config pointing at the emulator, with one connection, and redirect URIs of a free port."""

    def __init__(self, emulator, tmp_path: Path, monkeypatch) -> None:
        self.emulator = emulator
        self.partner = next(iter(emulator.world.partners.values()))
        port = free_port()
        self.auth_uri = f"http://127.0.0.1:{port}/auth/callback"
        self.consent_uri = f"http://127.0.0.1:{port}/consent/callback"
        with emulator.world.lock:
            self.partner.partner_center_app.redirect_uris.append(self.auth_uri)
            self.partner.gdap_app.redirect_uris.append(self.consent_uri)
        monkeypatch.setenv("TEST_PC_SECRET", self.partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", self.partner.gdap_app.secret)
        self.monkeypatch = monkeypatch
        self.dir = tmp_path
        self.pages: list[requests.Response] = []
        self.path = self.write()

    def write(self, *, enabled: bool = True, connections: int = 1) -> Path:
        e = self.emulator.endpoints()
        p = self.partner
        text = f"""
[endpoints]
login = "{e["login"]}"
graph = "{e["graph"]}"
partner_center = "{e["partner_center"]}"
partner_api = "{e["partner_api"]}"
ca_bundle = "{e["ca_bundle"]}"

[modules.microsoft_csp]
enabled = {"true" if enabled else "false"}
"""
        for index in range(connections):
            text += f"""
[[modules.microsoft_csp.connections]]
name = "{"main" if index == 0 else f"other{index}"}"
tenant_id = "{p.tenant_id}"
partner_center_app = {{ client_id = "{p.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{p.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
"""
        path = self.dir / "halo-integrator.toml"
        path.write_text(text, encoding="utf-8")
        return path

    # -- the command line ----------------------------------------------------------------

    def cli(self) -> click.Group:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str) -> Any:
        result = CliRunner().invoke(self.cli(), ["--config", str(self.path), *args])
        assert "Traceback" not in result.output, result.output
        return result

    # -- the browser ---------------------------------------------------------------------

    def browser(self, url: str) -> bool:
        """Open ``url`` at the emulator and follow its redirect to the loopback endpoint."""
        answer = requests.get(url, allow_redirects=False, verify=str(self.emulator.ca_bundle))
        assert answer.status_code == 302, answer.text
        with requests.Session() as local:
            local.trust_env = False  # straight to loopback, whatever proxy is set
            self.pages.append(local.get(answer.headers["Location"], timeout=10))
        return True

    def use_browser(self) -> None:
        self.monkeypatch.setattr("webbrowser.open", self.browser)

    def store(self) -> Store:
        return Store.open(f"sqlite:///{self.dir / 'halo-integrator.db'}")

    def requests_logged(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            with store.read() as db:
                return [dict(r._mapping) for r in db.execute(sa.select(schema.request_log))]
        finally:
            store.close()

    def customer(self, *, consented: bool):
        return next(
            c
            for c in self.emulator.world.customers.values()
            if c.gdap_status == "active" and c.consented is consented
        )

    def gdap_tokens(self, http: HttpClient) -> AppTokens:
        app = self.partner.gdap_app
        return AppTokens(
            client_id=app.client_id,
            secret=lambda: app.secret,
            authority=self.emulator.endpoints()["login"],
            http=http,
            app_name=app.name,
        )


@pytest.fixture
def setup(emulator, tmp_path, monkeypatch) -> Setup:
    return Setup(emulator, tmp_path, monkeypatch)


# -- the hook -------------------------------------------------------------------------------


def test_hook_register_commands_adds_csp_only_while_the_module_is_enabled(setup):
    assert "csp" in setup.cli().commands
    assert set(setup.cli().commands["csp"].commands) == {
        "authorize",
        "status",
        "disconnect",
        "tenants",
        "map",
        "consent-url",
        "consent",
        "site-mappings",
        "licence",
        "subscription",
        "webhooks",
    }
    assert "csp" not in cli.commands  # the shared group was left alone

    setup.path = setup.write(enabled=False)
    assert "csp" not in setup.cli().commands
    result = CliRunner().invoke(setup.cli(), ["--config", str(setup.path), "csp", "status"])
    assert result.exit_code == 2 and "No such command 'csp'" in result.output


def test_hook_register_commands_finds_the_config_as_the_group_does(setup, monkeypatch):
    def has_csp(args: list[str]) -> bool:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, args)
        return "csp" in group.commands

    assert has_csp([f"--config={setup.path}", "csp", "status"])
    assert has_csp(["--log-level", "debug", "--config", str(setup.path), "csp"])
    assert not has_csp(["--config", str(setup.dir / "missing.toml"), "csp"])
    monkeypatch.setenv("HALO_INTEGRATOR_CONFIG", str(setup.path))
    assert has_csp(["csp", "status"])
    monkeypatch.chdir(setup.dir)
    monkeypatch.delenv("HALO_INTEGRATOR_CONFIG")
    assert has_csp(["csp"])  # ./halo-integrator.toml
    # A broken file still offers the enabled module's commands; running one reports it.
    setup.path.write_text(setup.path.read_text() + "\n[store]\nbogus = 1\n")
    assert has_csp(["csp"])
    result = setup.run("csp", "status")
    assert result.exit_code == 2 and "store.bogus: unknown key" in result.output


# -- authorize, status, disconnect ----------------------------------------------------------


def test_authorize_end_to_end_then_status_and_disconnect(setup):
    setup.use_browser()
    result = setup.run("csp", "authorize", "main", "--redirect-uri", setup.auth_uri)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert setup.auth_uri in out
    assert "/oauth2/v2.0/authorize?" in out and "code_challenge=" in out
    username = f"admin@{setup.partner.domain}"
    assert f"connection main: authorized as {username}; access token valid until " in out
    [page] = setup.pages
    assert page.status_code == 200 and "is authorized" in page.text

    cache = setup.dir / "tokens" / "main.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert f"token cache: {cache}" in out
    assert setup.partner.partner_center_app.secret not in result.output
    assert any(
        r["direction"] == "outbound" and r["url"].endswith("/oauth2/v2.0/token")
        for r in setup.requests_logged()
    )

    status = setup.run("csp", "status")
    assert status.exit_code == 0, status.output
    assert (
        f"main (partner tenant {setup.partner.tenant_id}): authorized as {username}"
        in status.stdout
    )
    assert "valid until 20" in status.stdout and f"token cache: {cache}\n" in status.stdout

    gone = setup.run("csp", "disconnect", "main")
    assert gone.exit_code == 0, gone.output
    assert f"removed the authorization of {username}" in gone.stdout
    assert "csp authorize main" in gone.stdout  # how to come back with a new secret
    assert not cache.exists()
    status = setup.run("csp", "status")
    assert "main (partner tenant" in status.stdout
    assert "not authorized: run `halo-integrator csp authorize main`" in status.stdout
    assert "(none yet)" in status.stdout
    again = setup.run("csp", "disconnect", "main")
    assert again.exit_code == 0 and "nothing to remove" in again.stdout


def test_authorize_with_a_wrong_secret_says_cause_and_fix(setup, monkeypatch):
    setup.use_browser()
    monkeypatch.setenv("TEST_PC_SECRET", "not-the-secret")
    result = setup.run("csp", "authorize", "main", "--redirect-uri", setup.auth_uri)
    assert result.exit_code == 1, result.output
    assert "AADSTS7000215" in result.stderr and "Fix: use the secret's Value" in result.stderr
    assert setup.partner.partner_center_app.client_id in result.stderr
    assert setup.pages[0].status_code == 400
    assert not (setup.dir / "tokens" / "main.json").exists()


def test_authorize_gives_up_after_the_timeout(setup):
    result = setup.run(
        "csp",
        "authorize",
        "main",
        "--redirect-uri",
        setup.auth_uri,
        "--no-browser",
        "--timeout",
        "1",
    )
    assert result.exit_code == 1, result.output
    assert f"error: no sign-in reached {setup.auth_uri} within 1 s" in result.stderr
    assert "fix: " in result.stderr and "AADSTS50011" in result.stderr


def test_unknown_connections_and_unusable_redirect_uris_are_usage_errors(setup):
    for args in (
        ["csp", "authorize", "nope"],
        ["csp", "disconnect", "nope"],
        ["csp", "consent-url", setup.partner.tenant_id, "--connection", "nope"],
    ):
        result = setup.run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "no connection named 'nope' (connections: main)" in result.stderr
    for uri in ("https://127.0.0.1:8400/auth/callback", "http://halo.example.com/auth/callback"):
        result = setup.run("csp", "authorize", "main", "--redirect-uri", uri)
        assert result.exit_code == 2 and "listens on loopback" in result.stderr

    setup.path = setup.write(connections=2)
    result = setup.run("csp", "consent-url", setup.customer(consented=False).tenant_id)
    assert result.exit_code == 2
    assert "say which with --connection (one of: main, other1)" in result.stderr


def test_a_busy_port_is_a_clear_error(setup):
    address, port, _ = loopback_address(setup.auth_uri)
    with socket.socket() as busy:
        busy.bind((address, port))
        busy.listen()
        result = setup.run("csp", "authorize", "main", "--redirect-uri", setup.auth_uri)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# -- admin consent --------------------------------------------------------------------------


def test_consent_url_is_the_v2_endpoint_of_the_tenant_with_graph_default(setup, emulator):
    tenant = setup.customer(consented=False).tenant_id
    result = setup.run("csp", "consent-url", tenant)
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == emulator.endpoints()["login"]
    assert parts.path == f"/{tenant}/v2.0/adminconsent"
    query = parse_qs(parts.query)
    assert query["client_id"] == [setup.partner.gdap_app.client_id]
    assert query["scope"] == ["https://graph.microsoft.com/.default"]
    assert query["redirect_uri"] == ["http://localhost:8400/consent/callback"]
    assert len(query["state"][0]) >= 16
    assert "native to tenant" in result.stderr

    for bad in ("common", "organizations"):
        refused = setup.run("csp", "consent-url", bad)
        assert refused.exit_code == 2 and "not a customer tenant" in refused.stderr
    unknown = setup.run("csp", "consent-url", "Nobody Ltd")
    assert unknown.exit_code == 2 and "no tenant named 'Nobody Ltd'" in unknown.stderr


def test_consent_url_takes_a_synced_tenant_by_name_or_domain(setup):
    customer = setup.customer(consented=False)
    store = setup.store()
    now = datetime.now(UTC)
    with store.unit() as db:
        db.execute(
            sa.insert(schema.tenants).values(
                module="microsoft_csp",
                connection="main",
                tenant_id=customer.tenant_id,
                name=customer.name,
                default_domain=customer.domain,
                access="gdap_only",
                created_at=now,
                updated_at=now,
            )
        )
    store.close()
    setup.path = setup.write(connections=2)  # the stored tenant says which connection
    for name in (customer.name, customer.domain.upper()):
        result = setup.run("csp", "consent-url", name)
        assert result.exit_code == 0, result.output
        assert f"/{customer.tenant_id}/v2.0/adminconsent?" in result.stdout
    unknown = setup.run("csp", "consent-url", "Nobody Ltd")
    assert unknown.exit_code == 2
    assert f"known tenants: {customer.name} ({customer.domain}, {customer.tenant_id})" in (
        unknown.stderr
    )


def test_consent_then_the_gdap_app_gets_tokens_in_the_tenant(setup):
    customer = setup.customer(consented=False)
    with (
        HttpClient(verify=str(setup.emulator.ca_bundle)) as http,
        pytest.raises(csp_errors.ConsentMissing),
    ):
        setup.gdap_tokens(http).token(customer.tenant_id, GRAPH_RESOURCE)

    setup.use_browser()
    result = setup.run("csp", "consent", customer.tenant_id, "--redirect-uri", setup.consent_uri)
    assert result.exit_code == 0, result.output
    assert f"admin consent granted in tenant {customer.tenant_id}" in result.stdout
    assert f"checked: the GDAP app gets a Graph token in tenant {customer.tenant_id}" in (
        result.stdout
    )
    assert setup.pages[0].status_code == 200 and "granted" in setup.pages[0].text

    with HttpClient(verify=str(setup.emulator.ca_bundle)) as http:
        token = setup.gdap_tokens(http).token(customer.tenant_id, GRAPH_RESOURCE)
    assert setup.emulator.app.tokens.find(token).tenant == customer.tenant_id

    [row] = [r for r in setup.requests_logged() if r["direction"] == "inbound"]
    assert row["module"] == "microsoft_csp" and row["connection"] == "main"
    assert (row["tenant_id"], row["method"], row["status"], row["outcome"]) == (
        customer.tenant_id,
        "GET",
        200,
        "consent_granted",
    )
    assert row["url"].startswith("/consent/callback?admin_consent=True&tenant=")


def test_a_refused_consent_is_recorded_with_its_reason(setup):
    from halo_microsoft_emulator.login import _state

    customer = setup.customer(consented=False)
    _state(setup.emulator.app)["deny_consent"] = True
    setup.use_browser()
    result = setup.run("csp", "consent", customer.tenant_id, "--redirect-uri", setup.consent_uri)
    assert result.exit_code == 1, result.output
    assert f"error: admin consent failed in tenant {customer.tenant_id}: AADSTS65004" in (
        result.stderr
    )
    assert "fix: the administrator declined" in result.stderr
    assert setup.pages[0].status_code == 400
    assert customer.consented is False
    [row] = [r for r in setup.requests_logged() if r["direction"] == "inbound"]
    assert (row["tenant_id"], row["status"], row["outcome"]) == (
        customer.tenant_id,
        400,
        "consent_failed",
    )
    assert (
        row["detail"].startswith("AADSTS65004: The resource owner") and "Trace" not in row["detail"]
    )


# -- the pieces -----------------------------------------------------------------------------


def test_consent_url_shape_and_refusal_of_common():
    endpoints = EndpointSettings(login=HttpsUrl.parse("https://login.example/"))
    url = consent_url(endpoints, "c-1", "contoso.onmicrosoft.com", "http://localhost/cb", "s1")
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == (
        "login.example",
        "/contoso.onmicrosoft.com/v2.0/adminconsent",
    )
    assert dict(parse_qsl(parts.query)) == {
        "client_id": "c-1",
        "scope": "https://graph.microsoft.com/.default",
        "redirect_uri": "http://localhost/cb",
        "state": "s1",
    }
    us = consent_url(EndpointSettings(cloud="us_government"), "c", "t", "http://localhost/cb", "s")
    assert us.startswith("https://login.microsoftonline.us/t/v2.0/adminconsent?")
    assert "scope=https%3A%2F%2Fgraph.microsoft.us%2F.default" in us
    with pytest.raises(ValueError, match="common"):
        consent_url(endpoints, "c", "common", "http://localhost/cb", "s")


def test_parse_consent_callback_checks_error_before_admin_consent():
    tenant = "11111111-1111-1111-1111-111111111111"
    ok = parse_consent_callback(
        {"admin_consent": "True", "tenant": tenant, "scope": "x/.default", "state": "s"},
        expected_tenant=tenant,
        expected_state="s",
    )
    assert ok == ConsentResult(tenant=tenant, ok=True, scope="x/.default")
    refused = parse_consent_callback(
        {
            "admin_consent": "True",  # error redirects carry it too
            "error": "consent_required",
            "error_description": "AADSTS65004: The resource owner or authorization server denied "
            "the request.\r\nTrace ID: abc\r\nCorrelation ID: def",
            "state": "s",
        },
        expected_tenant=tenant,
    )
    assert (refused.ok, refused.tenant, refused.error, refused.code) == (
        False,
        tenant,
        "consent_required",
        "AADSTS65004",
    )
    assert refused.description.endswith("denied the request.")
    assert parse_consent_callback({"admin_consent": "True", "tenant": tenant}).ok
    assert parse_consent_callback({"tenant": tenant}).error == "invalid_response"
    other = parse_consent_callback(
        {"admin_consent": "True", "tenant": "22222222-2222-2222-2222-222222222222"},
        expected_tenant=tenant,
    )
    assert (other.ok, other.error, other.tenant) == (False, "tenant_mismatch", tenant)
    forged = parse_consent_callback(
        {"admin_consent": "True", "tenant": tenant, "state": "x"}, expected_state="s"
    )
    assert forged.error == "state_mismatch"


def test_record_consent_writes_an_inbound_row_without_secrets(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        result = ConsentResult(tenant="t-1", ok=False, error="x", description="AADSTS1: no")
        record_consent(store, result, url="/consent/callback?code=SECRETCODE&state=s")
        with store.read() as db:
            [row] = [dict(r._mapping) for r in db.execute(sa.select(schema.request_log))]
    finally:
        store.close()
    assert row["direction"] == "inbound" and row["outcome"] == "consent_failed"
    assert "SECRETCODE" not in row["url"] and row["detail"] == "AADSTS1: no"


def test_the_callback_app_refuses_answers_nobody_waits_for():
    app = CallbackApp()
    pages: list[str] = []

    def call(path: str, query: str = "", method: str = "GET") -> bytes:
        environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method}
        return b"".join(app(environ, lambda status, headers: pages.append(status)))

    assert b"No sign-in is waiting" in call("/auth/callback", "code=x&state=unknown")
    assert b"No admin consent is waiting" in call("/consent/callback", "state=unknown")
    call("/elsewhere")
    call("/auth/callback", method="DELETE")
    assert [p.split()[0] for p in pages] == ["400", "400", "404", "405"]
    with pytest.raises(RedirectUriError):
        loopback_address("http://localhost:notaport/auth/callback")
    assert loopback_address("http://localhost:8400/auth/callback") == (
        "127.0.0.1",
        8400,
        "/auth/callback",
    )
