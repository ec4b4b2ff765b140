"""App-only tokens and tenant discovery kept between runs, against the emulator.

A "run" is a new `AppTokens` over the same state folder, as each `halo-integrator sync`
builds one; the emulator's request log counts what reached the login service.
"""

from __future__ import annotations

import json
import pickle
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import msal
import pytest
import structlog
from structlog.testing import capture_logs

from halo_integrator_core import ModuleContext
from halo_integrator_core.config import EndpointSettings, IntegratorSettings, SecretRef
from halo_integrator_core.errors import HttpError
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp import auth, directory
from halo_microsoft_csp.auth import (
    GRAPH_RESOURCE,
    PARTNER_CENTER_RESOURCE,
    AppTokenCache,
    AppTokens,
    HttpCache,
    app_cache_file,
    http_cache_file,
)
from halo_microsoft_csp.errors import MicrosoftAuthError
from halo_microsoft_csp.settings import AppRegistration, Connection, MicrosoftCspSettings


@pytest.fixture
def http(emulator):
    with HttpClient(verify=str(emulator.ca_bundle), sleep=lambda _: None) as client:
        yield client


@pytest.fixture
def partner(emulator):
    return next(iter(emulator.world.partners.values()))


@pytest.fixture
def consented(emulator) -> list[str]:
    return [c.tenant_id for c in emulator.world.customers.values() if c.consented]


def run(emulator, http, state_dir: Path, *, login: str | None = None) -> AppTokens:
    """The GDAP app's tokens as one sync run builds them over ``state_dir``, the run before
    it having ended (its waiting writes done, as the module's ``run_finished`` does)."""
    auth.flush_all()
    app = next(iter(emulator.world.partners.values())).gdap_app
    authority = emulator.endpoints()["login"]
    return AppTokens(
        client_id=app.client_id,
        secret=lambda: app.secret,
        authority=authority,
        http=http,
        app_name=f"GDAP app {app.client_id} of connection main",
        token_cache=AppTokenCache(
            app_cache_file(state_dir, "main", "gdap"), login=login or authority
        ),
        http_cache=HttpCache(http_cache_file(state_dir, "main")),
    )


def token_requests(emulator) -> int:
    return sum(
        1
        for method, path, _ in emulator.app.requests
        if method == "POST" and path.endswith("/oauth2/v2.0/token")
    )


def metadata_requests(emulator) -> int:
    return sum(1 for _, path, _ in emulator.app.requests if path.endswith("/openid-configuration"))


def counts(emulator) -> tuple[int, int]:
    return token_requests(emulator), metadata_requests(emulator)


def test_a_second_run_gets_its_token_without_asking_the_login_service(
    emulator, http, consented, tmp_path
):
    tenant = consented[0]
    first = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert counts(emulator) == (1, 1)

    second = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert second == first
    assert counts(emulator) == (1, 1)  # no token request, no OpenID configuration either
    issued = emulator.app.tokens.find(second)
    assert (issued.tenant, issued.resource) == (tenant, GRAPH_RESOURCE)
    # Graph takes it.
    graph = emulator.endpoints()["graph"]
    http.json("GET", f"{graph}/v1.0/users", headers={"Authorization": f"Bearer {second}"})


def test_the_files_are_private(emulator, http, consented, tmp_path):
    run(emulator, http, tmp_path).token(consented[0], GRAPH_RESOURCE)
    tokens = app_cache_file(tmp_path, "main", "gdap")
    discovery = http_cache_file(tmp_path, "main")
    assert tokens.name == "main.gdap.app.json" and discovery.name == "main.http-cache"
    for path in (tokens, discovery):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
    assert not [p for p in tokens.parent.iterdir() if p.name.endswith(".tmp")]
    document = json.loads(tokens.read_text(encoding="utf-8"))
    assert document["login"] == emulator.endpoints()["login"]
    assert len(document["msal"]["AccessToken"]) == 1
    # The discovery file holds no token.
    token = next(iter(document["msal"]["AccessToken"].values()))["secret"]
    assert token.encode() not in discovery.read_bytes()

    # A file someone opened up is closed again when read.
    tokens.chmod(0o644)
    with capture_logs() as logs:
        run(emulator, http, tmp_path).token(consented[0], GRAPH_RESOURCE)
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "csp.token_cache_permissions_fixed"
    ]


def test_an_expired_cached_token_is_not_used(emulator, http, consented, tmp_path):
    tenant = consented[0]
    old = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    path = app_cache_file(tmp_path, "main", "gdap")
    document = json.loads(path.read_text(encoding="utf-8"))
    for entry in document["msal"]["AccessToken"].values():
        entry["expires_on"] = str(int(time.time()) - 10)  # an hour and more has passed
    path.write_text(json.dumps(document), encoding="utf-8")

    new = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert new != old
    assert counts(emulator) == (2, 1)  # a token request; the discovery is still kept
    # One that expires within MSAL's five minutes' margin is not used either.
    document = json.loads(path.read_text(encoding="utf-8"))
    for entry in document["msal"]["AccessToken"].values():
        entry["expires_on"] = str(int(time.time()) + 120)
    path.write_text(json.dumps(document), encoding="utf-8")
    assert run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE) not in (old, new)
    assert counts(emulator) == (3, 1)


def test_tokens_of_one_tenant_are_not_served_for_another(emulator, http, consented, tmp_path):
    a, b = consented[:2]
    token_a = run(emulator, http, tmp_path).token(a, GRAPH_RESOURCE)
    token_b = run(emulator, http, tmp_path).token(b, GRAPH_RESOURCE)
    assert token_b != token_a
    assert token_requests(emulator) == 2
    assert emulator.app.tokens.find(token_b).tenant == b
    # Nor one resource's for another in the same tenant.
    other = run(emulator, http, tmp_path).token(a, PARTNER_CENTER_RESOURCE)
    assert other not in (token_a, token_b)
    assert emulator.app.tokens.find(other).resource == PARTNER_CENTER_RESOURCE
    # Both tenants' tokens are kept, each for its own tenant.
    third = run(emulator, http, tmp_path)
    assert (third.token(a, GRAPH_RESOURCE), third.token(b, GRAPH_RESOURCE)) == (token_a, token_b)
    assert token_requests(emulator) == 3


def test_tokens_from_another_login_endpoint_are_not_used(emulator, http, consented, tmp_path):
    tenant = consented[0]
    # As if the emulator had run on another port before (same host, so same MSAL keys).
    old = run(emulator, http, tmp_path, login="https://127.0.0.1:1/login").token(
        tenant, GRAPH_RESOURCE
    )
    with capture_logs() as logs:
        new = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert new != old and token_requests(emulator) == 2
    assert [e["event"] for e in logs] == ["csp.app_token_cache_of_another_login"]


GARBAGE_TOKEN_CACHES = {
    "not_json": b"{ this is not json",
    "empty": b"",
    "not_a_cache": b'{"login": "x", "msal": {"AccessToken": ["not", "a", "dict"]}}',
    "bad_expiry": None,  # filled in from a real file below
    "truncated": None,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE_TOKEN_CACHES))
def test_a_corrupt_token_cache_is_left_aside_with_one_warning(
    emulator, http, consented, tmp_path, kind
):
    tenant = consented[0]
    run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    path = app_cache_file(tmp_path, "main", "gdap")
    garbage = GARBAGE_TOKEN_CACHES[kind]
    if kind == "truncated":
        garbage = path.read_bytes()[: path.stat().st_size // 2]
    elif kind == "bad_expiry":
        document = json.loads(path.read_text(encoding="utf-8"))
        for entry in document["msal"]["AccessToken"].values():
            entry["expires_on"] = "soon"
        garbage = json.dumps(document).encode()
    path.write_bytes(garbage)

    with capture_logs() as logs:
        again = run(emulator, http, tmp_path)
        token = again.token(tenant, GRAPH_RESOURCE)
    assert emulator.app.tokens.find(token).tenant == tenant
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["csp.app_token_cache_unusable"]
    assert warnings[0]["path"] == str(path)
    assert token_requests(emulator) == 2
    # The file was written anew, and serves the next run.
    assert run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE) == token
    assert token_requests(emulator) == 2


class _Planted:
    """What a pickle that runs code on loading looks like."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "foreign_code", "wrong_shape"])
def test_a_corrupt_http_cache_is_left_aside_with_one_warning(
    emulator, http, consented, tmp_path, kind
):
    tenant = consented[0]
    run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    path = http_cache_file(tmp_path, "main")
    marker = tmp_path / "planted"
    garbage = {
        "garbage": b"\x80\x04 not a pickle at all",
        "truncated": path.read_bytes()[: path.stat().st_size // 2],
        "empty": b"",
        "foreign_code": pickle.dumps({"partitions": {"x": {"y": _Planted(marker)}}, "used": {}}),
        "wrong_shape": pickle.dumps({"partitions": ["not", "a", "dict"], "used": {}}),
    }[kind]
    path.write_bytes(garbage)

    with capture_logs() as logs:
        token = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert not marker.exists()  # the planted call never ran
    assert emulator.app.tokens.find(token).tenant == tenant
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["csp.http_cache_unusable"]
    assert counts(emulator) == (1, 2)  # the discovery again; the token is still kept
    # Rewritten: the next run asks for nothing.
    run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    assert counts(emulator) == (1, 2)


def test_threads_of_one_run_keep_every_tenant_in_one_whole_file(
    emulator, http, partner, consented, tmp_path
):
    tokens = run(emulator, http, tmp_path)
    tenants = [*consented, partner.tenant_id]
    got: dict[str, str] = {}
    threads = [
        threading.Thread(target=lambda t=t: got.update({t: tokens.token(t, GRAPH_RESOURCE)}))
        for t in tenants
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(got) == set(tenants)
    assert counts(emulator) == (len(tenants), len(tenants))

    second = run(emulator, http, tmp_path)
    assert {t: second.token(t, GRAPH_RESOURCE) for t in tenants} == got
    assert counts(emulator) == (len(tenants), len(tenants))


@pytest.mark.parametrize("refusal", [401, 403])
def test_a_token_an_api_refuses_is_dropped_and_asked_for_anew(
    emulator, http, consented, tmp_path, refusal
):
    tenant = consented[0]
    old = run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE)
    if refusal == 401:
        emulator.app.tokens.expire_all()  # a login service that forgot it (emulator restarted)
    else:  # permissions changed since the token was issued
        emulator.app.inject("denied", endpoint="graph.users", tenant=tenant, times=1)

    tokens = run(emulator, http, tmp_path)
    headers = tokens.headers(tenant, GRAPH_RESOURCE)
    assert headers["Authorization"] == f"Bearer {old}" and token_requests(emulator) == 1
    graph = emulator.endpoints()["graph"]
    with (
        pytest.raises((HttpError, MicrosoftAuthError)),
        directory._explained("graph", tenant, tokens.app_name),
    ):
        http.json("GET", f"{graph}/v1.0/users", headers=headers)
    assert emulator.app.requests[-1][2] == refusal

    new = tokens.token(tenant, GRAPH_RESOURCE)
    assert new != old and token_requests(emulator) == 2
    http.json("GET", f"{graph}/v1.0/users", headers={"Authorization": f"Bearer {new}"})
    # ... and the next run has the new one.
    assert run(emulator, http, tmp_path).token(tenant, GRAPH_RESOURCE) == new
    assert token_requests(emulator) == 2


def test_a_sync_session_keeps_the_app_tokens_and_a_command_session_does_not(
    emulator, http, partner, consented, tmp_path, monkeypatch
):
    monkeypatch.setenv("CACHE_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("CACHE_GDAP_SECRET", partner.gdap_app.secret)
    connection = Connection(
        name="main",
        tenant_id=partner.tenant_id,
        partner_center_app=AppRegistration(
            client_id=partner.partner_center_app.client_id,
            client_secret=SecretRef(env="CACHE_PC_SECRET"),
        ),
        gdap_app=AppRegistration(
            client_id=partner.gdap_app.client_id, client_secret=SecretRef(env="CACHE_GDAP_SECRET")
        ),
    )
    context = ModuleContext(
        module="microsoft_csp",
        settings=MicrosoftCspSettings(connections=(connection,)),
        integrator=IntegratorSettings(),
        log=structlog.get_logger("test"),
        endpoints=EndpointSettings(**emulator.endpoints()),
        http=http,
        state_dir=tmp_path,
    )
    tenant = consented[0]
    first = directory.CspSession(context).clients(connection).gdap.token(tenant, GRAPH_RESOURCE)
    again = directory.CspSession(context).clients(connection).gdap.token(tenant, GRAPH_RESOURCE)
    assert again == first and counts(emulator) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == [
        "main.gdap.app.json",
        "main.http-cache",
    ]

    command = directory.CspSession(context, keep_app_tokens=False).clients(connection)
    assert command.gdap.token(tenant, GRAPH_RESOURCE) != first
    assert counts(emulator) == (2, 2)
    # ... and leaves the sync's tokens as they were.
    again = directory.CspSession(context).clients(connection).gdap.token(tenant, GRAPH_RESOURCE)
    assert again == first and counts(emulator) == (2, 2)


def test_without_a_state_folder_nothing_is_written(emulator, http, partner, consented, tmp_path):
    app = partner.gdap_app
    tokens = AppTokens(
        client_id=app.client_id,
        secret=lambda: app.secret,
        authority=emulator.endpoints()["login"],
        http=http,
        app_name="GDAP app",
    )
    first = tokens.token(consented[0], GRAPH_RESOURCE)
    assert tokens.token(consented[0], GRAPH_RESOURCE) == first
    assert tokens.forget(consented[0]) == 1
    assert tokens.token(consented[0], GRAPH_RESOURCE) != first
    assert counts(emulator) == (2, 1)
    assert list(tmp_path.iterdir()) == []


def test_tokens_coming_fast_are_written_once_an_interval_and_at_the_run_end(
    emulator, http, partner, consented, tmp_path, monkeypatch
):
    # A cold start of many tenants rewrote the whole file for each new token.
    writes = []
    real_write = auth.write_private
    monkeypatch.setattr(
        auth,
        "write_private",
        lambda path, data, **kw: (writes.append(path), real_write(path, data, **kw)),
    )
    monkeypatch.setattr(auth, "SAVE_INTERVAL", 60.0)
    path = app_cache_file(tmp_path, "main", "gdap")

    def kept() -> int:
        return len(json.loads(path.read_text(encoding="utf-8"))["msal"]["AccessToken"])

    tenants = [*consented, partner.tenant_id]
    tokens = run(emulator, http, tmp_path)
    for tenant in tenants:
        tokens.token(tenant, GRAPH_RESOURCE)
    assert writes.count(path) == 1 and kept() == 1  # the first at once, the rest wait
    auth.flush_all()  # the run ends
    assert writes.count(path) == 2 and kept() == len(tenants) == 3
    auth.flush_all()  # nothing waits: nothing is written
    assert writes.count(path) == 2

    # Without a run end, the interval's end writes what waits.
    monkeypatch.setattr(auth, "SAVE_INTERVAL", 1.0)
    tokens = run(emulator, http, tmp_path)
    before = writes.count(path)
    tokens.forget(consented[0])  # written at once
    new = tokens.token(consented[0], GRAPH_RESOURCE)  # waits, as do the next two
    tokens.forget(consented[1])
    tokens.token(consented[1], GRAPH_RESOURCE)
    assert writes.count(path) == before + 1
    deadline = time.monotonic() + 5
    while writes.count(path) == before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writes.count(path) == before + 2
    assert new in path.read_text(encoding="utf-8")


def later_clock(seconds: float) -> SimpleNamespace:
    """The ``time`` module as a module sees it ``seconds`` from now."""
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return SimpleNamespace(
        **names
        | {"time": lambda: time.time() + seconds, "monotonic": lambda: time.monotonic() + seconds}
    )


def test_a_stream_goes_on_with_a_new_token_once_its_own_nears_its_end(
    emulator, http, consented, tmp_path, monkeypatch
):
    """The header a listing sends with each page (`AppTokens.headers`) asks for a new token
    when less than MSAL's five minutes are left of its own, not at every page."""
    tenant = consented[0]
    headers = run(emulator, http, tmp_path).headers(tenant, GRAPH_RESOURCE)
    first = headers["Authorization"]
    assert dict(headers) == {"Authorization": first} and counts(emulator) == (1, 1)
    later = 56 * 60  # of an hour's token, four minutes left
    for module in (auth, msal.application, msal.token_cache):
        monkeypatch.setattr(module, "time", later_clock(later))
    second = headers["Authorization"]
    assert second != first and counts(emulator) == (2, 1)
    assert headers["Authorization"] == second and counts(emulator) == (2, 1)
    graph = emulator.endpoints()["graph"]
    http.json("GET", f"{graph}/v1.0/users", headers=headers)  # read per request, and taken


def test_a_token_with_time_left_is_read_from_the_header_without_asking(monkeypatch):
    results = iter(
        [{"access_token": "one", "expires_in": 3599}, {"access_token": "two", "expires_in": 3599}]
    )
    headers = auth.BearerHeaders(lambda: next(results))
    assert headers["Authorization"] == "Bearer one"
    monkeypatch.setattr(auth, "time", later_clock(3599 - auth.RENEW_BEFORE - 1))
    assert headers["Authorization"] == "Bearer one"
    monkeypatch.setattr(auth, "time", later_clock(3599 - auth.RENEW_BEFORE + 1))
    assert headers["Authorization"] == "Bearer two"
    with pytest.raises(KeyError):
        headers["Content-Type"]
