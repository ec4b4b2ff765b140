"""The emulated Graph partner billing export: 202 → operation polled with Retry-After →
manifest → gzipped JSON Lines blobs read with the SAS; checked against Microsoft's samples."""

from __future__ import annotations

import gzip
import json
import time
from decimal import Decimal
from typing import Any

import requests
from conformance import assert_conforms, load_sample

from halo_microsoft_emulator import app as emulator_app
from halo_microsoft_emulator import billing

AREA = "billing"
BASE = "/graph/v1.0/reports/partners/billing"


def partner(server):
    return next(iter(server.world.partners.values()))


def headers(
    server, *, roles=("PartnerBilling.Read.All",), tenant=None, user=None, scopes=None
) -> dict[str, str]:
    token = server.app.tokens.issue(
        client_id=partner(server).gdap_app.client_id,
        tenant=tenant or partner(server).tenant_id,
        resource=emulator_app.GRAPH,
        scopes=scopes or ("https://graph.microsoft.com/.default",),
        user=user,
        roles=roles,
    )
    return {"Authorization": f"Bearer {token.value}"}


def call(
    server, method: str, url: str, hdrs: dict[str, str] | None = None, **kwargs: Any
) -> requests.Response:
    if not url.startswith("https://"):
        url = server.base_url + url
    return requests.request(
        method, url, headers=hdrs or {}, verify=str(server.ca_bundle), timeout=10, **kwargs
    )


def export(server, kind: str, body: dict[str, Any], hdrs: dict[str, str]) -> dict[str, Any]:
    """POST an export and poll it to its end as a client does; answer the final operation."""
    started = call(server, "POST", f"{BASE}/usage/{kind}/export", hdrs, json=body)
    assert started.status_code == 202, started.text
    assert_conforms(
        load_sample(AREA, f"{kind}_export"), {"status": started.status_code, **started.headers}
    )
    location = started.headers["Location"]
    assert location.startswith(f"{server.base_url}{BASE}/operations/")
    for _ in range(10):
        polled = call(server, "GET", location, hdrs)
        assert polled.status_code == 200
        operation = polled.json()
        if operation["status"] != "running":
            return operation
        assert_conforms(load_sample(AREA, "operation_running"), operation)
        time.sleep(float(polled.headers["Retry-After"]))
    raise AssertionError("the export never finished")


def download(server, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for blob in manifest["blobs"]:
        response = call(
            server, "GET", f"{manifest['rootDirectory']}/{blob['name']}?{manifest['sasToken']}"
        )
        assert response.status_code == 200
        assert (
            response.headers.get("Content-Encoding") is None
        )  # a gzip file, not a transfer encoding
        lines = gzip.decompress(response.content).decode("utf-8").splitlines()
        records += [json.loads(line, parse_float=Decimal) for line in lines if line]
    return records


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record as plain JSON types (decimals as floats), for the conformance check."""
    return json.loads(json.dumps(record, default=float))


def world_rows(server, period: str) -> list:
    mine = {
        c.tenant_id
        for c in server.world.customers.values()
        if c.partner_tenant == partner(server).tenant_id
    }
    return [r for r in server.world.usage if r.period == period and r.customer_tenant in mine]


def test_unbilled_export_end_to_end(emulator):
    hdrs = headers(emulator)
    operation = export(
        emulator,
        "unbilled",
        {"currencyCode": "GBP", "billingPeriod": "current", "attributeSet": "full"},
        hdrs,
    )
    assert_conforms(load_sample(AREA, "operation_succeeded"), operation)
    assert operation["@odata.type"] == "#microsoft.graph.partners.billing.exportSuccessOperation"
    manifest_response = call(
        emulator, "GET", operation["resourceLocation@odata.navigationLink"], hdrs
    )
    assert manifest_response.status_code == 200
    manifest = manifest_response.json()
    assert_conforms(load_sample(AREA, "manifest"), manifest)
    assert manifest["partnerTenantId"] == partner(emulator).tenant_id
    assert manifest["dataFormat"] == "compressedJSON"
    assert manifest["rootDirectory"].startswith(f"{emulator.base_url}/blob/")
    assert manifest["blobCount"] == len(manifest["blobs"]) >= 2

    records = download(emulator, manifest)
    expected = world_rows(emulator, "current")
    assert len(records) == len(expected) == 40
    for record in records:
        assert list(record) == list(billing.FULL)
        assert_conforms(load_sample(AREA, "usage_record_full"), plain(record))
        assert isinstance(record["UnitPrice"], Decimal) and isinstance(record["Tags"], str)
        assert record["InvoiceNumber"] == "" and record["PartnerId"] == partner(emulator).tenant_id
    assert sum(r["BillingPreTaxTotal"] for r in records) == sum(
        Decimal(r.fields["BillingPreTaxTotal"]) for r in expected
    )
    assert sum(r["Quantity"] for r in records) == sum(
        Decimal(r.fields["Quantity"]) for r in expected
    )
    assert {r["MeterId"] for r in records} == {r.fields["MeterId"] for r in expected}
    for record in records:
        assert record["UnitPrice"] * record["Quantity"] == record["BillingPreTaxTotal"]


def test_billed_export_of_an_invoice_in_basic_attributes(emulator):
    emulator.app.state["billing_running_polls"] = 0
    invoice = emulator.world.invoices[0]
    operation = export(
        emulator, "billed", {"invoiceId": invoice, "attributeSet": "basic"}, headers(emulator)
    )
    assert operation["status"] == "succeeded"
    manifest = call(
        emulator, "GET", operation["resourceLocation@odata.navigationLink"], headers(emulator)
    ).json()
    records = download(emulator, manifest)
    expected = world_rows(emulator, "last")
    assert len(records) == len(expected)
    for record in records:
        assert list(record) == list(billing.BASIC)
        assert_conforms(load_sample(AREA, "usage_record_basic"), plain(record))
        assert "MeterId" not in record and "Tags" not in record
        assert record["InvoiceNumber"] == invoice
    assert sum(r["BillingPreTaxTotal"] for r in records) == sum(
        Decimal(r.fields["BillingPreTaxTotal"]) for r in expected
    )


def test_no_data_fails_the_operation(emulator):
    emulator.app.state["billing_running_polls"] = 0
    for kind, body in (
        ("billed", {"invoiceId": "G000000000"}),
        ("unbilled", {"currencyCode": "USD", "billingPeriod": "last"}),  # not billed in USD
    ):
        operation = export(emulator, kind, body, headers(emulator))
        assert_conforms(load_sample(AREA, "operation_failed"), operation)
        assert operation["status"] == "failed"
        assert operation["error"] == {"message": "No data available", "code": "5000"}


def test_the_sas_is_checked(emulator):
    emulator.app.state["billing_running_polls"] = 0
    hdrs = headers(emulator)
    operation = export(emulator, "unbilled", {"currencyCode": "GBP", "billingPeriod": "last"}, hdrs)
    manifest = call(
        emulator, "GET", operation["resourceLocation@odata.navigationLink"], hdrs
    ).json()
    url = f"{manifest['rootDirectory']}/{manifest['blobs'][0]['name']}"
    sas = manifest["sasToken"]
    tampered = sas.replace("sig=", "sig=A")
    for bad in (url, f"{url}?{tampered}", f"{url}?{sas.split('&sig=')[0]}"):
        refused = call(emulator, "GET", bad)
        assert refused.status_code == 403
        assert "<Code>AuthenticationFailed</Code>" in refused.text
        assert refused.headers["Content-Type"].startswith("application/xml")
    # A signature is for its directory only.
    other = manifest["rootDirectory"].replace("BillingMonth=", "BillingMonth=1")
    assert call(emulator, "GET", f"{other}/{manifest['blobs'][0]['name']}?{sas}").status_code == 403
    assert (
        call(emulator, "GET", f"{manifest['rootDirectory']}/nothing.json.gz?{sas}").status_code
        == 404
    )
    ranged = call(emulator, "GET", f"{url}?{sas}", {"x-ms-range": "bytes=0-9"})
    assert ranged.status_code == 206 and len(ranged.content) == 10
    # An expired SAS is refused.
    emulator.app.state["billing_sas_lifetime"] = -60
    expired = call(
        emulator, "GET", operation["resourceLocation@odata.navigationLink"], hdrs
    ).json()["sasToken"]
    assert call(emulator, "GET", f"{url}?{expired}").status_code == 403


def test_exports_need_partner_billing_permission(emulator):
    body = {"currencyCode": "GBP", "billingPeriod": "current"}
    url = f"{BASE}/usage/unbilled/export"
    assert call(emulator, "POST", url, {}, json=body).status_code == 401
    no_role = call(emulator, "POST", url, headers(emulator, roles=("User.Read.All",)), json=body)
    assert no_role.status_code == 403 and no_role.json()["error"]["code"] == "Forbidden"
    customer = next(iter(emulator.world.customers.values()))
    elsewhere = call(emulator, "POST", url, headers(emulator, tenant=customer.tenant_id), json=body)
    assert elsewhere.status_code == 403
    delegated = headers(
        emulator,
        roles=(),
        user="admin",
        scopes=("https://graph.microsoft.com/PartnerBilling.Read.All",),
    )
    assert call(emulator, "POST", url, delegated, json=body).status_code == 202
    hdrs = headers(emulator)
    assert call(emulator, "POST", url, hdrs, json={"currencyCode": "GBP"}).status_code == 400
    assert (
        call(emulator, "POST", url, hdrs, json={**body, "attributeSet": "all"}).status_code == 400
    )
    assert call(emulator, "POST", f"{BASE}/usage/billed/export", hdrs, json={}).status_code == 400
    assert call(emulator, "GET", f"{BASE}/operations/no-such-operation", hdrs).status_code == 404
    assert call(emulator, "GET", f"{BASE}/manifests/no-such-manifest", hdrs).status_code == 404
