"""``[modules.microsoft_csp]``: connections to CSP partner tenants (guide sections 1–5)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, IterableValidationNote

from halo_integrator_core import Guid, SecretRef
from halo_integrator_core.config import LicenceImportType, RelationshipMode, ValueProblem


@attrs.frozen(kw_only=True)
class AppRegistration:
    """An Entra app registration: its client ID and where its secret is kept."""

    client_id: Guid
    client_secret: SecretRef


@attrs.frozen(kw_only=True)
class Connection:
    """``[[modules.microsoft_csp.connections]]``: one CSP partner tenant."""

    name: str
    tenant_id: Guid
    #: The single-tenant app that signs in to Partner Center (guide 2).
    partner_center_app: AppRegistration
    #: The multi-tenant app consented in each customer tenant (guide 3).
    gdap_app: AppRegistration
    relationship_mode: RelationshipMode = RelationshipMode.GDAP_AND_DAP
    licence_import_type: LicenceImportType = LicenceImportType.SKUS


#: Where Partner Center's webhook signing certificate is published: the only host the
#: webhooks page shows (``X-MS-Certificate-Url`` of its sample event). Microsoft documents
#: no list of its own; the receiver fetches from nowhere else.
PARTNER_CENTER_CERTIFICATE_HOSTS = ("3psostorageacct.blob.core.windows.net",)
#: Where Microsoft's and DigiCert's CA certificates are published (the caIssuers URLs of
#: their certificates): intermediates missing from the signing certificate's file are
#: fetched from here, as the Windows chain check of the webhooks page's sample does.
ISSUER_CERTIFICATE_HOSTS = ("www.microsoft.com", "cacerts.digicert.com")
#: Event names the webhooks page lists (2023-10 copy), which `events` may name.
WEBHOOK_EVENTS = (
    "azure-fraud-event-detected",
    "dap-admin-relationship-approved",
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
    "reseller-relationship-accepted-by-customer",
    "subscription-updated",
    "test-created",
    "usagerecords-thresholdExceeded",
)
_HOST = re.compile(
    r"^(?=.{1,253}(:|$))[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$"
)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, WEBHOOK_EVENTS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _hosts(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(host.strip().lower() for host in value)


def _host_problem(value: str) -> str | None:
    if not _HOST.match(value):
        return (
            f"not a host name: {value!r} (give a name such as "
            f"{PARTNER_CENTER_CERTIFICATE_HOSTS[0]!r}, or name:port; no scheme, path or wildcard)"
        )
    if ":" in value and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        return f"not a port: {value!r}"
    return None


def _check_hosts(name: str, hosts: tuple[str, ...]) -> list[Exception]:
    problems: list[Exception] = []
    for index, host in enumerate(hosts):
        problem = _host_problem(host)
        if problem:
            problems.append(_at(ValueProblem(problem), name, index))
    return problems


def _at(exc: Exception, attribute: str, index: int | None = None) -> Exception:
    """``exc`` noted with where it is, as cattrs notes its own errors (so the message names
    the key path: ``modules.microsoft_csp.webhooks.events[2]``)."""
    if index is not None:
        exc.__notes__ = [IterableValidationNote(f"@ index {index}", index, str)]
        exc = cattrs.IterableValidationError(f"While structuring {attribute}", [exc], tuple)
    exc.__notes__ = [AttributeValidationNote(f"@ attribute {attribute}", attribute, object)]
    return exc


@attrs.frozen(kw_only=True)
class WebhookSettings:
    """``[modules.microsoft_csp.webhooks]``: receiving Partner Center's events (guide 9.2)."""

    #: Answer events at ``/webhooks/microsoft_csp``; off, every request there gets 404.
    enabled: bool = False
    #: Hosts the signing certificate may be fetched from (``X-MS-Certificate-Url``, https
    #: only); ``name`` is port 443, ``name:port`` another port.
    allowed_certificate_hosts: tuple[str, ...] = attrs.field(
        default=PARTNER_CENTER_CERTIFICATE_HOSTS, converter=_hosts
    )
    #: Hosts intermediate CA certificates may be fetched from (the certificate's caIssuers).
    issuer_certificate_hosts: tuple[str, ...] = attrs.field(
        default=ISSUER_CERTIFICATE_HOSTS, converter=_hosts
    )
    #: PEM roots to trust instead of the public ones (certifi): the emulator's CA, in tests.
    trusted_ca_file: Path | None = None
    #: What `csp webhooks register` registers for (``test-created`` is always added).
    events: tuple[str, ...] = ("subscription-updated",)

    def __attrs_post_init__(self) -> None:
        problems = [
            *_check_hosts("allowed_certificate_hosts", self.allowed_certificate_hosts),
            *_check_hosts("issuer_certificate_hosts", self.issuer_certificate_hosts),
        ]
        if not self.allowed_certificate_hosts:
            problems.append(
                _at(
                    ValueProblem(
                        "give at least one host (the default is "
                        f"{list(PARTNER_CENTER_CERTIFICATE_HOSTS)})"
                    ),
                    "allowed_certificate_hosts",
                )
            )
        for index, name in enumerate(self.events):
            if name not in WEBHOOK_EVENTS:
                problems.append(
                    _at(
                        ValueProblem(
                            f"{name!r} is not a Partner Center webhook event"
                            + _did_you_mean(name)
                            + " (the README lists them)"
                        ),
                        "events",
                        index,
                    )
                )
        if self.trusted_ca_file is not None:
            problem = _ca_file_problem(self.trusted_ca_file)
            if problem:
                problems.append(_at(ValueProblem(problem), "trusted_ca_file"))
        if problems:
            raise cattrs.ClassValidationError(
                "While structuring WebhookSettings", problems, WebhookSettings
            )


def _ca_file_problem(path: Path) -> str | None:
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    try:
        if x509.load_pem_x509_certificates(data):
            return None
    except ValueError:
        pass
    return f"{path} holds no PEM certificate"


@attrs.frozen(kw_only=True)
class MicrosoftCspSettings:
    connections: tuple[Connection, ...] = ()
    #: "Allow licences to be managed from within Halo" (guide 5.1): `csp licence assign` and
    #: `csp licence remove` act on Microsoft 365 only while this is on.
    manage_licences: bool = False
    webhooks: WebhookSettings = WebhookSettings()


__all__ = [
    "AppRegistration",
    "Connection",
    "LicenceImportType",
    "MicrosoftCspSettings",
    "RelationshipMode",
    "WebhookSettings",
]
