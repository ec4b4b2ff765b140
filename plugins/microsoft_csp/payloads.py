"""The Microsoft payloads the CSP module reads, as typed classes (only the fields it uses).

Each class names the documentation page whose sample it follows; the JSON keys are the
camelCase of the attribute names (see `halo_integrator_core.translation`).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from halo_integrator_core.translation import field_key


@attrs.frozen
class CompanyProfile:
    tenant_id: str
    company_name: str
    domain: str | None = None


@attrs.frozen
class PartnerCenterCustomer:
    """Partner Center ``Customer`` (developer/get-a-list-of-customers.md)."""

    id: str
    company_profile: CompanyProfile
    relationship_to_partner: str | None = None


@attrs.frozen
class GdapCustomer:
    tenant_id: str
    display_name: str | None = None


@attrs.frozen
class UnifiedRole:
    role_definition_id: str


@attrs.frozen
class AccessDetails:
    unified_roles: list[UnifiedRole] = attrs.field(factory=list)


@attrs.frozen
class DelegatedAdminRelationship:
    """Graph ``delegatedAdminRelationship``
    (api-reference/v1.0/api/tenantrelationship-list-delegatedadminrelationships.md)."""

    id: str
    status: str
    customer: GdapCustomer
    display_name: str | None = None
    access_details: AccessDetails = attrs.field(factory=AccessDetails)
    end_date_time: datetime | None = None


@attrs.frozen
class PrepaidUnits:
    enabled: int = 0
    suspended: int = 0
    warning: int = 0
    locked_out: int = 0


@attrs.frozen
class SubscribedSku:
    """Graph ``subscribedSku`` (api-reference/v1.0/api/subscribedsku-list.md)."""

    sku_id: str
    sku_part_number: str
    consumed_units: int = 0
    capability_status: str | None = None
    prepaid_units: PrepaidUnits = attrs.field(factory=PrepaidUnits)
    applies_to: str | None = None


@attrs.frozen
class PartnerCenterSubscription:
    """Partner Center ``Subscription`` (developer/subscription-resources.md)."""

    id: str
    quantity: int
    offer_id: str | None = None
    offer_name: str | None = None
    friendly_name: str | None = None
    unit_type: str | None = None
    status: str | None = None
    billing_cycle: str | None = None
    term_duration: str | None = None
    auto_renew_enabled: bool | None = None
    creation_date: datetime | None = None
    effective_start_date: datetime | None = None
    commitment_end_date: datetime | None = None
    billing_type: str | None = None
    order_id: str | None = None


@attrs.frozen
class AssignedLicense:
    sku_id: str
    disabled_plans: list[str] = attrs.field(factory=list)


@attrs.frozen
class GraphUser:
    """Graph ``user`` as a delta round lists it (api-reference/v1.0/api/user-delta.md)."""

    id: str
    user_principal_name: str
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    mail: str | None = None
    job_title: str | None = None
    department: str | None = None
    office_location: str | None = None
    business_phones: list[str] = attrs.field(factory=list)
    mobile_phone: str | None = None
    employee_id: str | None = None
    account_enabled: bool | None = None
    user_type: str | None = None
    usage_location: str | None = None
    assigned_licenses: list[AssignedLicense] = attrs.field(factory=list)


@attrs.frozen
class GraphManagedDevice:
    """Graph ``managedDevice`` (api-reference/v1.0/resources/intune-devices-manageddevice.md),
    the properties `devices.DEVICE_SELECT` asks for."""

    id: str
    device_name: str | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    operating_system: str | None = None
    os_version: str | None = None
    compliance_state: str | None = None
    last_sync_date_time: datetime | None = None
    enrolled_date_time: datetime | None = None
    imei: str | None = None
    wi_fi_mac_address: str | None = None
    azure_ad_device_id: str | None = attrs.field(
        default=None, metadata=field_key("azureADDeviceId")
    )
    management_agent: str | None = None
    user_id: str | None = None
    user_principal_name: str | None = None
    email_address: str | None = None
