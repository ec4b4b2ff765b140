"""Partner Center webhooks: the receiver (verification as the webhooks page documents it,
replays, refreshes), its settings, and `csp webhooks register|status|test` — all against the
emulator, whose events are signed by its own signer with a certificate from its own CA."""

from __future__ import annotations

import base64
import copy
import io
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import click
import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from halo_integrator_core import ModuleContext, ModuleSpec, hookimpl
from halo_integrator_core.config import ConfigError, load_config
from halo_integrator_core.errors import ConnectionFailed
from halo_integrator_core.models import WebhookEvent, WebhookOutcome
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import Store, schema
from halo_integrator_core.sync.engine import SyncEngine
from halo_integrator_core.webhooks import WebhookRefresher, handle_webhook
from halo_microsoft_csp import webhooks as receiver
from halo_microsoft_emulator import partner_center

MODULE = "microsoft_csp"
PATH = f"/webhooks/{MODULE}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(
    emulator, directory: Path, *, webhooks: str | None = None, server: str = ""
) -> Path:
    partner = next(iter(emulator.world.partners.values()))
    endpoints = "\n".join(f'{key} = "{value}"' for key, value in emulator.endpoints().items())
    if webhooks is None:
        webhooks = f"""enabled = true
allowed_certificate_hosts = ["127.0.0.1:{emulator.port}"]
trusted_ca_file = "{emulator.ca_bundle}"
"""
    path = directory / "halo-integrator.toml"
    path.write_text(
        f"""
[endpoints]
{endpoints}

[integrator]
create_customers_from_tenants = true
{server}
[modules.{MODULE}]
enabled = true

[[modules.{MODULE}.connections]]
name = "main"
tenant_id = "{partner.tenant_id}"
licence_import_type = "subscriptions_and_skus"
partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{partner.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}

[modules.{MODULE}.webhooks]
{webhooks}
""",
        encoding="utf-8",
    )
    return path


class Receiver:
    """The integrator's side: a config, its store (after a sync of tenants and
    subscriptions), a plugin host, and `handle_webhook` with a refresher to wait on."""

    def __init__(self, emulator, directory: Path, monkeypatch, **options: Any) -> None:
        partner = next(iter(emulator.world.partners.values()))
        monkeypatch.setenv("TEST_PC_SECRET", partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", partner.gdap_app.secret)
        self.emulator = emulator
        self.directory = directory
        self.path = write_config(emulator, directory, **options)
        self.config = load_config(self.path)
        self.store = Store.open(self.config.store_url)
        self.host = PluginHost.load(self.config)
        self.modules = self.host.active_modules()
        self.refresher = WebhookRefresher()

    def sync(self) -> None:
        SyncEngine(self.store, self.config, self.host).run(only=["tenants", "subscriptions"])

    def reconfigure(self, **options: Any) -> None:
        self.path = write_config(self.emulator, self.directory, **options)
        self.config = load_config(self.path)
        self.host = PluginHost.load(self.config)
        self.modules = self.host.active_modules()

    def deliver(self, headers: dict[str, str], body: bytes) -> WebhookOutcome:
        event = WebhookEvent(
            module=MODULE, received_at=datetime.now(UTC), headers=headers, body=body
        )
        return handle_webhook(
            self.store,
            self.config,
            self.host,
            event,
            path=PATH,
            modules=self.modules,
            refresher=self.refresher,
        )

    # -- what the store holds ------------------------------------------------------------

    def quantity(self, subscription_id: str) -> int:
        with self.store.read() as db:
            return db.execute(
                sa.select(schema.subscriptions.c.quantity).where(
                    schema.subscriptions.c.external_id == subscription_id
                )
            ).scalar_one()

    def runs(self) -> int:
        with self.store.read() as db:
            return db.execute(sa.select(sa.func.count()).select_from(schema.sync_runs)).scalar()

    def events(self) -> list[str]:
        with self.store.read() as db:
            return list(db.execute(sa.select(schema.webhook_events.c.event_id)).scalars())

    def inbound(self) -> list[dict[str, Any]]:
        log = schema.request_log
        with self.store.read() as db:
            rows = db.execute(
                sa.select(log).where(log.c.direction == "inbound").order_by(log.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def close(self) -> None:
        self.refresher.close(timeout=10)
        self.store.close()


@pytest.fixture(autouse=True)
def fresh_certificates() -> Iterator[None]:
    receiver.CERTIFICATES.clear()
    yield
    receiver.CERTIFICATES.clear()


@pytest.fixture
def setup(emulator, tmp_path, monkeypatch) -> Iterator[Receiver]:
    r = Receiver(emulator, tmp_path, monkeypatch)
    r.sync()
    try:
        yield r
    finally:
        r.close()


def a_subscription(emulator):
    for customer in emulator.world.customers.values():
        if customer.reseller and customer.subscriptions:
            return customer, next(iter(customer.subscriptions.values()))
    raise AssertionError("the emulated world has no reseller customer with a subscription")


def resource_uri(customer, subscription) -> str:
    return f"{partner_center.PUBLIC_HOST}/webhooks/v1/customers/{customer.tenant_id}/subscriptions/{subscription.id}"


def signed(
    emulator, event_name: str, uri: str, *, body: bytes | None = None
) -> tuple[dict[str, str], bytes]:
    """An event signed by the emulator's signer, with the headers it delivers with."""
    app = emulator.app
    body = body if body is not None else partner_center.event_body(app, event_name, uri)
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Signature " + partner_center.sign(app, body),
        "X-MS-Certificate-Url": partner_center.certificate_url(app),
        "X-MS-Signature-Algorithm": "rsa-sha256",
    }
    return headers, body


def identity(
    emulator,
    *,
    organisation: str = "Microsoft Corporation",
    self_signed: bool = False,
    expired: bool = False,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A signing key and certificate other than the emulator's: self-signed, or issued by
    the emulator's CA with another organisation or an expiry in the past."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, partner_center.CERT_NAME),
        ]
    )
    issuer_name, issuer_key = name, key
    if not self_signed:
        issuer_name = x509.load_pem_x509_certificate(emulator.ca.cert_pem.bytes()).subject
        issuer_key = serialization.load_pem_private_key(
            emulator.ca.private_key_pem.bytes(), password=None
        )
    now = datetime.now(UTC)
    valid = (
        (now - timedelta(days=30), now - timedelta(days=1))
        if expired
        else (now - timedelta(days=1), now + timedelta(days=30))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


# -- accepted events, replays, refreshes ------------------------------------------------------


def test_hook_on_webhook_subscription_updated_refreshes_once_and_a_replay_changes_nothing(
    setup, emulator
):
    customer, subscription = a_subscription(emulator)
    before = setup.quantity(subscription.id)
    emulator.world.set_quantity(customer.tenant_id, subscription.id, before + 3)
    runs = setup.runs()
    headers, body = signed(emulator, "subscription-updated", resource_uri(customer, subscription))

    outcome = setup.deliver(headers, body)
    assert outcome.status == 200, outcome.message
    assert outcome.event_name == "subscription-updated"
    assert outcome.tenant_id == customer.tenant_id
    assert outcome.refresh == ("subscriptions",)
    assert outcome.event_id == receiver.event_id(json.loads(body))
    assert setup.refresher.wait(timeout=30)
    assert setup.quantity(subscription.id) == before + 3
    assert setup.runs() == runs + 1

    # Partner Center delivers again (its retries): answered 200, nothing refreshed.
    emulator.world.set_quantity(customer.tenant_id, subscription.id, before + 5)
    again = setup.deliver(headers, body)
    assert again.status == 200 and "already processed" in again.message
    assert setup.refresher.wait(timeout=30)
    assert setup.quantity(subscription.id) == before + 3
    assert setup.runs() == runs + 1
    assert setup.events() == [outcome.event_id]

    first, second = setup.inbound()[-2:]
    assert (first["status"], first["outcome"], first["tenant_id"]) == (
        200,
        "subscription-updated",
        customer.tenant_id,
    )
    assert "refresh queued: subscriptions of tenant" in first["detail"]
    assert second["status"] == 200 and "already processed" in second["detail"]
    assert first["url"] == PATH and first["method"] == "POST"


def test_the_same_event_reformatted_is_still_a_replay(setup, emulator):
    customer, subscription = a_subscription(emulator)
    uri = resource_uri(customer, subscription)
    body = partner_center.event_body(emulator.app, "subscription-updated", uri)
    compact = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert setup.deliver(*signed(emulator, "subscription-updated", uri, body=body)).status == 200
    again = setup.deliver(*signed(emulator, "subscription-updated", uri, body=compact))
    assert "already processed" in again.message
    assert setup.refresher.wait(timeout=30)


def test_test_created_other_and_unknown_events_are_logged_without_a_refresh(setup, emulator):
    runs = setup.runs()
    test = setup.deliver(
        *signed(
            emulator,
            "test-created",
            f"{partner_center.PUBLIC_HOST}/webhooks/v1/registration/validationEvents/c0bfd694-3075-4ec5-9a3c-733d3a890a1f",
        )
    )
    assert test.status == 200 and test.refresh == () and "registration works" in test.message
    invoice = setup.deliver(
        *signed(emulator, "invoice-ready", f"{partner_center.PUBLIC_HOST}/v1/invoices/G000024135")
    )
    assert invoice.status == 200 and invoice.refresh == ()
    unknown = setup.deliver(*signed(emulator, "galaxy-exploded", "https://x.invalid/y"))
    assert unknown.status == 200 and "unknown event 'galaxy-exploded'" in unknown.message
    assert setup.refresher.wait(timeout=5)
    assert setup.runs() == runs
    assert [r["outcome"] for r in setup.inbound()] == [
        "test-created",
        "invoice-ready",
        "galaxy-exploded",
    ]
    assert len(setup.events()) == 3


class Echo:
    """An in-test module whose events are 'verified' and carry the body as their event ID."""

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="echo", title="Echo")]

    @hookimpl
    def on_webhook(self, context: ModuleContext, event: WebhookEvent) -> WebhookOutcome:
        return WebhookOutcome(
            status=202, message="taken", event_name="echoed", event_id=event.body.decode()
        )


def test_an_event_id_is_processed_once_even_when_deliveries_race(store, write_config, host_factory):
    config = load_config(write_config("[modules.echo]\nenabled = true\n"))
    host = host_factory(config, (Echo(), "echo"))
    modules = host.active_modules()

    def deliver(event_id: str) -> WebhookOutcome:
        event = WebhookEvent(
            module="echo", received_at=datetime.now(UTC), headers={}, body=event_id.encode()
        )
        return handle_webhook(store, config, host, event, path="/webhooks/echo", modules=modules)

    answers: list[WebhookOutcome] = []
    threads = [threading.Thread(target=lambda: answers.append(deliver("E1"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(a.status for a in answers) == [200, 200, 200, 202]
    assert sum("already processed (event E1)" in a.message for a in answers) == 3
    assert deliver("E2").status == 202  # another event is new
    with store.read() as db:
        rows = db.execute(
            sa.select(schema.webhook_events.c.module, schema.webhook_events.c.event_id).order_by(
                schema.webhook_events.c.event_id
            )
        ).all()
        logged = db.execute(sa.select(sa.func.count()).select_from(schema.request_log)).scalar()
    assert [tuple(r) for r in rows] == [("echo", "E1"), ("echo", "E2")]
    assert logged == 5


# -- rejections -------------------------------------------------------------------------------


def assert_rejected(setup, outcome: WebhookOutcome, status: int, words: str) -> None:
    assert outcome.status == status, outcome.message
    assert words in outcome.message, outcome.message
    assert outcome.refresh == () and outcome.event_id is None
    row = setup.inbound()[-1]
    assert (row["status"], row["url"], row["outcome"]) == (status, PATH, "rejected")
    assert words in row["detail"]
    assert setup.events() == []


@pytest.fixture
def update(setup, emulator):
    """A subscription-updated event whose change, if it were acted on, would show."""
    customer, subscription = a_subscription(emulator)
    before = setup.quantity(subscription.id)
    emulator.world.set_quantity(customer.tenant_id, subscription.id, before + 7)
    runs = setup.runs()
    headers, body = signed(emulator, "subscription-updated", resource_uri(customer, subscription))
    yield headers, body
    assert setup.refresher.wait(timeout=5)
    assert setup.quantity(subscription.id) == before  # nothing changed
    assert setup.runs() == runs


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("Authorization", "unsigned: no Authorization"),
        ("X-MS-Certificate-Url", "required header(s) missing: x-ms-certificate-url"),
        ("X-MS-Signature-Algorithm", "required header(s) missing: x-ms-signature-algorithm"),
    ],
)
def test_missing_headers_are_refused(setup, update, header, words):
    headers, body = update
    del headers[header]
    assert_rejected(setup, setup.deliver(headers, body), 401, words)


def test_another_authorization_scheme_is_refused(setup, update):
    headers, body = update
    headers["Authorization"] = "Bearer " + headers["Authorization"].split()[1]
    assert_rejected(setup, setup.deliver(headers, body), 401, "scheme is not 'Signature'")


def test_the_signature_may_come_in_x_ms_signature(setup, emulator):
    headers, body = signed(emulator, "test-created", "https://x.invalid/validationEvents/1")
    headers["x-ms-signature"] = headers.pop("Authorization")
    assert setup.deliver(headers, body).status == 200


def test_a_certificate_host_not_allowed_is_refused_and_never_fetched(setup, emulator, update):
    headers, body = update
    setup.reconfigure(webhooks=f'enabled = true\ntrusted_ca_file = "{emulator.ca_bundle}"\n')
    assert_rejected(
        setup, setup.deliver(headers, body), 401, f"its host 127.0.0.1:{emulator.port} is not on"
    )
    headers["X-MS-Certificate-Url"] = headers["X-MS-Certificate-Url"].replace("https:", "http:")
    assert_rejected(setup, setup.deliver(headers, body), 401, "it is not https")
    assert not any("/certs/" in path for _, path, _ in emulator.app.requests)


def test_a_certificate_url_on_an_allowed_host_but_another_port_is_refused(setup, update):
    headers, body = update
    headers["X-MS-Certificate-Url"] = "https://127.0.0.1:1/partnercenter/certs/x.cer"
    assert_rejected(setup, setup.deliver(headers, body), 401, "127.0.0.1:1 is not on")


def test_a_self_signed_certificate_does_not_chain(setup, emulator, update):
    headers, body = update
    emulator.app.state["pc_signing"] = identity(emulator, self_signed=True)
    headers, body = signed(emulator, "subscription-updated", json.loads(body)["ResourceUri"])
    assert_rejected(setup, setup.deliver(headers, body), 401, "does not chain to a trusted root")


def test_the_public_roots_do_not_trust_the_emulator(setup, emulator, update):
    headers, body = update
    setup.reconfigure(
        webhooks=f'enabled = true\nallowed_certificate_hosts = ["127.0.0.1:{emulator.port}"]\n'
    )
    assert_rejected(setup, setup.deliver(headers, body), 401, "does not chain to a trusted root")


def test_a_certificate_of_another_organisation_is_refused(setup, emulator, update):
    headers, body = update
    emulator.app.state["pc_signing"] = identity(emulator, organisation="Contoso Ltd")
    headers, body = signed(emulator, "subscription-updated", json.loads(body)["ResourceUri"])
    assert_rejected(
        setup,
        setup.deliver(headers, body),
        401,
        "subject organisation is not Microsoft Corporation",
    )


def test_an_expired_certificate_is_refused(setup, emulator, update):
    headers, body = update
    emulator.app.state["pc_signing"] = identity(emulator, expired=True)
    headers, body = signed(emulator, "subscription-updated", json.loads(body)["ResourceUri"])
    assert_rejected(setup, setup.deliver(headers, body), 401, "the signing certificate expired on")


def test_a_bad_signature_is_refused(setup, update):
    headers, body = update
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = forged.sign(body, padding.PKCS1v15(), hashes.SHA256())
    headers["Authorization"] = "Signature " + base64.b64encode(signature).decode()
    assert_rejected(setup, setup.deliver(headers, body), 401, "signature does not verify")
    headers["Authorization"] = "Signature not*base64"
    assert_rejected(setup, setup.deliver(headers, body), 401, "the signature is not base64")


def test_a_tampered_body_is_refused(setup, update):
    headers, body = update
    tampered = body.replace(b"subscription-updated", b"subscription-updatez")
    assert_rejected(setup, setup.deliver(headers, tampered), 401, "signature does not verify")


def test_an_unsupported_algorithm_is_refused_before_any_fetch(setup, emulator, update):
    headers, body = update
    headers["X-MS-Signature-Algorithm"] = "rsa-sha1"
    assert_rejected(
        setup, setup.deliver(headers, body), 401, "unsupported X-MS-Signature-Algorithm 'rsa-sha1'"
    )
    assert not any("/certs/" in path for _, path, _ in emulator.app.requests)


def test_malformed_json_after_a_good_signature_is_a_bad_request(setup, emulator, update):
    for body, words in (
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"ResourceUri": "x"}', "no EventName"),
    ):
        headers, body = signed(emulator, "x", "x", body=body)
        assert_rejected(setup, setup.deliver(headers, body), 400, words)


def test_webhooks_off_answer_404_without_fetching(setup, emulator, update):
    headers, body = update
    setup.reconfigure(webhooks="enabled = false\n")
    outcome = setup.deliver(headers, body)
    assert outcome.status == 404 and "webhooks are off" in outcome.message
    assert not any("/certs/" in path for _, path, _ in emulator.app.requests)


def test_the_certificate_is_fetched_once_and_cached(setup, emulator):
    for n in range(3):
        uri = f"https://x.invalid/validationEvents/{n}"
        assert setup.deliver(*signed(emulator, "test-created", uri)).status == 200
    fetches = [p for _, p, _ in emulator.app.requests if "/certs/" in p]
    assert len(fetches) == 1
    assert any(
        r["direction"] == "outbound" and "/certs/" in r["url"]
        for r in _log(setup.store)  # the fetch is in the outbound request log
    )


def test_the_cache_is_bounded_and_expires():
    cache = receiver.CertificateCache(size=2, seconds=60)
    cert = partner_center.signing_identity(_bare_app())[1]
    for url in ("a", "b", "c"):
        cache.put(url, (cert,))
    assert cache.get("a") is None and cache.get("c") is not None
    assert cache.get("b", now=cache.get("b").at + 61) is None


def _bare_app():
    from halo_microsoft_emulator import generate
    from halo_microsoft_emulator.app import Emulator

    return Emulator(generate(seed=1, customers=1, users=1, devices=0))


def _log(store: Store) -> list[dict[str, Any]]:
    with store.read() as db:
        return [dict(r._mapping) for r in db.execute(sa.select(schema.request_log))]


# -- intermediates from caIssuers ---------------------------------------------------------------


class _Served:
    """A stand-in for the HTTP client that serves fixed bytes per URL and counts fetches."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fetched: list[str] = []

    def request(self, method: str, url: str, **_: Any) -> Any:
        self.fetched.append(url)
        if self.files[url] is None:
            raise ConnectionFailed("connection reset", method=method, url=url)
        response = requests.Response()
        response.status_code = 200
        response.raw = io.BytesIO(self.files[url])
        return response


def test_a_missing_intermediate_is_fetched_from_an_allowed_issuer_host(tmp_path):
    import trustme

    from halo_microsoft_csp.settings import WebhookSettings

    root = trustme.CA(organization_name="Microsoft Corporation")
    root_cert = x509.load_pem_x509_certificate(root.cert_pem.bytes())
    root_key = serialization.load_pem_private_key(root.private_key_pem.bytes(), None)
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    issuer = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Test TLS Issuing CA"),
                ]
            )
        )
        .issuer_name(root_cert.subject)
        .public_key(issuer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=60))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # A TLS issuing CA marked for servers only: the page's basic policy takes it.
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    aia = "http://www.microsoft.com/pkiops/certs/issuing.crt"
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation"),
                    x509.NameAttribute(NameOID.COMMON_NAME, partner_center.CERT_NAME),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier("http://evil.invalid/x.crt"),
                    ),
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(aia),
                    ),
                ]
            ),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    ca_file = tmp_path / "roots.pem"
    root.cert_pem.write_to_path(str(ca_file))
    url = "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer"
    http = _Served(
        {
            url: leaf.public_bytes(serialization.Encoding.DER),
            aia: issuer.public_bytes(serialization.Encoding.DER),
        }
    )
    body = b'{"EventName": "test-created"}'
    headers = {
        "Authorization": "Signature "
        + base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode(),
        "X-MS-Certificate-Url": url,
        "X-MS-Signature-Algorithm": "RSA-SHA256",
    }
    settings = WebhookSettings(enabled=True, trusted_ca_file=ca_file)
    receiver.verify(headers, body, settings, http)  # type: ignore[arg-type]
    assert http.fetched == [url, aia]  # never the host off the list
    receiver.CERTIFICATES.clear()
    http.fetched.clear()
    closed = WebhookSettings(enabled=True, trusted_ca_file=ca_file, issuer_certificate_hosts=())
    with pytest.raises(receiver.Rejected, match="does not chain"):
        receiver.verify(headers, body, closed, http)  # type: ignore[arg-type]
    assert http.fetched == [url]
    # The issuer host not answering is not the sender's fault: 503, delivered again later.
    receiver.CERTIFICATES.clear()
    http.files[aia] = None
    with pytest.raises(receiver.Rejected, match="cannot fetch the issuing certificate") as caught:
        receiver.verify(headers, body, settings, http)  # type: ignore[arg-type]
    assert caught.value.status == 503
    # A query or fragment would make each forged request a fetch: refused, never fetched.
    http.fetched.clear()
    for other in (url + "?n=1", url + "#x"):
        with pytest.raises(receiver.Rejected, match="query or fragment"):
            receiver.verify(  # type: ignore[arg-type]
                headers | {"X-MS-Certificate-Url": other}, body, settings, http
            )
    assert http.fetched == []


# -- settings -----------------------------------------------------------------------------------


def test_webhook_settings_are_checked_with_their_key_paths(emulator, tmp_path):
    path = write_config(
        emulator,
        tmp_path,
        webhooks='enabled = "yes"\nallowed_certificate_hosts = ["https://x/"]\n'
        'events = ["subscription-updatd"]\ntrusted_ca_file = "/no/such/file.pem"\ntypo = 1\n',
    )
    with pytest.raises(ConfigError) as caught:
        PluginHost.load(load_config(path)).active_modules()
    problems = "\n".join(caught.value.problems)
    prefix = f"modules.{MODULE}.webhooks"
    assert f"{prefix}.enabled: expected a boolean" in problems
    assert f"{prefix}.typo: unknown key" in problems
    # The values are checked once the types are right.
    path = write_config(
        emulator,
        tmp_path,
        webhooks='allowed_certificate_hosts = ["https://x/", "Good.Example:8443"]\n'
        'events = ["subscription-updatd"]\ntrusted_ca_file = "/no/such/file.pem"\n',
    )
    with pytest.raises(ConfigError) as caught:
        PluginHost.load(load_config(path)).active_modules()
    problems = "\n".join(caught.value.problems)
    assert f"{prefix}.allowed_certificate_hosts[0]: not a host name: 'https://x/'" in problems
    assert (
        f"{prefix}.events[0]: 'subscription-updatd' is not a Partner Center webhook event"
        in problems
    )
    assert "did you mean 'subscription-updated'" in problems
    assert f"{prefix}.trusted_ca_file: cannot read /no/such/file.pem" in problems
    assert "allowed_certificate_hosts[1]" not in problems  # case does not matter


def test_webhook_settings_default_to_off_and_microsofts_host(emulator, tmp_path, monkeypatch):
    path = write_config(emulator, tmp_path, webhooks="")
    settings = PluginHost.load(load_config(path)).active_modules()[MODULE].settings.webhooks
    assert settings.enabled is False
    assert settings.allowed_certificate_hosts == ("3psostorageacct.blob.core.windows.net",)
    assert settings.trusted_ca_file is None
    assert settings.events == ("subscription-updated",)


# -- the commands ---------------------------------------------------------------------------------


class Callback:
    """The integrator's callback on loopback: what `halo-integrator run` serves, reduced to
    `handle_webhook` (the daemon's server is tested with the daemon)."""

    def __init__(self, setup: Receiver) -> None:
        self.setup = setup
        self.server = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        outcome = self.setup.deliver(headers, body)
        start_response(f"{outcome.status} X", [("Content-Type", "application/json")])
        return [json.dumps({"message": outcome.message}).encode()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def callback(setup) -> Iterator[Callback]:
    server = Callback(setup)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def webhook_commands(monkeypatch) -> None:
    """`csp webhooks`, added to the csp group as its own line does (for this test only)."""
    from halo_microsoft_csp.commands import csp
    from halo_microsoft_csp.webhook_commands import webhooks

    monkeypatch.setitem(csp.commands, "webhooks", webhooks)


def command_line(path: Path) -> click.Group:
    from halo_integrator_core.cli import cli, register_plugin_commands

    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    register_plugin_commands(group, ["--config", str(path)])
    return group


def run(setup: Receiver, *args: str) -> Any:
    result = CliRunner().invoke(command_line(setup.path), ["--config", str(setup.path), *args])
    assert "Traceback" not in result.output, result.output
    return result


def test_register_status_and_test_against_the_emulator(setup, emulator, callback):
    setup.reconfigure(
        server=f'[server]\npublic_url = "{callback.url}"\n',
    )
    partner = next(iter(emulator.world.partners.values()))
    status = run(setup, "csp", "webhooks", "status")
    assert status.exit_code == 0, status.output
    assert "main (partner tenant" in status.stdout and "not registered" in status.stdout
    assert "events received: none yet" in status.stdout

    registered = run(setup, "csp", "webhooks", "register")
    assert registered.exit_code == 0, registered.output
    url = f"{callback.url}/webhooks/{MODULE}"
    assert f"registered: {url} for subscription-updated, test-created (subscriber " in (
        registered.stdout
    )
    stored = emulator.app.state["pc_webhooks"][partner.tenant_id]
    assert stored["WebhookUrl"] == url
    assert stored["WebhookEvents"] == ["subscription-updated", "test-created"]
    again = run(setup, "csp", "webhooks", "register")
    assert "updated the registration" in again.stdout
    assert ("PUT", "/partnercenter/webhooks/v1/registration") in [
        (m, p) for m, p, _ in emulator.app.requests
    ]

    tested = run(setup, "csp", "webhooks", "test", "--timeout", "20")
    assert tested.exit_code == 0, tested.output
    assert "delivery at " in tested.stdout and ": OK" in tested.stdout
    assert "the callback answered OK: the registration works" in tested.stdout
    assert setup.inbound()[-1]["outcome"] == "test-created"

    status = run(setup, "csp", "webhooks", "status")
    assert f"registered {url} for subscription-updated, test-created" in status.stdout
    assert "receiver: on at /webhooks/microsoft_csp" in status.stdout
    assert "200  test-created" in status.stdout

    # A change made in the Partner Center portal arrives by webhook and is refreshed.
    customer, subscription = a_subscription(emulator)
    before = setup.quantity(subscription.id)
    answer = requests.put(
        f"{emulator.base_url}/_admin/tenants/{customer.tenant_id}/subscriptions/{subscription.id}/quantity",
        json={"quantity": before + 2},
        verify=str(emulator.ca_bundle),
        timeout=10,
    )
    assert answer.status_code == 204
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while setup.quantity(subscription.id) != before + 2 and datetime.now(UTC) < deadline:
        setup.refresher.wait(timeout=1)
    assert setup.quantity(subscription.id) == before + 2
    assert setup.inbound()[-1]["outcome"] == "subscription-updated"


def test_register_refuses_plain_http_and_webhooks_off(setup, emulator):
    plain = run(setup, "csp", "webhooks", "register", "--url", "http://example.com/webhooks/x")
    assert plain.exit_code == 2
    assert "refusing the http:// callback URL" in plain.output
    assert "unencrypted" in plain.output and "TLS proxy" in plain.output
    setup.reconfigure(webhooks="enabled = false\n")
    off = run(setup, "csp", "webhooks", "register", "--url", "https://example.com/w")
    assert off.exit_code == 2 and "webhooks are off" in off.output
    assert "pc_webhooks" not in emulator.app.state or not emulator.app.state["pc_webhooks"]


def test_partner_center_refusals_are_explained(setup, emulator):
    emulator.app.inject("forbidden", endpoint="partner_center.webhook_registration")
    refused = run(setup, "csp", "webhooks", "register", "--url", "https://example.com/w")
    assert refused.exit_code == 1
    assert "refused connection main the webhook API" in refused.output
    assert "Helpdesk agent" in refused.output and "fix:" in refused.output
    emulator.app.clear_faults()

    untested = run(setup, "csp", "webhooks", "test")
    assert untested.exit_code == 1 and "has no webhook registration" in untested.output
    assert (
        run(setup, "csp", "webhooks", "register", "--url", "https://example.com/w").exit_code == 0
    )
    partner = next(iter(emulator.world.partners.values()))
    recent = emulator.app.state.setdefault("pc_validation_times", {})
    recent[partner.tenant_id] = [datetime.now(UTC)] * 2  # two test events this minute
    throttled = run(setup, "csp", "webhooks", "test")
    assert throttled.exit_code == 1
    assert "2 validation events a minute: try again in" in throttled.output
