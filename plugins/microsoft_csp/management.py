"""Acting on Microsoft when asked: users' licences (guide 5.1) and subscription quantities (9.1).

What a command names is found in the store (a synced user and one of its tenant's licences,
or a synced subscription); Microsoft is called with the connection's apps; a refusal is
explained from a table (cause and fix, naming the tenant and the app); and only once
Microsoft has accepted does the command update the store, through the core's
`halo_integrator_core.store.updates`, from Microsoft's own answer. The next sync remains the
source of truth.

**Licences** (api-reference/v1.0/api/user-assignlicense.md): ``POST /users/{id}/assignLicense``
with ``addLicenses`` (``skuId``, ``disabledPlans``) or ``removeLicenses`` (SKU IDs), as the
GDAP app in the user's tenant; 200 answers the user. The user is read first, so a licence
already held is not assigned again (that would re-enable the service plans an administrator
turned off) and one not held is not removed. Afterwards the tenant's ``subscribedSkus`` are
read for the licence's counts: Microsoft's own numbers, as the next sync would write them,
rather than a local ±1 that is wrong whenever the store was already behind (an assignment
made in the admin centre since the last sync, group-based licences).

**Quantities** (developer/change-the-quantity-of-a-subscription.md): GET the subscription,
then PATCH the whole resource with the new ``quantity``, sending an ``MS-RequestId`` so that
a retried PATCH is the same request (headers.md). 200 answers the subscription; 202 answers
a ``Location`` to read until the change shows, which is polled a bounded number of times.
New-commerce licences can be removed only within 7 days of purchase or renewal, and those
added mid-term within 7 days of being added (``refundableQuantity`` on get-a-subscription-
by-id.md says how many, until when); outside that Partner Center answers 400 code 800090
"Subscription quantity cannot be decreased.". The quantity's bounds are the SKU's
``minimumQuantity`` and ``maximumQuantity`` (developer/get-a-sku-by-id.md), read from the
subscription's ``links.sku``. Only direct (Tier 1) partners change quantities: the licence
import types that bring in subscriptions are theirs (guide 5.1), and Partner Center answers
an indirect reseller 403 code 20002 (no commerce relationship with the customer).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import attrs
import sqlalchemy as sa
import structlog

from halo_integrator_core import RecordError, SkipTenant, Tenant, TenantAccess
from halo_integrator_core.config import Config
from halo_integrator_core.errors import HttpError, UnexpectedResponse
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.updates import LicenceCounts
from halo_integrator_core.sync.mapping import mapping_overrides
from halo_integrator_core.translation import parse_timestamp, translate

from .directory import (
    CspSession,
    _customer_graph_headers,
    _import_type,
    _relationship,
)
from .errors import call_error
from .payloads import GraphUser, SubscribedSku
from .settings import Connection, LicenceImportType, RelationshipMode

log = structlog.get_logger(__name__)

MODULE = "microsoft_csp"
#: How often, and how far apart, a 202's Location is read before giving up waiting.
POLL_ATTEMPTS = 10
POLL_INTERVAL = 3.0
#: A Retry-After above this is waited for this long at most.
POLL_INTERVAL_MAX = 30.0
#: New commerce: "License quantity can only be reduced within 7 days of purchase or renewal"
#: (change-the-quantity-of-a-subscription.md).
DECREASE_WINDOW_DAYS = 7
#: What the assignLicense call asks Graph for about the user before acting.
USER_SELECT = "id,userPrincipalName,usageLocation,assignedLicenses"
#: Candidates listed when what was asked for is not found.
CANDIDATES = 10


class Refused(Exception):
    """What was asked cannot be done: the message says why, ``fix`` what to do.

    ``usage`` marks a refusal of the command line or the configuration (exit 2), as opposed
    to one of Microsoft's (exit 1).
    """

    def __init__(self, message: str, fix: str | None = None, *, usage: bool = False) -> None:
        super().__init__(message)
        self.fix = fix
        self.usage = usage


# -- refusals, as a table --------------------------------------------------------------------


@attrs.frozen
class Refusal:
    """One row: the answers it matches (status, code, words in Microsoft's message) and what
    they mean. ``cause`` and ``fix`` are templates filled with the names of the call."""

    status: int
    cause: str
    fix: str
    codes: frozenset[str] | None = None
    words: str | None = None

    def matches(self, error: HttpError) -> bool:
        if error.status != self.status:
            return False
        if self.codes is not None and (error.code or "").lower() not in self.codes:
            return False
        return self.words is None or self.words in (error.detail or "").lower()


def _codes(*codes: str | int) -> frozenset[str]:
    return frozenset(str(code).lower() for code in codes)


def explain(error: HttpError, table: Sequence[Refusal], names: Mapping[str, Any]) -> Refused | None:
    """The refusal of the first row matching ``error``, or ``None``."""
    for row in table:
        if row.matches(error):
            values = {**names, "message": error.detail, "code": error.code or error.status}
            return Refused(row.cause.format(**values), row.fix.format(**values))
    return None


_RESYNC = "run `halo-integrator sync` to bring the store up to date, then try again"

#: Graph's refusals of assignLicense. The page documents only the 200; these are the live
#: service's messages (Request_BadRequest for each), as the emulator gives them.
ASSIGN_REFUSALS: tuple[Refusal, ...] = (
    Refusal(
        400,
        "Microsoft refused to assign {sku} to {user} in tenant {tenant}: the user has no usage "
        "location (Graph: {message}). A licence can only be assigned to a user whose "
        "usageLocation, a two-letter country code, is set: which services may be used "
        "depends on the country",
        "set the user's Usage location in the Microsoft 365 admin centre (Users → the user → "
        "Manage contact information / Settings) or the Entra admin centre (Properties), then "
        "run the command again",
        words="usage location",
    ),
    Refusal(
        400,
        "Microsoft refused to assign {sku} to {user}: tenant {tenant} has no {sku} unit left "
        "to assign ({units}; Graph: {message})",
        "free a unit (`halo-integrator csp licence remove --user OTHER --sku {sku}`) or buy "
        "more: a direct partner raises the subscription's quantity (`halo-integrator csp "
        "subscription set-quantity SUBSCRIPTION N`), an indirect one asks its distributor; "
        "then run the command again",
        words="does not have any available licenses",
    ),
    Refusal(
        400,
        "tenant {tenant} no longer has the licence {sku} (Graph: {message})",
        _RESYNC,
        words="does not correspond to a valid company license",
    ),
    Refusal(
        400,
        "{user} does not hold {sku} in the directory (Graph: {message})",
        _RESYNC,
        words="does not have a corresponding license",
    ),
    Refusal(
        400,
        "Microsoft refused to assign {sku} to {user}: a service plan of {sku} cannot be held "
        "with one the user already has (Graph: {message})",
        "remove the conflicting licence from the user first (or turn off the conflicting "
        "service plan in the admin centre), then run the command again",
        words="mutually exclusive",
    ),
    Refusal(
        400,
        "Microsoft refused to assign {sku} to {user}: a service plan of {sku} needs a licence "
        "the user does not have (Graph: {message})",
        "assign the licence it depends on first, then run the command again",
        words="depends on",
    ),
    Refusal(
        403,
        "{app} may not assign licences in tenant {tenant} (Graph: {code}: {message})",
        "give the GDAP app the Microsoft Graph *Application* permission "
        "LicenseAssignment.ReadWrite.All (the least privileged; User.ReadWrite.All or "
        "Directory.ReadWrite.All also allow it) and grant admin consent in your partner "
        "tenant; then grant consent again in tenant {tenant} (`halo-integrator csp consent "
        "{tenant}`), since a consent given before the permission was added does not hold it",
    ),
    Refusal(
        404,
        "{user} no longer exists in the directory of tenant {tenant} (Graph: {message})",
        _RESYNC,
    ),
)

#: Reading the user before acting: only its absence is this command's to explain; a refused
#: read is the module's usual insufficient-privileges message.
USER_REFUSALS = tuple(row for row in ASSIGN_REFUSALS if row.status == 404)

_INDIRECT = (
    "Partner Center says partner tenant {partner} has no commerce relationship with customer "
    "{tenant} ({code}: {message}): the subscription {subscription} is sold to it by another "
    "partner, its indirect provider when you are an indirect (Tier 2) reseller. Adjusting "
    "quantities is for direct (Tier 1) partners only (guide 9.1)"
)

#: Partner Center's refusals of reading and changing a subscription (error-codes.md).
QUANTITY_REFUSALS: tuple[Refusal, ...] = (
    Refusal(
        400,
        "Partner Center refused to lower {subscription} from {before} to {quantity} licences "
        "({code}: {message}): {window}",
        "{window_fix}",
        codes=_codes(800090),
    ),
    Refusal(
        400,
        "Partner Center refused {quantity} licences for {subscription} ({code}: {message}): "
        "{limits}",
        "choose a quantity within those bounds",
        codes=_codes(2002),
    ),
    Refusal(
        403,
        "Partner Center refused {quantity} licences for {subscription}: more than the seat "
        "limit of its offer allows ({code}: {message})",
        "choose a smaller quantity, or buy the rest as a separate subscription",
        codes=_codes(800067, 800088),
    ),
    Refusal(
        400,
        "{subscription} is suspended: its quantity cannot change ({code}: {message})",
        "reactivate the subscription in Partner Center first",
        codes=_codes(800091, 2001),
    ),
    Refusal(
        400,
        "{subscription} is deleted in Partner Center ({code}: {message})",
        _RESYNC,
        codes=_codes(2011),
    ),
    Refusal(
        400,
        "the quantity of {subscription} cannot be changed ({code}: {message})",
        "change it in Partner Center if its offer allows it at all (trials, Azure plans and "
        "some add-ons have a fixed quantity)",
        codes=_codes(800095, 2006, 800092, 800081),
    ),
    Refusal(
        403,
        "the quantity of {subscription} cannot be changed ({code}: {message})",
        "change it in Partner Center if its offer allows it at all",
        codes=_codes(800027),
    ),
    Refusal(
        409,
        "Partner Center is still busy with an earlier change of {subscription} ({code}: {message})",
        "wait a few minutes and run the command again",
        codes=_codes(800082, 800014, 800060),
    ),
    Refusal(
        403,
        _INDIRECT,
        "change the quantity through your indirect provider (its portal or support); if you "
        "are a direct partner, check that connection {connection} signs in to your own "
        "Partner Center account",
        codes=_codes(20002),
    ),
    Refusal(
        404,
        "Partner Center no longer has the subscription {subscription} of tenant {tenant} "
        "({code}: {message})",
        _RESYNC,
        codes=_codes(20003, 60003),
    ),
)


def _explained(
    error: HttpError,
    table: Sequence[Refusal],
    names: Mapping[str, Any],
    *,
    api: str,
    tenant: str,
    app: str,
) -> Exception:
    """``error`` explained by ``table``, else as the module explains any call
    (`errors.call_error`)."""
    return explain(error, table, names) or call_error(error, api=api, tenant=tenant, app=app)


@contextlib.contextmanager
def _refused(
    table: Sequence[Refusal], names: Mapping[str, Any], *, api: str, tenant: str, app: str
) -> Iterator[None]:
    """Microsoft's refusals of the calls inside, explained (`_explained`)."""
    try:
        yield
    except HttpError as exc:
        raise _explained(exc, table, names, api=api, tenant=tenant, app=app) from None


# -- what the store holds --------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StoredUser:
    id: int
    tenant_ref: int
    tenant_id: str
    object_id: str
    user_principal_name: str | None
    email: str | None
    display_name: str | None
    active: bool

    @property
    def label(self) -> str:
        return self.user_principal_name or self.email or self.object_id


@attrs.frozen(kw_only=True)
class StoredLicence:
    id: int
    sku_id: str
    sku_part_number: str
    name: str | None
    total_units: int
    consumed_units: int
    active: bool

    @property
    def label(self) -> str:
        return self.sku_part_number

    @property
    def units(self) -> str:
        return f"{self.consumed_units} of {self.total_units} assigned at the last sync"


@attrs.frozen(kw_only=True)
class StoredSubscription:
    id: int
    tenant_ref: int
    tenant_id: str
    subscription_id: str
    name: str
    offer_id: str | None
    quantity: int
    status: str | None
    active: bool

    @property
    def label(self) -> str:
        return f'"{self.name}" ({self.subscription_id})'


def _module_tenants() -> Any:
    t = schema.tenants
    return sa.select(t.c.id).where(t.c.module == MODULE)


def _one(rows: list[Any], what: str, text: str, describe: Any, fix: str) -> Any:
    """The row ``text`` names: the one match, else the one active match, else a refusal."""
    if len(rows) > 1:
        active = [row for row in rows if row.active]
        if len(active) == 1:
            return active[0]
        listing = "; ".join(describe(row) for row in rows[:CANDIDATES])
        raise Refused(f"{text!r} names {len(rows)} {what}s: {listing}", fix, usage=True)
    return rows[0] if rows else None


def find_user(store: Store, text: str) -> StoredUser:
    """The synced user ``text`` names: a user principal name, an email address or an Entra
    object ID, letter case ignored."""
    u, t = schema.users, schema.tenants
    key = text.strip().lower()
    columns = (
        u.c.id,
        u.c.tenant_ref,
        t.c.tenant_id,
        u.c.external_id.label("object_id"),
        u.c.user_principal_name,
        u.c.email,
        u.c.display_name,
        u.c.active,
    )
    base = (
        sa.select(*columns)
        .select_from(u.join(t, t.c.id == u.c.tenant_ref))
        .where(u.c.tenant_ref.in_(_module_tenants()), u.c.external_id.is_not(None))
    )
    with store.read() as connection:
        rows = connection.execute(
            base.where(
                sa.or_(
                    sa.func.lower(u.c.user_principal_name) == key,
                    sa.func.lower(u.c.email) == key,
                    sa.func.lower(u.c.external_id) == key,
                )
            ).order_by(u.c.id)
        ).all()
        if not rows:
            part = key.split("@", 1)[0] or key
            like = f"%{part}%"
            near = connection.execute(
                base.where(
                    sa.or_(
                        sa.func.lower(u.c.user_principal_name).like(like),
                        sa.func.lower(u.c.email).like(like),
                        sa.func.lower(u.c.display_name).like(like),
                    )
                )
                .order_by(u.c.user_principal_name)
                .limit(CANDIDATES)
            ).all()
    fix = (
        "give the user principal name, email address or Entra object ID of a synced user "
        "(`halo-integrator export --what users` lists them; a new user arrives with the next "
        "`halo-integrator sync`)"
    )

    def describe(row: Any) -> str:
        return f"{row.user_principal_name or row.email} ({row.object_id}, tenant {row.tenant_id})"

    row = _one(rows, "user", text, describe, "give the user's object ID instead")
    if row is None:
        hint = f"; similar: {'; '.join(describe(r) for r in near)}" if near else ""
        raise Refused(f"no synced user is {text!r}{hint}", fix, usage=True)
    return StoredUser(**row._mapping)


def find_licence(store: Store, user: StoredUser, text: str) -> StoredLicence:
    """The licence of ``user``'s tenant ``text`` names: a SKU part number (``SPE_E3``) or a
    SKU ID, letter case ignored."""
    lic = schema.licences
    key = text.strip().lower()
    columns = (
        lic.c.id,
        lic.c.external_id.label("sku_id"),
        lic.c.sku_part_number,
        lic.c.name,
        lic.c.total_units,
        lic.c.consumed_units,
        lic.c.active,
    )
    with store.read() as connection:
        known = connection.execute(
            sa.select(*columns)
            .where(lic.c.tenant_ref == user.tenant_ref)
            .order_by(lic.c.sku_part_number)
        ).all()
    rows = [row for row in known if key in (row.sku_part_number.lower(), row.sku_id.lower())]

    def describe(row: Any) -> str:
        state = "" if row.active else ", no longer in the tenant"
        return (
            f"{row.sku_part_number} ({row.name or 'no name'}, {row.sku_id}: "
            f"{row.consumed_units} of {row.total_units} assigned{state})"
        )

    row = _one(rows, "licence", text, describe, "give the SKU ID instead")
    if row is None:
        listing = "; ".join(describe(r) for r in known if r.active) or "none synced"
        raise Refused(
            f"tenant {user.tenant_id} of {user.label} has no licence {text!r} in the store "
            f"(its licences: {listing})",
            "give a SKU part number or SKU ID from that list; a licence the tenant bought "
            "since the last sync arrives with the next `halo-integrator sync --only licences`",
            usage=True,
        )
    return StoredLicence(**row._mapping)


def find_subscription(store: Store, text: str) -> StoredSubscription:
    """The synced subscription ``text`` names: its Partner Center ID, or its name or offer ID
    when one subscription has it."""
    s, t = schema.subscriptions, schema.tenants
    key = text.strip().lower()
    base = (
        sa.select(
            s.c.id,
            s.c.tenant_ref,
            t.c.tenant_id,
            s.c.external_id.label("subscription_id"),
            s.c.name,
            s.c.offer_id,
            s.c.quantity,
            s.c.status,
            s.c.active,
        )
        .select_from(s.join(t, t.c.id == s.c.tenant_ref))
        .where(s.c.tenant_ref.in_(_module_tenants()))
    )
    with store.read() as connection:
        rows = connection.execute(
            base.where(
                sa.or_(
                    sa.func.lower(s.c.external_id) == key,
                    sa.func.lower(s.c.name) == key,
                    sa.func.lower(s.c.offer_id) == key,
                )
            ).order_by(s.c.id)
        ).all()
        near = (
            []
            if rows
            else connection.execute(
                base.where(sa.func.lower(s.c.name).like(f"%{key}%"))
                .order_by(s.c.name)
                .limit(CANDIDATES)
            ).all()
        )

    def describe(row: Any) -> str:
        return (
            f'"{row.name}" ({row.subscription_id}, tenant {row.tenant_id}, quantity {row.quantity})'
        )

    row = _one(rows, "subscription", text, describe, "give the subscription's ID instead")
    if row is None:
        hint = f"; similar: {'; '.join(describe(r) for r in near)}" if near else ""
        raise Refused(
            f"no synced subscription is {text!r}{hint}",
            "give a subscription ID (`halo-integrator export --what subscriptions` lists them; "
            "subscriptions are synced for connections whose licence_import_type is "
            '"subscriptions" or "subscriptions_and_skus")',
            usage=True,
        )
    return StoredSubscription(**row._mapping)


def stored_tenant(store: Store, config: Config, tenant_ref: int) -> Tenant:
    """The stored tenant as the sync hands it to the module, its mapping's overrides included."""
    t = schema.tenants
    with store.read() as connection:
        row = connection.execute(sa.select(t).where(t.c.id == tenant_ref)).one()
    try:
        access = TenantAccess(row.access)
    except ValueError:
        access = TenantAccess.UNKNOWN
    attributes = dict(row.attributes or {})
    overrides = mapping_overrides(config, MODULE, row.tenant_id)
    if overrides:
        attributes["mapping"] = overrides
    return Tenant(
        tenant_id=row.tenant_id,
        name=row.name,
        connection=row.connection or None,
        default_domain=row.default_domain,
        access=access,
        access_detail=row.access_detail,
        attributes=attributes,
    )


def _connection(csp: CspSession, tenant: Tenant) -> Connection:
    try:
        return csp.connection_of(tenant)
    except SkipTenant as exc:
        raise Refused(
            str(exc), "add the connection back, or sync so the tenant is reached again", usage=True
        ) from None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "unknown"


# -- licences --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LicenceChange:
    """What `change_licence` did (or, in a dry run, would do)."""

    assign: bool
    user: StoredUser
    licence: StoredLicence
    tenant: Tenant
    #: Whether assignLicense was (or would be) called: False when it was so already.
    called: bool
    #: Whether the user holds the licence now, as Microsoft answered.
    assigned: bool
    counts: LicenceCounts | None = None
    #: What a dry run foresees Microsoft answering, when it can tell.
    prediction: str | None = None

    def report(self, *, dry_run: bool) -> list[str]:
        sku, who = self.licence.label, self.user.label
        where = f"in tenant {self.tenant.name} ({self.tenant.tenant_id})"
        if not self.called:
            state = "already holds" if self.assign else "does not hold"
            lines = [f"{who} {state} {sku} {where}: nothing to change"]
        elif dry_run:
            verb = "assign" if self.assign else "remove"
            lines = [
                f"dry run: would {verb} {sku} {'to' if self.assign else 'from'} {who} {where} "
                "(Graph assignLicense); nothing was changed"
            ]
        else:
            verb = "assigned" if self.assign else "removed"
            lines = [f"{verb} {sku} {'to' if self.assign else 'from'} {who} {where}"]
        if self.prediction:
            lines.append(self.prediction)
        if dry_run:
            return lines
        if self.counts is not None:
            lines.append(
                f"{sku}: {self.counts.consumed_units} of {self.counts.total_units} units "
                "assigned (Microsoft's count); the store is updated"
            )
        else:
            lines.append(
                "the store's assignment is updated; the licence's counts could not be read and "
                "follow at the next sync"
            )
        return lines


def change_licence(
    csp: CspSession,
    tenant: Tenant,
    user: StoredUser,
    licence: StoredLicence,
    *,
    assign: bool,
    dry_run: bool = False,
) -> LicenceChange:
    """Assign ``licence`` to ``user`` (or remove it) with Graph's assignLicense.

    Raises `Refused` when Microsoft refuses (explained), or when the tenant cannot be reached
    through GDAP. Changes nothing in the store.
    """
    connection = _connection(csp, tenant)
    app = csp.clients(connection).gdap.app_name
    try:
        headers = _customer_graph_headers(csp, connection, tenant)
    except SkipTenant as exc:
        raise Refused(f"tenant {tenant.tenant_id} cannot be reached through GDAP: {exc}") from None
    names: dict[str, Any] = {
        "user": user.label,
        "sku": licence.label,
        "tenant": tenant.tenant_id,
        "app": app,
        "units": licence.units,
    }
    graph = csp.endpoints.url("graph")
    with _refused(USER_REFUSALS, names, api="graph", tenant=tenant.tenant_id, app=app):
        body = csp.http.json(
            "GET",
            f"{graph}/v1.0/users/{user.object_id}",
            params={"$select": USER_SELECT},
            headers=headers,
        )
    directory_user = translate(body, GraphUser, entity_id=user.object_id)
    if isinstance(directory_user, RecordError):
        raise Refused(f"Graph's answer for {user.label} could not be read: {directory_user.reason}")
    sku = licence.sku_id.lower()
    held = any(a.sku_id.lower() == sku for a in directory_user.assigned_licenses)
    called = held != assign
    prediction = None
    if dry_run:
        counts = _licence_counts(csp, graph, headers, licence) if called and assign else None
        if called and assign and not directory_user.usage_location:
            prediction = (
                f"Microsoft would refuse: {user.label} has no usage location, which a licence "
                "needs (set it in the admin centre first)"
            )
        elif called and assign and counts is not None:
            free = counts.total_units + counts.warning_units - counts.consumed_units
            if free <= 0:
                prediction = (
                    f"Microsoft would refuse: all {counts.total_units} units of {licence.label} "
                    "are assigned"
                )
        return LicenceChange(
            assign=assign,
            user=user,
            licence=licence,
            tenant=tenant,
            called=called,
            assigned=held,
            prediction=prediction,
        )
    assigned = held
    if called:
        payload = {
            "addLicenses": [{"disabledPlans": [], "skuId": licence.sku_id}] if assign else [],
            "removeLicenses": [] if assign else [licence.sku_id],
        }
        try:
            answer = csp.http.json(
                "POST",
                f"{graph}/v1.0/users/{user.object_id}/assignLicense",
                json=payload,
                headers={**headers, "Content-Type": "application/json"},
            )
        except HttpError as exc:
            if "available licenses" in (exc.detail or "").lower():
                # Say how many are assigned now, not at the last sync.
                now = _licence_counts(csp, graph, headers, licence)
                if now is not None:
                    total = now.total_units + now.warning_units
                    names["units"] = f"{now.consumed_units} of {total} assigned now"
            raise _explained(
                exc, ASSIGN_REFUSALS, names, api="graph", tenant=tenant.tenant_id, app=app
            ) from None
        assigned = _holds(answer, sku, default=assign)
        log.info(
            "licence.changed",
            action="assign" if assign else "remove",
            user=user.object_id,
            sku=licence.sku_id,
            tenant=tenant.tenant_id,
        )
    counts = _licence_counts(csp, graph, headers, licence)
    return LicenceChange(
        assign=assign,
        user=user,
        licence=licence,
        tenant=tenant,
        called=called,
        assigned=assigned,
        counts=counts,
    )


def _holds(answer: Any, sku: str, *, default: bool) -> bool:
    """Whether the user in assignLicense's answer holds ``sku`` (``default`` if it is silent)."""
    licences = answer.get("assignedLicenses") if isinstance(answer, dict) else None
    if not isinstance(licences, list):
        return default
    return any(isinstance(a, dict) and str(a.get("skuId", "")).lower() == sku for a in licences)


def _licence_counts(
    csp: CspSession, graph: str, headers: Mapping[str, str], licence: StoredLicence
) -> LicenceCounts | None:
    """The licence's units as Graph's subscribedSkus counts them now; ``None`` if unread."""
    try:
        body = csp.http.json("GET", f"{graph}/v1.0/subscribedSkus", headers=headers)
    except HttpError as exc:
        log.warning("licence.counts_unread", sku=licence.sku_id, error=str(exc))
        return None
    for item in body.get("value", []) if isinstance(body, dict) else []:
        sku = translate(item, SubscribedSku)
        if isinstance(sku, RecordError) or sku.sku_id.lower() != licence.sku_id.lower():
            continue
        return LicenceCounts(
            total_units=sku.prepaid_units.enabled,
            consumed_units=sku.consumed_units,
            suspended_units=sku.prepaid_units.suspended,
            warning_units=sku.prepaid_units.warning,
            capability_status=sku.capability_status,
        )
    return None


# -- subscription quantities -----------------------------------------------------------------


def check_direct(connection: Connection, tenant: Tenant, subscription: StoredSubscription) -> None:
    """Refuse, before calling Microsoft, what the configuration says is not a direct
    partner's subscription to change (guide 5.1 and 9.1)."""
    import_type = _import_type(connection, tenant)
    if import_type is LicenceImportType.SKUS:
        raise Refused(
            f"connection {connection.name} imports the licences of tenant {tenant.tenant_id} as "
            'All Subscribed SKUs (licence_import_type = "skus"), the option every indirect '
            "(Tier 2) partner must use: adjusting quantities is for direct (Tier 1) partners "
            "only (guide 9.1)",
            'a direct partner sets licence_import_type = "subscriptions" or '
            '"subscriptions_and_skus" on the connection (or the tenant\'s mapping); an '
            "indirect partner changes quantities through its indirect provider",
            usage=True,
        )
    if _relationship(connection, tenant) is RelationshipMode.GDAP_ONLY:
        raise Refused(
            f"tenant {tenant.tenant_id} is imported as GDAP only: its subscriptions come from "
            "the reseller relationship, which its relationship type leaves out",
            'set relationship_mode (or the tenant mapping\'s relationship_type) to "gdap_and_dap"',
            usage=True,
        )
    if not tenant.attributes.get("reseller"):
        raise Refused(
            f"partner connection {connection.name} has no reseller relationship with tenant "
            f"{tenant.tenant_id}: {subscription.label} is not its to change",
            "sync again if the relationship was re-established; otherwise change it through "
            "the partner who sells it",
            usage=True,
        )


@attrs.frozen(kw_only=True)
class DecreaseWindow:
    """What Partner Center says about taking licences back (new commerce)."""

    #: Licences that may still be removed, and until when; ``None`` when not given (legacy
    #: subscriptions, whose decreases are not limited this way).
    refundable: int | None
    details: tuple[tuple[int, datetime | None], ...] = ()
    #: The end of the window for the licences of the current term (purchase or renewal).
    term_window_end: datetime | None = None
    commitment_end: datetime | None = None

    @classmethod
    def of(cls, resource: Mapping[str, Any]) -> DecreaseWindow:
        refundable = resource.get("refundableQuantity")
        details: list[tuple[int, datetime | None]] = []
        total: int | None = None
        if isinstance(refundable, dict):
            total = _int(refundable.get("totalQuantity"), 0)
            for item in refundable.get("details") or ():
                if isinstance(item, dict):
                    details.append(
                        (_int(item.get("quantity"), 0), _time(item.get("allowedUntilDateTime")))
                    )
        ends = [_time(resource.get("cancellationAllowedUntilDate"))] + [
            _time(option.get("expiresAt"))
            for option in resource.get("refundOptions") or ()
            if isinstance(option, dict)
        ]
        known = [end for end in ends if end is not None]
        return cls(
            refundable=total,
            details=tuple(details),
            term_window_end=max(known) if known else None,
            commitment_end=_time(resource.get("commitmentEndDate")),
        )

    def allows(self, before: int, quantity: int) -> bool | None:
        """Whether lowering ``before`` to ``quantity`` is within the window (None: unknown)."""
        if quantity >= before:
            return True
        if self.refundable is None:
            return None
        return before - quantity <= self.refundable

    def explain(self, before: int, now: datetime) -> str:
        rule = (
            f"new-commerce licences can only be removed within {DECREASE_WINDOW_DAYS} days "
            f"({DECREASE_WINDOW_DAYS * 24} hours) of purchase or renewal, and licences added "
            f"mid-term within {DECREASE_WINDOW_DAYS} days of being added"
        )
        open_ = [(qty, until) for qty, until in self.details if qty > 0]
        if self.refundable:
            parts = ", ".join(f"{qty} until {_when(until)}" for qty, until in open_)
            return (
                f"{rule}. Only {self.refundable} can still be removed now (so {before} can go "
                f"down to {before - self.refundable} at the lowest): {parts or 'no dates given'}"
            )
        # Partner Center counting none refundable says the window is over, by its own clock.
        ended = self.refundable == 0 or (self.term_window_end or now) < now
        if self.term_window_end is not None and ended:
            return f"{rule}: the window for this term ended on {_when(self.term_window_end)}"
        return f"{rule}; none of the {before} licences can be removed now"

    def fix(self, before: int) -> str:
        lowest = before - (self.refundable or 0)
        renewal = f" (the term ends on {_when(self.commitment_end)})" if self.commitment_end else ""
        now_part = f" or lower it to {lowest} now," if self.refundable else ""
        return (
            f"keep the quantity{now_part} and reduce it at renewal{renewal}: set the renewal "
            "quantity in Partner Center (or turn off auto-renew and buy the smaller quantity "
            "when the term ends)"
        )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _time(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class QuantityChange:
    """What `set_quantity` did (or, in a dry run, would do)."""

    subscription: StoredSubscription
    tenant: Tenant
    before: int
    requested: int
    #: The quantity and status Microsoft answered last.
    quantity: int
    status: str | None
    #: Whether the PATCH was (or would be) sent.
    called: bool
    #: Partner Center answered 202: the change is accepted and processed asynchronously.
    accepted: bool = False
    prediction: str | None = None

    @property
    def landed(self) -> bool:
        return self.quantity == self.requested

    def report(self, *, dry_run: bool) -> list[str]:
        name = self.subscription.label
        where = f"of tenant {self.tenant.name} ({self.tenant.tenant_id})"
        if not self.called:
            return [f"{name} {where} already has {self.before} licences: nothing to change"]
        if dry_run:
            lines = [
                f"dry run: would change {name} {where} from {self.before} to {self.requested} "
                "licences (Partner Center PATCH); nothing was changed"
            ]
            if self.prediction:
                lines.append(self.prediction)
            return lines
        if self.landed:
            how = " (accepted with 202 and confirmed by reading it back)" if self.accepted else ""
            return [
                f"changed {name} {where} from {self.before} to {self.quantity} licences{how}; "
                "the store is updated"
            ]
        return [
            f"Partner Center accepted the change of {name} {where} to {self.requested} licences "
            f"(202) and is still processing it: it shows {self.quantity} so far, which the store "
            "keeps; the next sync (or a subscription-updated webhook) brings the new quantity"
        ]


def set_quantity(
    csp: CspSession,
    tenant: Tenant,
    subscription: StoredSubscription,
    quantity: int,
    *,
    dry_run: bool = False,
) -> QuantityChange:
    """Change ``subscription``'s quantity in Partner Center to ``quantity``.

    Raises `Refused` when the configuration says this is not a direct partner's subscription
    or Microsoft refuses (explained). Changes nothing in the store.
    """
    if quantity < 1:
        raise Refused(f"a quantity must be 1 or more, not {quantity}", usage=True)
    connection = _connection(csp, tenant)
    check_direct(connection, tenant, subscription)
    clients = csp.clients(connection)
    app = clients.partner_center.app_name
    base = csp.endpoints.url("partner_center")
    url = f"{base}/v1/customers/{tenant.tenant_id}/subscriptions/{subscription.subscription_id}"
    names: dict[str, Any] = {
        "subscription": subscription.label,
        "tenant": tenant.tenant_id,
        "partner": connection.tenant_id,
        "connection": connection.name,
        "quantity": quantity,
        "before": subscription.quantity,
        "window": "",
        "window_fix": "",
        "limits": "the offer's minimum and maximum quantity",
    }
    headers = clients.partner_center_headers()
    with _refused(QUANTITY_REFUSALS, names, api="partner_center", tenant=tenant.tenant_id, app=app):
        resource = csp.http.json("GET", url, headers=headers)
    before = _int(resource.get("quantity"), subscription.quantity)
    status = resource.get("status") if isinstance(resource.get("status"), str) else None
    names["before"] = before
    if quantity == before:
        return QuantityChange(
            subscription=subscription,
            tenant=tenant,
            before=before,
            requested=quantity,
            quantity=before,
            status=status,
            called=False,
        )
    bounds = _sku_bounds(csp, base, headers, resource)
    if bounds is not None:
        low, high = bounds
        names["limits"] = f"Partner Center allows {low} to {high} licences of this offer"
        if not low <= quantity <= high:
            raise Refused(
                f"{quantity} licences is outside what Partner Center allows for "
                f"{subscription.label}: {low} to {high} (the SKU's minimumQuantity and "
                "maximumQuantity)",
                f"choose a quantity from {low} to {high}",
            )
    window = DecreaseWindow.of(resource)
    now = datetime.now(UTC)
    names["window"] = window.explain(before, now)
    names["window_fix"] = window.fix(before)
    if dry_run:
        allowed = window.allows(before, quantity)
        prediction = None
        if allowed is False:
            prediction = f"Partner Center would refuse the decrease: {names['window']}"
        elif quantity < before and allowed is None:
            prediction = "Partner Center does not say how many licences can be removed now"
        return QuantityChange(
            subscription=subscription,
            tenant=tenant,
            before=before,
            requested=quantity,
            quantity=before,
            status=status,
            called=True,
            prediction=prediction,
        )
    body = {**resource, "quantity": quantity}
    change_headers = {
        **headers,
        "Content-Type": "application/json",
        # "used to ensure id-potency. If there's a timeout, the retry call should include
        # the same value" (headers.md): so a dropped PATCH may be sent again, as it is.
        "MS-RequestId": str(uuid.uuid4()),
        "MS-CorrelationId": str(uuid.uuid4()),
    }
    with _refused(QUANTITY_REFUSALS, names, api="partner_center", tenant=tenant.tenant_id, app=app):
        response = csp.http.request(
            "PATCH", url, json=body, headers=change_headers, idempotent=True
        )
        accepted = response.status_code == 202
        if accepted:
            answer = _await_change(csp, base, url, headers, response, quantity)
        else:
            answer = _json(response, url)
    log.info(
        "subscription.quantity_changed",
        subscription=subscription.subscription_id,
        tenant=tenant.tenant_id,
        before=before,
        requested=quantity,
        answered=answer.get("quantity"),
        accepted=accepted,
    )
    answered_status = answer.get("status")
    return QuantityChange(
        subscription=subscription,
        tenant=tenant,
        before=before,
        requested=quantity,
        quantity=_int(answer.get("quantity"), before),
        status=answered_status if isinstance(answered_status, str) else status,
        called=True,
        accepted=accepted,
    )


def _json(response: Any, url: str) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise UnexpectedResponse(
            f"expected the subscription as JSON, got {response.text[:200]!r}",
            method="PATCH",
            url=url,
            status=response.status_code,
        )
    return answer


def _sku_bounds(
    csp: CspSession, base: str, headers: Mapping[str, str], resource: Mapping[str, Any]
) -> tuple[int, int] | None:
    """The SKU's (minimumQuantity, maximumQuantity), from the subscription's ``links.sku``;
    ``None`` when there is no such link or the catalogue does not answer."""
    link = (resource.get("links") or {}).get("sku") if isinstance(resource, dict) else None
    uri = link.get("uri") if isinstance(link, dict) else None
    if not isinstance(uri, str) or not uri.startswith("/"):
        return None
    path = uri if uri.startswith("/v1/") else f"/v1{uri}"
    try:
        sku = csp.http.json("GET", f"{base}{path}", headers=headers)
    except HttpError as exc:
        log.info("subscription.sku_unread", uri=uri, error=str(exc))
        return None
    low, high = sku.get("minimumQuantity"), sku.get("maximumQuantity")
    if isinstance(low, int) and isinstance(high, int) and 0 < low <= high:
        return low, high
    return None


def _await_change(
    csp: CspSession,
    base: str,
    url: str,
    headers: Mapping[str, str],
    response: Any,
    quantity: int,
) -> dict[str, Any]:
    """Read the subscription where the 202 points until it shows ``quantity``; the last read.

    The ``Location`` is followed only on Partner Center's own host (the token is not sent
    anywhere else); otherwise the subscription's own URL is read. A read that fails ends
    the waiting, not the change: Partner Center has accepted it (202), so it is reported
    as still in progress, at the quantity last read, rather than as refused.
    """
    target = _location(base, response.headers.get("Location")) or url
    wait = POLL_INTERVAL
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        with contextlib.suppress(ValueError):
            wait = min(max(float(retry_after), 0.0), POLL_INTERVAL_MAX)
    sleep = getattr(csp.http, "sleep", time.sleep)
    answer: dict[str, Any] = {}
    for _ in range(POLL_ATTEMPTS):
        sleep(wait)
        try:
            answer = csp.http.json("GET", target, headers=headers)
        except HttpError as exc:
            log.warning("subscription.change_unconfirmed", url=target, error=str(exc))
            break
        if _int(answer.get("quantity"), -1) == quantity:
            break
    return answer


def _location(base: str, location: str | None) -> str | None:
    if not location:
        return None
    ours = urlsplit(base)
    parts = urlsplit(location)
    if not parts.scheme and location.startswith("/"):
        path = location if location.startswith("/v1/") else f"/v1{location}"
        return f"{base}{path}"
    if (parts.scheme, parts.netloc) == (ours.scheme, ours.netloc):
        return location
    log.warning("subscription.location_ignored", location=location)
    return None


__all__ = [
    "LicenceChange",
    "QuantityChange",
    "Refused",
    "change_licence",
    "find_licence",
    "find_subscription",
    "find_user",
    "set_quantity",
    "stored_tenant",
]
