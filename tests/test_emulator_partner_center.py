"""The emulated Partner Center API: customers and their paging, subscriptions and quantity
changes, subscribed SKUs, webhooks with signed delivery; each checked against Microsoft's samples."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from conformance import assert_conforms, load_sample
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from halo_microsoft_emulator import app as emulator_app
from halo_microsoft_emulator import partner_center

PC = "partner_center"


# -- helpers -----------------------------------------------------------------------------------


def partner(server):
    return next(iter(server.world.partners.values()))


def customers(server) -> list:
    """The world's customers in order: 0 reseller+GDAP, 1 GDAP only, 2 reseller only,
    3 reseller with expired GDAP, 4 reseller+GDAP."""
    return list(server.world.customers.values())


def headers(server, *, delegated: bool = True, **extra: str) -> dict[str, str]:
    p = partner(server)
    scope = "user_impersonation" if delegated else ".default"
    token = server.app.tokens.issue(
        client_id=p.partner_center_app.client_id,
        tenant=p.tenant_id,
        resource=emulator_app.PARTNER_CENTER,
        scopes=(f"{emulator_app.PARTNER_CENTER}/{scope}",),
        user="admin-agent@emulatedmsp1.onmicrosoft.com" if delegated else None,
    )
    return {"Authorization": f"Bearer {token.value}", "Accept": "application/json", **extra}


def get(server, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", headers(server))
    return requests.get(
        f"{server.base_url}/partnercenter{path}", verify=str(server.ca_bundle), timeout=10, **kwargs
    )


def patch(server, path: str, body: Any, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", headers(server))
    return requests.patch(
        f"{server.base_url}/partnercenter{path}",
        json=body,
        verify=str(server.ca_bundle),
        timeout=10,
        **kwargs,
    )


def a_subscription(server, customer_index: int = 0):
    customer = customers(server)[customer_index]
    return customer, next(iter(customer.subscriptions.values()))


def follow(server, link: dict[str, Any], hdrs: dict[str, str]) -> requests.Response:
    """What a client does with links.next: prefix /v1 when missing, send the link's headers."""
    uri = link["uri"]
    if not uri.startswith("/v1/"):
        uri = "/v1" + uri
    extra = {h["key"]: h["value"] for h in link["headers"]}
    return get(server, uri, headers={**hdrs, **extra})


# -- customers -------------------------------------------------------------------------------


@pytest.mark.parametrize("links_with_v1", [False, True], ids=["link-without-v1", "link-with-v1"])
def test_customers_are_paged_by_next_link_and_continuation_token(emulator, links_with_v1):
    emulator.app.state["pc_links_with_v1"] = links_with_v1
    hdrs = headers(emulator)
    sample = load_sample(PC, "customers_list")
    response = get(emulator, "/v1/customers?size=1", headers=hdrs)
    seen, pages = [], 0
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        assert_conforms(sample, page)
        assert page["totalCount"] == len(page["items"]) == 1
        seen += [item["id"] for item in page["items"]]
        pages += 1
        nxt = page["links"].get("next")
        if nxt is None:
            break
        assert nxt["uri"].startswith("/v1/customers?" if links_with_v1 else "/customers?")
        assert "seekOperation=Next" in nxt["uri"]
        assert [h["key"] for h in nxt["headers"]] == ["MS-ContinuationToken"]
        response = follow(emulator, nxt, hdrs)
    resellers = [c.tenant_id for c in customers(emulator) if c.reseller]
    assert seen == resellers and pages == len(resellers) == 4
    assert customers(emulator)[1].tenant_id not in seen  # GDAP only: no reseller relationship


def test_continuation_tokens_serve_once_and_the_link_needs_v1(emulator):
    hdrs = headers(emulator)
    nxt = get(emulator, "/v1/customers?size=2", headers=hdrs).json()["links"]["next"]
    token = nxt["headers"][0]["value"]
    bare = get(emulator, nxt["uri"], headers={**hdrs, "MS-ContinuationToken": token})
    assert bare.status_code == 404 and bare.json()["code"] == 1000  # clients must add /v1
    assert follow(emulator, nxt, hdrs).status_code == 200
    reused = follow(emulator, nxt, hdrs)
    assert reused.status_code == 400
    assert set(reused.json()) == {"code", "description", "data", "source"}
    garbage = get(
        emulator,
        "/v1/customers?size=2&seekOperation=Next",
        headers={**hdrs, "MS-ContinuationToken": "AQAAAA=="},
    )
    assert garbage.status_code == 400 and garbage.json()["code"] == 3000
    missing = get(emulator, "/v1/customers?size=2&seekOperation=Next", headers=hdrs)
    assert missing.status_code == 400


def test_page_size_defaults_to_and_is_capped_at_500(emulator):
    whole = get(emulator, "/v1/customers").json()
    assert len(whole["items"]) == 4 and "next" not in whole["links"]
    assert whole["links"]["self"]["uri"] == "/v1/customers?size=500"
    capped = get(emulator, "/v1/customers?size=100000").json()
    assert capped["links"]["self"]["uri"] == "/v1/customers?size=500"


def test_tokens_are_checked_and_ids_echoed(emulator):
    response = get(
        emulator,
        "/v1/customers?size=1",
        headers=headers(emulator, **{"MS-CorrelationId": "c-1", "MS-RequestId": "r-1"}),
    )
    assert (
        response.headers["MS-CorrelationId"] == "c-1" and response.headers["MS-RequestId"] == "r-1"
    )
    assert get(emulator, "/v1/customers", headers={}).status_code == 401
    graph = emulator.app.tokens.issue(
        client_id="x",
        tenant=partner(emulator).tenant_id,
        resource=emulator_app.GRAPH,
        scopes=(".default",),
    )
    wrong = get(emulator, "/v1/customers", headers={"Authorization": f"Bearer {graph.value}"})
    assert wrong.status_code == 401


def test_get_a_customer(emulator):
    full, gdap_only, reseller_only = customers(emulator)[:3]
    response = get(emulator, f"/v1/customers/{full.tenant_id}")
    assert response.status_code == 200
    body = response.json()
    assert_conforms(load_sample(PC, "customer_get"), body)
    assert body["companyProfile"]["companyName"] == full.name and body["customDomains"] == [
        full.domain
    ]
    # Without (G)DAP access the address, email and custom domains are left out, as documented.
    partial = get(emulator, f"/v1/customers/{reseller_only.tenant_id}").json()
    assert_conforms(load_sample(PC, "customer_get"), partial)
    assert "address" not in partial["companyProfile"] and "customDomains" not in partial

    refused = get(emulator, f"/v1/customers/{gdap_only.tenant_id}")
    assert refused.status_code == 403
    assert refused.json() == {
        "code": 20002,
        "description": f"The partner ID {partner(emulator).tenant_id} has no commerce relationship with the customer ID {gdap_only.tenant_id}.",
        "data": [],
        "source": "PartnerFD",
    }
    unknown = get(emulator, "/v1/customers/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404 and unknown.json()["code"] == 60003
    assert unknown.json()["description"] == "Tenant not found"


# -- subscriptions ---------------------------------------------------------------------------


def test_list_and_get_subscriptions(emulator):
    customer = customers(emulator)[0]
    response = get(
        emulator,
        f"/v1/customers/{customer.tenant_id}/subscriptions",
        headers=headers(emulator, delegated=False),
    )
    assert response.status_code == 200
    body = response.json()
    assert_conforms(load_sample(PC, "subscriptions_list"), body)
    assert body["totalCount"] == len(customer.subscriptions) == len(body["items"])
    for item in body["items"]:
        subscription = customer.subscriptions[item["id"]]
        product, sku, availability = item["offerId"].split(":")
        assert (
            item["offerId"] == subscription.offerId and len(product) == 12 and sku and availability
        )
        assert item["quantity"] == subscription.quantity and item["unitType"] == "Licenses"
        assert (
            item["billingType"] == "license" and item["termDuration"] == subscription.termDuration
        )
        assert (
            item["links"]["self"]["uri"]
            == f"/customers/{customer.tenant_id}/subscriptions/{item['id']}"
        )
        assert "refundableQuantity" not in item

        one = get(emulator, f"/v1/customers/{customer.tenant_id}/subscriptions/{item['id']}")
        assert one.status_code == 200
        assert_conforms(load_sample(PC, "subscription_get"), one.json())
        assert set(one.json()["refundableQuantity"]) == {"totalQuantity", "details"}

    missing = get(emulator, f"/v1/customers/{customer.tenant_id}/subscriptions/not-a-subscription")
    assert missing.status_code == 404 and missing.json()["code"] == 20003
    gdap_only = customers(emulator)[1]
    assert (
        get(emulator, f"/v1/customers/{gdap_only.tenant_id}/subscriptions").json()["code"] == 20002
    )


def sub_path(customer, subscription) -> str:
    return f"/v1/customers/{customer.tenant_id}/subscriptions/{subscription.id}"


def _full_resource(emulator, customer, subscription) -> dict[str, Any]:
    return get(emulator, sub_path(customer, subscription)).json()


def test_increase_quantity(emulator):
    customer, subscription = a_subscription(emulator)
    resource = _full_resource(emulator, customer, subscription)
    before = resource["quantity"]
    resource["quantity"] = before + 3
    response = patch(emulator, sub_path(customer, subscription), resource)
    assert response.status_code == 200, response.text
    assert response.json()["quantity"] == before + 3
    assert subscription.quantity == before + 3
    assert customer.skus[subscription.skuId].enabled == before + 3
    # The added licences are refundable for 7 days.
    again = _full_resource(emulator, customer, subscription)
    assert any(d["quantity"] == 3 for d in again["refundableQuantity"]["details"])
    # The page's first example sends the resource in PascalCase.
    body = {
        "Id": subscription.id,
        "Quantity": before + 4,
        "Attributes": {"ObjectType": "Subscription"},
    }
    response = patch(emulator, sub_path(customer, subscription), body)
    assert response.status_code == 200 and subscription.quantity == before + 4


def test_decrease_after_seven_days_is_refused(emulator):
    customer, subscription = a_subscription(emulator)
    subscription.creationDate = emulator.world.now - timedelta(days=30)
    subscription.termDuration = "P1Y"
    subscription.quantity = 20
    path = sub_path(customer, subscription)
    resource = _full_resource(emulator, customer, subscription)
    assert resource["refundableQuantity"] == {"totalQuantity": 0, "details": []}
    resource["quantity"] = 19
    refused = patch(emulator, path, resource)
    assert refused.status_code == 400
    assert refused.json() == load_sample(PC, "subscription_quantity_decrease_refused")["response"]
    assert subscription.quantity == 20

    # Licences added mid-term can be taken back within 7 days, and no more than were added.
    resource["quantity"] = 25
    assert patch(emulator, path, resource).status_code == 200
    resource["quantity"] = 22
    assert patch(emulator, path, resource).status_code == 200
    resource["quantity"] = 19
    assert patch(emulator, path, resource).json()["code"] == 800090
    emulator.world.advance(days=8)
    resource["quantity"] = 21
    assert patch(emulator, path, resource).json()["code"] == 800090
    assert subscription.quantity == 22


def test_decrease_within_seven_days_of_purchase(emulator):
    customer, subscription = a_subscription(emulator)
    subscription.creationDate = emulator.world.now - timedelta(days=2)
    subscription.quantity = 10
    resource = _full_resource(emulator, customer, subscription)
    assert resource["refundableQuantity"]["totalQuantity"] == 10
    assert resource["refundOptions"][0]["type"] == "Full"
    resource["quantity"] = 4
    response = patch(emulator, sub_path(customer, subscription), resource)
    assert response.status_code == 200 and subscription.quantity == 4


def test_quantity_outside_the_allowed_range(emulator):
    customer, subscription = a_subscription(emulator)
    path = sub_path(customer, subscription)
    resource = _full_resource(emulator, customer, subscription)
    for quantity in (0, 301):
        resource["quantity"] = quantity
        response = patch(emulator, path, resource)
        assert response.status_code == 400 and response.json()["code"] == 2002
    resource["quantity"] = "many"
    assert patch(emulator, path, resource).status_code == 400


def test_slow_quantity_change_answers_202_with_location(emulator):
    customer, subscription = a_subscription(emulator)
    path = sub_path(customer, subscription)
    emulator.app.state["pc_patch_async"] = True
    resource = _full_resource(emulator, customer, subscription)
    resource["quantity"] += 1
    response = patch(emulator, path, resource)
    assert response.status_code == 202
    location = response.headers["Location"]
    assert location == f"{emulator.base_url}/partnercenter{path}"
    polled = requests.get(
        location, headers=headers(emulator), verify=str(emulator.ca_bundle), timeout=10
    )
    assert polled.json()["quantity"] == resource["quantity"]

    emulator.app.state["pc_patch_async"] = False
    subscription.quantity = 10
    resource["quantity"] = 150  # a large change takes "longer than the expected time"
    assert patch(emulator, path, resource).status_code == 202
    assert subscription.quantity == 150


# -- subscribed SKUs -------------------------------------------------------------------------


def test_subscribed_skus_need_app_plus_user(emulator):
    customer = customers(emulator)[0]
    path = f"/v1/customers/{customer.tenant_id}/subscribedskus"
    app_only = get(emulator, path, headers=headers(emulator, delegated=False))
    assert app_only.status_code == 403
    assert app_only.json()["description"] == partner_center.NO_RIGHTS

    response = get(emulator, path)
    assert response.status_code == 200
    body = response.json()
    assert_conforms(load_sample(PC, "subscribedskus_list"), body)
    assert body["totalCount"] == len(customer.skus)
    for item in body["items"]:
        sku = customer.skus[item["productSku"]["id"]]
        assert item["consumedUnits"] == customer.consumed(sku.skuId)
        assert item["activeUnits"] == sku.enabled
        assert item["totalUnits"] == item["activeUnits"] + item["warningUnits"]
        assert item["availableUnits"] == max(0, item["totalUnits"] - item["consumedUnits"])
        assert item["productSku"]["skuPartNumber"] == sku.skuPartNumber and item["servicePlans"]

    # GDAP roles are needed: a reseller-only customer has none.
    reseller_only = customers(emulator)[2]
    assert (
        get(emulator, f"/v1/customers/{reseller_only.tenant_id}/subscribedskus").status_code == 403
    )
    assert get(emulator, f"{path}?licenseGroupIds=group2").json()["items"] == []


# -- webhooks --------------------------------------------------------------------------------


class Receiver:
    """A tiny HTTP server on loopback recording what is POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.condition = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.condition:
                    outer.received.append((dict(self.headers.items()), body))
                    outer.condition.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/callback"

    def wait(self, count: int, timeout: float = 5) -> list[tuple[dict[str, str], bytes]]:
        with self.condition:
            self.condition.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def verify_event(server, request_headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What a partner's callback does (partner-center-webhooks.md, 'How to authenticate')."""
    lowered = {k.lower(): v for k, v in request_headers.items()}
    scheme, _, signature = lowered["authorization"].partition(" ")
    assert scheme == "Signature"
    assert lowered["x-ms-signature-algorithm"] == "rsa-sha256"
    url = lowered["x-ms-certificate-url"]
    assert url.startswith(server.base_url + "/partnercenter/certs/")
    der = requests.get(url, verify=str(server.ca_bundle), timeout=10).content
    cert = x509.load_der_x509_certificate(der)
    organisation = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert organisation == "Microsoft Corporation"
    # The chain: issued by the CA the receiver trusts (the emulator's, here).
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(server.ca_bundle.read_bytes()))
    cert.public_key().verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())
    return json.loads(body.decode("utf-8"))


def webhook(server, method: str, path: str = "", **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        f"{server.base_url}/partnercenter/webhooks/v1/registration{path}",
        headers=headers(server, delegated=False),
        verify=str(server.ca_bundle),
        timeout=10,
        **kwargs,
    )


def test_webhook_registration_and_signed_events(emulator, receiver):
    events = webhook(emulator, "GET", "/events")
    assert events.status_code == 200
    assert_conforms(load_sample(PC, "webhook_events"), events.json())
    assert {"subscription-updated", "test-created"} <= set(events.json())

    assert webhook(emulator, "GET").status_code == 404  # nothing registered yet
    registration = {
        "WebhookUrl": receiver.url,
        "WebhookEvents": ["subscription-updated", "test-created"],
    }
    created = webhook(emulator, "POST", json=registration)
    assert created.status_code == 200
    assert_conforms(load_sample(PC, "webhook_registration"), created.json())
    assert created.json()["WebhookUrl"] == receiver.url
    viewed = webhook(emulator, "GET").json()
    assert_conforms(load_sample(PC, "webhook_registration_get"), viewed)
    assert viewed == registration

    # A validation event is delivered, signed, and its status tracked.
    validation = webhook(emulator, "POST", "/validationEvents")
    assert validation.status_code == 200
    assert_conforms(load_sample(PC, "webhook_validation_event"), validation.json())
    correlation = validation.json()["correlationId"]
    request_headers, body = receiver.wait(1)[0]
    event = verify_event(emulator, request_headers, body)
    assert_conforms(load_sample(PC, "webhook_event_test_created"), event)
    assert event["EventName"] == "test-created" and event["ResourceName"] == "test"
    assert event["ResourceUri"].endswith(
        f"/webhooks/v1/registration/validationEvents/{correlation}"
    )
    deadline = time.monotonic() + 5
    status = webhook(emulator, "GET", f"/validationEvents/{correlation}").json()
    while status["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        status = webhook(emulator, "GET", f"/validationEvents/{correlation}").json()
    assert_conforms(load_sample(PC, "webhook_validation_status"), status)
    assert status["results"][0]["responseCode"] == "OK" and status["callbackUrl"] == receiver.url

    # A quantity change sends subscription-updated.
    customer, subscription = a_subscription(emulator)
    resource = _full_resource(emulator, customer, subscription)
    resource["quantity"] += 1
    assert patch(emulator, sub_path(customer, subscription), resource).ok
    request_headers, body = receiver.wait(2)[1]
    event = verify_event(emulator, request_headers, body)
    assert_conforms(load_sample(PC, "webhook_event_subscription_updated"), event)
    assert event["ResourceUri"] == (
        f"https://api.partnercenter.microsoft.com/webhooks/v1/customers/{customer.tenant_id}/subscriptions/{subscription.id}"
    )
    assert event["AuditUri"].startswith("https://api.partnercenter.microsoft.com/v1/auditrecords/")

    # Tests in other processes trigger delivery through the admin API.
    admin = requests.post(
        f"{emulator.base_url}/_admin/webhooks/deliver",
        json={"event_name": "subscription-updated", "resource_uri": "https://example.invalid/x"},
        verify=str(emulator.ca_bundle),
        timeout=10,
    )
    assert admin.json() == {"delivered": True, "status": 200}
    verify_event(emulator, *receiver.wait(3)[2])

    updated = webhook(
        emulator, "PUT", json={"WebhookUrl": receiver.url, "WebhookEvents": ["test-created"]}
    )
    assert updated.json()["SubscriberId"] == created.json()["SubscriberId"]
    assert webhook(emulator, "DELETE").status_code == 204
    assert webhook(emulator, "GET").status_code == 404


def test_a_tampered_event_does_not_verify(emulator, receiver):
    response = partner_center.deliver_webhook(
        emulator.app, "invoice-ready", "https://x/v1/invoices/G1", url=receiver.url
    )
    assert response is not None and response.status_code == 200
    request_headers, body = receiver.wait(1)[0]
    verify_event(emulator, request_headers, body)
    with pytest.raises(InvalidSignature):
        verify_event(emulator, request_headers, body.replace(b"invoice-ready", b"invoice-readz"))


def test_registration_is_validated(emulator):
    def register(url: str, *events: str) -> int:
        body = {"WebhookUrl": url, "WebhookEvents": list(events)}
        return webhook(emulator, "POST", json=body).status_code

    assert register("not a url", "test-created") == 400
    assert register("https://x.invalid/cb", "no-such") == 400
    assert register("https://x.invalid/cb", "subscription-updated") == 200
    # A validation event needs test-created in the registration.
    assert webhook(emulator, "POST", "/validationEvents").status_code == 400


def test_samples_are_well_formed():
    from conformance import SAMPLES

    for path in sorted((SAMPLES / PC).glob("*.json")):
        sample = load_sample(PC, path.stem)
        assert sample["source"]["commit"] != "unknown", path.name
