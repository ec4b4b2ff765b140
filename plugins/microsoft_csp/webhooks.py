"""Receiving Partner Center's webhook events: verify them as Microsoft documents, then say
what they mean.

The steps are those of the webhooks page (``partner-center-webhooks.md``, "How to
authenticate the callback"): the signature headers are present; the certificate named by
``X-MS-Certificate-Url`` is fetched (only over https, only from an allowed host, through the
shared HTTP client), chains to a trusted root and names Microsoft Corporation as its
organisation; the signature (``Authorization: Signature <base64>``, or ``x-ms-signature``
when the registration asked for it) verifies over the raw body with the named algorithm,
``rsa-sha256`` (RSA PKCS#1 v1.5 with SHA-256, what the page's .NET sample computes). Only
then is the body parsed.

Partner Center's events carry no event ID, so a delivery is identified by a hash of the
event it signed (see `event_id`); the core processes each ID once.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import json
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import certifi
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from halo_integrator_core import EntityKind, ModuleContext, WebhookEvent, WebhookOutcome
from halo_integrator_core.errors import HttpError
from halo_integrator_core.http import HttpClient

from .settings import WEBHOOK_EVENTS, WebhookSettings

#: What ``X-MS-Signature-Algorithm`` may name: the webhooks page's only algorithm.
SIGNATURE_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {"rsa-sha256": hashes.SHA256}
#: The organisation the certificate must name (the page's sample checks "O=Microsoft Corporation").
MICROSOFT = "Microsoft Corporation"
#: A certificate file larger than this is not a certificate.
CERTIFICATE_MAX_BYTES = 64 * 1024
#: Intermediates fetched from caIssuers links, at most, to complete one chain.
MAX_ISSUER_FETCHES = 3
#: Events whose resource the scheduled sync refreshes (subscription quantity and status).
REFRESHES: dict[str, tuple[EntityKind, ...]] = {"subscription-updated": (EntityKind.SUBSCRIPTIONS,)}
_CUSTOMER = re.compile(r"/customers/([0-9a-fA-F-]{36})(?=/|$|\?)")
_SUBSCRIPTION = re.compile(r"/subscriptions/([0-9a-fA-F-]{36})(?=/|$|\?)")


class Rejected(Exception):
    """A request that is not a verified Partner Center event: answered ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the certificate cache --------------------------------------------------------------------


@attrs.frozen
class _Fetched:
    certificates: tuple[x509.Certificate, ...]
    at: float
    expires: float


class CertificateCache:
    """Certificates fetched per URL: at most ``size`` of them, each for ``seconds`` at most
    (and never past its own expiry). Shared by the threads of the HTTP server."""

    def __init__(self, *, size: int = 32, seconds: float = 3600.0) -> None:
        self.size = size
        self.seconds = seconds
        self._entries: collections.OrderedDict[str, _Fetched] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, now: float | None = None) -> _Fetched | None:
        now = time.time() if now is None else now
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                return None
            if entry.expires <= now:
                del self._entries[url]
                return None
            self._entries.move_to_end(url)
            return entry

    def put(self, url: str, certificates: tuple[x509.Certificate, ...]) -> _Fetched:
        now = time.time()
        not_after = min(c.not_valid_after_utc.timestamp() for c in certificates)
        entry = _Fetched(certificates, now, min(now + self.seconds, not_after))
        with self._lock:
            self._entries[url] = entry
            self._entries.move_to_end(url)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def drop(self, url: str) -> None:
        with self._lock:
            self._entries.pop(url, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CERTIFICATES = CertificateCache()
#: A cached certificate whose signature check fails is fetched again (Microsoft renews it
#: at the same URL), but not more often than this: a forger cannot make us fetch at will.
REFETCH_AFTER_SECONDS = 60.0


# -- the steps --------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip() or None
    return None


@attrs.frozen
class SignedRequest:
    """The three things the signature headers say."""

    signature: bytes
    certificate_url: str
    algorithm: str


def signed_request(headers: Mapping[str, str]) -> SignedRequest:
    """Step 1: the required headers, present and well-formed."""
    authorization = _header(headers, "authorization")
    ms_signature = _header(headers, "x-ms-signature")
    token = None
    for name, value in (("Authorization", authorization), ("x-ms-signature", ms_signature)):
        if value is None:
            continue
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "signature" and rest.strip():
            token = rest.strip()
            break
        if name == "x-ms-signature" and not rest:
            token = value  # the bare signature
            break
    if token is None:
        if authorization is None and ms_signature is None:
            raise Rejected(401, "unsigned: no Authorization (or x-ms-signature) header")
        raise Rejected(401, "the Authorization header's scheme is not 'Signature'")
    missing = [
        name
        for name in ("x-ms-certificate-url", "x-ms-signature-algorithm")
        if _header(headers, name) is None
    ]
    if missing:
        raise Rejected(401, f"required header(s) missing: {', '.join(missing)}")
    try:
        signature = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(401, "the signature is not base64") from None
    algorithm = _header(headers, "x-ms-signature-algorithm") or ""
    if algorithm.lower() not in SIGNATURE_ALGORITHMS:
        raise Rejected(
            401,
            f"unsupported X-MS-Signature-Algorithm {algorithm[:40]!r}: only "
            f"{', '.join(SIGNATURE_ALGORITHMS)} is accepted",
        )
    return SignedRequest(
        signature=signature,
        certificate_url=_header(headers, "x-ms-certificate-url") or "",
        algorithm=algorithm.lower(),
    )


def _host_allowed(url: str, allowed: tuple[str, ...], *, schemes: tuple[str, ...]) -> str | None:
    """Why ``url`` may not be fetched, or ``None`` if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "it is not a URL"
    if parts.scheme.lower() not in schemes:
        return f"it is not {' or '.join(schemes)}"
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return "it has no plain host"
    host = parts.hostname.lower()
    default = 443 if parts.scheme.lower() == "https" else 80
    for entry in allowed:
        name, _, entry_port = entry.partition(":")
        if host == name and (port or default) == (int(entry_port) if entry_port else default):
            return None
    where = f"{host}:{port}" if port else host
    return f"its host {where} is not on the allow-list"


def check_certificate_url(url: str, settings: WebhookSettings) -> None:
    """The certificate URL is https and its host is allowed; nothing else is ever fetched."""
    problem = _host_allowed(url, settings.allowed_certificate_hosts, schemes=("https",))
    parts = urlsplit(url)
    if problem is None and (parts.query or parts.fragment):
        # Partner Center's has neither; each different one would miss the certificate
        # cache and be fetched anew, a fetch on every forged request.
        problem = "it has a query or fragment"
    if problem:
        raise Rejected(
            401,
            f"the certificate URL is refused: {problem} (webhooks.allowed_certificate_hosts)",
        )


def _download(http: HttpClient, url: str) -> bytes:
    """GET ``url``, no redirects, at most `CERTIFICATE_MAX_BYTES`."""
    response = http.request("GET", url, stream=True, allow_redirects=False)
    try:
        if response.status_code != 200:
            raise Rejected(503, f"the certificate URL answered {response.status_code}, not 200")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > CERTIFICATE_MAX_BYTES:
            raise Rejected(401, "the certificate file is too large")
        data = b""
        for chunk in response.iter_content(8192):
            data += chunk
            if len(data) > CERTIFICATE_MAX_BYTES:
                raise Rejected(401, "the certificate file is too large")
        return data
    finally:
        response.close()


def _load(data: bytes) -> list[x509.Certificate]:
    """The certificates of a .cer/.crt file (DER or PEM, one or a bundle) or a PKCS#7 file."""
    loaders: tuple[Callable[[bytes], Any], ...] = (
        lambda d: [x509.load_der_x509_certificate(d)],
        x509.load_pem_x509_certificates,
        pkcs7.load_der_pkcs7_certificates,
        pkcs7.load_pem_pkcs7_certificates,
    )
    for load in loaders:
        try:
            found = list(load(data))
        except (ValueError, UnsupportedAlgorithm):
            continue
        if found:
            return found
    return []


def parse_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """The signing certificate file's certificates, the end-entity certificate first."""
    found = _load(data)
    if not found:
        raise Rejected(401, "the certificate URL does not serve a certificate")
    leaves = [c for c in found if not _is_ca(c)]
    if not leaves:
        raise Rejected(401, "the certificate URL serves only CA certificates")
    leaf = leaves[0]
    return (leaf, *(c for c in found if c is not leaf))


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


@attrs.frozen
class TrustAnchors:
    roots: tuple[x509.Certificate, ...]
    store: Store
    source: str

    def knows(self, name: x509.Name) -> bool:
        return any(root.subject == name for root in self.roots)


@functools.lru_cache(maxsize=4)
def _anchors(path: str, _mtime_ns: int) -> TrustAnchors:
    with warnings.catch_warnings():
        # certifi still carries a root or two with a serial number RFC 5280 disallows.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        roots = tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))
    return TrustAnchors(roots=roots, store=Store(list(roots)), source=path)


def trust_anchors(settings: WebhookSettings) -> TrustAnchors:
    """``webhooks.trusted_ca_file`` if set (the emulator's CA), else the public roots."""
    path = str(settings.trusted_ca_file) if settings.trusted_ca_file else certifi.where()
    try:
        return _anchors(path, Path(path).stat().st_mtime_ns)
    except (OSError, ValueError) as exc:
        raise Rejected(500, f"cannot read the trusted roots {path}: {exc}") from None


def _verifier(anchors: TrustAnchors, now: datetime) -> Any:
    # The web PKI's rules for the CAs; for the signing certificate itself, less what is
    # about TLS (which key purposes it lists, whether it names hosts) and the authority key
    # identifier, which only helps to find the issuer (the emulator's certificate has none;
    # the issuer is found by name all the same).
    end_entity = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )
    # The page's sample validates the chain by the basic policy (certificate.Verify()),
    # which sets no extended key usage for the CAs: a client verifier's default asks each
    # of them for client authentication, which a TLS issuing CA marked for servers only
    # does not give.
    issuing = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(anchors.store)
        .time(now)
        .extension_policies(ca_policy=issuing, ee_policy=end_entity)
        .build_client_verifier()
    )


def _issuer_urls(certificate: x509.Certificate) -> list[str]:
    try:
        access = certificate.extensions.get_extension_for_oid(
            ExtensionOID.AUTHORITY_INFORMATION_ACCESS
        ).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in access
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def _missing_link(chain: list[x509.Certificate], anchors: TrustAnchors) -> x509.Certificate | None:
    """The certificate whose issuer neither the file nor the trusted roots hold."""
    by_subject = {c.subject: c for c in chain}
    current, seen = chain[0], set()
    while current.subject not in seen:
        seen.add(current.subject)
        if current.issuer == current.subject or anchors.knows(current.issuer):
            return None
        parent = by_subject.get(current.issuer)
        if parent is None:
            return current
        current = parent
    return None


def verify_chain(
    certificates: tuple[x509.Certificate, ...],
    anchors: TrustAnchors,
    settings: WebhookSettings,
    http: HttpClient,
    now: datetime,
) -> None:
    """Step 3: the certificate chains to a trusted root, fetching missing intermediates from
    their caIssuers links (on ``webhooks.issuer_certificate_hosts`` only)."""
    leaf, *intermediates = certificates
    if now < leaf.not_valid_before_utc:
        raise Rejected(
            401, f"the signing certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}"
        )
    if now > leaf.not_valid_after_utc:
        raise Rejected(
            401, f"the signing certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    verifier = _verifier(anchors, now)
    fetched = 0
    while True:
        try:
            verifier.verify(leaf, intermediates)
            return
        except VerificationError as exc:
            reason = str(exc)
        dangling = _missing_link([leaf, *intermediates], anchors)
        urls = [] if dangling is None else _issuer_urls(dangling)
        added = False
        for url in urls:
            if fetched >= MAX_ISSUER_FETCHES:
                break
            if _host_allowed(url, settings.issuer_certificate_hosts, schemes=("http", "https")):
                continue
            fetched += 1
            issuers = _cached_issuers(http, url)
            if issuers:
                intermediates.extend(c for c in issuers if c not in intermediates)
                added = True
                break
        if not added:
            raise Rejected(
                401,
                "the signing certificate does not chain to a trusted root "
                f"({anchors.source}): {reason[:300]}",
            )


def _cached_issuers(http: HttpClient, url: str) -> tuple[x509.Certificate, ...]:
    entry = CERTIFICATES.get(url)
    if entry is not None:
        return entry.certificates
    try:
        data = _download(http, url)
    except HttpError as exc:
        # Not the sender's fault, as for the signing certificate: answer so that Partner
        # Center delivers again later, rather than refuse a genuine event for good.
        raise Rejected(503, f"cannot fetch the issuing certificate {url}: {exc}") from None
    found = [c for c in _load(data) if _is_ca(c)]
    return CERTIFICATES.put(url, tuple(found)).certificates if found else ()


def check_organisation(certificate: x509.Certificate) -> None:
    """Step 4: Microsoft Corporation is the organisation of the certificate's subject, and
    of its issuer (what the page's sample checks)."""
    for role, name in (("subject", certificate.subject), ("issuer", certificate.issuer)):
        organisations = [a.value for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if MICROSOFT not in organisations:
            shown = ", ".join(str(o) for o in organisations) or "none"
            raise Rejected(
                401,
                f"the signing certificate's {role} organisation is not {MICROSOFT} ({shown})",
            )


def verify_signature(certificate: x509.Certificate, request: SignedRequest, body: bytes) -> None:
    """Steps 5–7: the signature verifies over the raw body bytes."""
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(401, "the signing certificate's key is not an RSA key")
    algorithm = SIGNATURE_ALGORITHMS[request.algorithm]
    try:
        key.verify(request.signature, body, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Rejected(
            401, "the signature does not verify over the body: forged, or altered on the way"
        ) from None


def _certificates(http: HttpClient, url: str, *, fresh: bool = False) -> _Fetched:
    entry = None if fresh else CERTIFICATES.get(url)
    if entry is not None:
        return entry
    try:
        data = _download(http, url)
    except HttpError as exc:
        # Not the sender's fault: answer so that Partner Center delivers again later.
        raise Rejected(503, f"cannot fetch the signing certificate: {exc}") from None
    return CERTIFICATES.put(url, parse_certificates(data))


def verify(
    headers: Mapping[str, str],
    body: bytes,
    settings: WebhookSettings,
    http: HttpClient,
    *,
    now: datetime | None = None,
) -> None:
    """Every step of the webhooks page; raises `Rejected` saying which one failed."""
    request = signed_request(headers)
    check_certificate_url(request.certificate_url, settings)
    anchors = trust_anchors(settings)
    now = now or datetime.now(UTC)
    entry = _certificates(http, request.certificate_url)
    for attempt in (1, 2):
        leaf = entry.certificates[0]
        verify_chain(entry.certificates, anchors, settings, http, now)
        check_organisation(leaf)
        try:
            verify_signature(leaf, request, body)
            return
        except Rejected:
            if attempt == 2 or time.time() - entry.at < REFETCH_AFTER_SECONDS:
                raise
        # Microsoft may have renewed the certificate at the same URL: fetch it once more.
        entry = _certificates(http, request.certificate_url, fresh=True)


# -- what an event means ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PartnerCenterEvent:
    """The event model of the webhooks page (its table says ``AuditUrl``; every payload,
    and so this, says ``AuditUri``)."""

    event_name: str
    resource_uri: str | None
    resource_name: str | None
    audit_uri: str | None
    resource_change_utc_date: str | None
    event_id: str


def event_id(payload: Mapping[str, Any]) -> str:
    """What identifies one event across its deliveries: Partner Center sends no event ID,
    so the SHA-256 of the signed event in a canonical form (keys sorted, no spaces), which
    a redelivery's different whitespace or key order does not change. Two changes of one
    resource differ in their ``ResourceChangeUtcDate`` (and ``AuditUri``)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_event(body: bytes) -> PartnerCenterEvent:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "the body is not a JSON object")
    name = payload.get("EventName")
    if not isinstance(name, str) or not name:
        raise Rejected(400, "the event has no EventName")

    def text(key: str) -> str | None:
        value = payload.get(key)
        return value if isinstance(value, str) and value else None

    return PartnerCenterEvent(
        event_name=name,
        resource_uri=text("ResourceUri"),
        resource_name=text("ResourceName"),
        audit_uri=text("AuditUri") or text("AuditUrl"),
        resource_change_utc_date=text("ResourceChangeUtcDate"),
        event_id=event_id(payload),
    )


def _ids(uri: str | None, pattern: re.Pattern[str]) -> str | None:
    # ResourceUri is http or https, with or without /webhooks: read IDs, never call it.
    match = pattern.search(urlsplit(uri).path) if uri else None
    return match.group(1).lower() if match else None


def outcome_of(event: PartnerCenterEvent) -> WebhookOutcome:
    """A verified event → what to answer, log and refresh."""
    tenant = _ids(event.resource_uri, _CUSTOMER)
    common = {"event_name": event.event_name[:40], "tenant_id": tenant, "event_id": event.event_id}
    if event.event_name == "subscription-updated":
        subscription = _ids(event.resource_uri, _SUBSCRIPTION)
        if tenant is None or subscription is None:
            return WebhookOutcome(
                status=200,
                message="subscription-updated names no /customers/{id}/subscriptions/{id} in "
                "its ResourceUri: nothing to refresh (the scheduled sync will see the change)",
                **common,
            )
        return WebhookOutcome(
            status=200,
            message=f"subscription {subscription} of customer {tenant} changed "
            f"(at {event.resource_change_utc_date or 'an unknown time'}): refreshing the "
            "customer's subscriptions",
            refresh=REFRESHES[event.event_name],
            **common,
        )
    if event.event_name == "test-created":
        return WebhookOutcome(
            status=200, message="test event received: the registration works", **common
        )
    if event.event_name in WEBHOOK_EVENTS:
        return WebhookOutcome(
            status=200,
            message=f"{event.event_name} received and logged; nothing to do for it here "
            f"({event.resource_name or 'no resource'}: {event.resource_uri or 'no URI'})",
            **common,
        )
    # Answered 200 all the same: an error would make Partner Center deliver it again and again.
    return WebhookOutcome(
        status=200,
        message=f"unknown event {event.event_name[:100]!r} logged and ignored",
        **common,
    )


def handle(context: ModuleContext, event: WebhookEvent) -> WebhookOutcome:
    """The module's `on_webhook`."""
    settings: WebhookSettings = context.settings.webhooks
    if not settings.enabled:
        return WebhookOutcome(
            status=404,
            message=f"webhooks are off: set enabled = true in [modules.{context.module}.webhooks]",
        )
    http = context.http
    owned = http is None
    if http is None:
        http = HttpClient(verify=context.endpoints.verify if context.endpoints else True)
    try:
        verify(event.headers, event.body, settings, http)
        return outcome_of(parse_event(event.body))
    except Rejected as rejected:
        return WebhookOutcome(status=rejected.status, message=str(rejected))
    finally:
        if owned:
            http.close()


__all__ = [
    "CERTIFICATES",
    "CertificateCache",
    "PartnerCenterEvent",
    "Rejected",
    "event_id",
    "handle",
    "outcome_of",
    "parse_event",
    "verify",
]
