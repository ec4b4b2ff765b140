"""The HTTP server: health, webhooks, the admin page, modules' routes and the CSP callbacks.

The app runs under werkzeug's test client; one test serves it over a real socket. The CSP
tests play the browser against the emulator as tests/test_csp_delegated.py does: open the
sign-in or consent URL with requests, and bring the redirect back to the app.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import socket
import threading
import time
from datetime import UTC, datetime
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from halo_integrator_core import (
    ModuleContext,
    ModuleSpec,
    WebhookEvent,
    WebhookOutcome,
    WebRoute,
    hookimpl,
)
from halo_integrator_core.config import load_config
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.request_log import record_inbound
from halo_integrator_core.web import (
    ENVIRON_CSRF_TOKEN,
    ENVIRON_STORE,
    ServerError,
    SignInThrottle,
    make_app,
    read_body,
    serve,
)

MODULE = "web_probe"
PASSWORD = "correct horse battery staple"
EVIL = "<script>alert('owned')</script>"


class WebProbe:
    """A plugin with a webhook and routes: public, admin, a subtree, and two refused."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.contexts: list[ModuleContext] = []
        self.posted: list[bytes] = []

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name=MODULE, title="Web probe")]

    @hookimpl
    def on_webhook(self, context: ModuleContext, event: WebhookEvent) -> WebhookOutcome:
        self.events.append(event)
        if event.headers.get("X-Probe-Signature") != "good":
            return WebhookOutcome(status=401, message="signature does not verify")
        return WebhookOutcome(status=200, message="accepted", event_name="probe-event")

    @hookimpl
    def web_routes(self, context: ModuleContext) -> list[WebRoute]:
        self.contexts.append(context)

        @Request.application
        def hello(request: Request) -> Response:
            store = request.environ[ENVIRON_STORE]
            record_inbound(
                store, module=MODULE, method="GET", url=request.full_path, status=200, outcome="hi"
            )
            return Response(f"hello {request.path}", content_type="text/plain")

        @Request.application
        def settings(request: Request) -> Response:
            if request.method == "POST":
                self.posted.append(request.get_data())
                return Response(f"saved {request.form.get('colour')}")
            return Response(
                f"user {request.environ['REMOTE_USER']} token {request.environ[ENVIRON_CSRF_TOKEN]}"
            )

        return [
            WebRoute(path=f"/{MODULE}/hello", app=hello),
            WebRoute(path=f"/{MODULE}/files/", app=hello),
            WebRoute(path=f"/{MODULE}/settings", app=settings, admin=True, title="Probe settings"),
            WebRoute(path="/admin/takeover", app=hello),  # outside its prefix
            WebRoute(path=f"/{MODULE}", app=hello),  # not under /<module>/
            WebRoute(path=f"/{MODULE}/hello", app=settings),  # taken
        ]


class FakeHealth:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive

    def snapshot(self) -> dict[str, Any]:
        return {"alive": self.alive, "jobs": [{"id": f"sync:{MODULE}"}], "note": EVIL}


def config_text(*, password: bool = True, max_body: int = 1024) -> str:
    text = f"""
[server]
public_url = "https://halo.example.test/"
max_body_bytes = {max_body}

[modules.{MODULE}]
enabled = true
"""
    if password:
        text = text.replace(
            "[server]\n", '[server]\nadmin_password = { env = "TEST_ADMIN_PASSWORD" }\n'
        )
    return text


@pytest.fixture
def probe() -> WebProbe:
    return WebProbe()


@pytest.fixture
def build(store, write_config, host_factory, probe, monkeypatch):
    """build(**config options, health=...) -> (app, werkzeug client)."""
    monkeypatch.setenv("TEST_ADMIN_PASSWORD", PASSWORD)
    apps = []

    def make(*, health: Any = None, store_: Store | None = None, **options: Any):
        config = load_config(write_config(config_text(**options)))
        host = host_factory(config, (probe, MODULE))
        app = make_app(config, store_ or store, host, health)
        apps.append(app)
        return app, Client(app)

    yield make
    for app in apps:
        app.close()


def basic(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def inbound(store: Store) -> list[dict[str, Any]]:
    log = schema.request_log
    with store.read() as db:
        return [
            dict(row._mapping)
            for row in db.execute(
                sa.select(log).where(log.c.direction == "inbound").order_by(log.c.id)
            )
        ]


def assert_secured(response: Any) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


# -- /healthz -----------------------------------------------------------------------------------


def test_healthz_reports_the_scheduler_the_store_and_each_modules_last_run(build, store):
    _, client = build(health=FakeHealth())
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert_secured(answer)
    body = answer.get_json()
    assert body["status"] == "ok" and body["store"] == "ok"
    assert body["scheduler"]["alive"] is True
    assert body["modules"] == {MODULE: None}
    assert PASSWORD not in answer.get_data(as_text=True)

    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with store.unit() as db:
        for outcome in ("failed", "succeeded"):
            db.execute(
                sa.insert(schema.sync_runs).values(
                    module=MODULE, started_at=started, finished_at=started, outcome=outcome
                )
            )
    last = client.get("/healthz").get_json()["modules"][MODULE]
    assert last["outcome"] == "succeeded" and last["id"] == 2
    assert last["started_at"].startswith("2025-01-02T03:04:05")
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


def test_healthz_is_503_when_the_scheduler_is_dead_or_the_store_unreachable(build, tmp_path):
    _, client = build(health=FakeHealth(alive=False))
    dead = client.get("/healthz")
    assert dead.status_code == 503 and dead.get_json()["status"] == "degraded"
    assert dead.get_json()["store"] == "ok"

    unreachable = Store(sa.create_engine(f"sqlite:///{tmp_path}/no/such/folder/store.db"))
    _, client = build(store_=unreachable)
    answer = client.get("/healthz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "degraded" and body["scheduler"] is None
    assert body["store"].startswith("unreachable: ") and body["modules"] is None


# -- /webhooks/<module> -------------------------------------------------------------------------


def test_a_webhook_reaches_the_module_with_its_raw_body_and_headers(build, probe, store):
    _, client = build()
    raw = b'{"EventName": "test-created"}\r\n\x00\xff  '
    answer = client.post(
        f"/webhooks/{MODULE}",
        data=raw,
        headers={"X-Probe-Signature": "good", "Content-Type": "application/json"},
        environ_overrides={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert answer.status_code == 200 and answer.get_json() == {"message": "accepted"}
    assert_secured(answer)
    [event] = probe.events
    assert event.body == raw and event.module == MODULE
    assert event.headers["X-Probe-Signature"] == "good"
    assert event.headers["Content-Type"] == "application/json"
    assert event.remote_addr == "203.0.113.9" and event.received_at.tzinfo is not None

    refused = client.post("/webhooks/web-probe", data=b"{}")  # the hyphenated spelling too
    assert refused.status_code == 401
    assert refused.get_json() == {"message": "signature does not verify"}
    assert [(r["url"], r["status"]) for r in inbound(store)] == [
        (f"/webhooks/{MODULE}", 200),
        ("/webhooks/web-probe", 401),
    ]


def test_an_oversized_webhook_is_refused_413_and_logged_and_nothing_else(build, probe, store):
    _, client = build(max_body=64)
    answer = client.post(
        f"/webhooks/{MODULE}", data=b"x" * 65, headers={"X-Probe-Signature": "good"}
    )
    assert answer.status_code == 413 and "64 bytes" in answer.get_json()["message"]
    assert probe.events == []
    [row] = inbound(store)
    assert (row["module"], row["status"], row["outcome"]) == (MODULE, 413, "rejected")
    exactly = client.post(
        f"/webhooks/{MODULE}", data=b"x" * 64, headers={"X-Probe-Signature": "good"}
    )
    assert exactly.status_code == 200 and probe.events[0].body == b"x" * 64


def test_read_body_never_reads_past_the_limit_of_a_stream_without_length():
    class Endless:
        read_total = 0

        def read(self, size: int) -> bytes:
            Endless.read_total += size
            return b"y" * size

    environ = {"wsgi.input": Endless(), "wsgi.input_terminated": True}
    assert read_body(environ, 100) is None
    assert Endless.read_total == 101
    assert read_body({"wsgi.input": io.BytesIO(b"abc"), "wsgi.input_terminated": True}, 5) == (
        b"abc"
    )
    # Neither a length nor framing: nothing can be read safely.
    assert read_body({"wsgi.input": Endless()}, 5) == b""


def test_webhooks_take_post_only_and_an_unknown_module_is_404(build, store):
    _, client = build()
    wrong = client.get(f"/webhooks/{MODULE}")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    unknown = client.post("/webhooks/nope", data=b"{}")
    assert unknown.status_code == 404 and "nope" in unknown.get_json()["message"]
    assert [(r["module"], r["status"]) for r in inbound(store)] == [("nope", 404)]
    # A path of any length is answered, and logged (PostgreSQL keeps a module name to 100).
    long = "x" * 150
    assert client.post(f"/webhooks/{long}", data=b"{}").status_code == 404
    assert inbound(store)[-1]["module"] == long[:100]
    assert client.post("/webhooks/a/b", data=b"").status_code == 404
    assert client.get("/nothing-here").status_code == 404


# -- /admin -------------------------------------------------------------------------------------


def test_the_admin_page_is_closed_without_a_configured_password(build):
    _, client = build(password=False)
    for path in ("/admin", f"/{MODULE}/settings"):
        answer = client.get(path, headers=basic())
        assert answer.status_code == 403, path
        assert "admin_password" in answer.get_data(as_text=True)
        assert "WWW-Authenticate" not in answer.headers


def test_the_admin_page_asks_for_the_credential(build):
    _, client = build()
    for headers in ({}, basic(password="wrong"), basic(user="root"), {"Authorization": "Bearer x"}):
        answer = client.get("/admin", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="halo-integrator admin"')
        assert_secured(answer)
    root = client.get("/")
    assert root.status_code == 302 and root.headers["Location"] == "/admin"


def test_failed_sign_ins_from_one_address_are_answered_429_for_a_while(build):
    app, client = build()
    now = [1000.0]
    app.sign_ins = SignInThrottle(failures=3, window=600, clock=lambda: now[0])
    guesser = {"REMOTE_ADDR": "203.0.113.9"}
    for _ in range(3):
        assert (
            client.get("/admin", headers=basic(password="guess"), environ_base=guesser).status_code
            == 401
        )
    # Past the limit, even the right password waits: the guesser learns nothing more.
    held = client.get("/admin", headers=basic(), environ_base=guesser)
    assert held.status_code == 429 and held.headers["Retry-After"] == "600"
    assert "try again in about 10 minutes" in held.get_data(as_text=True)
    assert_secured(held)
    # Another address, and a browser's first request (no credential), are not held.
    other = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get("/admin", headers=basic(), environ_base=other).status_code == 200
    now[0] += 300
    assert (
        client.get("/admin", headers=basic(), environ_base=guesser).headers["Retry-After"] == "300"
    )
    now[0] += 301  # the oldest failure is out of the window
    assert client.get("/admin", headers=basic(), environ_base=guesser).status_code == 200
    # A good sign-in clears the address's failures.
    for _ in range(2):
        client.get("/admin", headers=basic(password="typo"), environ_base=guesser)
    assert client.get("/admin", headers=basic(), environ_base=guesser).status_code == 200
    for _ in range(2):
        client.get("/admin", headers=basic(password="typo"), environ_base=guesser)
    assert client.get("/admin", headers=basic(), environ_base=guesser).status_code == 200


def test_the_sign_in_throttle_forgets_quiet_addresses_past_its_size():
    now = [0.0]
    throttle = SignInThrottle(failures=2, window=60, clock=lambda: now[0])
    throttle.MAX_ADDRESSES = 3
    for address in ("a", "b", "c"):
        throttle.failed(address)
    now[0] += 61
    throttle.failed("d")  # a, b and c are quiet: dropped to make room
    assert set(throttle._failed) == {"d"}
    throttle.failed("d")
    assert throttle.wait("d") == 60


def test_the_admin_page_shows_runs_failures_and_tenants_escaped(build, store):
    now = datetime.now(UTC)
    with store.unit() as db:
        db.execute(
            sa.insert(schema.tenants).values(
                module=MODULE,
                connection="",
                tenant_id="11111111-1111-1111-1111-111111111111",
                name=EVIL,
                access="consent_missing",
                access_detail="consent <b>needed</b>",
                created_at=now,
                updated_at=now,
            )
        )
        run = db.execute(
            sa.insert(schema.sync_runs).values(
                module=MODULE, started_at=now, finished_at=now, outcome="completed_with_errors"
            )
        ).inserted_primary_key[0]
        db.execute(
            sa.insert(schema.sync_counts).values(
                run_id=run,
                entity_kind="users",
                tenant_id="11111111-1111-1111-1111-111111111111",
                added=3,
                failed=1,
            )
        )
    record_inbound(store, module=MODULE, method="POST", url="/webhooks/x", status=401, outcome=EVIL)
    record_inbound(store, module=MODULE, method="GET", url="/fine", status=200, outcome="ok")
    _, client = build(health=FakeHealth())
    answer = client.get("/admin", headers=basic())
    assert answer.status_code == 200
    assert_secured(answer)
    html = answer.get_data(as_text=True)
    assert "<script" not in html and EVIL not in html
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in html
    assert "consent &lt;b&gt;needed&lt;/b&gt;" in html and "consent needed" in html
    assert "completed_with_errors" in html and "users: added 3, failed 1" in html
    assert "/webhooks/x" in html and "/fine" not in html  # failures only
    assert f"<a href='/{MODULE}/settings'>Probe settings</a>" in html
    assert PASSWORD not in html
    # The one stylesheet is the one the policy allows, by its hash.
    style = re.search(r"<style>(.*?)</style>", html).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in answer.headers["Content-Security-Policy"]


# -- modules' routes ----------------------------------------------------------------------------


def test_hook_web_routes_mounts_a_modules_routes_under_its_prefix_only(build, probe, store):
    app, client = build()
    [context] = probe.contexts
    assert context.module == MODULE and context.public_url == "https://halo.example.test"
    assert context.http is app.http
    assert sorted(r.path for r in app.routes) == [
        f"/{MODULE}/files/",
        f"/{MODULE}/hello",
        f"/{MODULE}/settings",
    ]
    assert next(r for r in app.routes if r.path == f"/{MODULE}/hello").app is not None

    public = client.get(f"/{MODULE}/hello?x=1")
    assert public.status_code == 200 and public.get_data(as_text=True) == f"hello /{MODULE}/hello"
    assert_secured(public)
    assert inbound(store)[-1]["outcome"] == "hi"  # the route had the store to record with
    assert client.get(f"/{MODULE}/files/a/b.txt").get_data(as_text=True).endswith("/a/b.txt")
    assert client.get(f"/{MODULE}/hello/more").status_code == 404
    # The refused routes are served by no one.
    assert client.get("/admin/takeover").status_code == 404
    assert client.get(f"/{MODULE}").status_code == 404


def test_an_admin_route_needs_the_credential_and_its_forms_the_csrf_token(build, probe):
    _, client = build()
    assert client.get(f"/{MODULE}/settings").status_code == 401
    page = client.get(f"/{MODULE}/settings", headers=basic())
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    token = page.get_data(as_text=True).rsplit(" ", 1)[1]
    assert page.get_data(as_text=True).startswith("user admin token ")

    forged = client.post(f"/{MODULE}/settings", data={"colour": "red"}, headers=basic())
    assert forged.status_code == 403 and probe.posted == []
    wrong = client.post(
        f"/{MODULE}/settings", data={"colour": "red", "csrf_token": "0" * 64}, headers=basic()
    )
    assert wrong.status_code == 403 and probe.posted == []
    unsigned = client.post(f"/{MODULE}/settings", data={"csrf_token": token, "colour": "red"})
    assert unsigned.status_code == 401 and probe.posted == []

    ok = client.post(
        f"/{MODULE}/settings", data={"colour": "red", "csrf_token": token}, headers=basic()
    )
    assert ok.status_code == 200 and ok.get_data(as_text=True) == "saved red"
    assert probe.posted == [b"colour=red&csrf_token=" + token.encode()]  # the body, intact
    by_header = client.post(
        f"/{MODULE}/settings",
        data={"colour": "blue"},
        headers={**basic(), "X-CSRF-Token": token},
    )
    assert by_header.get_data(as_text=True) == "saved blue"


def test_a_route_that_fails_answers_500_without_details(
    build, probe, write_config, host_factory, store
):
    class Broken:
        @hookimpl
        def declare_modules(self) -> list[ModuleSpec]:
            return [ModuleSpec(name="broken", title="Broken")]

        @hookimpl
        def web_routes(self, context: ModuleContext) -> list[WebRoute]:
            def app(environ: Any, start_response: Any) -> Any:
                raise RuntimeError("secret detail")

            return [WebRoute(path="/broken/x", app=app)]

    config = load_config(write_config(config_text() + "\n[modules.broken]\nenabled = true\n"))
    host = host_factory(config, (probe, MODULE), (Broken(), "broken"))
    app = make_app(config, store, host)
    try:
        answer = Client(app).get("/broken/x")
        assert answer.status_code == 500 and "secret detail" not in answer.get_data(as_text=True)
        assert_secured(answer)
    finally:
        app.close()


# -- serving ------------------------------------------------------------------------------------


def test_serve_answers_over_a_socket_and_stops(build):
    app, _ = build(health=FakeHealth())
    server = serve(app, "127.0.0.1", 0).start()
    try:
        assert server.port != 0
        with requests.Session() as session:
            session.trust_env = False  # straight to loopback, whatever proxy is set
            answer = session.get(f"{server.url}/healthz", timeout=10)
            assert answer.status_code == 200 and answer.json()["status"] == "ok"
            chunked = session.post(
                f"{server.url}/webhooks/{MODULE}",
                data=iter([b"x" * 800, b"y" * 800]),  # chunked: no Content-Length
                timeout=10,
            )
            assert chunked.status_code == 413

        taken = serve(app, "127.0.0.1", server.port)
        with pytest.raises(ServerError, match=rf"cannot listen on 127\.0\.0\.1:{server.port}: "):
            taken.start()
        assert isinstance(ServerError("x"), OSError)
    finally:
        server.stop()
    with socket.socket() as probe_socket:
        probe_socket.settimeout(2)
        assert probe_socket.connect_ex(("127.0.0.1", server.port)) != 0  # nothing listens


# -- the Microsoft CSP module's routes against the emulator -------------------------------------

PUBLIC = "https://halo.example.test"


class Csp:
    """A config with one connection to the emulator, the CSP plugin, and the app."""

    def __init__(self, emulator, store, write_config, host_factory, monkeypatch) -> None:
        import halo_microsoft_csp.plugin as plugin

        self.emulator = emulator
        self.store = store
        self.partner = next(iter(emulator.world.partners.values()))
        with emulator.world.lock:
            self.partner.partner_center_app.redirect_uris.append(
                f"{PUBLIC}/microsoft_csp/auth/callback"
            )
            self.partner.gdap_app.redirect_uris.append(f"{PUBLIC}/microsoft_csp/consent/callback")
        monkeypatch.setenv("TEST_PC_SECRET", self.partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", self.partner.gdap_app.secret)
        monkeypatch.setenv("TEST_ADMIN_PASSWORD", PASSWORD)
        e = emulator.endpoints()
        p = self.partner
        self.config = load_config(
            write_config(
                f"""
[server]
public_url = "{PUBLIC}"
admin_password = {{ env = "TEST_ADMIN_PASSWORD" }}

[endpoints]
login = "{e["login"]}"
graph = "{e["graph"]}"
partner_center = "{e["partner_center"]}"
partner_api = "{e["partner_api"]}"
ca_bundle = "{e["ca_bundle"]}"

[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{p.tenant_id}"
partner_center_app = {{ client_id = "{p.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{p.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
"""
            )
        )
        host = host_factory(self.config, (plugin, "microsoft_csp"))
        self.app = make_app(self.config, store, host)
        self.client = Client(self.app)

    def admin_page(self) -> str:
        answer = self.client.get("/microsoft_csp/admin", headers=basic())
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return answer.get_data(as_text=True)

    def browse(self, url: str) -> str:
        """Open ``url`` at the emulator; the path and query it redirects to on our server."""
        answer = requests.get(url, allow_redirects=False, verify=str(self.emulator.ca_bundle))
        assert answer.status_code == 302, answer.text
        location = answer.headers["Location"]
        assert location.startswith(PUBLIC + "/microsoft_csp/"), location
        return location.removeprefix(PUBLIC)

    def customer(self, *, consented: bool):
        return next(
            c
            for c in self.emulator.world.customers.values()
            if c.gdap_status == "active" and c.consented is consented
        )

    def add_tenant(self, customer, access: str = "consent_missing") -> None:
        now = datetime.now(UTC)
        with self.store.unit() as db:
            db.execute(
                sa.insert(schema.tenants).values(
                    module="microsoft_csp",
                    connection="main",
                    tenant_id=customer.tenant_id,
                    name=customer.name,
                    access=access,
                    created_at=now,
                    updated_at=now,
                )
            )

    def consent_link(self, tenant_id: str) -> str:
        links = re.findall(r"href='([^']+/v2\.0/adminconsent\?[^']+)'", self.admin_page())
        found = [unescape(link) for link in links if f"/{tenant_id}/v2.0/" in link]
        assert len(found) == 1, links
        return found[0]


@pytest.fixture
def csp(emulator, store, write_config, host_factory, monkeypatch):
    setup = Csp(emulator, store, write_config, host_factory, monkeypatch)
    try:
        yield setup
    finally:
        setup.app.close()


def consent_rows(store: Store) -> list[dict[str, Any]]:
    return [r for r in inbound(store) if str(r["outcome"]).startswith("consent_")]


def test_csp_admin_page_lists_connections_and_tenants_with_consent_links(csp):
    customer = csp.customer(consented=False)
    csp.add_tenant(customer)
    assert ("Microsoft CSP", "/microsoft_csp/admin") in csp.app.admin_links()
    answer = csp.client.get("/microsoft_csp/admin", headers=basic())
    policy = answer.headers["Content-Security-Policy"]
    login = urlsplit(csp.emulator.endpoints()["login"])
    assert f"form-action 'self' https://{login.netloc}" in policy
    html = answer.get_data(as_text=True)
    assert "main" in html and "not authorized" in html
    assert "<form method='post' action='/microsoft_csp/admin/authorize'>" in html
    assert f"{PUBLIC}/microsoft_csp/auth/callback" in html
    link = urlsplit(csp.consent_link(customer.tenant_id))
    query = parse_qs(link.query)
    assert query["client_id"] == [csp.partner.gdap_app.client_id]
    assert query["redirect_uri"] == [f"{PUBLIC}/microsoft_csp/consent/callback"]
    assert customer.name in html and "consent needed" in html


def test_csp_consent_callback_records_a_consent_for_a_link_it_handed_out(csp):
    customer = csp.customer(consented=False)
    csp.add_tenant(customer)
    callback = csp.browse(csp.consent_link(customer.tenant_id))
    answer = csp.client.get(callback)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert "Admin consent granted" in answer.get_data(as_text=True)
    assert_secured(answer)
    [row] = consent_rows(csp.store)
    assert (row["outcome"], row["tenant_id"], row["connection"], row["status"]) == (
        "consent_granted",
        customer.tenant_id,
        "main",
        200,
    )
    assert row["url"].startswith("/microsoft_csp/consent/callback?admin_consent=True")

    again = csp.client.get(callback)  # a link is used once
    assert again.status_code == 400 and "used already" in again.get_data(as_text=True)
    assert len(consent_rows(csp.store)) == 1


def test_csp_consent_callback_refuses_a_state_it_did_not_issue_and_records_nothing(csp):
    customer = csp.customer(consented=False)
    csp.add_tenant(customer)
    good = csp.consent_link(customer.tenant_id)
    state = parse_qs(urlsplit(good).query)["state"][0]
    payload, signature = state.split(".")
    forged_states = [
        "made-up",
        f"{payload}.{'A' * len(signature)}",
        "",
    ]
    for forged in forged_states:
        answer = csp.client.get(
            "/microsoft_csp/consent/callback",
            query_string={"admin_consent": "True", "tenant": customer.tenant_id, "state": forged},
        )
        assert answer.status_code == 400, forged
        assert "was not recorded" in answer.get_data(as_text=True)
    assert consent_rows(csp.store) == []
    refused = [r for r in inbound(csp.store) if r["outcome"] == "state_invalid"]
    assert len(refused) == len(forged_states) and {r["status"] for r in refused} == {400}


def test_csp_consent_answer_for_another_tenant_is_recorded_as_failed(csp):
    customer = csp.customer(consented=False)
    csp.add_tenant(customer)
    state = parse_qs(urlsplit(csp.consent_link(customer.tenant_id)).query)["state"][0]
    other = "22222222-2222-2222-2222-222222222222"
    answer = csp.client.get(
        "/microsoft_csp/consent/callback",
        query_string={"admin_consent": "True", "tenant": other, "state": state},
    )
    assert answer.status_code == 400 and "Admin consent failed" in answer.get_data(as_text=True)
    [row] = consent_rows(csp.store)
    assert row["outcome"] == "consent_failed" and row["tenant_id"] == customer.tenant_id


def test_csp_consent_links_expire():
    from halo_microsoft_csp.web import ConsentStates

    now = [1000.0]
    states = ConsentStates(key=b"k" * 32, clock=lambda: now[0])
    state = states.issue("t-1", "main")
    now[0] += 7 * 24 * 3600 + 1
    assert states.check(state) == (None, "the consent link has expired")
    assert ConsentStates().check(states.issue("t-1", "main"))[0] is None  # another key


def test_csp_authorize_from_the_admin_page_completes_against_the_emulator(csp):
    from halo_microsoft_csp.delegated import DelegatedTokens

    html = csp.admin_page()
    token = re.search(r"name='csrf_token' value='([0-9a-f]+)'", html).group(1)
    refused = csp.client.post(
        "/microsoft_csp/admin/authorize", data={"connection": "main"}, headers=basic()
    )
    assert refused.status_code == 403  # no CSRF token

    started = csp.client.post(
        "/microsoft_csp/admin/authorize",
        data={"connection": "main", "csrf_token": token},
        headers=basic(),
    )
    assert started.status_code == 303
    sign_in = started.headers["Location"]
    assert sign_in.startswith(csp.emulator.endpoints()["login"])
    callback = csp.browse(sign_in)
    assert callback.startswith("/microsoft_csp/auth/callback?code=")

    answer = csp.client.get(callback)
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200, text
    assert f"authorized with Partner Center as admin@{csp.partner.domain}" in text
    assert_secured(answer)
    http = csp.app.http
    [connection] = csp.app.host.active_modules()["microsoft_csp"].settings.connections
    status = DelegatedTokens(connection, csp.config.endpoints, http, csp.config.directory).status()
    assert status.authorized and status.username == f"admin@{csp.partner.domain}"
    assert "authorized as admin@" in csp.admin_page()

    [row] = [r for r in inbound(csp.store) if r["outcome"] == "authorized"]
    assert row["status"] == 200 and row["connection"] == "main"
    assert row["tenant_id"] == csp.partner.tenant_id
    assert "code=[redacted]" in row["url"]
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert code not in row["url"]
    # The token redemption went through the app's client, into the outbound log.
    log = schema.request_log
    with csp.store.read() as db:
        outbound = db.execute(
            sa.select(log.c.module, log.c.connection).where(log.c.direction == "outbound")
        ).all()
    assert ("microsoft_csp", "main") in outbound

    replay = csp.client.get(callback)  # a sign-in completes once
    assert replay.status_code == 400 and "No sign-in" in replay.get_data(as_text=True)
    assert [r["status"] for r in inbound(csp.store) if r["outcome"] == "state_invalid"] == [400]


def test_csp_auth_callback_with_an_unknown_state_changes_nothing(csp, tmp_path):
    answer = csp.client.get(
        "/microsoft_csp/auth/callback", query_string={"code": "abc", "state": "forged"}
    )
    assert answer.status_code == 400
    [row] = inbound(csp.store)
    assert (row["outcome"], row["status"]) == ("state_invalid", 400)
    assert "abc" not in row["url"]
    assert not (tmp_path / "tokens").exists()
    assert csp.client.head("/microsoft_csp/auth/callback?state=x").status_code == 200
    assert len(inbound(csp.store)) == 1
    assert csp.client.post("/microsoft_csp/auth/callback").status_code == 405


def test_csp_sign_ins_expire():
    from halo_microsoft_csp.web import PendingSignIns

    now = [0.0]
    pending = PendingSignIns(clock=lambda: now[0])
    pending.add(object(), {"state": "s1"})  # type: ignore[arg-type]
    now[0] += 15 * 60 + 1
    assert pending.take("s1") is None
    pending.add(object(), {"state": "s2"})  # type: ignore[arg-type]
    assert pending.take("s2") is not None and pending.take("s2") is None


def test_concurrent_requests_are_served(build):
    app, _ = build(health=FakeHealth())
    server = serve(app, "127.0.0.1", 0).start()
    results: list[int] = []
    try:

        def fetch() -> None:
            with requests.Session() as session:
                session.trust_env = False
                results.append(session.get(f"{server.url}/healthz", timeout=10).status_code)

        threads = [threading.Thread(target=fetch) for _ in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert results == [200] * 8 and time.monotonic() - started < 20
    finally:
        server.stop()
