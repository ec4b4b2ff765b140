"""Partner Center REST API v1 (``https://api.partnercenter.microsoft.com``) under ``/partnercenter``.

Customers (seek paging with ``MS-ContinuationToken``), a customer, its subscriptions (read and
change the quantity), its subscribed SKUs, and webhooks: registration, validation events and
signed delivery of events to the partner's callback.

Pages followed (``MicrosoftDocs`` Partner Center REST reference, read from the
``kvamseek/partner-center`` copy at 85eb3c40, ``developer/``): get-a-list-of-customers,
get-a-customer-by-id, get-all-of-a-customer-s-subscriptions, get-a-subscription-by-id,
change-the-quantity-of-a-subscription, get-a-list-of-available-licenses, partner-center-webhooks,
partner-center-webhook-events and error-codes.

Where the docs are silent, this module chooses (and says so):

* ``size`` of a customers page defaults to 500 and is capped at 500; ``totalCount`` is the count
  of items in the page (seek-based collections). The ``links.next.uri`` lacks ``/v1`` as
  Microsoft's links do (``emulator.state["pc_links_with_v1"] = True`` adds it, as some links do).
  A continuation token serves one request: reused, unknown or another partner's → 400, code 3000.
* PATCH answers 202 (with ``Location``, no body) when the quantity changes by 100 or more, or
  when ``emulator.state["pc_patch_async"]`` is true. The change is applied at once, unless
  ``emulator.state["pc_patch_pending_polls"]`` is N > 0: then, as the page describes ("query
  the subscription periodically to monitor the status and quantity changes"), the next N
  reads of the subscription still show the old quantity and the change lands after them.
* A partner whose ``Partner.direct`` is false is an indirect (Tier 2) reseller: the commerce
  relationship with its customers is its indirect provider's, so their subscriptions answer
  403, code 20002 ("has no commerce relationship with the customer", error-codes.md), where
  the page documents no answer of its own for that case.
* The SKU of a subscription (developer/get-a-sku-by-id.md) has ``minimumQuantity`` 1 and
  ``maximumQuantity`` 300, the bounds the PATCH enforces (code 2002 outside them); the
  page's new-commerce sample shows 300 for Microsoft 365 Business Basic.
* Decreases: the whole quantity is refundable for 7 days from the start of the current term
  (purchase or renewal), and each increase for 7 days from when it was made, as the page says.
* An app-only token on an App+User-only call gets 403 "The supplied role does not have the
  rights to perform the requested operation." (the refusal partners report; code 403 is ours),
  as does a partner without a GDAP role the page lists for subscribed SKUs.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import http
import json
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from werkzeug.wrappers import Request, Response

from . import world as world_module
from .app import PARTNER_CENTER, Emulator, iso, json_response, partner_center_error
from .world import GDAP_ROLES, Customer, Subscription

PREFIX = "/partnercenter"
#: What ResourceUris and AuditUris name: the real host, as Microsoft's events do.
PUBLIC_HOST = "https://api.partnercenter.microsoft.com"
CERT_NAME = "pcnotifications-dispatch.microsoft.com"
DEFAULT_PAGE = 500
MAX_PAGE = 500
MIN_QUANTITY, MAX_QUANTITY = 1, 300
#: A quantity change at least this large is "longer than the expected time": 202.
ASYNC_CHANGE = 100
REFUND_WINDOW = timedelta(days=7)
TERM_MONTHS = {"P1M": 1, "P1Y": 12, "P3Y": 36}
NO_RIGHTS = "The supplied role does not have the rights to perform the requested operation."

#: Event names of the webhooks page (2023-10 copy).
WEBHOOK_EVENTS = (
    "azure-fraud-event-detected",
    "dap-admin-relationship-approved",
    "reseller-relationship-accepted-by-customer",
    "dap-admin-relationship-terminated",
    "dap-admin-relationship-terminated-by-microsoft",
    "granular-admin-access-assignment-activated",
    "granular-admin-access-assignment-created",
    "granular-admin-access-assignment-deleted",
    "granular-admin-access-assignment-updated",
    "granular-admin-relationship-activated",
    "granular-admin-relationship-approved",
    "granular-admin-relationship-expired",
    "granular-admin-relationship-terminated",
    "invoice-ready",
    "new-commerce-migration-completed",
    "new-commerce-migration-created",
    "new-commerce-migration-failed",
    "new-commerce-migration-schedule-failed",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "subscription-updated",
    "test-created",
    "usagerecords-thresholdExceeded",
)
#: ResourceName of each event's payload, as the webhook-events page shows them.
RESOURCE_NAMES = {
    "subscription-updated": "subscription",
    "test-created": "test",
    "invoice-ready": "invoice",
    "reseller-relationship-accepted-by-customer": "Customer",
    "usagerecords-thresholdExceeded": "usagerecords",
    "referral-created": "referral",
    "referral-updated": "referral",
    "related-referral-created": "referral",
    "related-referral-updated": "referral",
    "dap-admin-relationship-approved": "PartnerCustomerDap",
    "dap-admin-relationship-terminated": "PartnerCustomerDap",
    "dap-admin-relationship-terminated-by-microsoft": "PartnerCustomerDap",
    **{
        f"granular-admin-relationship-{action}": "GranularAdminRelationship"
        for action in ("activated", "approved", "expired", "terminated")
    },
    **{
        f"granular-admin-access-assignment-{action}": "GranularAdminAccessAssignment"
        for action in ("activated", "created", "deleted", "updated")
    },
}

#: GDAP roles the subscribed-SKUs page accepts (plus Global Administrator).
LICENCE_READER_ROLES = {
    role_id
    for role_id, name in GDAP_ROLES.items()
    if name
    in (
        "Directory Readers",
        "Global Reader",
        "User Administrator",
        "License Administrator",
        "Global Administrator",
    )
}

#: Service plans of each SKU part number: (serviceName, id, displayName, targetType), from
#: the world's one table (Partner Center says Tenant where Graph says Company).
SERVICE_PLANS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    part: tuple(
        (
            plan.name,
            plan.id,
            plan.display_name,
            "Tenant" if plan.applies_to == "Company" else plan.applies_to,
        )
        for plan in plans
    )
    for part, plans in world_module.SERVICE_PLANS.items()
}

_NAMESPACE = uuid.UUID("6f0d2a8e-5a3c-4c53-9d0e-2b7f5b1c9a11")


def _derived(*parts: str) -> str:
    """A stable GUID derived from names (commerce IDs, order IDs and the like)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _lock(emulator: Emulator) -> threading.RLock:
    return emulator.state.setdefault("pc_lock", threading.RLock())


# -- shapes --------------------------------------------------------------------------------


def _link(uri: str, headers: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"uri": uri, "method": "GET", "headers": headers or []}


def _answer(
    request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer carrying back the caller's MS-CorrelationId and MS-RequestId."""
    echo = {
        "MS-CorrelationId": request.headers.get("MS-CorrelationId") or str(uuid.uuid4()),
        "MS-RequestId": request.headers.get("MS-RequestId") or str(uuid.uuid4()),
    }
    echo.update(headers or {})
    if body is None:
        return Response(status=status, headers=echo)
    return json_response(body, status=status, headers=echo)


def _pc_time(value: datetime) -> str:
    """Partner Center's timestamps carry 7 fractional digits (``…T21:28:19.3058617Z``)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _add_months(value: datetime, months: int) -> datetime:
    month = value.month - 1 + months
    year = value.year + month // 12
    month = month % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def current_term(subscription: Subscription, now: datetime) -> tuple[datetime, datetime]:
    """Start and end of the subscription's term in force at ``now`` (renewals included)."""
    months = TERM_MONTHS.get(subscription.termDuration, 12)
    start = subscription.creationDate
    end = _add_months(start, months)
    while subscription.autoRenewEnabled and end <= now:
        start, end = end, _add_months(end, months)
    return start, end


def _refundable(
    emulator: Emulator, customer: Customer, subscription: Subscription
) -> list[tuple[int, datetime]]:
    """(quantity, allowed until) that may still be taken back: the term's quantity for 7 days
    after the term starts, then each increase for 7 days after it was made."""
    now = emulator.world.now
    added = [
        (qty, until)
        for qty, until in emulator.state.setdefault("pc_increases", {}).get(subscription.id, [])
        if until > now and qty > 0
    ]
    start, _ = current_term(subscription, now)
    if now < start + REFUND_WINDOW:
        base = subscription.quantity - sum(qty for qty, _ in added)
        return ([(base, start + REFUND_WINDOW)] if base > 0 else []) + added
    return added


def customer_json(customer: Customer, *, full: bool = False) -> dict[str, Any]:
    """The Customer resource; ``full`` for get-a-customer-by-id."""
    profile: dict[str, Any] = {
        "tenantId": customer.tenant_id,
        "domain": customer.domain,
        "companyName": customer.name,
        "attributes": {"objectType": "CustomerCompanyProfile"},
    }
    body: dict[str, Any] = {
        "id": customer.tenant_id,
        "commerceId": _derived("commerce", customer.tenant_id),
        "companyProfile": profile,
        "relationshipToPartner": "reseller" if customer.reseller else "none",
        "attributes": {"objectType": "Customer"},
    }
    if not full:
        return body
    digits = int(uuid.UUID(customer.tenant_id)) % 10**6
    address = {
        "country": "GB",
        "region": "",
        "city": "London",
        "addressLine1": f"{digits % 200 + 1} High Street",
        "postalCode": "EC1A 1BB",
        "phoneNumber": f"020794{digits:06d}"[:11],
    }
    contact = f"billing@{customer.domain}"
    first, _, last = customer.name.partition(" ")
    profile["links"] = {"self": _link(f"/customers/{customer.tenant_id}/profiles/company")}
    # The page: address, email and custom domains only come back where the partner has
    # (G)DAP access to the customer tenant.
    delegated = customer.gdap_status == "active"
    if delegated:
        profile["address"] = address
        profile["email"] = contact
    body["billingProfile"] = {
        "id": _derived("billing-profile", customer.tenant_id),
        "firstName": first,
        "lastName": last or first,
        "email": contact,
        "culture": "en-GB",
        "language": "en",
        "companyName": customer.name,
        "defaultAddress": {
            "country": address["country"],
            "city": address["city"],
            "state": "",
            "addressLine1": address["addressLine1"],
            "postalCode": address["postalCode"],
            "firstName": first,
            "lastName": last or first,
            "phoneNumber": address["phoneNumber"],
        },
        "links": {"self": _link(f"/customers/{customer.tenant_id}/profiles/billing")},
        "attributes": {
            "etag": str(int(uuid.UUID(_derived("etag", customer.tenant_id))) % 10**19),
            "objectType": "CustomerBillingProfile",
        },
    }
    body["allowDelegatedAccess"] = customer.gdap_status is not None
    if delegated:
        body["customDomains"] = [customer.domain]
    body["links"] = {"self": _link(f"/customers/{customer.tenant_id}")}
    return body


def subscription_json(
    emulator: Emulator, customer: Customer, subscription: Subscription, *, detail: bool = False
) -> dict[str, Any]:
    """The Subscription resource (new commerce); ``detail`` adds ``refundableQuantity``."""
    now = emulator.world.now
    product, sku, availability = [*subscription.offerId.split(":"), "", ""][:3]
    start, end = current_term(subscription, now)
    last_day = (end - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    refundable = _refundable(emulator, customer, subscription)
    names = emulator.state.setdefault("pc_friendly_names", {})
    self_uri = f"/customers/{customer.tenant_id}/subscriptions/{subscription.id}"
    body: dict[str, Any] = {
        "id": subscription.id,
        "entitlementId": _derived("entitlement", subscription.id),
        "offerId": subscription.offerId,
        "offerName": subscription.offerName,
        "friendlyName": names.get(subscription.id, subscription.offerName),
        "productType": {"id": "OnlineServicesNCE", "displayName": "OnlineServicesNCE"},
        "quantity": subscription.quantity,
        "unitType": "Licenses",
        "hasPurchasableAddons": False,
        "creationDate": _pc_time(subscription.creationDate),
        "effectiveStartDate": _pc_time(subscription.creationDate),
        "commitmentEndDate": iso(last_day),
        "commitmentEndDateTime": iso(last_day.replace(hour=23, minute=59, second=59)),
        "cancellationAllowedUntilDate": iso(start + REFUND_WINDOW),
        "status": subscription.status,
        "autoRenewEnabled": subscription.autoRenewEnabled,
        "isTrial": False,
        "billingType": "license",
        "billingCycle": subscription.billingCycle,
        "termDuration": subscription.termDuration,
        "renewalTermDuration": "",
        "refundOptions": [{"type": "Full", "expiresAt": iso(start + REFUND_WINDOW)}]
        if now < start + REFUND_WINDOW
        else [],
        "isMicrosoftProduct": True,
        "partnerId": "",
        "attentionNeeded": False,
        "actionTaken": False,
        "contractType": "subscription",
        "links": {
            "product": _link(f"/products/{product}?country=GB"),
            "sku": _link(f"/products/{product}/skus/{sku}?country=GB"),
            "availability": _link(
                f"/products/{product}/skus/{sku}/availabilities/{availability}?country=GB"
            ),
            "self": _link(self_uri),
        },
        "publisherName": "Microsoft Corporation",
        "orderId": uuid.UUID(_derived("order", subscription.id)).hex[:12],
        "attributes": {"objectType": "Subscription"},
    }
    if detail:
        body["refundableQuantity"] = {
            "totalQuantity": sum(qty for qty, _ in refundable),
            "details": [
                {"quantity": qty, "allowedUntilDateTime": _pc_time(until)}
                for qty, until in refundable
            ],
        }
    return body


def subscribed_sku_json(customer: Customer, sku: Any) -> dict[str, Any]:
    consumed = customer.consumed(sku.skuId)
    total = sku.enabled + sku.warning
    return {
        "availableUnits": max(0, total - consumed),
        "activeUnits": sku.enabled,
        "consumedUnits": consumed,
        "suspendedUnits": sku.suspended,
        "totalUnits": total,
        "warningUnits": sku.warning,
        "productSku": {
            "id": sku.skuId,
            "name": sku.name,
            "skuPartNumber": sku.skuPartNumber,
            "targetType": "User",
            "licenseGroupId": "group1",
        },
        "servicePlans": [
            {
                "displayName": display,
                "serviceName": service,
                "id": plan_id,
                "capabilityStatus": "Enabled",
                "targetType": target,
            }
            for service, plan_id, display, target in SERVICE_PLANS.get(sku.skuPartNumber, ())
        ],
        "capabilityStatus": sku.capabilityStatus,
        "attributes": {"objectType": "SubscribedSku"},
    }


# -- webhook signing and delivery ------------------------------------------------------------


def signing_identity(emulator: Emulator) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """The key and certificate webhook events are signed with, made on first use.

    The subject carries the organisation a receiver checks (``O=Microsoft Corporation``).
    Served by `EmulatorServer`, the certificate is issued by the server's CA, so a receiver
    trusting that CA can verify its chain as Microsoft's docs ask; an app used on its own
    makes it self-signed. Served at
    ``/partnercenter/certs/pcnotifications-dispatch.microsoft.com.cer``.
    """
    with _lock(emulator):
        identity = emulator.state.get("pc_signing")
        if identity is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
                    x509.NameAttribute(NameOID.LOCALITY_NAME, "Redmond"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation"),
                    x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME),
                ]
            )
            now = datetime.now(UTC)
            issuer_name, issuer_key = name, key
            if emulator.ca is not None:
                issuer_name = x509.load_pem_x509_certificate(emulator.ca.cert_pem.bytes()).subject
                issuer_key = serialization.load_pem_private_key(
                    emulator.ca.private_key_pem.bytes(), password=None
                )
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(issuer_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.SubjectAlternativeName([x509.DNSName(CERT_NAME)]), critical=False
                )
                .sign(issuer_key, hashes.SHA256())
            )
            identity = emulator.state["pc_signing"] = (key, cert)
        return identity


def certificate_url(emulator: Emulator) -> str:
    return emulator.url("partnercenter", f"/certs/{CERT_NAME}.cer")


def sign(emulator: Emulator, body: bytes) -> str:
    """Base64 RSA PKCS#1 v1.5 SHA-256 signature of ``body`` (what ``rsa-sha256`` names)."""
    key, _ = signing_identity(emulator)
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _event_time(value: datetime) -> str:
    """``2017-11-16T16:19:06.3520276+00:00``, as the event samples show it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"


def event_body(
    emulator: Emulator,
    event_name: str,
    resource_uri: str,
    *,
    audit_uri: str | None = None,
    resource_name: str | None = None,
) -> bytes:
    if audit_uri is None and event_name != "test-created":
        audit_uri = f"{PUBLIC_HOST}/v1/auditrecords/{uuid.uuid4()}"
    payload = {
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name or RESOURCE_NAMES.get(event_name, event_name.split("-")[0]),
        "AuditUri": audit_uri,
        "ResourceChangeUtcDate": _event_time(emulator.world.now),
    }
    return json.dumps(payload, indent=4).encode("utf-8")


def _registrations(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return emulator.state.setdefault("pc_webhooks", {})


def deliver_webhook(
    emulator: Emulator,
    event_name: str,
    resource_uri: str,
    *,
    url: str | None = None,
    verify: Any = None,
    tenant: str | None = None,
    audit_uri: str | None = None,
    timeout: float = 10,
) -> requests.Response | None:
    """POST a signed Partner Center event, as Microsoft does.

    To ``url`` if given, else to every registration (of ``tenant``, if given) that subscribed
    to ``event_name``; answers the (last) receiver's response, or None if nobody is registered.
    The body is signed with RSA PKCS#1 v1.5 SHA-256 over its raw UTF-8 bytes: ``Authorization:
    Signature <base64>`` (or ``x-ms-signature`` when the registration set
    ``SignatureTokenToMsSignatureHeader``), ``X-MS-Certificate-Url`` and
    ``X-MS-Signature-Algorithm: rsa-sha256``.
    """
    targets: list[tuple[str, bool]] = []
    if url is not None:
        targets.append((url, False))
    else:
        with _lock(emulator):
            for partner, registration in _registrations(emulator).items():
                if tenant is not None and partner != tenant.lower():
                    continue
                if event_name in registration["WebhookEvents"]:
                    targets.append(
                        (
                            registration["WebhookUrl"],
                            bool(registration.get("SignatureTokenToMsSignatureHeader")),
                        )
                    )
    response = None
    for target, in_ms_header in targets:
        body = event_body(emulator, event_name, resource_uri, audit_uri=audit_uri)
        signature = "Signature " + sign(emulator, body)
        headers = {
            "Content-Type": "application/json",
            "X-MS-Certificate-Url": certificate_url(emulator),
            "X-MS-Signature-Algorithm": "rsa-sha256",
        }
        headers["x-ms-signature" if in_ms_header else "Authorization"] = signature
        options: dict[str, Any] = {"timeout": timeout}
        if verify is not None:
            options["verify"] = verify
        response = requests.post(target, data=body, headers=headers, **options)
    return response


def notify_subscription_updated(
    emulator: Emulator, partner_tenant: str, customer_id: str, subscription_id: str
) -> threading.Thread | None:
    """Deliver ``subscription-updated`` in the background, if the partner registered for it."""
    registration = _registrations(emulator).get(partner_tenant.lower())
    if not registration or "subscription-updated" not in registration["WebhookEvents"]:
        return None
    uri = f"{PUBLIC_HOST}/webhooks/v1/customers/{customer_id}/subscriptions/{subscription_id}"

    def run() -> None:
        # Microsoft retries, then gives up quietly; the emulator tries once.
        with contextlib.suppress(requests.RequestException):
            deliver_webhook(emulator, "subscription-updated", uri, tenant=partner_tenant)

    thread = threading.Thread(target=run, name="pc-webhook", daemon=True)
    thread.start()
    return thread


# -- routes --------------------------------------------------------------------------------


def register(emulator: Emulator) -> None:
    world = emulator.world
    route = emulator.route

    def partner_token(request: Request):
        token = emulator.authorize(request, PARTNER_CENTER)
        if token.tenant not in world.partners:
            raise _Refusal(
                partner_center_error(
                    401, 400, "Access denied: the token's tenant is not a partner tenant."
                )
            )
        return token

    def customer_of(token: Any, customer_id: str, *, reseller: bool = True) -> Customer:
        try:
            customer = world.customer(customer_id)
        except KeyError:
            raise _Refusal(partner_center_error(404, 60003, "Tenant not found")) from None
        if customer.partner_tenant != token.tenant or (reseller and not customer.reseller):
            raise _Refusal(_no_commerce(token.tenant, customer.tenant_id))
        return customer

    def commerce_customer_of(token: Any, customer_id: str) -> Customer:
        """The customer, for the calls only the partner of record (commerce) may make."""
        customer = customer_of(token, customer_id)
        partner = world.partners.get(token.tenant)
        if partner is not None and not partner.direct:
            raise _Refusal(_no_commerce(token.tenant, customer.tenant_id))
        return customer

    def subscription_of(customer: Customer, subscription_id: str) -> Subscription:
        for key, subscription in customer.subscriptions.items():
            if key.lower() == subscription_id.lower():
                return subscription
        raise _Refusal(
            partner_center_error(404, 20003, f"Subscription with ID {subscription_id} not found.")
        )

    def refusing(handler):
        """Answer a `_Refusal` raised by the checks; echo the request's IDs on every answer."""

        def run(emu: Emulator, request: Request, **values: Any) -> Response:
            try:
                response = handler(emu, request, **values)
            except _Refusal as refusal:
                response = refusal.response
            for name in ("MS-CorrelationId", "MS-RequestId"):
                if name not in response.headers:
                    response.headers[name] = request.headers.get(name) or str(uuid.uuid4())
            return response

        return run

    # -- customers -------------------------------------------------------------------------

    @route(
        f"{PREFIX}/v1/customers",
        endpoint="partner_center.customers",
        doc="developer/get-a-list-of-customers.md",
    )
    @refusing
    def customers(emu: Emulator, request: Request) -> Response:
        token = partner_token(request)
        try:
            size = int(request.args.get("size", DEFAULT_PAGE))
        except ValueError:
            return partner_center_error(400, 3000, "Invalid property: size must be an integer.")
        if size < 1:
            return partner_center_error(400, 3000, "Invalid property: size must be at least 1.")
        size = min(size, MAX_PAGE)
        continuation = request.headers.get("MS-ContinuationToken")
        offset = 0
        if continuation or request.args.get("seekOperation"):
            with _lock(emu):
                pending = emu.state.setdefault("pc_continuations", {}).pop(continuation or "", None)
            if pending is None or pending["tenant"] != token.tenant:
                return partner_center_error(
                    400,
                    3000,
                    "Invalid property: MS-ContinuationToken is missing, unknown or already used.",
                )
            offset, size = pending["offset"], pending["size"]
        with world.lock:
            listed = [
                c
                for c in world.customers.values()
                if c.partner_tenant == token.tenant and c.reseller
            ]
            page = [customer_json(c) for c in listed[offset : offset + size]]
        links: dict[str, Any] = {"self": _link(f"/v1/customers?size={size}")}
        if offset + size < len(listed):
            value = base64.b64encode(secrets.token_bytes(24)).decode("ascii")
            with _lock(emu):
                emu.state.setdefault("pc_continuations", {})[value] = {
                    "tenant": token.tenant,
                    "offset": offset + size,
                    "size": size,
                }
            prefix = "/v1" if emu.state.get("pc_links_with_v1") else ""
            links["next"] = _link(
                f"{prefix}/customers?size={size}&seekOperation=Next",
                [{"key": "MS-ContinuationToken", "value": value}],
            )
        body = {
            "totalCount": len(page),
            "items": page,
            "links": links,
            "attributes": {"objectType": "Collection"},
        }
        return _answer(request, body)

    @route(
        f"{PREFIX}/v1/customers/<customer_id>",
        endpoint="partner_center.customer",
        doc="developer/get-a-customer-by-id.md",
    )
    @refusing
    def customer(emu: Emulator, request: Request, customer_id: str) -> Response:
        token = partner_token(request)
        with world.lock:
            return _answer(request, customer_json(customer_of(token, customer_id), full=True))

    # -- subscriptions ---------------------------------------------------------------------

    @route(
        f"{PREFIX}/v1/customers/<customer_id>/subscriptions",
        endpoint="partner_center.subscriptions",
        doc="developer/get-all-of-a-customer-s-subscriptions.md",
    )
    @refusing
    def subscriptions(emu: Emulator, request: Request, customer_id: str) -> Response:
        token = partner_token(request)
        with world.lock:
            owner = commerce_customer_of(token, customer_id)
            items = [subscription_json(emu, owner, s) for s in owner.subscriptions.values()]
        body = {
            "totalCount": len(items),
            "items": items,
            "links": {"self": _link(f"/customers/{owner.tenant_id}/subscriptions")},
            "attributes": {"objectType": "Collection"},
        }
        return _answer(request, body)

    @route(
        f"{PREFIX}/v1/customers/<customer_id>/subscriptions/<subscription_id>",
        endpoint="partner_center.subscription",
        methods=("GET", "PATCH"),
        doc="developer/get-a-subscription-by-id.md; developer/change-the-quantity-of-a-subscription.md",
    )
    @refusing
    def subscription(
        emu: Emulator, request: Request, customer_id: str, subscription_id: str
    ) -> Response:
        token = partner_token(request)
        if request.method == "PATCH":
            return change_subscription(emu, request, token, customer_id, subscription_id)
        with world.lock:
            owner = commerce_customer_of(token, customer_id)
            current = subscription_of(owner, subscription_id)
            landed = _poll_pending(emu, owner, current)
            body = subscription_json(emu, owner, current, detail=True)
        if landed:
            notify_subscription_updated(emu, token.tenant, owner.tenant_id, current.id)
        return _answer(request, body)

    def change_subscription(
        emu: Emulator, request: Request, token: Any, customer_id: str, subscription_id: str
    ) -> Response:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return partner_center_error(
                400, 800002, "Invalid request input: a full Subscription resource is required."
            )
        fields = {key.lower(): value for key, value in data.items()}
        quantity = fields.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            return partner_center_error(400, 3000, "Invalid property: Quantity must be an integer.")
        with world.lock:
            owner = commerce_customer_of(token, customer_id)
            current = subscription_of(owner, subscription_id)
            _pending(emu).pop(current.id, None)  # a newer change replaces one in progress
            if str(fields.get("id", current.id)).lower() != current.id.lower():
                return partner_center_error(
                    400, 3000, "Invalid property: Id does not match the subscription in the URL."
                )
            if current.status == "deleted":
                return partner_center_error(
                    400,
                    2011,
                    f"Subscription with ID {current.id} and deleted status can't be updated.",
                )
            if current.status == "suspended" and quantity != current.quantity:
                return partner_center_error(
                    400, 800091, "Can't update a subscription with suspended status"
                )
            if not MIN_QUANTITY <= quantity <= MAX_QUANTITY:
                return partner_center_error(
                    400,
                    2002,
                    "Subscription quantity isn't within minimum and maximum allowed quantity",
                )
            change = quantity - current.quantity
            if change < 0 and -change > sum(q for q, _ in _refundable(emu, owner, current)):
                return partner_center_error(
                    400, 800090, "Subscription quantity cannot be decreased."
                )
            increases = emu.state.setdefault("pc_increases", {}).setdefault(current.id, [])
            if change > 0:
                increases.append((change, world.now + REFUND_WINDOW))
            elif change < 0:
                _take_back(increases, -change, world.now)
            accepted = abs(change) >= ASYNC_CHANGE or emu.state.get("pc_patch_async")
            polls = int(emu.state.get("pc_patch_pending_polls") or 0)
            deferred = bool(change and accepted and polls > 0)
            if deferred:
                _pending(emu)[current.id] = (quantity, polls)
            elif change:
                world.set_quantity(owner.tenant_id, current.id, quantity)
            if isinstance(fields.get("autorenewenabled"), bool):
                current.autoRenewEnabled = fields["autorenewenabled"]
            if isinstance(fields.get("friendlyname"), str):
                emu.state.setdefault("pc_friendly_names", {})[current.id] = fields["friendlyname"]
            body = subscription_json(emu, owner, current)
        if change and not deferred:
            notify_subscription_updated(emu, token.tenant, owner.tenant_id, current.id)
        if accepted:
            location = emu.url(
                "partnercenter", f"/v1/customers/{owner.tenant_id}/subscriptions/{current.id}"
            )
            return _answer(request, None, status=202, headers={"Location": location})
        return _answer(request, body)

    # -- the catalogue ---------------------------------------------------------------------

    @route(
        f"{PREFIX}/v1/products/<product_id>/skus/<sku_id>",
        endpoint="partner_center.sku",
        doc="developer/get-a-sku-by-id.md",
    )
    @refusing
    def catalogue_sku(emu: Emulator, request: Request, product_id: str, sku_id: str) -> Response:
        partner_token(request)
        country = request.args.get("country", "")
        if not country:
            return partner_center_error(
                400, 3000, "Invalid property: country is required (a country/region ID)."
            )
        with world.lock:
            found = [
                sku
                for customer in world.customers.values()
                for sku in customer.skus.values()
                if sku.productId.lower() == product_id.lower()
            ]
        if not found:
            return partner_center_error(404, 400013, "Product was not found.")
        sku = next((s for s in found if s.catalogSkuId.lower() == sku_id.lower()), None)
        if sku is None:
            return partner_center_error(404, 400018, "Sku was not found.")
        return _answer(request, sku_json(sku, country))

    # -- subscribed SKUs -------------------------------------------------------------------

    @route(
        f"{PREFIX}/v1/customers/<customer_id>/subscribedskus",
        endpoint="partner_center.subscribedskus",
        doc="developer/get-a-list-of-available-licenses.md",
    )
    @refusing
    def subscribed_skus(emu: Emulator, request: Request, customer_id: str) -> Response:
        token = partner_token(request)
        if (
            token.app_only
        ):  # "This scenario supports authentication with App+User credentials only."
            return partner_center_error(403, 403, NO_RIGHTS)
        with world.lock:
            owner = customer_of(token, customer_id, reseller=False)
            if owner.gdap_status != "active" or not LICENCE_READER_ROLES & set(owner.gdap_roles):
                return partner_center_error(403, 403, NO_RIGHTS)
            groups = {g.strip() for g in request.args.get("licenseGroupIds", "group1").split(",")}
            items = (
                [subscribed_sku_json(owner, sku) for sku in owner.skus.values()]
                if "group1" in groups
                else []
            )
        body = {
            "totalCount": len(items),
            "items": items,
            "attributes": {"objectType": "Collection"},
        }
        return _answer(request, body)

    # -- webhooks --------------------------------------------------------------------------

    webhooks = f"{PREFIX}/webhooks/v1/registration"

    @route(
        f"{webhooks}/events",
        endpoint="partner_center.webhook_events",
        doc="developer/partner-center-webhooks.md",
    )
    @refusing
    def webhook_events(emu: Emulator, request: Request) -> Response:
        partner_token(request)
        return _answer(request, list(WEBHOOK_EVENTS))

    @route(
        webhooks,
        endpoint="partner_center.webhook_registration",
        methods=("GET", "POST", "PUT", "DELETE"),
        doc="developer/partner-center-webhooks.md",
    )
    @refusing
    def webhook_registration(emu: Emulator, request: Request) -> Response:
        token = partner_token(request)
        registrations = _registrations(emu)
        if request.method in ("GET", "DELETE"):
            with _lock(emu):
                existing = registrations.get(token.tenant)
                if existing is None:
                    return partner_center_error(404, 1000, "Not found")
                if request.method == "DELETE":
                    del registrations[token.tenant]
                    return _answer(request, None, status=204)
            return _answer(
                request,
                {
                    "WebhookUrl": existing["WebhookUrl"],
                    "WebhookEvents": list(existing["WebhookEvents"]),
                },
            )
        data = request.get_json(silent=True)
        data = {k.lower(): v for k, v in data.items()} if isinstance(data, dict) else {}
        url, events = data.get("webhookurl"), data.get("webhookevents")
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            return partner_center_error(
                400, 3000, "Invalid property: WebhookUrl must be an absolute http(s) URL."
            )
        if (
            not isinstance(events, list)
            or not events
            or not all(e in WEBHOOK_EVENTS for e in events)
        ):
            return partner_center_error(
                400, 3000, "Invalid property: WebhookEvents must name supported events."
            )
        with _lock(emu):
            previous = registrations.get(token.tenant) or {}
            registration = {
                "SubscriberId": previous.get("SubscriberId") or str(uuid.uuid4()),
                "WebhookUrl": url,
                "WebhookEvents": list(dict.fromkeys(events)),
                "SignatureTokenToMsSignatureHeader": bool(
                    data.get("signaturetokentomssignatureheader")
                ),
            }
            registrations[token.tenant] = registration
        return _answer(
            request,
            {k: registration[k] for k in ("SubscriberId", "WebhookUrl", "WebhookEvents")},
        )

    @route(
        f"{webhooks}/validationEvents",
        endpoint="partner_center.webhook_validation",
        methods=("POST",),
        doc="developer/partner-center-webhooks.md",
    )
    @refusing
    def webhook_validation(emu: Emulator, request: Request) -> Response:
        token = partner_token(request)
        with _lock(emu):
            registration = _registrations(emu).get(token.tenant)
            if registration is None or "test-created" not in registration["WebhookEvents"]:
                return partner_center_error(
                    400,
                    3000,
                    "Register for the test-created event before sending a validation event.",
                )
            # "There is a throttle limit of 2 requests per minute when posting a validation event."
            limit = int(emu.state.get("pc_validation_limit", 2))
            recent = emu.state.setdefault("pc_validation_times", {}).setdefault(token.tenant, [])
            now = datetime.now(UTC)
            recent[:] = [t for t in recent if now - t < timedelta(minutes=1)]
            if len(recent) >= limit:
                wait = max(1, int(60 - (now - recent[0]).total_seconds()))
                return json_response(
                    {
                        "statusCode": 429,
                        "message": f"Rate limit is exceeded. Try again in {wait} seconds.",
                    },
                    status=429,
                    headers={"Retry-After": str(wait)},
                )
            recent.append(now)
            correlation = str(uuid.uuid4())
            record = {
                "correlationId": correlation,
                "partnerId": token.tenant,
                "status": "pending",
                "callbackUrl": registration["WebhookUrl"],
                "results": [],
            }
            emu.state.setdefault("pc_validation_events", {})[correlation] = record
        resource = f"{PUBLIC_HOST}/webhooks/v1/registration/validationEvents/{correlation}"

        def run() -> None:
            result: dict[str, Any] = {
                "responseCode": "",
                "responseMessage": "",
                "systemError": False,
            }
            try:
                answer = deliver_webhook(emu, "test-created", resource, url=record["callbackUrl"])
                if answer is None:  # pragma: no cover - a url is given, so there is an answer
                    raise ValueError("no delivery attempted")
                result["responseCode"] = http.HTTPStatus(answer.status_code).phrase.replace(" ", "")
                result["responseMessage"] = "" if answer.ok else answer.text[:1024]
            except (requests.RequestException, ValueError) as exc:
                result["systemError"] = True
                result["responseMessage"] = str(exc)[:1024]
            result["dateTimeUtc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0"
            with _lock(emu):
                record["results"].append(result)
                record["status"] = "completed"

        threading.Thread(target=run, name="pc-validation-event", daemon=True).start()
        return _answer(request, {"correlationId": correlation})

    @route(
        f"{webhooks}/validationEvents/<correlation_id>",
        endpoint="partner_center.webhook_validation_status",
        doc="developer/partner-center-webhooks.md",
    )
    @refusing
    def webhook_validation_status(emu: Emulator, request: Request, correlation_id: str) -> Response:
        token = partner_token(request)
        with _lock(emu):
            record = emu.state.setdefault("pc_validation_events", {}).get(correlation_id)
            if record is None or record["partnerId"] != token.tenant:
                return partner_center_error(404, 1000, "Not found")
            body = json.loads(json.dumps(record))
        return _answer(request, body)

    @route(
        f"{PREFIX}/certs/{CERT_NAME}.cer",
        endpoint="partner_center.signing_certificate",
        doc="developer/partner-center-webhooks.md",
    )
    def signing_certificate(emu: Emulator, request: Request) -> Response:
        _, cert = signing_identity(emu)
        return Response(
            cert.public_bytes(serialization.Encoding.DER),
            content_type="application/pkix-cert",
        )

    @route("/_admin/webhooks/deliver", endpoint="admin.webhooks_deliver", methods=("POST",))
    def admin_deliver(emu: Emulator, request: Request) -> Response:
        """Not Microsoft's: deliver an event now (``{event_name, resource_uri[, url, tenant]}``)."""
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not data.get("event_name") or not data.get("resource_uri"):
            return json_response({"error": "give event_name and resource_uri"}, status=400)
        try:
            answer = deliver_webhook(
                emu,
                data["event_name"],
                data["resource_uri"],
                url=data.get("url"),
                tenant=data.get("tenant"),
            )
        except requests.RequestException as exc:
            return json_response({"error": f"delivery failed: {exc}"}, status=502)
        if answer is None:
            return json_response(
                {"delivered": False, "reason": "no registration for that event"}, status=404
            )
        return json_response({"delivered": True, "status": answer.status_code})


def _take_back(increases: list[tuple[int, datetime]], amount: int, now: datetime) -> None:
    """Consume ``amount`` from the refundable increases, the newest first."""
    for index in range(len(increases) - 1, -1, -1):
        qty, until = increases[index]
        if until <= now or amount <= 0:
            continue
        used = min(qty, amount)
        increases[index] = (qty - used, until)
        amount -= used
    increases[:] = [(q, u) for q, u in increases if q > 0]


def _no_commerce(partner_tenant: str, customer_tenant: str) -> Response:
    return partner_center_error(
        403,
        20002,
        f"The partner ID {partner_tenant} has no commerce relationship with the customer ID {customer_tenant}.",
    )


def _pending(emulator: Emulator) -> dict[str, tuple[int, int]]:
    """Quantity changes answered 202 and not landed yet: subscription ID → (quantity, reads
    left before it lands)."""
    return emulator.state.setdefault("pc_pending_changes", {})


def _poll_pending(emulator: Emulator, customer: Customer, subscription: Subscription) -> bool:
    """Count a read of ``subscription``; land its pending change when its reads are used up."""
    pending = _pending(emulator)
    entry = pending.get(subscription.id)
    if entry is None:
        return False
    quantity, left = entry
    if left > 1:
        pending[subscription.id] = (quantity, left - 1)
        return False
    del pending[subscription.id]
    emulator.world.set_quantity(customer.tenant_id, subscription.id, quantity)
    return True


def sku_json(sku: Any, country: str) -> dict[str, Any]:
    """The catalogue's SKU resource (get-a-sku-by-id.md, its new-commerce sample)."""
    product, catalog = sku.productId, sku.catalogSkuId
    return {
        "id": catalog,
        "productId": product,
        "title": sku.name,
        "description": f"{sku.name}.",
        "minimumQuantity": MIN_QUANTITY,
        "maximumQuantity": MAX_QUANTITY,
        "isTrial": False,
        "supportedBillingCycles": ["annual", "monthly"],
        "purchasePrerequisites": ["MicrosoftCloudAgreement"],
        "inventoryVariables": [],
        "provisioningVariables": [],
        "actions": ["Refund"],
        "dynamicAttributes": {
            "isMicrosoftProduct": True,
            "hasConstraints": True,
            "isAddon": False,
            "prerequisiteSkus": [],
            "isSoftwareAssuranceApplicable": False,
            "upgradeTargetOffers": [],
            "provisioningId": sku.skuId,
            "internal": False,
        },
        "links": {
            "availabilities": _link(
                f"/products/{product}/skus/{catalog}/availabilities?country={country}"
            ),
            "self": _link(f"/products/{product}/skus/{catalog}?country={country}"),
        },
    }


class _Refusal(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response
