"""`halo-integrator.toml` → typed settings.

One strict cattrs converter structures the file: an unknown key, a wrong type, a missing
value, a bad GUID or URL, or an inline secret each becomes one line naming its key path, and
every problem in the file is reported at once. Module tables are structured in a second
step, with the settings type the module's plugin declares, so a disabled module's settings
are never read by code that is not loaded.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from .logging import SECRET_KEY

CONFIG_FILENAME = "halo-integrator.toml"
CONFIG_ENV = "HALO_INTEGRATOR_CONFIG"
DATABASE_FILENAME = "halo-integrator.db"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` are one line each, with key paths."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


class ValueProblem(ValueError):
    """A value of the right type that is still wrong (bad GUID, bad URL, ...)."""


# --- value types -------------------------------------------------------------------------


class Guid(str):
    """A GUID, kept in lower-case canonical form (tenant IDs, client IDs)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Guid:
        if not isinstance(value, str):
            raise ValueProblem(f"expected a GUID string, got {_describe(value)}")
        try:
            return cls(str(uuid.UUID(value.strip())))
        except ValueError:
            raise ValueProblem(f"not a GUID: {value!r} (expected 8-4-4-4-12 hex digits)") from None


class HttpsUrl(str):
    """An absolute https:// URL without a trailing slash (Microsoft hosts)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> HttpsUrl:
        if not isinstance(value, str):
            raise ValueProblem(f"expected a URL string, got {_describe(value)}")
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueProblem(f"not an https URL: {value!r}")
        return cls(value.rstrip("/"))


class DatabaseUrl(str):
    """A SQLAlchemy database URL (``sqlite:///path``, ``postgresql+psycopg://...``)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> DatabaseUrl:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if not isinstance(value, str):
            raise ValueProblem(f"expected a database URL string, got {_describe(value)}")
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueProblem(
                f"not a database URL: {value!r} (for example sqlite:///halo.db or "
                "postgresql+psycopg://user@host/dbname)"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueProblem(
                f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql"
            )
        return cls(value)


@attrs.frozen
class SecretRef:
    """Where a secret lives: an environment variable or a file, never the config itself."""

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self) -> str:
        """Read the secret now; raises `ValueProblem` saying where it was looked for."""
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise ValueProblem(f"environment variable {self.env} is not set or empty")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueProblem(f"cannot read secret file {self.file}: {exc.strerror}") from None
        if not value:
            raise ValueProblem(f"secret file {self.file} is empty")
        return value

    @classmethod
    def parse(cls, value: Any) -> SecretRef:
        if isinstance(value, str):
            raise ValueProblem(
                'secrets are given by reference, not inline: use { env = "VARIABLE" } '
                'or { file = "/path/to/secret" }'
            )
        if not isinstance(value, Mapping):
            raise ValueProblem(
                f'expected {{ env = "VARIABLE" }} or {{ file = "/path" }}, got {_describe(value)}'
            )
        extra = set(value) - {"env", "file"}
        if extra:
            raise ValueProblem(f"unknown key(s) {', '.join(sorted(extra))}: use env or file")
        env, file = value.get("env"), value.get("file")
        if (env is None) == (file is None):
            raise ValueProblem('give exactly one of env = "VARIABLE" or file = "/path"')
        if env is not None and (not isinstance(env, str) or not env):
            raise ValueProblem("env must name an environment variable")
        if file is not None and (not isinstance(file, str) or not file):
            raise ValueProblem("file must be a path")
        return cls(env=env, file=Path(file).expanduser() if file else None)


# --- settings ----------------------------------------------------------------------------


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


class Track(enum.StrEnum):
    STABLE = "stable"
    BETA = "beta"


class Marketplace(enum.StrEnum):
    GB = "GB"
    US = "US"


class Cloud(enum.StrEnum):
    """A Microsoft cloud: the public one or a sovereign one."""

    PUBLIC = "public"
    US_GOVERNMENT = "us_government"
    CHINA = "china"


#: Hosts per cloud (login, Graph, Partner Center, the partner API used for pricing). Partner
#: Center serves the US Government cloud from its global host; 21Vianet has its own host.
CLOUD_HOSTS: dict[Cloud, dict[str, str]] = {
    Cloud.PUBLIC: {
        "login": "https://login.microsoftonline.com",
        "graph": "https://graph.microsoft.com",
        "partner_center": "https://api.partnercenter.microsoft.com",
        "partner_api": "https://api.partner.microsoft.com",
    },
    Cloud.US_GOVERNMENT: {
        "login": "https://login.microsoftonline.us",
        "graph": "https://graph.microsoft.us",
        "partner_center": "https://api.partnercenter.microsoft.com",
        "partner_api": "https://api.partner.microsoft.com",
    },
    Cloud.CHINA: {
        "login": "https://login.chinacloudapi.cn",
        "graph": "https://microsoftgraph.chinacloudapi.cn",
        "partner_center": "https://partner.partnercenterapi.microsoftonline.cn",
        "partner_api": "https://api.partner.microsoft.com",
    },
}


@attrs.frozen(kw_only=True)
class EndpointSettings:
    """``[endpoints]``: where Microsoft is. The public cloud unless a key says otherwise,
    so a sovereign cloud, or the built-in emulator, is only other values."""

    cloud: Cloud = Cloud.PUBLIC
    login: HttpsUrl | None = None
    graph: HttpsUrl | None = None
    partner_center: HttpsUrl | None = None
    partner_api: HttpsUrl | None = None
    #: A CA bundle to trust for these hosts instead of the system's (the emulator's CA).
    ca_bundle: Path | None = None

    def url(self, name: str) -> str:
        """The base URL of host ``name`` (login, graph, partner_center, partner_api)."""
        return getattr(self, name) or CLOUD_HOSTS[self.cloud][name]

    @property
    def verify(self) -> bool | str:
        return str(self.ca_bundle) if self.ca_bundle else True


@attrs.frozen(kw_only=True)
class StoreSettings:
    """``[store]``: where the PSA model and the integrator's state live."""

    #: A SQLite or PostgreSQL URL; unset means the SQLite file beside the config.
    url: DatabaseUrl | None = None


@attrs.frozen(kw_only=True)
class LoggingSettings:
    """``[logging]``."""

    format: LogFormat = LogFormat.AUTO
    level: str = "info"
    #: Request-log entries older than this many days are pruned (guide 12.1); 0 keeps all.
    request_log_retention_days: int = 30


class ImportKind(enum.StrEnum):
    """'Select Modules to Import' (guide 8.1): what scheduled runs of a syncing module import."""

    TENANTS = "tenants"
    LICENCES = "licences"
    SUBSCRIPTIONS = "subscriptions"
    USERS = "users"
    ASSETS = "assets"


@attrs.frozen(kw_only=True)
class IntegratorSettings:
    """``[integrator]``: the Halo Integrator settings every module shares (guide 8)."""

    #: 'Enable the Halo Integrator': scheduled syncs run (the server runs either way).
    enabled: bool = True
    #: What scheduled runs import; 'Azure Tenants' brings tenants with their licences.
    import_kinds: tuple[ImportKind, ...] = tuple(ImportKind)
    track: Track = Track.STABLE
    marketplace: Marketplace = Marketplace.GB
    #: A tenant with no mapping gets a customer of its own name and a Main site (guide 8.3).
    create_customers_from_tenants: bool = False
    #: Users missing from a complete listing are deactivated (guide 8.3).
    deactivate_users_not_found: bool = True
    #: Each imported tenant's ID joins the store's SSO allowed-tenants list (guide 4.2).
    add_tenants_to_sso_allowed_list: bool = False
    #: A customer with no site mapping imports every user of its tenants to its main site,
    #: as if `csp site-mappings generate` had written one for it (guide 6.1.2, last part).
    create_site_mappings_for_new_tenants: bool = False
    #: How many tenants a run syncs at once. Each tenant's fetching runs beside the others';
    #: writes to the store take turns, so this bounds network concurrency, not the store's.
    parallel_tenants: int = 4


@attrs.frozen(kw_only=True)
class ThrottlingSettings:
    """``[throttling]``: how the client paces itself under Microsoft Graph's throttling.

    Graph budgets requests per app per tenant over a sliding window and answers the excess
    with 429 and a Retry-After; the limits differ per service (concepts/throttling-limits.md).
    A Retry-After always holds back the whole tenant's requests; a budget set here also
    keeps each tenant's requests within it, so those 429s are not met at all.
    """

    #: Graph requests per tenant the client allows itself per window; 0: no budget, pace
    #: by Retry-After only.
    graph_requests: int = 0
    #: The window of ``graph_requests``, in seconds.
    graph_window_seconds: float = 10.0


class RelationshipMode(enum.StrEnum):
    """'Status of Tenant Relationships' (guide 4.1): which relationships bring a tenant in."""

    GDAP_AND_DAP = "gdap_and_dap"
    GDAP_ONLY = "gdap_only"


class LicenceImportType(enum.StrEnum):
    """What is imported as licences (guide 5.1)."""

    SKUS = "skus"
    SUBSCRIPTIONS = "subscriptions"
    SUBSCRIPTIONS_AND_SKUS = "subscriptions_and_skus"


@attrs.frozen(kw_only=True)
class TenantMapping:
    """``[[tenant_mappings]]``: one Azure tenant → one PSA customer, or do not import.

    A mapping may override, for its tenant, the relationship type and the licence import
    type its connection sets (guide 4.1).
    """

    tenant_id: Guid
    customer: str | None = None
    do_not_import: bool = False
    module: str | None = None
    relationship_type: RelationshipMode | None = None
    licence_import_type: LicenceImportType | None = None

    def overrides(self) -> dict[str, str]:
        """What this mapping overrides, as the per-tenant hooks see it."""
        found = {
            "relationship_type": self.relationship_type,
            "licence_import_type": self.licence_import_type,
        }
        return {key: value.value for key, value in found.items() if value is not None}


# --- user import rules (guide 6) ---------------------------------------------------------

#: Directory (Entra ID) user properties field mappings, filters and site fields may read,
#: by their Microsoft names (microsoftgraph/microsoft-graph-docs-contrib,
#: api-reference/v1.0/resources/user.md: the properties a users listing returns on $select).
USER_PROPERTIES = frozenset(
    {
        "accountEnabled", "ageGroup", "businessPhones", "city", "companyName",
        "consentProvidedForMinor", "country", "createdDateTime", "creationType", "department",
        "displayName", "employeeHireDate", "employeeId", "employeeLeaveDateTime",
        "employeeType", "externalUserState", "faxNumber", "givenName", "id", "imAddresses",
        "isResourceAccount", "jobTitle", "lastPasswordChangeDateTime", "mail", "mailNickname",
        "mobilePhone", "officeLocation", "onPremisesDistinguishedName", "onPremisesDomainName",
        "onPremisesImmutableId", "onPremisesSamAccountName", "onPremisesSecurityIdentifier",
        "onPremisesSyncEnabled", "onPremisesUserPrincipalName", "otherMails",
        "passwordPolicies", "postalCode", "preferredDataLocation", "preferredLanguage",
        "proxyAddresses", "showInAddressList", "state", "streetAddress", "surname",
        "usageLocation", "userPrincipalName", "userType",
    }
)  # fmt: skip

#: The PSA user fields a field mapping or a site mapping's ``values`` may set.
PSA_USER_FIELDS = (
    "display_name", "first_name", "surname", "email", "network_login", "job_title",
    "department", "office_location", "phone", "mobile", "employee_id",
)  # fmt: skip

#: The documented default field mappings (guide 6.2): PSA user field ← directory property.
DEFAULT_USER_FIELDS: Mapping[str, str] = {
    "display_name": "displayName",
    "first_name": "givenName",
    "surname": "surname",
    "email": "mail",
    "network_login": "userPrincipalName",
    "job_title": "jobTitle",
    "department": "department",
    "office_location": "officeLocation",
    "phone": "businessPhones",
    "mobile": "mobilePhone",
    "employee_id": "employeeId",
}


class UserMatching(enum.StrEnum):
    """'User Matching Fields' (guide 6.3): how a directory user finds its PSA user."""

    OBJECT_ID = "object_id"
    EMAIL = "email"
    NETWORK_LOGIN = "network_login"


class FilterOperator(enum.StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    IS_EMPTY = "is_empty"
    IS_NOT_EMPTY = "is_not_empty"


#: Operators that compare with no value.
VALUELESS_OPERATORS = frozenset({FilterOperator.IS_EMPTY, FilterOperator.IS_NOT_EMPTY})


@attrs.frozen(kw_only=True)
class PropertyFilter:
    """One condition of a site mapping on a user property; text compares ignoring case."""

    field: str
    operator: FilterOperator = FilterOperator.EQUALS
    value: str | None = None


class SiteMappingType(enum.StrEnum):
    """'Site Mapping Type' (guide 6.1.2)."""

    #: Map to an existing site (``site``; the customer's main site when omitted).
    SITE = "site"
    #: Map to the customer, one site per distinct value of the user property ``site_field``.
    FIELD = "field"


@attrs.frozen(kw_only=True)
class SiteMapping:
    """``[[site_mappings]]``: which users of a customer's tenants go to which site.

    A user lands in the first mapping, by ``sequence`` (lower first, ties in file order),
    whose conditions it meets; a user no mapping accepts is not imported.
    """

    customer: str
    type: SiteMappingType = SiteMappingType.SITE
    site: str | None = None
    #: Create ``site`` if the customer has no such site yet (else it is an error).
    create_site: bool = False
    site_field: str | None = None
    #: Only users of this tenant ('Apply filters to this Azure tenant').
    tenant_id: Guid | None = None
    sequence: int = 50
    description: str | None = None
    role: str | None = None
    #: Only transitive members of this directory group ('Azure Group Name').
    group: str | None = None
    include_external_users: bool = False
    filters: tuple[PropertyFilter, ...] = ()
    #: PSA user field → value, set on every user this mapping takes.
    values: Mapping[str, str] = attrs.field(factory=dict)

    def label(self, index: int) -> str:
        where = (self.site_field and f"by {self.site_field}") or self.site or "Main"
        return self.description or f"site_mappings[{index}] ({self.customer} / {where})"


@attrs.frozen(kw_only=True)
class ServiceAccountRules:
    """``[users.service_accounts]``: who is flagged a service account (guide 6.3).

    A user is one when any rule holds, unless it holds a licence in ``licence_exceptions``
    (SKU part numbers such as ``SPE_E3``, or SKU IDs). Patterns are shell-style (``svc-*``)
    and ignore case.
    """

    no_licence: bool = False
    upn_patterns: tuple[str, ...] = ()
    display_name_patterns: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    sign_in_blocked: bool = False
    licence_exceptions: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(
            self.no_licence
            or self.upn_patterns
            or self.display_name_patterns
            or self.groups
            or self.sign_in_blocked
        )


@attrs.frozen(kw_only=True)
class UserSettings:
    """``[users]``: how directory users become PSA users (guide 6.2, 6.3, 8.2)."""

    matching: UserMatching = UserMatching.OBJECT_ID
    #: The PSA user's active flag follows ``accountEnabled``.
    set_active_from_account_enabled: bool = False
    #: Import the last sign-in date (needs AuditLog.Read.All and Entra ID P1/P2).
    import_last_sign_in: bool = False
    #: Incremental syncs through delta queries (a beta feature: needs track = "beta").
    use_deltas: bool = False
    #: With deltas on, a full listing at least this often (hours); none when unset.
    full_reconcile_hours: int | None = None
    #: PSA user field → directory property, over the defaults; "" turns a default off.
    fields: Mapping[str, str] = attrs.field(factory=dict)
    #: Custom PSA user field name → directory property.
    custom_fields: Mapping[str, str] = attrs.field(factory=dict)
    #: PSA fields a blank directory value clears (otherwise a blank never overwrites).
    clear_when_blank: tuple[str, ...] = ()
    service_accounts: ServiceAccountRules = ServiceAccountRules()

    def field_map(self) -> dict[str, str]:
        """PSA user field → directory property, defaults and overrides merged."""
        merged = {**DEFAULT_USER_FIELDS, **self.fields}
        return {field: source for field, source in merged.items() if source}


# --- asset import rules (guide 7) --------------------------------------------------------

#: Intune managed-device properties rules and field mappings may read, by their Microsoft
#: names (microsoftgraph/microsoft-graph-docs-contrib, api-reference/v1.0/resources/
#: intune-devices-manageddevice.md). Beta-only ones (deviceType, chassisType,
#: enrollmentProfileName) are refused by v1.0 with 400, so they are not here.
DEVICE_PROPERTIES = frozenset(
    {
        "id", "userId", "deviceName", "managedDeviceOwnerType", "enrolledDateTime",
        "lastSyncDateTime", "operatingSystem", "complianceState", "jailBroken",
        "managementAgent", "osVersion", "easActivated", "easDeviceId", "easActivationDateTime",
        "azureADRegistered", "deviceEnrollmentType", "activationLockBypassCode",
        "emailAddress", "azureADDeviceId", "deviceRegistrationState",
        "deviceCategoryDisplayName", "isSupervised", "exchangeLastSuccessfulSyncDateTime",
        "exchangeAccessState", "exchangeAccessStateReason", "remoteAssistanceSessionUrl",
        "remoteAssistanceSessionErrorDetails", "isEncrypted", "userPrincipalName", "model",
        "manufacturer", "imei", "complianceGracePeriodExpirationDateTime", "serialNumber",
        "phoneNumber", "androidSecurityPatchLevel", "userDisplayName",
        "configurationManagerClientEnabledFeatures", "wiFiMacAddress", "deviceHealthAttestationState",
        "subscriberCarrier", "meid", "totalStorageSpaceInBytes", "freeStorageSpaceInBytes",
        "managedDeviceName", "partnerReportedThreatState", "requireUserEnrollmentApproval",
        "managementCertificateExpirationDate", "iccid", "udid", "notes", "ethernetMacAddress",
        "physicalMemoryInBytes",
    }
)  # fmt: skip

#: The PSA asset fields a device field mapping may set (the Intune device ID is the
#: asset's ``external_id`` always).
PSA_ASSET_FIELDS = (
    "device_name", "serial_number", "manufacturer", "model", "operating_system",
    "os_version", "compliance_state", "last_sync_at", "enrolled_at", "imei", "wifi_mac",
    "azure_ad_device_id", "management_agent",
)  # fmt: skip

#: The documented default device field mappings: PSA asset field ← Intune property.
DEFAULT_ASSET_FIELDS: Mapping[str, str] = {
    "device_name": "deviceName",
    "serial_number": "serialNumber",
    "manufacturer": "manufacturer",
    "model": "model",
    "operating_system": "operatingSystem",
    "os_version": "osVersion",
    "compliance_state": "complianceState",
    "last_sync_at": "lastSyncDateTime",
    "enrolled_at": "enrolledDateTime",
    "imei": "imei",
    "wifi_mac": "wiFiMacAddress",
    "azure_ad_device_id": "azureADDeviceId",
    "management_agent": "managementAgent",
}

#: Serial numbers vendors ship as placeholders: they never identify a device.
JUNK_SERIALS = (
    "System Serial Number", "To Be Filled By O.E.M.", "Default string", "0123456789",
    "Not Specified", "None", "N/A", "Chassis Serial Number", "Invalid",
)  # fmt: skip


class AssetTypeMethod(enum.StrEnum):
    """'Asset Types' (guide 7.1)."""

    SINGLE = "single"
    FIELD = "field"
    RULES = "rules"


class UnmappedTypeValue(enum.StrEnum):
    """A ``field``-method value with no entry in ``type_values``."""

    #: A type named after the value.
    CREATE = "create"
    #: The fallback type (``type``).
    FALLBACK = "fallback"


class UnmatchedDevice(enum.StrEnum):
    """A device no ``rules``-method rule matches."""

    FALLBACK = "fallback"
    EXCLUDE = "exclude"


class DeviceOperator(enum.StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    #: A regular expression (Python syntax) searched in the value, ignoring case.
    MATCHES = "matches"


@attrs.frozen(kw_only=True)
class DeviceCondition:
    field: str
    operator: DeviceOperator = DeviceOperator.EQUALS
    value: str


@attrs.frozen(kw_only=True)
class AssetTypeRule:
    """``[[assets.type_rules]]``: devices meeting every condition get ``type``."""

    type: str
    conditions: tuple[DeviceCondition, ...]


class AssetUserMatching(enum.StrEnum):
    """'User Matching' (guide 7.2)."""

    #: Match each device's user field to a PSA user during the asset import (recommended).
    ASSET = "asset"
    #: Read each user's devices (the older method).
    USER = "user"


class DeviceUserField(enum.StrEnum):
    USER_PRINCIPAL_NAME = "userPrincipalName"
    USER_ID = "userId"
    EMAIL_ADDRESS = "emailAddress"


class AssetMatchingField(enum.StrEnum):
    """The global asset matching field (guide 7.4): how an asset another integration
    imported is recognised."""

    SERIAL_NUMBER = "serial_number"
    AZURE_AD_DEVICE_ID = "azure_ad_device_id"
    DEVICE_NAME = "device_name"
    #: Match Intune's own assets only (by Intune device ID).
    NONE = "none"


@attrs.frozen(kw_only=True)
class AssetSettings:
    """``[assets]``: how Intune managed devices become PSA assets (guide 7)."""

    type_method: AssetTypeMethod = AssetTypeMethod.SINGLE
    #: The type of every device (``single``), and the fallback type of the other methods.
    type: str = "Intune Device"
    type_field: str | None = None
    #: ``field`` method: field value (ignoring case) → type.
    type_values: Mapping[str, str] = attrs.field(factory=dict)
    unmapped_values: UnmappedTypeValue = UnmappedTypeValue.CREATE
    type_rules: tuple[AssetTypeRule, ...] = ()
    unmatched: UnmatchedDevice = UnmatchedDevice.FALLBACK
    #: Leave the type of assets that already exist as it is.
    keep_existing_type: bool = False
    user_matching: AssetUserMatching = AssetUserMatching.ASSET
    user_field: DeviceUserField = DeviceUserField.USER_PRINCIPAL_NAME
    #: Where a device with no matched user goes: a site of the tenant's customer (its main
    #: site when unset); created if missing.
    default_site: str | None = None
    #: PSA asset field → Intune property, over the defaults; "" turns a default off.
    fields: Mapping[str, str] = attrs.field(factory=dict)
    custom_fields: Mapping[str, str] = attrs.field(factory=dict)
    matching_field: AssetMatchingField = AssetMatchingField.SERIAL_NUMBER
    #: More placeholder serials, beside the built-in ones (compared ignoring case).
    junk_serials: tuple[str, ...] = ()
    new_status: str = "Active"
    deleted_status: str = "Deleted"
    #: Leave out devices managed by Microsoft Defender for Endpoint (Sense).
    exclude_sense: bool = False

    def field_map(self) -> dict[str, str]:
        merged = {**DEFAULT_ASSET_FIELDS, **self.fields}
        return {field: source for field, source in merged.items() if source}


@attrs.frozen(kw_only=True)
class ServerSettings:
    """``[server]``: the HTTP server of `halo-integrator run` (callbacks, webhooks, health,
    admin page)."""

    address: str = "127.0.0.1"
    port: int = 8080
    #: Where the server is reached from outside (behind a TLS proxy), for redirect URIs
    #: and webhook registration; ``http://ADDRESS:PORT`` when unset.
    public_url: str | None = None
    #: The admin page's credential (HTTP basic); the admin page is off without it.
    admin_user: str = "admin"
    admin_password: SecretRef | None = None
    #: Largest request body accepted (webhooks), in bytes.
    max_body_bytes: int = 65536

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


@attrs.frozen(kw_only=True)
class ModuleConfig:
    """``[modules.<name>]``: the host's keys; the rest is the module's own settings."""

    enabled: bool = False
    interval_minutes: int | None = None
    settings: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration file, module settings still raw."""

    store: StoreSettings = StoreSettings()
    logging: LoggingSettings = LoggingSettings()
    integrator: IntegratorSettings = IntegratorSettings()
    endpoints: EndpointSettings = EndpointSettings()
    throttling: ThrottlingSettings = ThrottlingSettings()
    tenant_mappings: tuple[TenantMapping, ...] = ()
    users: UserSettings = UserSettings()
    site_mappings: tuple[SiteMapping, ...] = ()
    assets: AssetSettings = AssetSettings()
    server: ServerSettings = ServerSettings()
    modules: Mapping[str, ModuleConfig] = attrs.field(factory=dict)
    #: The file this came from; ``None`` when no file exists yet.
    source: Path | None = attrs.field(default=None, eq=False)

    @property
    def directory(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.directory / DATABASE_FILENAME).resolve()}"

    def module_enabled(self, name: str) -> bool:
        module = self.modules.get(name)
        return bool(module and module.enabled)


# --- the strict converter ----------------------------------------------------------------


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return f"{kind} ({value!r})"


def _strict(expected: type, name: str):
    def structure(value: Any, _: type) -> Any:
        # bool is an int in Python but never in TOML; keep them apart.
        if type(value) is bool and expected is not bool:
            raise ValueProblem(f"expected {name}, got {_describe(value)}")
        if expected is float and type(value) is int:
            return float(value)
        if not isinstance(value, expected):
            raise ValueProblem(f"expected {name}, got {_describe(value)}")
        return value

    return structure


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueProblem(f"expected one of {choices}, got {_describe(value)}") from None


def _structure_path(value: Any, _: type) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueProblem(f"expected a path string, got {_describe(value)}")
    return Path(value).expanduser()


def _structure_module(value: Any, _: type) -> ModuleConfig:
    if not isinstance(value, Mapping):
        raise ValueProblem(f"expected a table, got {_describe(value)}")
    settings = dict(value)
    problems: list[Exception] = []
    enabled = settings.pop("enabled", False)
    interval = settings.pop("interval_minutes", None)
    if type(enabled) is not bool:
        problems.append(
            _noted(ValueProblem(f"expected a boolean, got {_describe(enabled)}"), "enabled")
        )
    if interval is not None and (type(interval) is not int or interval < 1):
        problems.append(
            _noted(
                ValueProblem(f"expected a whole number of minutes ≥ 1, got {_describe(interval)}"),
                "interval_minutes",
            )
        )
    if problems:
        raise cattrs.ClassValidationError("While structuring ModuleConfig", problems, ModuleConfig)
    return ModuleConfig(enabled=enabled, interval_minutes=interval, settings=settings)


def _noted(exc: Exception, attribute: str) -> Exception:
    exc.__notes__ = [AttributeValidationNote(f"@ attribute {attribute}", attribute, object)]
    return exc


def _table_structurer(cls: type, converter: cattrs.Converter) -> Any:
    """Structure attrs classes from TOML tables only, with a clear word for anything else."""
    structure_table = make_dict_structure_fn(
        cls,
        converter,
        _cattrs_forbid_extra_keys=True,
        _cattrs_detailed_validation=True,
    )

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, Mapping):
            raise ValueProblem(f"expected a table, got {_describe(value)}")
        return structure_table(value, cls)

    return structure


def make_converter() -> cattrs.Converter:
    """The strict converter for our own TOML (module settings types use it too)."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind, name in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a number"),
        (bool, "a boolean"),
    ):
        converter.register_structure_hook(kind, _strict(kind, name))
    converter.register_structure_hook(Guid, lambda v, _: Guid.parse(v))
    converter.register_structure_hook(HttpsUrl, lambda v, _: HttpsUrl.parse(v))
    converter.register_structure_hook(DatabaseUrl, lambda v, _: DatabaseUrl.parse(v))
    converter.register_structure_hook(SecretRef, lambda v, _: SecretRef.parse(v))
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook(ModuleConfig, _structure_module)
    # StrEnum before str: singledispatch follows the MRO, where str comes before Enum.
    converter.register_structure_hook(enum.Enum, _structure_enum)
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_factory(attrs.has, _table_structurer)
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook(SecretRef, _unstructure_secret)
    return converter


def _unstructure_secret(ref: SecretRef) -> dict[str, str]:
    return {"env": ref.env} if ref.env else {"file": str(ref.file)}


converter = make_converter()


# --- error reporting ---------------------------------------------------------------------


def describe_errors(exc: BaseException, path: str = "") -> Iterator[str]:
    """One ``key.path: problem`` line per leaf of a cattrs validation error tree."""
    if isinstance(exc, BaseValidationError):
        noted, bare = exc.group_exceptions()
        for sub, note in noted:
            if isinstance(note, AttributeValidationNote):
                sub_path = f"{path}.{note.name}" if path else note.name
            elif isinstance(note, IterableValidationNote):
                index = note.index
                sub_path = f"{path}[{index}]" if isinstance(index, int) else f"{path}.{index}"
            else:  # pragma: no cover - cattrs only makes the two notes above
                sub_path = path
            yield from describe_errors(sub, sub_path)
        for sub in bare:
            yield from describe_errors(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield f"{path + '.' if path else ''}{key}: unknown key"
    elif isinstance(exc, KeyError):
        yield f"{path}: required key missing"
    elif isinstance(exc, ValueProblem):
        yield f"{path}: {exc}"
    else:
        yield f"{path}: {type(exc).__name__}: {exc}"


def structure(data: Any, cls: type, path: str = "") -> Any:
    """Structure ``data`` into ``cls`` or raise `ConfigError` listing every problem."""
    try:
        return converter.structure(data, cls)
    except (BaseValidationError, ValueProblem, ForbiddenExtraKeysError) as exc:
        raise ConfigError(list(describe_errors(exc, path))) from None


# --- loading -----------------------------------------------------------------------------


def find_config(explicit: Path | None = None) -> Path:
    """``--config``, then ``$HALO_INTEGRATOR_CONFIG``, then the working directory."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    return Path.cwd() / CONFIG_FILENAME


def load_config(path: Path, *, missing_ok: bool = False) -> Config:
    """Read and structure the file; module settings stay raw until their plugin loads."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return Config(source=None)
        raise ConfigError(
            [
                f"no configuration file at {path}: run `halo-integrator init` to write one, "
                f"or point --config or ${CONFIG_ENV} at yours"
            ],
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source=path) from None
    try:
        config = structure(data, Config)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=path) from None
    problems = [
        *_integrator_problems(config),
        *_throttling_problems(config),
        *_mapping_problems(config),
        *_user_problems(config),
        *_asset_problems(config),
    ]
    if problems:
        raise ConfigError(problems, source=path)
    return attrs.evolve(config, source=path.resolve())


#: The most tenants a run syncs at once (`IntegratorSettings.parallel_tenants`).
MAX_PARALLEL_TENANTS = 256


def _integrator_problems(config: Config) -> Iterator[str]:
    parallel = config.integrator.parallel_tenants
    if not 1 <= parallel <= MAX_PARALLEL_TENANTS:
        yield (
            f"integrator.parallel_tenants: {parallel} is out of range: give 1 (one tenant "
            f"after another) to {MAX_PARALLEL_TENANTS}"
        )


def _throttling_problems(config: Config) -> Iterator[str]:
    throttling = config.throttling
    if throttling.graph_requests < 0:
        yield (
            f"throttling.graph_requests: {throttling.graph_requests} is negative: give 0 (pace "
            "by Retry-After only) or the requests Graph allows per tenant per window, for "
            "example 2000"
        )
    window = throttling.graph_window_seconds
    if not (window > 0 and math.isfinite(window)):
        yield (
            f"throttling.graph_window_seconds: {window} is not a number of seconds above 0: "
            "give the window graph_requests is counted over, for example 20"
        )


def _mapping_problems(config: Config) -> Iterator[str]:
    """One tenant maps to at most one customer (several tenants may share one)."""
    seen: dict[tuple[str, str], int] = {}
    for index, mapping in enumerate(config.tenant_mappings):
        key = (str(mapping.tenant_id), mapping.module or "")
        if key in seen:
            yield (
                f"tenant_mappings[{index}].tenant_id: tenant {mapping.tenant_id} is already mapped by "
                f"tenant_mappings[{seen[key]}]: a tenant maps to one customer at most"
            )
        else:
            seen[key] = index
        if mapping.customer and mapping.do_not_import:
            yield f"tenant_mappings[{index}]: give a customer or do_not_import = true, not both"
        if not mapping.customer and not mapping.do_not_import:
            yield f'tenant_mappings[{index}]: say which customer (customer = "...") or do_not_import = true'


def _unknown_property(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(USER_PROPERTIES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name!r} is not a directory user property{hint} (see the README's list)"


def _unknown_field(name: str) -> str:
    close = difflib.get_close_matches(name, PSA_USER_FIELDS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{name!r} is not a PSA user field ({hint}fields: {', '.join(PSA_USER_FIELDS)}; "
        'custom fields as "custom_fields.<name>")'
    )


def _is_psa_field(name: str) -> bool:
    return name in PSA_USER_FIELDS or (
        name.startswith("custom_fields.") and len(name) > len("custom_fields.")
    )


def _user_problems(config: Config) -> Iterator[str]:
    """What the user import rules say that cannot work."""
    users = config.users
    if users.use_deltas and config.integrator.track is not Track.BETA:
        yield (
            "users.use_deltas: delta syncs are a beta feature (guide 8.2): set "
            'integrator.track = "beta" to use them, or turn them off'
        )
    if users.full_reconcile_hours is not None and users.full_reconcile_hours < 1:
        yield "users.full_reconcile_hours: give a whole number of hours ≥ 1"
    for field, source in users.fields.items():
        if field not in PSA_USER_FIELDS:
            yield f"users.fields.{field}: {_unknown_field(field)}"
        if source and source not in USER_PROPERTIES:
            yield f"users.fields.{field}: {_unknown_property(source)}"
    for field, source in users.custom_fields.items():
        if source not in USER_PROPERTIES:
            yield f"users.custom_fields.{field}: {_unknown_property(source)}"
    for index, field in enumerate(users.clear_when_blank):
        if not _is_psa_field(field):
            yield f"users.clear_when_blank[{index}]: {_unknown_field(field)}"
    for index, pattern in enumerate(users.service_accounts.licence_exceptions):
        if not pattern.strip():
            yield f"users.service_accounts.licence_exceptions[{index}]: empty SKU"
    customers = {m.customer for m in config.tenant_mappings if m.customer}
    for index, mapping in enumerate(config.site_mappings):
        where = f"site_mappings[{index}]"
        if mapping.type is SiteMappingType.FIELD:
            if not mapping.site_field:
                yield (
                    f'{where}.site_field: type = "field" creates a site per value of a user '
                    'property: name it (site_field = "officeLocation")'
                )
            elif mapping.site_field not in USER_PROPERTIES:
                yield f"{where}.site_field: {_unknown_property(mapping.site_field)}"
            if mapping.site or mapping.create_site:
                yield f'{where}: site and create_site are for type = "site"; type = "field" names site_field'
        elif mapping.site_field:
            yield f'{where}.site_field: only a type = "field" mapping creates sites from a field'
        for number, condition in enumerate(mapping.filters):
            at = f"{where}.filters[{number}]"
            if condition.field not in USER_PROPERTIES:
                yield f"{at}.field: {_unknown_property(condition.field)}"
            if condition.operator in VALUELESS_OPERATORS:
                if condition.value is not None:
                    yield f"{at}.value: operator {condition.operator.value!r} takes no value"
            elif condition.value is None:
                yield f"{at}.value: operator {condition.operator.value!r} needs a value"
        for field in mapping.values:
            if not _is_psa_field(field):
                yield f"{where}.values.{field}: {_unknown_field(field)}"
        if (
            customers
            and not config.integrator.create_customers_from_tenants
            and mapping.customer not in customers
        ):
            close = difflib.get_close_matches(mapping.customer, sorted(customers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield (
                f"{where}.customer: no [[tenant_mappings]] maps a tenant to {mapping.customer!r}"
                f"{hint}; a site mapping places the users of its customer's tenants"
            )


def _unknown_device_property(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(DEVICE_PROPERTIES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name!r} is not an Intune managed-device property{hint} (see the README's list)"


def _asset_problems(config: Config) -> Iterator[str]:
    """What the asset import rules say that cannot work."""
    assets = config.assets
    if assets.type_method is AssetTypeMethod.FIELD:
        if not assets.type_field:
            yield (
                'assets.type_field: type_method = "field" takes the type from a device '
                'property: name it (type_field = "operatingSystem")'
            )
        elif assets.type_field not in DEVICE_PROPERTIES:
            yield f"assets.type_field: {_unknown_device_property(assets.type_field)}"
    elif assets.type_field or assets.type_values:
        yield 'assets.type_field, assets.type_values: only for type_method = "field"'
    if assets.type_method is AssetTypeMethod.RULES and not assets.type_rules:
        yield 'assets.type_rules: type_method = "rules" needs at least one [[assets.type_rules]]'
    if assets.type_method is not AssetTypeMethod.RULES and assets.type_rules:
        yield 'assets.type_rules: only for type_method = "rules"'
    for index, rule in enumerate(assets.type_rules):
        if not rule.type.strip():
            yield f"assets.type_rules[{index}].type: give the asset type's name"
        if not rule.conditions:
            yield f"assets.type_rules[{index}].conditions: give at least one condition"
        for number, condition in enumerate(rule.conditions):
            at = f"assets.type_rules[{index}].conditions[{number}]"
            if condition.field not in DEVICE_PROPERTIES:
                yield f"{at}.field: {_unknown_device_property(condition.field)}"
            if condition.operator is DeviceOperator.MATCHES:
                try:
                    re.compile(condition.value)
                except re.error as exc:
                    yield f"{at}.value: not a regular expression: {exc}"
    if not assets.type.strip():
        yield "assets.type: give the asset type's name"
    for field, source in assets.fields.items():
        if field not in PSA_ASSET_FIELDS:
            close = difflib.get_close_matches(field, PSA_ASSET_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield (
                f"assets.fields.{field}: {field!r} is not a PSA asset field ({hint}fields: "
                f"{', '.join(PSA_ASSET_FIELDS)}; others go in [assets.custom_fields])"
            )
        if source and source not in DEVICE_PROPERTIES:
            yield f"assets.fields.{field}: {_unknown_device_property(source)}"
    for field, source in assets.custom_fields.items():
        if source not in DEVICE_PROPERTIES:
            yield f"assets.custom_fields.{field}: {_unknown_device_property(source)}"
    if not assets.new_status.strip() or not assets.deleted_status.strip():
        yield "assets.new_status, assets.deleted_status: give status names"


def site_mapping_warnings(config: Config) -> Iterator[str]:
    """Mappings tried for one tenant that share a sequence: file order decides."""
    seen: list[tuple[int, SiteMapping]] = []
    for index, mapping in enumerate(config.site_mappings):
        for earlier, other in seen:
            same_tenants = (
                mapping.tenant_id is None
                or other.tenant_id is None
                or mapping.tenant_id == other.tenant_id
            )
            if (other.customer, other.sequence) == (mapping.customer, mapping.sequence) and (
                same_tenants
            ):
                yield (
                    f"site_mappings[{index}]: same sequence ({mapping.sequence}) as "
                    f"site_mappings[{earlier}] for customer {mapping.customer!r}: the earlier "
                    "one in the file is tried first; give them different sequences to make "
                    "the order explicit"
                )
                break
        seen.append((index, mapping))


def load_modules_only(path: Path) -> Config | None:
    """The ``[modules]`` part of a file whose other parts are wrong, or ``None``.

    Lets `config check` report the modules' own problems alongside the rest.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    raw = data.get("modules")
    modules = {}
    for name, table in raw.items() if isinstance(raw, dict) else ():
        try:
            modules[name] = structure(table, ModuleConfig)
        except ConfigError:
            # Reported already; keep what the module's settings can still be checked with.
            if isinstance(table, dict) and table.get("enabled") is True:
                settings = {
                    k: v for k, v in table.items() if k not in ("enabled", "interval_minutes")
                }
                modules[name] = ModuleConfig(enabled=True, settings=settings)
    return Config(modules=modules, source=path.resolve())


def structure_module_settings(config: Config, name: str, settings_type: type | None) -> Any:
    """Structure ``[modules.<name>]`` with its plugin's settings type."""
    module = config.modules.get(name, ModuleConfig())
    if settings_type is None:
        if module.settings:
            raise ConfigError(
                [f"modules.{name}.{key}: unknown key" for key in sorted(module.settings)]
            )
        return None
    return structure(dict(module.settings), settings_type, path=f"modules.{name}")


def check_secrets(value: Any, path: str) -> Iterator[str]:
    """Every `SecretRef` reachable from ``value`` that cannot be read, with its key path."""
    if isinstance(value, SecretRef):
        try:
            value.resolve()
        except ValueProblem as exc:
            yield f"{path}: {exc}"
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from check_secrets(getattr(value, field.name), f"{path}.{field.name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from check_secrets(item, f"{path}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from check_secrets(item, f"{path}.{key}")


def redact_for_display(data: Any, key: str = "") -> Any:
    """A copy of unstructured config fit to print: secret-named plain values masked."""
    if isinstance(data, Mapping):
        if set(data) <= {"env", "file"} and data:
            return dict(data)  # a reference says where a secret is, not what it is
        return {k: redact_for_display(v, k) for k, v in data.items() if v is not None}
    if isinstance(data, (list, tuple)):
        return [redact_for_display(v, key) for v in data]
    if key and SECRET_KEY.search(key) and isinstance(data, str):
        return "[redacted]"
    return data
