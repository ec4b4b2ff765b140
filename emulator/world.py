"""The emulated Microsoft cloud's state: partners, customer tenants and what is in them.

A world is generated deterministically from a seed and a size, with the variety a real MSP
meets (guests, disabled and shared-mailbox-like accounts, users without mail, devices with
junk serials, tenants reached by reseller relationship only, by GDAP only, by both, or by an
expired relationship). Tests and benchmarks change it between syncs through the methods of
`World`; every change to a user or group is logged with a sequence number, which is what the
delta endpoints answer from.

All mutation happens under `World.lock`: the HTTP server is threaded.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs

#: The emulator's clock starts here, so generated worlds are the same on every run.
EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

JUNK_SERIALS = ("System Serial Number", "To Be Filled By O.E.M.", "Default string", "0123456789")
#: The serials asset matching must survive (`World.give_odd_serials`): each junk value firmware
#: leaves, and none at all (Intune reports an unknown serial as "").
ODD_SERIALS = (*JUNK_SERIALS, "")

FIRST_NAMES = (
    "Adele",
    "Alex",
    "Allan",
    "Ben",
    "Christie",
    "Debra",
    "Diego",
    "Emily",
    "Grady",
    "Henrietta",
    "Irvin",
    "Isaiah",
    "Johanna",
    "Joni",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Miriam",
    "Nestor",
    "Patti",
    "Pradeep",
    "Priya",
    "Raul",
    "Sam",
    "Tomas",
    "Yuki",
    "Zara",
)
SURNAMES = (
    "Vance",
    "Wilber",
    "Deyoung",
    "Walker",
    "Cline",
    "Berger",
    "Siciliani",
    "Braun",
    "Archie",
    "Gonzalez",
    "Bellinger",
    "Lee",
    "Lauridsen",
    "Sherman",
    "Gu",
    "Holloway",
    "Robbins",
    "Bowen",
    "Hunter",
    "Hutchinson",
    "Fernandez",
    "Gupta",
    "Patel",
    "Ramos",
    "Okafor",
    "Novak",
    "Sato",
)
COMPANY_WORDS = (
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Tailspin",
    "Woodgrove",
    "Litware",
    "Adatum",
    "Proseware",
    "Fourth Coffee",
    "Wingtip",
    "Alpine Ski",
    "Coho Winery",
    "Lamna",
    "Relecloud",
    "Trey Research",
    "Blue Yonder",
    "Graphic Design",
    "Humongous",
    "Lucerne",
    "Margie's Travel",
)
COMPANY_SUFFIXES = ("Ltd", "Inc", "LLP", "Group", "Partners", "Holdings")
DEPARTMENTS = ("Finance", "Sales", "Operations", "IT", "Marketing", "HR", "Legal", None)
OFFICES = ("London", "Manchester", "Stowmarket", "Leeds", "Remote", None)
JOB_TITLES = ("Accountant", "Director", "Engineer", "Sales Executive", "Analyst", "Manager", None)

#: (skuId, skuPartNumber, name, productId, catalog skuId) — real Microsoft 365 SKUs.
SKU_CATALOG = (
    ("05e9a617-0261-4cee-bb44-138d3ef5d965", "SPE_E3", "Microsoft 365 E3", "CFQ7TTC0LFLZ", "0001"),
    (
        "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",
        "SPB",
        "Microsoft 365 Business Premium",
        "CFQ7TTC0LCHC",
        "0002",
    ),
    (
        "f245ecc8-75af-4f8e-b61f-27d8114de5f3",
        "O365_BUSINESS_PREMIUM",
        "Microsoft 365 Business Standard",
        "CFQ7TTC0LDPB",
        "0001",
    ),
    (
        "3b555118-da6a-4418-894f-7df1e2096870",
        "O365_BUSINESS_ESSENTIALS",
        "Microsoft 365 Business Basic",
        "CFQ7TTC0LH18",
        "0001",
    ),
    (
        "4b585984-651b-448a-9e53-3b10f069cf7f",
        "DESKLESSPACK",
        "Office 365 F3",
        "CFQ7TTC0LH05",
        "0001",
    ),
    (
        "f30db892-07e9-47e9-837c-80727f46fd3d",
        "FLOW_FREE",
        "Microsoft Power Automate Free",
        "CFQ7TTC0LSGZ",
        "0001",
    ),
)


@attrs.frozen
class ServicePlan:
    """A service plan inside a licence SKU (Microsoft's "Product names and service plan
    identifiers for licensing" table). ``applies_to`` is Graph's word: User or Company."""

    id: str
    name: str
    display_name: str
    applies_to: str = "User"


_EXCHANGE_FOUNDATION = ServicePlan(
    "113feb6c-3fe4-4440-bddc-54d774bf0318",
    "EXCHANGE_S_FOUNDATION",
    "Exchange Foundation",
    "Company",
)
_TEAMS = ServicePlan("57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1", "Microsoft Teams")
_INTUNE = ServicePlan("c1ec4a95-1f05-45b3-a911-aa3fa01094f5", "INTUNE_A", "Microsoft Intune")
_ENTRA_P1 = ServicePlan(
    "41781fb2-bc02-4b7c-bd55-b576c07bb09d", "AAD_PREMIUM", "Azure Active Directory Premium P1"
)
_MFA = ServicePlan(
    "8a256a2b-b617-496d-b51b-e76466e88db0",
    "MFA_PREMIUM",
    "Microsoft Azure Multi-Factor Authentication",
)
_OFFICE_APPS = ServicePlan(
    "43de0ff5-c92c-492b-9116-175376d08c38",
    "OFFICESUBSCRIPTION",
    "Microsoft 365 Apps for enterprise",
)
_EXCHANGE_STANDARD = ServicePlan(
    "9aaf7827-d63c-4b61-89c3-182f06f82e5c", "EXCHANGE_S_STANDARD", "Exchange Online (Plan 1)"
)
_SHAREPOINT_STANDARD = ServicePlan(
    "c7699d2e-19aa-44de-8edf-1736da088ca1", "SHAREPOINTSTANDARD", "SharePoint Online (Plan 1)"
)
_OFFICE_WEB = ServicePlan(
    "e95bec33-7c88-4a70-8e19-b10bd9d0c014", "SHAREPOINTWAC", "Office for the Web"
)

#: The service plans of each SKU of `SKU_CATALOG`, by part number: one table, which Graph's
#: subscribedSkus and Partner Center's subscribed SKUs both answer from.
SERVICE_PLANS: dict[str, tuple[ServicePlan, ...]] = {
    "SPE_E3": (
        ServicePlan(
            "efb87545-963c-4e0d-99df-69c6916d9eb0",
            "EXCHANGE_S_ENTERPRISE",
            "Exchange Online (Plan 2)",
        ),
        ServicePlan(
            "5dbe027f-2339-4123-9542-606e4d348a72",
            "SHAREPOINTENTERPRISE",
            "SharePoint Online (Plan 2)",
        ),
        _TEAMS,
        _OFFICE_APPS,
        _INTUNE,
        _ENTRA_P1,
        _MFA,
        _EXCHANGE_FOUNDATION,
    ),
    "SPB": (
        _EXCHANGE_STANDARD,
        _SHAREPOINT_STANDARD,
        _TEAMS,
        _OFFICE_APPS,
        _INTUNE,
        _ENTRA_P1,
        _MFA,
        _EXCHANGE_FOUNDATION,
    ),
    "O365_BUSINESS_PREMIUM": (
        _EXCHANGE_STANDARD,
        _SHAREPOINT_STANDARD,
        _TEAMS,
        ServicePlan(
            "094e7854-93fc-4d55-b2c0-3ab5369ebdc1",
            "O365_BUSINESS",
            "Microsoft 365 Apps for business",
        ),
        _OFFICE_WEB,
        _EXCHANGE_FOUNDATION,
    ),
    "O365_BUSINESS_ESSENTIALS": (
        _EXCHANGE_STANDARD,
        _SHAREPOINT_STANDARD,
        _TEAMS,
        _OFFICE_WEB,
        _EXCHANGE_FOUNDATION,
    ),
    "DESKLESSPACK": (
        ServicePlan(
            "4a82b400-a79f-41a4-b4e2-e94f5787b113", "EXCHANGE_S_DESKLESS", "Exchange Online Kiosk"
        ),
        ServicePlan(
            "902b47e5-dcb2-4fdc-858b-c63a90a2bdb9", "SHAREPOINTDESKLESS", "SharePoint Online Kiosk"
        ),
        _TEAMS,
        _OFFICE_WEB,
        _EXCHANGE_FOUNDATION,
    ),
    "FLOW_FREE": (
        ServicePlan("50e68c76-46c6-4674-81f9-75456511b170", "FLOW_P2_VIRAL", "Flow Free"),
        _EXCHANGE_FOUNDATION,
    ),
}

#: The price changes a generated world plans (`World.price_changes`), from the first of the
#: month after the world's start: Microsoft 365 E3 up 5%, Business Premium up 8%, Office 365
#: F3 up 10%.
PLANNED_PRICE_CHANGES = {
    "CFQ7TTC0LFLZ:0001": Decimal("1.05"),
    "CFQ7TTC0LCHC:0002": Decimal("1.08"),
    "CFQ7TTC0LH05:0001": Decimal("1.10"),
}

GDAP_ROLES = {
    "88d8e3e3-8f55-4a1e-953a-9b9898b8876b": "Directory Readers",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "4d6ac14f-3453-41d0-bef9-a3e0c569773a": "License Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
}
#: The currency each customer's Azure usage is billed in, by the customer's place in the
#: world (no draw from the generator, so the rest of the world is as it was): a partner in
#: the UK bills most customers in pounds, European customers in euros, a few in dollars.
BILLING_CURRENCIES = ("GBP", "GBP", "EUR", "GBP", "USD")

METER_CATEGORIES = (
    ("Virtual Machines", "D2s v3", "1 Hour", Decimal("0.096")),
    ("Storage", "Standard SSD Managed Disks", "1/Month", Decimal("9.60")),
    ("Bandwidth", "Data Transfer Out", "1 GB", Decimal("0.087")),
    ("Azure App Service", "B1", "1 Hour", Decimal("0.018")),
)


@attrs.define(eq=False)
class App:
    """An app registration the emulated login service knows."""

    client_id: str
    secret: str
    home_tenant: str
    name: str
    multitenant: bool
    redirect_uris: list[str] = attrs.field(factory=list)
    secret_expired: bool = False
    #: Application permissions (Graph app roles) admin-consented for this app; tokens it
    #: gets carry them as ``roles``.
    permissions: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class User:
    id: str
    userPrincipalName: str
    displayName: str
    givenName: str | None
    surname: str | None
    mail: str | None
    jobTitle: str | None
    department: str | None
    officeLocation: str | None
    businessPhones: list[str]
    mobilePhone: str | None
    employeeId: str | None
    accountEnabled: bool
    userType: str
    usageLocation: str | None
    createdDateTime: datetime
    assignedLicenses: list[dict[str, Any]] = attrs.field(factory=list)
    lastSignInDateTime: datetime | None = None
    #: None while alive; "changed" when soft-deleted (restorable), "deleted" when purged.
    removed: str | None = None


@attrs.define(eq=False)
class Group:
    id: str
    displayName: str
    mail: str | None
    securityEnabled: bool
    members: list[str] = attrs.field(factory=list)  # user and group IDs
    removed: str | None = None


@attrs.define(eq=False)
class Device:
    id: str
    userId: str | None
    deviceName: str
    serialNumber: str
    manufacturer: str
    model: str
    operatingSystem: str
    osVersion: str
    complianceState: str
    managementAgent: str
    enrolledDateTime: datetime
    #: None for a device that never synced (Graph then says 0001-01-01T00:00:00Z).
    lastSyncDateTime: datetime | None
    imei: str
    wiFiMacAddress: str
    azureADDeviceId: str
    userPrincipalName: str
    emailAddress: str
    userDisplayName: str
    deviceType: str
    #: Users besides ``userId`` whose ``/users/{id}/managedDevices`` list the device too (a
    #: shared device, or one enrolled by someone other than its primary user).
    sharedWith: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class Sku:
    skuId: str
    skuPartNumber: str
    name: str
    productId: str
    catalogSkuId: str
    enabled: int
    suspended: int = 0
    warning: int = 0
    capabilityStatus: str = "Enabled"
    subscriptionIds: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class Subscription:
    id: str
    offerId: str
    offerName: str
    quantity: int
    billingCycle: str
    termDuration: str
    creationDate: datetime
    status: str = "active"
    autoRenewEnabled: bool = True
    skuId: str | None = None


@attrs.define(eq=False)
class Customer:
    """A customer tenant, and how the partner reaches it."""

    tenant_id: str
    name: str
    domain: str
    partner_tenant: str
    reseller: bool
    #: GDAP relationship status ("active", "expired", "terminated") or None for none.
    gdap_status: str | None
    gdap_roles: list[str]
    #: Whether the partner's GDAP app has a service principal here (admin consent given).
    consented: bool
    has_intune: bool = True
    #: What `World.give_odd_serials` gave: device id → serial.
    odd_serials: dict[str, str] = attrs.field(factory=dict)
    users: dict[str, User] = attrs.field(factory=dict)
    groups: dict[str, Group] = attrs.field(factory=dict)
    devices: dict[str, Device] = attrs.field(factory=dict)
    skus: dict[str, Sku] = attrs.field(factory=dict)
    subscriptions: dict[str, Subscription] = attrs.field(factory=dict)
    relationship_id: str = ""
    #: (sequence number, kind, object id) of every user/group change, for delta queries.
    changes: list[tuple[int, str, str]] = attrs.field(factory=list)
    #: (sequence number, group id, member id) of every membership change; each has its
    #: ("group", group id) entry in `changes` with the same sequence number. A group's delta
    #: round lists these members, added or ``@removed`` (delta-query-groups.md).
    member_changes: list[tuple[int, str, str]] = attrs.field(factory=list)
    #: Bumped to expire every delta token of this tenant (Graph keeps them 7 days).
    delta_epoch: int = 0

    def consumed(self, sku_id: str) -> int:
        return sum(
            1
            for user in self.users.values()
            if user.removed is None and any(a["skuId"] == sku_id for a in user.assignedLicenses)
        )


@attrs.define(eq=False)
class Partner:
    tenant_id: str
    name: str
    domain: str
    partner_center_app: App
    gdap_app: App
    direct: bool = True


@attrs.frozen
class PriceChange:
    """A price change of one product and SKU (``"ProductId:SkuId"``) from ``effective`` on."""

    product_sku: str
    effective: datetime
    factor: Decimal


def first_of_next_month(when: datetime) -> datetime:
    start = when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start + timedelta(days=32)).replace(day=1)


@attrs.define(eq=False)
class UsageRow:
    customer_tenant: str
    period: str  # "current" or "last", or an invoice ID
    fields: dict[str, Any]


class World:
    """Everything the emulator serves, generated from a seed and a size."""

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.now = EPOCH
        self.partners: dict[str, Partner] = {}
        self.apps: dict[str, App] = {}
        self.customers: dict[str, Customer] = {}
        self.usage: list[UsageRow] = []
        self.invoices: list[str] = []
        #: Microsoft's price changes, in force from their dates on: the price sheets of a
        #: month apply those in force then; the future sheet is 404 while none comes next
        #: month. `plan_price_change` adds one.
        self.price_changes: list[PriceChange] = []
        self._sequence = 0

    # -- identities ------------------------------------------------------------------------

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    @property
    def sequence(self) -> int:
        return self._sequence

    def customer(self, tenant_id: str) -> Customer:
        return self.customers[tenant_id.lower()]

    def tenant_known(self, tenant: str) -> bool:
        tenant = tenant.lower()
        return tenant in self.customers or tenant in self.partners

    # -- changes (what tests and benchmarks do between syncs) ------------------------------

    def _log(self, customer: Customer, kind: str, object_id: str) -> None:
        customer.changes.append((self.next_sequence(), kind, object_id))

    def _log_member(self, customer: Customer, group_id: str, member_id: str) -> None:
        sequence = self.next_sequence()
        customer.changes.append((sequence, "group", group_id))
        customer.member_changes.append((sequence, group_id, member_id))

    def add_user(self, tenant_id: str, **fields: Any) -> User:
        with self.lock:
            customer = self.customer(tenant_id)
            user = _make_user(self, customer, len(customer.users), **fields)
            customer.users[user.id] = user
            self._log(customer, "user", user.id)
            return user

    def modify_user(self, tenant_id: str, user_id: str, **fields: Any) -> User:
        with self.lock:
            customer = self.customer(tenant_id)
            user = customer.users[user_id]
            for name, value in fields.items():
                if not hasattr(user, name):
                    raise AttributeError(f"users have no property {name!r}")
                setattr(user, name, value)
            self._log(customer, "user", user_id)
            return user

    def disable_user(self, tenant_id: str, user_id: str) -> User:
        return self.modify_user(tenant_id, user_id, accountEnabled=False)

    def soft_delete_user(self, tenant_id: str, user_id: str) -> None:
        self._remove_user(tenant_id, user_id, "changed")

    def hard_delete_user(self, tenant_id: str, user_id: str) -> None:
        self._remove_user(tenant_id, user_id, "deleted")

    def _remove_user(self, tenant_id: str, user_id: str, reason: str) -> None:
        with self.lock:
            customer = self.customer(tenant_id)
            customer.users[user_id].removed = reason
            for group in customer.groups.values():
                if user_id in group.members:
                    group.members.remove(user_id)
                    self._log_member(customer, group.id, user_id)
            self._log(customer, "user", user_id)

    def restore_user(self, tenant_id: str, user_id: str) -> User:
        with self.lock:
            customer = self.customer(tenant_id)
            user = customer.users[user_id]
            if user.removed != "changed":
                raise ValueError(f"user {user_id} is not soft-deleted and cannot be restored")
            user.removed = None
            self._log(customer, "user", user_id)
            return user

    def add_group(
        self, tenant_id: str, display_name: str, members: list[str] | None = None, **fields: Any
    ) -> Group:
        """A new security group (with its members, each logged as added)."""
        with self.lock:
            customer = self.customer(tenant_id)
            group = Group(
                id=self.new_id(),
                displayName=display_name,
                mail=fields.pop("mail", None),
                securityEnabled=fields.pop("securityEnabled", True),
            )
            for name, value in fields.items():
                if not hasattr(group, name):
                    raise AttributeError(f"groups have no property {name!r}")
                setattr(group, name, value)
            customer.groups[group.id] = group
            self._log(customer, "group", group.id)
            for member in members or ():
                self.add_member(tenant_id, group.id, member)
            return group

    def add_member(self, tenant_id: str, group_id: str, member_id: str) -> Group:
        """Put a user or a group into ``group_id`` (a group inside a group nests it)."""
        with self.lock:
            customer = self.customer(tenant_id)
            group = customer.groups[group_id]
            if member_id not in customer.users and member_id not in customer.groups:
                raise KeyError(member_id)
            if member_id == group_id:
                raise ValueError("a group cannot be a member of itself")
            if member_id not in group.members:
                group.members.append(member_id)
                self._log_member(customer, group_id, member_id)
            return group

    def remove_member(self, tenant_id: str, group_id: str, member_id: str) -> Group:
        with self.lock:
            customer = self.customer(tenant_id)
            group = customer.groups[group_id]
            if member_id not in group.members:
                raise KeyError(member_id)
            group.members.remove(member_id)
            self._log_member(customer, group_id, member_id)
            return group

    def change_users(self, fraction: float) -> list[str]:
        """Change the job title of ``fraction`` of all live users (for delta benchmarks)."""
        with self.lock:
            changed = []
            for customer in self.customers.values():
                for user in customer.users.values():
                    if user.removed is None and self.rng.random() < fraction:
                        user.jobTitle = f"{user.jobTitle or 'Staff'} (updated {self._sequence})"
                        self._log(customer, "user", user.id)
                        changed.append(user.id)
            return changed

    def add_device(self, tenant_id: str, **fields: Any) -> Device:
        with self.lock:
            customer = self.customer(tenant_id)
            device = _make_device(self, customer, len(customer.devices), **fields)
            customer.devices[device.id] = device
            return device

    def change_device(self, tenant_id: str, device_id: str, **fields: Any) -> Device:
        with self.lock:
            device = self.customer(tenant_id).devices[device_id]
            for name, value in fields.items():
                if not hasattr(device, name):
                    raise AttributeError(f"devices have no property {name!r}")
                setattr(device, name, value)
            return device

    def remove_device(self, tenant_id: str, device_id: str) -> None:
        with self.lock:
            del self.customer(tenant_id).devices[device_id]

    def give_odd_serials(self, tenant_id: str) -> dict[str, str]:
        """Give the tenant's devices the serials asset matching must survive, and return
        what was given (device id → serial; also kept in ``Customer.odd_serials``).

        One device gets each of `ODD_SERIALS` (the placeholders firmware leaves, and ""), and
        two more share one real-looking serial. Devices are added first if the tenant has
        fewer than seven. Which devices, and the shared serial, depend only on the world's
        seed and the tenant, not on the world's random stream, so a world generated without
        this is unchanged, and one generated with it is the same on every run.
        """
        with self.lock:
            customer = self.customer(tenant_id)
            while len(customer.devices) < len(ODD_SERIALS) + 2:
                self.add_device(tenant_id)
            rng = random.Random(f"{self.seed}|{customer.tenant_id}|serials")
            chosen = rng.sample(sorted(customer.devices), len(ODD_SERIALS) + 2)
            given = dict(zip(chosen, ODD_SERIALS, strict=False))
            first, second = (customer.devices[i] for i in chosen[len(ODD_SERIALS) :])
            shared = f"{first.manufacturer[:2].upper()}{rng.randrange(10**8):08d}"
            given[first.id] = given[second.id] = shared
            for device_id, serial in given.items():
                customer.devices[device_id].serialNumber = serial
            customer.odd_serials.update(given)
            return given

    def set_quantity(self, tenant_id: str, subscription_id: str, quantity: int) -> Subscription:
        with self.lock:
            customer = self.customer(tenant_id)
            subscription = customer.subscriptions[subscription_id]
            subscription.quantity = quantity
            if subscription.skuId and subscription.skuId in customer.skus:
                customer.skus[subscription.skuId].enabled = quantity
            return subscription

    def expire_delta_tokens(self, tenant_id: str) -> None:
        with self.lock:
            self.customer(tenant_id).delta_epoch += 1

    def advance(self, **delta: float) -> datetime:
        """Move the emulator's clock forward (``days=``, ``hours=``, ...)."""
        with self.lock:
            self.now += timedelta(**delta)
            return self.now

    def plan_price_change(
        self, product_sku: str, factor: Decimal | str, effective: datetime | None = None
    ) -> PriceChange:
        """Change the price of ``"ProductId:SkuId"`` by ``factor`` from ``effective`` (the
        first of next month by default) on."""
        with self.lock:
            if effective is None:
                effective = first_of_next_month(self.now)
            change = PriceChange(
                product_sku=product_sku, effective=effective, factor=Decimal(factor)
            )
            self.price_changes.append(change)
            return change

    def price_factor(self, product_sku: str, month: datetime) -> Decimal:
        """The product of the changes of ``"ProductId:SkuId"`` in force in ``month``."""
        factor = Decimal(1)
        for change in self.price_changes:
            if change.product_sku.lower() == product_sku.lower() and change.effective <= month:
                factor *= change.factor
        return factor

    # -- reading ---------------------------------------------------------------------------

    def live_users(self, customer: Customer) -> Iterator[User]:
        return (u for u in customer.users.values() if u.removed is None)


def _pick(rng: random.Random, options: tuple[Any, ...]) -> Any:
    return options[rng.randrange(len(options))]


def _make_user(world: World, customer: Customer, index: int, **fields: Any) -> User:
    rng = world.rng
    first, last = _pick(rng, FIRST_NAMES), _pick(rng, SURNAMES)
    local = f"{first}.{last}{index}".lower()
    roll = rng.random()
    kind = "member"
    if roll < 0.06:
        kind = "guest"
    elif roll < 0.10:
        kind = "shared"
    elif roll < 0.13:
        kind = "nomail"
    if kind == "guest":
        upn = f"{local}_partner.example#EXT#@{customer.domain}"
        mail = f"{local}@partner.example"
    elif kind == "shared":
        local = f"{_pick(rng, ('info', 'accounts', 'support', 'reception', 'noreply'))}{index}"
        upn = f"{local}@{customer.domain}"
        mail = upn
    else:
        upn = f"{local}@{customer.domain}"
        mail = None if kind == "nomail" else upn
    skus = list(customer.skus.values())
    licences = []
    if kind == "member" and skus and rng.random() < 0.85:
        licences = [{"disabledPlans": [], "skuId": _pick(rng, tuple(skus)).skuId}]
    user = User(
        id=world.new_id(),
        userPrincipalName=upn,
        displayName=f"{first} {last}" if kind != "shared" else local.title(),
        givenName=first if kind != "shared" else None,
        surname=last if kind != "shared" else None,
        mail=mail,
        jobTitle=_pick(rng, JOB_TITLES) if kind == "member" else None,
        department=_pick(rng, DEPARTMENTS) if kind == "member" else None,
        officeLocation=_pick(rng, OFFICES) if kind == "member" else None,
        businessPhones=[f"+44 20 7946 {rng.randrange(10000):04d}"] if rng.random() < 0.6 else [],
        mobilePhone=f"+44 7700 9{rng.randrange(100000):05d}" if rng.random() < 0.4 else None,
        employeeId=f"E{rng.randrange(100000):05d}"
        if kind == "member" and rng.random() < 0.5
        else None,
        accountEnabled=kind != "shared" and rng.random() > 0.05,
        userType="Guest" if kind == "guest" else "Member",
        usageLocation="GB" if kind != "guest" else None,
        createdDateTime=world.now - timedelta(days=rng.randrange(30, 2000)),
        assignedLicenses=licences,
        lastSignInDateTime=(
            world.now - timedelta(hours=rng.randrange(1, 2000)) if rng.random() < 0.9 else None
        ),
    )
    for name, value in fields.items():
        if not hasattr(user, name):
            raise AttributeError(f"users have no property {name!r}")
        setattr(user, name, value)
    return user


def _make_device(world: World, customer: Customer, index: int, **fields: Any) -> Device:
    rng = world.rng
    users = [u for u in customer.users.values() if u.removed is None and u.userType == "Member"]
    user = _pick(rng, tuple(users)) if users and rng.random() < 0.9 else None
    os_name, model, manufacturer, device_type = _pick(
        rng,
        (
            ("Windows", "Latitude 7440", "Dell Inc.", "windowsRT"),
            ("Windows", "ThinkPad T14 Gen 4", "LENOVO", "windowsRT"),
            ("Windows", "Surface Laptop 5", "Microsoft Corporation", "windowsRT"),
            ("iOS", "iPhone 15", "Apple", "iPhone"),
            ("Android", "Galaxy S24", "samsung", "android"),
            ("macOS", "MacBook Air", "Apple", "macMDM"),
        ),
    )
    roll = rng.random()
    if roll < 0.04:
        serial = _pick(rng, JUNK_SERIALS)
    elif roll < 0.07:
        serial = ""
    else:
        serial = f"{manufacturer[:2].upper()}{rng.randrange(10**8):08d}"
    enrolled = world.now - timedelta(days=rng.randrange(1, 900))
    device = Device(
        id=world.new_id(),
        userId=user.id if user else None,
        deviceName=f"{customer.name.split()[0].upper()[:6]}-{index:05d}",
        serialNumber=serial,
        manufacturer=manufacturer,
        model=model,
        operatingSystem=os_name,
        osVersion=_pick(rng, ("10.0.22631.4460", "10.0.26100.2314", "17.6.1", "14", "15.1")),
        complianceState=_pick(
            rng, ("compliant", "compliant", "compliant", "noncompliant", "inGracePeriod")
        ),
        managementAgent="msSense" if rng.random() < 0.05 else "mdm",
        enrolledDateTime=enrolled,
        lastSyncDateTime=world.now - timedelta(minutes=rng.randrange(5, 20000)),
        imei=f"35{rng.randrange(10**13):013d}" if os_name in ("iOS", "Android") else "",
        wiFiMacAddress=f"{rng.randrange(16**12):012x}",
        azureADDeviceId=world.new_id(),
        userPrincipalName=user.userPrincipalName if user else "",
        emailAddress=(user.mail or "") if user else "",
        userDisplayName=user.displayName if user else "",
        deviceType=device_type,
    )
    for name, value in fields.items():
        if not hasattr(device, name):
            raise AttributeError(f"devices have no property {name!r}")
        setattr(device, name, value)
    return device


def generate(
    *,
    seed: int = 1,
    customers: int = 3,
    users: int = 25,
    devices: int = 10,
    partners: int = 1,
    odd_serials: bool = False,
) -> World:
    """A world of ``partners`` partners sharing ``customers`` customers, each with about
    ``users`` users and ``devices`` devices (sizes vary ±20% per tenant).

    ``odd_serials``: give every customer's devices the junk and duplicated serials of
    `World.give_odd_serials` (kept in each ``Customer.odd_serials``).

    The first five customers cover the ways a partner reaches a tenant: reseller and GDAP,
    GDAP only, reseller only, an expired GDAP relationship, and an active one whose admin has
    not consented to the GDAP app; beyond them the mix is mostly reseller and GDAP.
    """
    world = World(seed)
    rng = world.rng
    for p in range(partners):
        tenant_id = world.new_id()
        name = f"Emulated MSP {p + 1}"
        pc_app = App(
            client_id=world.new_id(),
            secret=f"pc-secret-{seed}-{p}-{rng.getrandbits(64):x}",
            home_tenant=tenant_id,
            name=f"{name} Partner Center",
            multitenant=False,
            redirect_uris=[
                "http://localhost:8400/auth/callback",
                "https://127.0.0.1:8400/auth/callback",
            ],
            permissions=["DelegatedAdminRelationship.Read.All"],
        )
        gdap_app = App(
            client_id=world.new_id(),
            secret=f"gdap-secret-{seed}-{p}-{rng.getrandbits(64):x}",
            home_tenant=tenant_id,
            name=f"{name} Service Sync",
            multitenant=True,
            redirect_uris=[
                "http://localhost:8400/consent/callback",
                "https://127.0.0.1:8400/consent/callback",
            ],
            # What the guide's GDAP app is given (section 3), without AuditLog.Read.All:
            # asking for signInActivity is refused until a test adds it.
            permissions=[
                "User.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
                "Organization.Read.All",
                "DeviceManagementManagedDevices.Read.All",
                "LicenseAssignment.ReadWrite.All",
                "DelegatedAdminRelationship.Read.All",
                "PartnerBilling.Read.All",
            ],
        )
        world.apps[pc_app.client_id] = pc_app
        world.apps[gdap_app.client_id] = gdap_app
        world.partners[tenant_id] = Partner(
            tenant_id=tenant_id,
            name=name,
            domain=f"emulatedmsp{p + 1}.onmicrosoft.com",
            partner_center_app=pc_app,
            gdap_app=gdap_app,
        )
    partner_ids = list(world.partners)
    used_names: set[str] = set()
    for index in range(customers):
        name = f"{_pick(rng, COMPANY_WORDS)} {_pick(rng, COMPANY_SUFFIXES)}"
        while name in used_names:
            name = f"{_pick(rng, COMPANY_WORDS)} {_pick(rng, COMPANY_SUFFIXES)} {len(used_names)}"
        used_names.add(name)
        slug = "".join(ch for ch in name.lower() if ch.isalnum())[:20]
        reseller, gdap = {
            0: (True, "active"),
            1: (False, "active"),
            2: (True, None),
            3: (True, "expired"),
            4: (True, "active"),  # ... whose admin has not consented yet
        }.get(index, (True, "active") if rng.random() < 0.85 else (True, None))
        customer = Customer(
            tenant_id=world.new_id(),
            name=name,
            domain=f"{slug}{index}.onmicrosoft.com",
            partner_tenant=partner_ids[index % len(partner_ids)],
            reseller=reseller,
            gdap_status=gdap,
            gdap_roles=[
                "88d8e3e3-8f55-4a1e-953a-9b9898b8876b",
                "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
            ]
            if index != 5
            else ["fe930be7-5e62-47db-91af-98c3a49a38b1"],
            consented=gdap == "active" and index != 4,
            relationship_id=f"{world.new_id()}-{world.new_id()}",
        )
        world.customers[customer.tenant_id] = customer
        for sku_id, part, sku_name, product, catalog_sku in rng.sample(
            SKU_CATALOG, k=rng.randrange(1, 4)
        ):
            size = max(1, int(users * rng.uniform(0.5, 1.2)))
            # Drawn in the order they always were, so that the world stays the same.
            subscription_id = world.new_id()
            offer = f"{product}:{catalog_sku}:{rng.choice(('006Q', '00RF', '0058'))}"
            cycle, term = rng.choice(("monthly", "annual")), rng.choice(("P1M", "P1Y", "P1Y"))
            subscription = Subscription(
                id=subscription_id,
                offerId=offer,
                offerName=sku_name,
                quantity=size,
                # A one-month term is billed monthly: new commerce sells no other plan of it.
                billingCycle="monthly" if term == "P1M" else cycle,
                termDuration=term,
                creationDate=world.now - timedelta(days=rng.randrange(0, 400)),
                skuId=sku_id,
            )
            customer.subscriptions[subscription.id] = subscription
            customer.skus[sku_id] = Sku(
                skuId=sku_id,
                skuPartNumber=part,
                name=sku_name,
                productId=product,
                catalogSkuId=catalog_sku,
                enabled=size,
                subscriptionIds=[subscription.id],
            )
        count = max(1, round(users * rng.uniform(0.8, 1.2)))
        for i in range(count):
            user = _make_user(world, customer, i)
            customer.users[user.id] = user
            customer.changes.append((world.next_sequence(), "user", user.id))
        # Microsoft never lets assignments exceed the units bought: size each SKU (and its
        # subscription) to hold its users, with some spare.
        assigned: dict[str, int] = {}
        for user in customer.users.values():
            for licence in user.assignedLicenses:
                assigned[licence["skuId"]] = assigned.get(licence["skuId"], 0) + 1
        for sku in customer.skus.values():
            sku.enabled = max(sku.enabled, assigned.get(sku.skuId, 0) + rng.randrange(0, 5))
            for subscription_id in sku.subscriptionIds:
                customer.subscriptions[subscription_id].quantity = sku.enabled
        members = [u.id for u in customer.users.values() if u.userType == "Member"]
        for group_name in ("All Staff", "Loc-London", "Loc-Manchester", "Finance Team"):
            group = Group(
                id=world.new_id(),
                displayName=group_name,
                mail=f"{group_name.lower().replace(' ', '')}@{customer.domain}",
                securityEnabled=True,
                members=members
                if group_name == "All Staff"
                else rng.sample(members, k=len(members) // 4),
            )
            customer.groups[group.id] = group
            customer.changes.append((world.next_sequence(), "group", group.id))
        nested = list(customer.groups.values())
        nested[0].members.append(nested[1].id)  # a group inside a group, for transitive members
        for i in range(max(0, round(devices * rng.uniform(0.8, 1.2)))):
            device = _make_device(world, customer, i)
            customer.devices[device.id] = device
        this_month = world.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        last_month = (this_month - timedelta(days=1)).replace(day=1)
        # Each row's date falls inside its own period: the current month up to now, or the
        # whole of the last month.
        period_days = {
            "current": (this_month, max(1, (world.now - this_month).days + 1)),
            "last": (last_month, (this_month - last_month).days),
        }
        for period in ("current", "last"):
            start, days = period_days[period]
            for subscription_index in range(2):
                azure_subscription = world.new_id()
                for category, meter, unit, price in METER_CATEGORIES:
                    quantity = Decimal(rng.randrange(1, 800))
                    world.usage.append(
                        UsageRow(
                            customer_tenant=customer.tenant_id,
                            period=period,
                            fields={
                                "CustomerId": customer.tenant_id,
                                "CustomerName": customer.name,
                                "CustomerDomainName": customer.domain,
                                "SubscriptionId": azure_subscription,
                                "SubscriptionDescription": f"Azure plan {subscription_index + 1}",
                                "MeterCategory": category,
                                "MeterName": meter,
                                "MeterId": world.new_id(),
                                "Unit": unit,
                                "ResourceGroup": rng.choice(("rg-prod", "rg-dev", "rg-shared")),
                                "Tags": {"env": rng.choice(("prod", "dev"))},
                                "UsageDate": (start + timedelta(days=rng.randrange(days))).strftime(
                                    "%Y-%m-%dT00:00:00"
                                ),
                                "Quantity": str(quantity),
                                "UnitPrice": str(price),
                                "BillingPreTaxTotal": str(
                                    (quantity * price).quantize(Decimal("0.000001"))
                                ),
                                "BillingCurrency": BILLING_CURRENCIES[
                                    index % len(BILLING_CURRENCIES)
                                ],
                                "ChargeType": "new",
                            },
                        )
                    )
    for product_sku, factor in PLANNED_PRICE_CHANGES.items():
        world.plan_price_change(product_sku, factor)
    # The first invoice is the one billing the last period's rows.
    world.invoices = [f"G{rng.randrange(10**9):09d}" for _ in range(2)]
    if odd_serials:
        for tenant_id in list(world.customers):
            world.give_odd_serials(tenant_id)
    return world
