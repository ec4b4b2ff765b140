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


def world_rows(server, period: str, currency: str | None = None) -> list:
    """The world's usage rows of the partner's reseller customers (GDAP-only customers buy
    their Azure elsewhere), in one currency if given."""
    mine = {
        c.tenant_id
        for c in server.world.customers.values()
        if c.partner_tenant == partner(server).tenant_id and c.reseller
    }
    return [
        r
        for r in server.world.usage
        if r.period == period
        and r.customer_tenant in mine
        and (currency is None or r.fields["BillingCurrency"] == currency)
    ]


def test_unbilled_export_end_to_end(emulator):
    emulator.app.state["billing_rows_per_blob"] = 5  # a manifest of several blobs
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
    expected = world_rows(emulator, "current", "GBP")
    assert len(records) == len(expected) == 16 and len(manifest["blobs"]) == 4
    assert {r["BillingCurrency"] for r in records} == {"GBP"}
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
    expected = world_rows(emulator, "last", "GBP")  # the first invoice is the pounds one
    assert len(records) == len(expected) > 0
    for record in records:
        assert list(record) == list(billing.BASIC)
        assert_conforms(load_sample(AREA, "usage_record_basic"), plain(record))
        assert "MeterId" not in record and "Tags" not in record and "Unit" not in record
        assert record["UnitType"] and record["InvoiceNumber"] == invoice
        assert record["BillingCurrency"] == "GBP"
    assert sum(r["BillingPreTaxTotal"] for r in records) == sum(
        Decimal(r.fields["BillingPreTaxTotal"]) for r in expected
    )


def test_latent_usage_keeps_the_dates_of_its_earlier_cycle(emulator):
    """ChargeStartDate is the start of the billing cycle "except when presenting dates of
    previously uncharged latent usage data from the previous billing cycle"
    (partner-center/daily-rated-usage-recon-files.md); the manifest names the month billed."""
    from halo_microsoft_emulator.world import UsageRow

    emulator.app.state["billing_running_polls"] = 0
    model = world_rows(emulator, "last", "GBP")[0]
    fields = {**model.fields, "ChargeStartDate": "2025-11-01T00:00:00", "MeterId": "latent-1"}
    with emulator.world.lock:
        emulator.world.usage.append(UsageRow(model.customer_tenant, "last", fields))
    invoice = emulator.world.invoices[0]  # December's, in pounds
    operation = export(emulator, "billed", {"invoiceId": invoice}, headers(emulator))
    manifest = call(
        emulator, "GET", operation["resourceLocation@odata.navigationLink"], headers(emulator)
    ).json()
    assert "/BillingMonth=202512/" in manifest["rootDirectory"]
    records = download(emulator, manifest)
    dates = {
        (r["ChargeStartDate"], r["ChargeEndDate"]) for r in records if r["MeterId"] != "latent-1"
    }
    assert dates == {("2025-12-01T00:00:00", "2025-12-31T00:00:00")}
    [latent] = [r for r in records if r["MeterId"] == "latent-1"]
    assert (latent["ChargeStartDate"], latent["ChargeEndDate"]) == (
        "2025-11-01T00:00:00",
        "2025-11-30T00:00:00",
    )
    assert latent["InvoiceNumber"] == invoice
    # The older invoice's export is of its own billing month.
    with emulator.world.lock:
        emulator.world.usage.append(
            UsageRow(model.customer_tenant, emulator.world.invoices[1], fields)
        )
    older = export(emulator, "billed", {"invoiceId": emulator.world.invoices[1]}, headers(emulator))
    manifest = call(
        emulator, "GET", older["resourceLocation@odata.navigationLink"], headers(emulator)
    ).json()
    assert "/BillingMonth=202511/" in manifest["rootDirectory"]


def test_no_data_fails_the_operation(emulator):
    emulator.app.state["billing_running_polls"] = 0
    for kind, body in (
        ("billed", {"invoiceId": "G000000000"}),
        ("unbilled", {"currencyCode": "JPY", "billingPeriod": "last"}),  # not billed in yen
        ("billed", {"invoiceId": emulator.world.invoices[1]}),  # an invoice of licences only
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


def test_the_no_data_switch_fails_every_export(emulator):
    emulator.app.state["billing_running_polls"] = 0
    emulator.app.state["billing_no_data"] = True
    operation = export(
        emulator, "unbilled", {"currencyCode": "GBP", "billingPeriod": "current"}, headers(emulator)
    )
    assert operation["error"] == {"message": "No data available", "code": "5000"}


def pc_headers(server, *, tenant=None) -> dict[str, str]:
    token = server.app.tokens.issue(
        client_id=partner(server).partner_center_app.client_id,
        tenant=tenant or partner(server).tenant_id,
        resource=emulator_app.PARTNER_CENTER,
        scopes=("https://api.partnercenter.microsoft.com/.default",),
        user=None,
        roles=(),
    )
    return {"Authorization": f"Bearer {token.value}"}


def test_invoices_bill_the_last_period_once_per_currency(emulator):
    listed = call(emulator, "GET", "/partnercenter/v1/invoices", pc_headers(emulator))
    assert listed.status_code == 200
    body = listed.json()
    assert_conforms(load_sample("partner_center", "invoices_list"), body)
    invoices = body["items"]
    assert body["totalCount"] == len(invoices) == 4  # GBP, EUR, USD of last month; an older one
    latest = [i for i in invoices if i["billingPeriodStartDate"] == "2025-12-01T00:00:00Z"]
    assert sorted(i["currencyCode"] for i in latest) == ["EUR", "GBP", "USD"]
    assert latest[0]["id"] == emulator.world.invoices[0] and latest[0]["currencyCode"] == "GBP"
    assert all(i["id"].startswith("G") and i["documentType"] == "invoice" for i in invoices)
    assert all(i["invoiceDate"] <= "2026-01-05" for i in invoices)  # issued before now
    emulator.app.state["billing_running_polls"] = 0
    for invoice in latest:
        operation = export(emulator, "billed", {"invoiceId": invoice["id"]}, headers(emulator))
        manifest = call(
            emulator, "GET", operation["resourceLocation@odata.navigationLink"], headers(emulator)
        ).json()
        records = download(emulator, manifest)
        expected = world_rows(emulator, "last", invoice["currencyCode"])
        assert len(records) == len(expected) > 0
        assert {r["InvoiceNumber"] for r in records} == {invoice["id"]}
        total = sum(Decimal(r.fields["BillingPreTaxTotal"]) for r in expected)
        assert invoice["totalCharges"] == float(total.quantize(Decimal("0.01")))
    # Another partner's token, or none, lists nothing.
    customer = next(iter(emulator.world.customers.values()))
    assert call(emulator, "GET", "/partnercenter/v1/invoices").status_code == 401
    assert (
        call(
            emulator,
            "GET",
            "/partnercenter/v1/invoices",
            pc_headers(emulator, tenant=customer.tenant_id),
        ).status_code
        == 401
    )
