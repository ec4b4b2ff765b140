"""Graph partner billing exports (Azure usage) under ``/graph``, and their blobs under ``/blob``.

The asynchronous flow of ``microsoft.graph.partners.billing``: POST an export (unbilled usage
for the current or last period, or billed usage of an invoice) → ``202`` with ``Location`` of an
operation → poll the operation (``runningOperation`` with ``Retry-After``, then
``exportSuccessOperation`` or ``failedOperation``) → GET the manifest → download each blob,
``{rootDirectory}/{name}?{sasToken}``: gzip of JSON Lines, one usage record a line.

Pages followed (``microsoftgraph/microsoft-graph-docs-contrib``, ``api-reference/v1.0``):
api/partners-billing-unbilledusage-export.md, api/partners-billing-billedusage-export.md,
api/partners-billing-operation-get.md, api/partners-billing-manifest-get.md,
resources/partners-billing-manifest.md, and resources/partners-billing-attributeset.md for the
attributes of each set (full, basic; @286d28db: basic has ``UnitType`` and ``AdditionalInfo``,
not ``Unit``, where the Partner Center v2 beta page had it the other way round). The partner's
invoices, which say which invoice bills which month in which currency, are Partner Center's
``GET /v1/invoices`` (``kvamseek/partner-center`` developer/get-a-collection-of-invoices.md and
developer/invoice-resources.md), served here under ``/partnercenter``.

Choices where the docs are silent or disagree:

* ``dataFormat`` is ``compressedJSON`` as in the manifest example (the resource page says
  ``compressedJSONLines``); ``emulator.state["billing_data_format"]`` overrides it.
* Decimal attributes (UnitPrice, Quantity, totals, rates) are JSON numbers written exactly from
  the world's decimals, as the Recon sample's ``decimal`` model reads them; ``Tags`` and
  ``AdditionalInfo`` are strings holding JSON, as that model declares them.
* The first ``emulator.state["billing_running_polls"]`` polls (default 1) answer
  ``runningOperation`` with ``Retry-After: emulator.state["billing_retry_after"]`` (default 1).
* Blobs hold ``emulator.state["billing_rows_per_blob"]`` records (default 30), so a period of
  a few customers already spans two blobs.
* Only the partner's reseller customers have usage in its exports: a customer reached by
  GDAP alone buys its Azure elsewhere.
* The last period is billed on one invoice per currency (`partner_invoices`): the first
  invoice in ``world.invoices`` for pounds, IDs derived from it for the others; the second
  invoice in ``world.invoices`` is an older one with no Azure usage. Billed usage of an
  invoice is the world's rows of that invoice ID, else the last period's rows in the
  invoice's currency; any other invoice has no data (``5000``). Unbilled usage is filtered
  by ``currencyCode``: a currency the partner is not billed in has no data either.
* ``ChargeStartDate`` is the start of the export's billing cycle, "except when presenting
  dates of previously uncharged latent usage data from the previous billing cycle"
  (``partner-center/daily-rated-usage-recon-files.md``): a world row whose fields carry a
  ``ChargeStartDate`` is such latent usage, exported with that date (and the end of that
  month as ``ChargeEndDate``) on the period or invoice it is charged on. The manifest's
  ``rootDirectory`` names the export's billing month (``BillingMonth=YYYYMM``) as the
  manifest page's example does: the unbilled period's, or the invoice's billing period's.
* ``emulator.state["billing_no_data"] = True`` makes every operation fail with "No data
  available", whatever the world holds.
* The SAS is checked as Azure Storage does: a missing, wrong or expired signature → 403
  ``AuthenticationFailed`` (XML).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import posixpath
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from .app import (
    GRAPH,
    PARTNER_CENTER,
    AuthFailure,
    Emulator,
    Token,
    graph_error,
    iso,
    json_response,
    partner_center_error,
)
from .world import Partner, UsageRow, World

GRAPH_BASE = "/graph/v1.0/reports/partners/billing"
PERMISSION = "PartnerBilling.Read.All"
ATTRIBUTE_SETS = ("full", "basic")
STORAGE_VERSION = "2021-08-06"

#: Every attribute of a usage record, in the documented order; False: only in "full".
ATTRIBUTES: tuple[tuple[str, bool], ...] = (
    ("PartnerId", True),
    ("PartnerName", True),
    ("CustomerId", True),
    ("CustomerName", True),
    ("CustomerDomainName", False),
    ("CustomerCountry", False),
    ("MpnId", False),
    ("Tier2MpnId", False),
    ("InvoiceNumber", True),
    ("ProductId", True),
    ("SkuId", True),
    ("AvailabilityId", False),
    ("SkuName", True),
    ("ProductName", False),
    ("PublisherName", True),
    ("PublisherId", False),
    ("SubscriptionDescription", False),
    ("SubscriptionId", True),
    ("ChargeStartDate", True),
    ("ChargeEndDate", True),
    ("UsageDate", True),
    ("MeterType", False),
    ("MeterCategory", False),
    ("MeterId", False),
    ("MeterSubCategory", False),
    ("MeterName", False),
    ("MeterRegion", False),
    ("Unit", False),
    ("ResourceLocation", False),
    ("ConsumedService", False),
    ("ResourceGroup", False),
    ("ResourceURI", True),
    ("ChargeType", True),
    ("UnitPrice", True),
    ("Quantity", True),
    ("UnitType", True),
    ("BillingPreTaxTotal", True),
    ("BillingCurrency", True),
    ("PricingPreTaxTotal", True),
    ("PricingCurrency", True),
    ("ServiceInfo1", False),
    ("ServiceInfo2", False),
    ("Tags", False),
    ("AdditionalInfo", True),
    ("EffectiveUnitPrice", True),
    ("PCToBCExchangeRate", True),
    ("EntitlementId", True),
    ("EntitlementDescription", False),
    ("PartnerEarnedCreditPercentage", False),
    ("CreditPercentage", True),
    ("CreditType", True),
    ("BenefitOrderID", True),
    ("BenefitID", False),
    ("BenefitType", True),
)
FULL = tuple(name for name, _ in ATTRIBUTES)
BASIC = tuple(name for name, basic in ATTRIBUTES if basic)

#: Azure meter categories: (product ID, consumed service, resource provider path).
CATEGORIES = {
    "Virtual Machines": ("DZH318Z0BQ5S", "Microsoft.Compute", "virtualMachines/vm-app"),
    "Storage": ("DZH317F1HKN0", "Microsoft.Compute", "disks/disk-app-os"),
    "Bandwidth": ("DZH318Z0BNVX", "Microsoft.Network", "networkInterfaces/nic-app"),
    "Azure App Service": ("DZH318Z0BP88", "Microsoft.Web", "sites/app-web"),
}
#: Pricing currency (Azure prices are in USD) to billing currency.
EXCHANGE_RATES = {"USD": Decimal("1"), "GBP": Decimal("0.790000"), "EUR": Decimal("0.920000")}


def _lock(emulator: Emulator) -> threading.RLock:
    return emulator.state.setdefault("billing_lock", threading.RLock())


def _store(emulator: Emulator, name: str) -> dict[str, Any]:
    return emulator.state.setdefault(name, {})


def _month(value: datetime, back: int = 0) -> datetime:
    first = value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(back):
        first = (first - timedelta(days=1)).replace(day=1)
    return first


def _graph_time(value: datetime, *, zone: bool = True, digits: int = 7) -> str:
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + value.strftime("%f").ljust(7, "0")[:digits]
    return text + ("Z" if zone else "")


# -- usage records ---------------------------------------------------------------------------


def usage_record(
    world: World, partner: Partner, row: UsageRow, invoice: str, period_start: datetime
) -> dict[str, Any]:
    """The full set of attributes of one world usage row."""
    fields = row.fields
    customer = world.customers.get(row.customer_tenant.lower())
    product, service, resource = CATEGORIES.get(
        fields["MeterCategory"], ("DZH318Z0BXXX", "Microsoft.Resources", "resources/x")
    )
    currency = fields["BillingCurrency"]
    rate = EXCHANGE_RATES.get(currency, Decimal("1"))
    billing_total = Decimal(fields["BillingPreTaxTotal"])
    # Latent usage of an earlier cycle, charged late, carries that cycle's dates.
    latent = fields.get("ChargeStartDate")
    charge_start = (
        datetime.fromisoformat(latent).replace(tzinfo=period_start.tzinfo)
        if latent
        else period_start
    )
    next_month = _month(charge_start + timedelta(days=32))
    mpn = int(uuid.UUID(partner.tenant_id)) % 9_000_000 + 1_000_000
    meter_type = re.sub(r"^\d+\s*/?\s*", "", fields["Unit"]) or fields["Unit"]
    return {
        "PartnerId": partner.tenant_id,
        "PartnerName": partner.name,
        "CustomerId": fields["CustomerId"],
        "CustomerName": fields["CustomerName"],
        "CustomerDomainName": fields.get("CustomerDomainName", customer.domain if customer else ""),
        "CustomerCountry": "GB",
        "MpnId": str(mpn),
        "Tier2MpnId": "",
        "InvoiceNumber": invoice,
        "ProductId": product,
        "SkuId": "0001",
        "AvailabilityId": product[:8] + "ZZZZ",
        "SkuName": fields["MeterName"],
        "ProductName": fields["MeterCategory"],
        "PublisherName": "Microsoft",
        "PublisherId": "",
        "SubscriptionDescription": fields.get("SubscriptionDescription", "Azure plan"),
        "SubscriptionId": fields["SubscriptionId"],
        "ChargeStartDate": charge_start.strftime("%Y-%m-%dT%H:%M:%S"),
        "ChargeEndDate": (next_month - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        "UsageDate": fields["UsageDate"],
        "MeterType": meter_type,
        "MeterCategory": fields["MeterCategory"],
        "MeterId": fields["MeterId"],
        "MeterSubCategory": fields["MeterName"],
        "MeterName": fields["MeterName"],
        "MeterRegion": "UK South",
        "Unit": fields["Unit"],
        "ResourceLocation": "uksouth",
        "ConsumedService": service,
        "ResourceGroup": fields.get("ResourceGroup", ""),
        "ResourceURI": f"/subscriptions/{fields['SubscriptionId']}/resourceGroups/{fields.get('ResourceGroup', 'rg')}/providers/{service}/{resource}",
        "ChargeType": fields.get("ChargeType", "new"),
        "UnitPrice": Decimal(fields["UnitPrice"]),
        "Quantity": Decimal(fields["Quantity"]),
        "UnitType": fields["Unit"],
        "BillingPreTaxTotal": billing_total,
        "BillingCurrency": currency,
        "PricingPreTaxTotal": (billing_total / rate).quantize(Decimal("0.000001")),
        "PricingCurrency": "USD",
        "ServiceInfo1": "",
        "ServiceInfo2": "",
        "Tags": json.dumps(fields.get("Tags") or {}, separators=(",", ":")),
        "AdditionalInfo": "",
        "EffectiveUnitPrice": Decimal(fields["UnitPrice"]),
        "PCToBCExchangeRate": rate,
        "EntitlementId": fields["SubscriptionId"],
        "EntitlementDescription": fields.get("SubscriptionDescription", "Azure plan"),
        "PartnerEarnedCreditPercentage": 0,
        "CreditPercentage": 0,
        "CreditType": "Credit Not Applied",
        "BenefitOrderID": "",
        "BenefitID": "",
        "BenefitType": "",
    }


# -- invoices --------------------------------------------------------------------------------

#: The currency the emulated partner (in the UK) is mostly billed in: its invoice of the last
#: period is ``world.invoices[0]``.
PRIMARY_CURRENCY = "GBP"
CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$"}


def _derived_invoice(base: str, currency: str) -> str:
    number = int(hashlib.sha256(f"{base}/{currency}".encode()).hexdigest(), 16) % 10**9
    return f"G{number:09d}"


def _reseller_rows(world: World, partner: Partner, period: str) -> list[UsageRow]:
    return [
        r
        for r in world.usage
        if r.period == period
        and (c := world.customers.get(r.customer_tenant.lower())) is not None
        and c.partner_tenant == partner.tenant_id
        and c.reseller
    ]


def partner_invoices(world: World, partner: Partner) -> list[dict[str, Any]]:
    """The partner's invoices, newest first, as Partner Center lists them.

    The last period is billed on one invoice per currency its customers' usage is in; an
    older invoice (``world.invoices[1]``) bills no Azure usage. ``_usage`` (not sent) says
    whether an invoice bills the last period's usage.
    """
    if not world.invoices:
        return []
    now = world.now
    this_month, last_month, month_before = _month(now, 0), _month(now, 1), _month(now, 2)
    totals: dict[str, Decimal] = {}
    for row in _reseller_rows(world, partner, "last"):
        currency = row.fields.get("BillingCurrency", PRIMARY_CURRENCY).upper()
        totals[currency] = totals.get(currency, Decimal(0)) + Decimal(
            row.fields["BillingPreTaxTotal"]
        )
    currencies = sorted(totals, key=lambda c: (c != PRIMARY_CURRENCY, c)) or [PRIMARY_CURRENCY]
    issued = this_month + timedelta(days=min(2, (now - this_month).days))
    invoices = [
        _invoice_json(
            world.invoices[0] if index == 0 else _derived_invoice(world.invoices[0], currency),
            issued=issued,
            start=last_month,
            end=this_month - timedelta(seconds=1),
            total=totals.get(currency, Decimal(0)),
            currency=currency,
            usage=True,
        )
        for index, currency in enumerate(currencies)
    ]
    if len(world.invoices) > 1:
        invoices.append(
            _invoice_json(
                world.invoices[1],
                issued=last_month + timedelta(days=2),
                start=month_before,
                end=last_month - timedelta(seconds=1),
                total=Decimal("1250.40"),  # licences only
                currency=PRIMARY_CURRENCY,
                usage=False,
            )
        )
    return invoices


def _invoice_json(
    invoice_id: str,
    *,
    issued: datetime,
    start: datetime,
    end: datetime,
    total: Decimal,
    currency: str,
    usage: bool,
) -> dict[str, Any]:
    """An invoice as developer/get-a-collection-of-invoices.md shows one (modern: one-time)."""
    return {
        "id": invoice_id,
        "invoiceDate": iso(issued),
        "billingPeriodStartDate": iso(start),
        "billingPeriodEndDate": iso(end),
        "totalCharges": float(total.quantize(Decimal("0.01"))),
        "paidAmount": 0,
        "currencyCode": currency,
        "currencySymbol": CURRENCY_SYMBOLS.get(currency, currency),
        "pdfDownloadLink": f"/invoices/{invoice_id}/documents/statement",
        "taxReceipts": [],
        "invoiceDetails": [
            {
                "invoiceLineItemType": "billing_line_items",
                "billingProvider": "one_time",
                "links": {
                    "self": {
                        "uri": f"/invoices/OneTime-{invoice_id}/lineitems/OneTime/BillingLineItems",
                        "method": "GET",
                        "headers": [],
                    }
                },
                "attributes": {"objectType": "InvoiceDetail"},
            }
        ],
        "documentType": "invoice",
        "invoiceType": "OneTime",
        "links": {
            "self": {"uri": f"/invoices/OneTime-{invoice_id}", "method": "GET", "headers": []}
        },
        "attributes": {"objectType": "Invoice"},
        "_usage": usage,
    }


def json_line(record: dict[str, Any], attributes: tuple[str, ...]) -> str:
    """One JSON Lines record, decimals written as exact JSON numbers."""
    parts = []
    for name in attributes:
        value = record[name]
        text = format(value, "f") if isinstance(value, Decimal) else json.dumps(value)
        parts.append(f"{json.dumps(name)}:{text}")
    return "{" + ",".join(parts) + "}"


# -- shared access signatures ----------------------------------------------------------------


def _sas_key(emulator: Emulator) -> bytes:
    with _lock(emulator):
        return emulator.state.setdefault("billing_sas_key", secrets.token_bytes(32))


def _signature(emulator: Emulator, directory: str, expiry: str, permissions: str) -> str:
    message = f"{permissions}\n{expiry}\n/blob/{directory.strip('/')}\n{STORAGE_VERSION}".encode()
    return base64.b64encode(hmac.new(_sas_key(emulator), message, hashlib.sha256).digest()).decode()


def sas_token(emulator: Emulator, directory: str, partner_tenant: str) -> str:
    """A directory SAS (``sr=d``, read and list) shaped as the manifest example's."""
    now = datetime.now(UTC).replace(microsecond=0)
    lifetime = float(emulator.state.get("billing_sas_lifetime", 12 * 3600))
    expiry = (now + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
    params = {
        "skoid": str(uuid.uuid5(uuid.NAMESPACE_URL, emulator.base_url)),
        "sktid": partner_tenant,
        "skt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ske": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sks": "b",
        "skv": STORAGE_VERSION,
        "sv": STORAGE_VERSION,
        "se": expiry,
        "sr": "d",
        "sp": "rl",
        "sdd": str(directory.strip("/").count("/") + 1),
        "sig": _signature(emulator, directory, expiry, "rl"),
    }
    return urlencode(params)


def _storage_error(status: int, code: str, message: str, detail: str | None = None) -> Response:
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    body = (
        '\ufeff<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}\nRequestId:{request_id}\n"
        f"Time:{_graph_time(now)}</Message>{extra}</Error>"
    )
    return Response(
        body.encode("utf-8"),
        status=status,
        content_type="application/xml",
        headers={
            "x-ms-request-id": request_id,
            "x-ms-version": STORAGE_VERSION,
            "x-ms-error-code": code,
        },
    )


def _auth_failed(detail: str) -> Response:
    return _storage_error(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        detail,
    )


# -- routes ----------------------------------------------------------------------------------


def register(emulator: Emulator) -> None:
    world = emulator.world
    route = emulator.route

    def billing_token(request: Request) -> Token:
        token = emulator.authorize(request, GRAPH)
        if token.app_only:
            allowed = PERMISSION in token.roles
        else:
            allowed = any(scope.rsplit("/", 1)[-1] == PERMISSION for scope in token.scopes)
        if not allowed or token.tenant not in world.partners:
            raise AuthFailure(
                graph_error(
                    403,
                    "Forbidden",
                    f"The caller needs {PERMISSION} and must be in a CSP partner tenant.",
                )
            )
        return token

    def start(request: Request, token: Token, kind: str, body: dict[str, Any]) -> Response:
        attribute_set = body.get("attributeSet", "full")
        if attribute_set not in ATTRIBUTE_SETS:
            return graph_error(
                400, "BadRequest", f"Invalid attributeSet '{attribute_set}': use full or basic."
            )
        partner = world.partners[token.tenant]
        now = world.now
        with world.lock:
            if kind == "unbilled":
                period = body["billingPeriod"]
                currency = body["currencyCode"].upper()
                period_start = _month(now, 0 if period == "current" else 1)
                rows = [
                    r
                    for r in world.usage
                    if r.period == period
                    and r.fields.get("BillingCurrency", "").upper() == currency
                ]
                invoice = ""
                directory = (
                    f"unbilledusagefastpath/v1/PartnerTenantId={partner.tenant_id}"
                    f"/BillingMonth={period_start:%Y%m}/Currency={currency}"
                )
            else:
                invoice = body["invoiceId"]
                billed = {i["id"]: i for i in partner_invoices(world, partner)}.get(invoice)
                period_start = (
                    datetime.fromisoformat(billed["billingPeriodStartDate"].replace("Z", "+00:00"))
                    if billed is not None
                    else _month(now, 1)
                )
                rows = [r for r in world.usage if r.period == invoice]
                if not rows and billed is not None and billed["_usage"]:
                    rows = [
                        r
                        for r in world.usage
                        if r.period == "last"
                        and r.fields.get("BillingCurrency", "").upper() == billed["currencyCode"]
                    ]
                directory = (
                    f"billedusagefastpath/v1/PartnerTenantId={partner.tenant_id}"
                    f"/BillingMonth={period_start:%Y%m}/InvoiceId={invoice}/InvoiceVersion={now:%Y%m}"
                )
            mine = [
                r
                for r in rows
                if (c := world.customers.get(r.customer_tenant.lower())) is not None
                and c.partner_tenant == partner.tenant_id
                and c.reseller
            ]
            if emulator.state.get("billing_no_data"):
                mine = []
            records = [usage_record(world, partner, r, invoice, period_start) for r in mine]
        operation_id = str(uuid.uuid4())
        created = datetime.now(UTC)
        with _lock(emulator):
            _store(emulator, "billing_operations")[operation_id] = {
                "id": operation_id,
                "partner": partner.tenant_id,
                "records": records,
                "attributeSet": attribute_set,
                "directory": f"{directory}/Fragment={attribute_set}/PartitionType=default",
                "created": created,
                "polls": int(emulator.state.get("billing_running_polls", 1)),
                "manifest": None,
                "finished": None,
            }
        location = emulator.url(
            "graph", f"/v1.0/reports/partners/billing/operations/{operation_id}"
        )
        return Response(
            status=202, headers={"Location": location, "Content-Type": "application/json"}
        )

    def request_body(request: Request) -> dict[str, Any] | None:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else None

    @route(
        f"{GRAPH_BASE}/usage/unbilled/export",
        endpoint="billing.unbilled_export",
        methods=("POST",),
        doc="api-reference/v1.0/api/partners-billing-unbilledusage-export.md",
    )
    def unbilled_export(emu: Emulator, request: Request) -> Response:
        token = billing_token(request)
        body = request_body(request)
        if body is None:
            return graph_error(400, "BadRequest", "The request body must be a JSON object.")
        if not isinstance(body.get("currencyCode"), str) or not body["currencyCode"]:
            return graph_error(400, "BadRequest", "The parameter 'currencyCode' is required.")
        if body.get("billingPeriod") not in ("current", "last"):
            return graph_error(
                400, "BadRequest", "The parameter 'billingPeriod' is required: current or last."
            )
        return start(request, token, "unbilled", body)

    @route(
        f"{GRAPH_BASE}/usage/billed/export",
        endpoint="billing.billed_export",
        methods=("POST",),
        doc="api-reference/v1.0/api/partners-billing-billedusage-export.md",
    )
    def billed_export(emu: Emulator, request: Request) -> Response:
        token = billing_token(request)
        body = request_body(request)
        if body is None:
            return graph_error(400, "BadRequest", "The request body must be a JSON object.")
        if not isinstance(body.get("invoiceId"), str) or not body["invoiceId"]:
            return graph_error(400, "BadRequest", "The parameter 'invoiceId' is required.")
        return start(request, token, "billed", body)

    @route(
        f"{GRAPH_BASE}/operations/<operation_id>",
        endpoint="billing.operation",
        doc="api-reference/v1.0/api/partners-billing-operation-get.md",
    )
    def operation(emu: Emulator, request: Request, operation_id: str) -> Response:
        token = billing_token(request)
        with _lock(emu):
            op = _store(emu, "billing_operations").get(operation_id)
            if op is None or op["partner"] != token.tenant:
                return graph_error(404, "NotFound", f"Operation '{operation_id}' was not found.")
            body: dict[str, Any] = {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#reports/partners/billing/operations/$entity",
                "id": op["id"],
                "createdDateTime": _graph_time(op["created"], zone=False, digits=0),
            }
            if op["polls"] > 0:
                op["polls"] -= 1
                body["@odata.type"] = "#microsoft.graph.partners.billing.runningOperation"
                body["status"] = "running"
                body["lastActionDateTime"] = _graph_time(datetime.now(UTC))
                retry = str(emu.state.get("billing_retry_after", 1))
                return json_response(_ordered(body), headers={"Retry-After": retry})
            if op["finished"] is None:
                op["finished"] = datetime.now(UTC)
                if op["records"]:
                    op["manifest"] = _publish(emu, op)
            body["lastActionDateTime"] = _graph_time(op["finished"])
            if op["manifest"] is None:
                body["@odata.type"] = "#microsoft.graph.partners.billing.failedOperation"
                body["status"] = "failed"
                body["error"] = {"message": "No data available", "code": "5000"}
            else:
                body["@odata.type"] = "#microsoft.graph.partners.billing.exportSuccessOperation"
                body["status"] = "succeeded"
                body["resourceLocation@odata.navigationLink"] = emu.url(
                    "graph", f"/v1.0/reports/partners/billing/manifests/{op['manifest']}"
                )
        return json_response(_ordered(body))

    @route(
        f"{GRAPH_BASE}/manifests/<manifest_id>",
        endpoint="billing.manifest",
        doc="api-reference/v1.0/api/partners-billing-manifest-get.md",
    )
    def manifest(emu: Emulator, request: Request, manifest_id: str) -> Response:
        token = billing_token(request)
        with _lock(emu):
            found = _store(emu, "billing_manifests").get(manifest_id)
            if found is None or found["partnerTenantId"] != token.tenant:
                return graph_error(404, "NotFound", f"Manifest '{manifest_id}' was not found.")
            body = dict(found)
            directory = body.pop("_directory")
        body["sasToken"] = sas_token(emu, directory, token.tenant)
        order = (
            "id",
            "schemaVersion",
            "dataFormat",
            "createdDateTime",
            "eTag",
            "partnerTenantId",
            "rootDirectory",
            "sasToken",
            "partitionType",
            "blobCount",
            "blobs",
        )
        return json_response(
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#reports/partners/billing/manifests/$entity",
                **{key: body[key] for key in order},
            }
        )

    @route(
        "/partnercenter/v1/invoices",
        endpoint="billing.invoices",
        doc="developer/get-a-collection-of-invoices.md",
    )
    def invoices(emu: Emulator, request: Request) -> Response:
        """The partner's invoices (App or App+User); size and offset are ignored, as the
        page says they are for modern commerce invoices."""
        token = emu.authorize(request, PARTNER_CENTER)
        if token.tenant not in world.partners:
            return partner_center_error(
                401, 400, "Access denied: the token's tenant is not a partner tenant."
            )
        with world.lock:
            items = [
                {k: v for k, v in invoice.items() if not k.startswith("_")}
                for invoice in partner_invoices(world, world.partners[token.tenant])
            ]
        return json_response(
            {
                "totalCount": len(items),
                "items": items,
                "links": {"self": {"uri": "/invoices", "method": "GET", "headers": []}},
                "attributes": {"objectType": "Collection"},
            }
        )

    @route("/blob/<path:blob_path>", endpoint="billing.blob", methods=("GET",))
    def blob(emu: Emulator, request: Request, blob_path: str) -> Response:
        """A blob of an export, read with the manifest's directory SAS (Azure Blob Storage)."""
        args = request.args
        signature, expiry, permissions = args.get("sig"), args.get("se"), args.get("sp", "")
        if not signature or not expiry:
            return _auth_failed("Signature fields not well formed.")
        directory = posixpath.dirname(blob_path)
        if not hmac.compare_digest(signature, _signature(emu, directory, expiry, permissions)):
            return _auth_failed(
                "Signature did not match. String to sign used was "
                f"{permissions}\n{expiry}\n/blob/{directory}\n{STORAGE_VERSION}"
            )
        if "r" not in permissions:
            return _storage_error(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )
        try:
            expires = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _auth_failed("Signature fields not well formed.")
        if expires <= datetime.now(UTC):
            return _auth_failed(
                f"Signed expiry time [{format_datetime(expires, usegmt=True)}] must be after signed start time"
                f" [{format_datetime(datetime.now(UTC), usegmt=True)}]"
            )
        with _lock(emu):
            stored = _store(emu, "billing_blobs").get(blob_path)
        if stored is None:
            return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        data, etag, modified = stored
        headers = {
            "ETag": etag,
            "Last-Modified": format_datetime(modified, usegmt=True),
            "Accept-Ranges": "bytes",
            "x-ms-blob-type": "BlockBlob",
            "x-ms-version": STORAGE_VERSION,
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-server-encrypted": "true",
        }
        span = request.headers.get("x-ms-range") or request.headers.get("Range")
        if span and span.startswith("bytes="):
            first_text, _, last_text = span[6:].partition("-")
            first = int(first_text or 0)
            last = min(int(last_text) if last_text else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return _storage_error(
                    416,
                    "InvalidRange",
                    "The range specified is invalid for the current size of the resource.",
                )
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return Response(
                data[first : last + 1],
                status=206,
                headers=headers,
                content_type="application/octet-stream",
            )
        # Sent a chunk at a time, as storage streams a blob: the server never copies it whole.
        headers["Content-Length"] = str(len(data))
        return Response(
            _chunks(data),
            headers=headers,
            content_type="application/octet-stream",
            direct_passthrough=True,
        )


def _chunks(data: bytes, size: int = 64 * 1024) -> Any:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def _ordered(body: dict[str, Any]) -> dict[str, Any]:
    order = (
        "@odata.context",
        "@odata.type",
        "id",
        "status",
        "createdDateTime",
        "lastActionDateTime",
    )
    return {
        **{k: body[k] for k in order if k in body},
        **{k: v for k, v in body.items() if k not in order},
    }


def _publish(emulator: Emulator, op: dict[str, Any]) -> str:
    """Write an operation's records as gzipped JSON Lines blobs; answer the manifest's ID."""
    attributes = FULL if op["attributeSet"] == "full" else BASIC
    per_blob = max(1, int(emulator.state.get("billing_rows_per_blob", 30)))
    records = op["records"]
    directory = op["directory"]
    now = datetime.now(UTC)
    blobs = []
    store = _store(emulator, "billing_blobs")
    for index, first in enumerate(range(0, len(records), per_blob)):
        lines = (
            "\n".join(json_line(r, attributes) for r in records[first : first + per_blob]) + "\n"
        )
        data = gzip.compress(lines.encode("utf-8"), mtime=0)
        name = f"part-{index:05d}-{uuid.uuid4()}.c000.json.gz"
        etag = '"0x' + hashlib.sha256(data).hexdigest()[:15].upper() + '"'
        store[f"{directory}/{name}"] = (data, etag, now.replace(microsecond=0))
        blobs.append({"name": name, "partitionValue": "default"})
    manifest_id = str(uuid.uuid4())
    _store(emulator, "billing_manifests")[manifest_id] = {
        "id": manifest_id,
        "schemaVersion": "1",
        "dataFormat": emulator.state.get("billing_data_format", "compressedJSON"),
        "createdDateTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + now.strftime("%f")[:2] + "Z",
        "eTag": base64.urlsafe_b64encode(secrets.token_bytes(12)).decode()[:17],
        "partnerTenantId": op["partner"],
        "rootDirectory": emulator.url("blob", f"/{directory}"),
        "partitionType": "Default",
        "blobCount": len(blobs),
        "blobs": blobs,
        "_directory": directory,
    }
    return manifest_id
