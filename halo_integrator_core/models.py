"""The records that cross the hook boundary.

Plugins yield these; the core maps them onto the PSA model and stores them. They are frozen
attrs classes so that a record, once translated from Microsoft's JSON, cannot change on its
way into the store. Fields a PSA does not have a column for travel in ``attributes``, from
which field mappings can still pick them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import attrs

__all__ = [
    "LATEST_BOOKMARK",
    "AssetQuery",
    "Checkpoint",
    "DirectoryUser",
    "EntityKind",
    "Licence",
    "ManagedDevice",
    "ModuleSpec",
    "Notice",
    "Price",
    "RecordError",
    "Removed",
    "SkipTenant",
    "Subscription",
    "Tenant",
    "TenantAccess",
    "UsageLine",
    "UserQuery",
    "WebRoute",
    "WebhookEvent",
    "WebhookOutcome",
]


class EntityKind(enum.StrEnum):
    """The kinds of entity a module can sync, in the order a sync runs them."""

    TENANTS = "tenants"
    LICENCES = "licences"
    SUBSCRIPTIONS = "subscriptions"
    USERS = "users"
    ASSETS = "assets"


class TenantAccess(enum.StrEnum):
    """How the partner reaches a customer tenant (guide section 4)."""

    RESELLER_ONLY = "reseller_only"
    GDAP_ONLY = "gdap_only"
    RESELLER_AND_GDAP = "reseller_and_gdap"
    GDAP_EXPIRED = "gdap_expired"
    CONSENT_MISSING = "consent_missing"
    UNKNOWN = "unknown"


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


@attrs.frozen(kw_only=True)
class ModuleSpec:
    """A module a plugin offers: what `[modules.<name>]` in the config enables.

    ``settings_type`` is an attrs class; the host structures the module's TOML table into it
    with its strict converter, so an unknown key or a wrong type fails at config check with
    its key path. Which entity kinds the module syncs follows from the fetch hooks its plugin
    implements.
    """

    name: str
    title: str
    settings_type: type | None = None
    default_interval_minutes: int = 60
    description: str = ""


@attrs.frozen(kw_only=True)
class Tenant:
    """A customer tenant the module can reach."""

    tenant_id: str
    name: str
    connection: str | None = None
    default_domain: str | None = None
    access: TenantAccess = TenantAccess.UNKNOWN
    access_detail: str | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)

    @property
    def entity_id(self) -> str:
        return self.tenant_id


@attrs.frozen(kw_only=True)
class Licence:
    """A licence (subscribed SKU) of a tenant, with its unit counts."""

    sku_id: str
    sku_part_number: str
    name: str | None = None
    total_units: int = 0
    consumed_units: int = 0
    suspended_units: int = 0
    warning_units: int = 0
    capability_status: str | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)

    @property
    def entity_id(self) -> str:
        return self.sku_id


@attrs.frozen(kw_only=True)
class Subscription:
    """A subscription the partner sells to the tenant (NCE or legacy)."""

    subscription_id: str
    offer_id: str | None = None
    name: str
    quantity: int = 0
    unit_type: str | None = None
    status: str | None = None
    billing_cycle: str | None = None
    term_duration: str | None = None
    auto_renew: bool | None = None
    created_at: datetime | None = None
    effective_start: datetime | None = None
    commitment_end: datetime | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)

    @property
    def entity_id(self) -> str:
        return self.subscription_id


@attrs.frozen(kw_only=True)
class DirectoryUser:
    """A user of the tenant's directory (Entra ID)."""

    object_id: str
    user_principal_name: str
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    mail: str | None = None
    job_title: str | None = None
    department: str | None = None
    office_location: str | None = None
    business_phones: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    mobile_phone: str | None = None
    employee_id: str | None = None
    account_enabled: bool | None = None
    user_type: str | None = None
    assigned_sku_ids: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: Which of the groups named in the `UserQuery` the user is a member of, directly or
    #: through nested groups (transitive membership), by the names the query gave.
    groups: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: The last interactive or non-interactive sign-in, when the query asked for it and
    #: Microsoft gave it; ``None`` for "never" or "not asked".
    last_sign_in_at: datetime | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)

    @property
    def entity_id(self) -> str:
        return self.object_id


@attrs.frozen(kw_only=True)
class UserQuery:
    """What the core's user rules need from ``fetch_users`` beyond the standard fields.

    ``groups``: directory group names (site-mapping and service-account rules) whose
    transitive membership each `DirectoryUser.groups` must report. ``properties``: extra
    directory user properties, by their Microsoft names (``companyName``, ``city``), that
    field mappings and filters read: the plugin selects them and puts each in the record's
    ``attributes`` under that name (``None`` when empty). ``sign_in_activity``: fill
    `DirectoryUser.last_sign_in_at`; when the tenant cannot give it (permission or licence
    missing), yield one `Notice` saying so and the fix, and go on without it.
    """

    groups: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    properties: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    sign_in_activity: bool = False


@attrs.frozen(kw_only=True)
class AssetQuery:
    """What the core's asset rules need from ``fetch_assets``.

    ``properties``: extra device properties, by their Microsoft names
    (``deviceCategoryDisplayName``, ``managedDeviceOwnerType``), that asset-type rules and field mappings read: the plugin selects them
    and puts each in the record's ``attributes`` under that name (``None`` when empty).
    ``per_user``: the guide's older "user method": read each directory user's own managed
    devices (so ``ManagedDevice.user_id`` is the user whose list held the device) instead of
    the tenant's device listing.
    """

    properties: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    per_user: bool = False


#: The bookmark the core hands ``fetch_users`` after ``deltas reset --latest``: start a
#: delta round from now (changes before it are never imported) and yield only its checkpoint.
LATEST_BOOKMARK = "latest"


@attrs.frozen(kw_only=True)
class ManagedDevice:
    """A device managed by the tenant's device management (Intune)."""

    device_id: str
    device_name: str | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    operating_system: str | None = None
    os_version: str | None = None
    compliance_state: str | None = None
    last_sync_at: datetime | None = None
    enrolled_at: datetime | None = None
    imei: str | None = None
    wifi_mac: str | None = None
    azure_ad_device_id: str | None = None
    management_agent: str | None = None
    user_id: str | None = None
    user_principal_name: str | None = None
    email_address: str | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)

    @property
    def entity_id(self) -> str:
        return self.device_id


@attrs.frozen(kw_only=True)
class UsageLine:
    """One row of metered usage (Azure consumption) of a tenant, in the billing currency.

    ``period`` is the billing period the row belongs to, as ``YYYY-MM``; ``invoice_id`` the
    invoice that billed it, or ``None`` for unbilled usage (an estimate until invoiced);
    ``customer_name`` the name the source gives the tenant, for reporting rows no tenant
    mapping claims.
    """

    tenant_id: str
    period: str
    invoice_id: str | None = None
    customer_name: str | None = None
    usage_date: date | None = None
    subscription_id: str | None = None
    subscription_description: str | None = None
    meter_category: str | None = None
    meter_name: str | None = None
    resource_group: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    quantity: Decimal = Decimal(0)
    unit: str | None = None
    cost: Decimal = Decimal(0)
    currency: str = "USD"
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class Price:
    """One row of a price sheet: the partner's cost for a product, term and plan.

    ``unit_price`` is a unit's charge for one billing period of ``billing_plan`` (a month
    for monthly billing, a year for annual), not the price of the whole term.
    """

    market: str
    product_id: str
    sku_id: str
    term_duration: str | None
    billing_plan: str | None
    currency: str
    unit_price: Decimal
    effective_start: datetime | None = None
    effective_end: datetime | None = None
    tier_minimum: int | None = None
    tier_maximum: int | None = None
    name: str | None = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """An inbound webhook request, handed to the module it was addressed to.

    ``body`` is the raw request body: signatures are computed over these bytes, so a plugin
    verifies them before it parses anything.
    """

    module: str
    received_at: datetime
    headers: Mapping[str, str] = attrs.field(converter=_frozen_mapping)
    body: bytes
    remote_addr: str | None = None


@attrs.frozen(kw_only=True)
class WebhookOutcome:
    """What a plugin made of a webhook: the HTTP status to answer and what to log.

    ``refresh`` names the entity kinds (and optionally one tenant) the core should sync now
    because the event says they changed.
    """

    status: int
    message: str
    event_name: str | None = None
    tenant_id: str | None = None
    refresh: tuple[EntityKind, ...] = attrs.field(default=(), converter=tuple)
    #: The sender's ID of the event, once verified: the core processes an event ID once,
    #: answering a repeated delivery 200 without refreshing again.
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class WebRoute:
    """A page or endpoint a module serves from the integrator's HTTP server.

    ``path`` starts with ``/<module>/`` (the core refuses others); ``app`` is a WSGI
    application called with ``PATH_INFO`` left whole. ``admin`` routes need the admin
    credential (the core checks it before calling ``app``); the others are public and the
    app validates what it receives (a sign-in or consent answer, say). ``title`` lists an
    admin route on the admin page.
    """

    path: str
    app: Any
    admin: bool = False
    title: str | None = None


@attrs.frozen(kw_only=True)
class Removed:
    """An incremental stream's word that an entity is gone upstream (``reason`` as given)."""

    entity_id: str
    reason: str = "deleted"


@attrs.frozen(kw_only=True)
class Notice:
    """A warning about a tenant's stream that is not about one record (a missing
    permission that leaves an optional field empty, say): the core logs it, keeps it in the
    run's problems and goes on. ``code`` is a short stable name for it."""

    code: str
    message: str


@attrs.frozen(kw_only=True)
class RecordError:
    """A payload the plugin could not translate: logged with its reason, counted, skipped."""

    entity_id: str | None
    reason: str


class SkipTenant(Exception):
    """Raised by a per-tenant fetch hook: this tenant cannot be synced for a known reason.

    For what the user must do, not for failures: consent not granted yet, no reseller
    relationship for a Partner Center-only kind. The core counts it as skipped with the
    reason, leaves the tenant's stored records and bookmark as they are, and goes on.
    """


@attrs.frozen(kw_only=True)
class Checkpoint:
    """Ends (or punctuates) a stream: what to resume from, and whether it listed everything.

    The core stores ``bookmark`` only after every record yielded before it is committed.
    ``complete`` says the records since the stream began are the whole set upstream, so the
    core may deactivate what it did not see; an incremental (delta) round says ``False``.
    A stream that yields no checkpoint is taken as a complete listing with no bookmark.
    """

    bookmark: str | None
    complete: bool = True


#: Anything a fetch hook may yield.
StreamItem = (
    Tenant
    | Licence
    | Subscription
    | DirectoryUser
    | ManagedDevice
    | Removed
    | RecordError
    | Notice
    | Checkpoint
)
