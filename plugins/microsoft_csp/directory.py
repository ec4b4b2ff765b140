"""What the CSP module fetches: tenants (Partner Center and GDAP), licences, subscriptions.

Guide sections 4 and 5. Tenants are the union of the partner's reseller customers (Partner
Center, in "GDAP and DAP" mode) and its delegated admin relationships (Graph), each with
its access state; licences are the customer directory's subscribed SKUs (Graph, through the
GDAP app); subscriptions are the partner's Partner Center subscriptions of the customer.
Users live in `users`, which uses this module's session and Graph headers.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from halo_integrator_core import (
    Checkpoint,
    Licence,
    ModuleContext,
    RecordError,
    SkipTenant,
    Subscription,
    Tenant,
    TenantAccess,
)
from halo_integrator_core.config import ValueProblem
from halo_integrator_core.errors import HttpError
from halo_integrator_core.http import HttpClient
from halo_integrator_core.paging import odata_pages, partner_center_pages
from halo_integrator_core.translation import translate

from .auth import (
    GRAPH_RESOURCE,
    PARTNER_CENTER_RESOURCE,
    AppTokenCache,
    AppTokens,
    HttpCache,
    app_cache_file,
    forget_refused,
    http_cache_file,
)
from .consent import DEFAULT_CONSENT_REDIRECT_URI, consent_url
from .delegated import DelegatedTokens
from .errors import ApplicationNotFound, ConsentMissing, MicrosoftAuthError, call_error
from .payloads import (
    DelegatedAdminRelationship,
    PartnerCenterCustomer,
    PartnerCenterSubscription,
    SubscribedSku,
)
from .settings import Connection, LicenceImportType, MicrosoftCspSettings, RelationshipMode
from .sku_names import product_name

log = structlog.get_logger(__name__)

#: The GDAP roles that let the modules read a customer (guide 2.3): any one will do.
NEEDED_ROLES = {
    "88d8e3e3-8f55-4a1e-953a-9b9898b8876b": "Directory Readers",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "4d6ac14f-3453-41d0-bef9-a3e0c569773a": "License Administrator",
}
ROLE_NAMES = {
    **NEEDED_ROLES,
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
}
CUSTOMERS_PAGE = 500


class ConnectionClients:
    """Tokens of one connection's two app registrations.

    Partner Center is called as the authorized user (App+User, guide 2.3) once the
    connection is authorized (`csp authorize`), and with the app's own token until then,
    which Partner Center accepts for customers and subscriptions.

    With ``keep_app_tokens`` (and a state folder), the apps' tokens and tenant discovery are
    kept between runs (`auth`); without, they last as long as this object.
    """

    def __init__(
        self,
        connection: Connection,
        context: ModuleContext,
        http: HttpClient,
        *,
        keep_app_tokens: bool = True,
    ) -> None:
        self.connection = connection
        login = (
            context.endpoints.url("login")
            if context.endpoints
            else "https://login.microsoftonline.com"
        )
        pc, gdap = connection.partner_center_app, connection.gdap_app
        state_dir = context.state_dir if keep_app_tokens else None
        http_cache = HttpCache(http_cache_file(state_dir, connection.name)) if state_dir else None
        self.delegated = (
            DelegatedTokens(
                connection, context.endpoints, http, context.state_dir, http_cache=http_cache
            )
            if context.endpoints is not None and context.state_dir is not None
            else None
        )
        self._authorized: bool | None = None
        #: Tenants whose consent to the GDAP app was refused in this run, with the refusal:
        #: asked once a run (by the consent check, or the first kind), not once a kind.
        self.consent_refusals: dict[str, ConsentMissing | ApplicationNotFound] = {}

        def token_cache(app: str) -> AppTokenCache | None:
            if state_dir is None:
                return None
            return AppTokenCache(app_cache_file(state_dir, connection.name, app), login=login)

        self.partner_center = AppTokens(
            client_id=str(pc.client_id),
            secret=pc.client_secret.resolve,
            authority=login,
            http=http,
            app_name=f"Partner Center app {pc.client_id} of connection {connection.name}",
            token_cache=token_cache("partner_center"),
            http_cache=http_cache,
        )
        self.gdap = AppTokens(
            client_id=str(gdap.client_id),
            secret=gdap.client_secret.resolve,
            authority=login,
            http=http,
            app_name=f"GDAP app {gdap.client_id} of connection {connection.name}",
            token_cache=token_cache("gdap"),
            http_cache=http_cache,
        )

    def partner_center_headers(self) -> Mapping[str, str]:
        """Headers for Partner Center in the partner tenant: delegated when authorized."""
        if self._authorized is None:
            self._authorized = bool(self.delegated and self.delegated.status().authorized)
        if self._authorized and self.delegated is not None:
            return self.delegated.headers(PARTNER_CENTER_RESOURCE)
        return self.partner_center.headers(str(self.connection.tenant_id), PARTNER_CENTER_RESOURCE)


class CspSession:
    """What one run of the module shares between its hook calls: clients and tokens.

    ``keep_app_tokens``: see `ConnectionClients`.
    """

    def __init__(self, context: ModuleContext, *, keep_app_tokens: bool = True) -> None:
        if context.http is None or context.endpoints is None:
            raise RuntimeError(
                "the Microsoft CSP module needs the host's HTTP client and endpoints"
            )
        self.http = context.http
        self.endpoints = context.endpoints
        settings: MicrosoftCspSettings = context.settings
        self.connections = {c.name: c for c in settings.connections}
        self._clients: dict[str, ConnectionClients] = {}
        self._context = context
        self._keep_app_tokens = keep_app_tokens

    @property
    def parallel_tenants(self) -> int:
        """How many tenants the run works on at once (`integrator.parallel_tenants`)."""
        return self._context.integrator.parallel_tenants

    def clients(self, connection: Connection) -> ConnectionClients:
        if connection.name not in self._clients:
            self._clients[connection.name] = ConnectionClients(
                connection, self._context, self.http, keep_app_tokens=self._keep_app_tokens
            )
        return self._clients[connection.name]

    def url(self, host: str, path: str) -> str:
        return f"{self.endpoints.url(host)}{path}"

    def end_run(self) -> None:
        """Forget what holds for one run only (the consent refusals): the next run asks again."""
        for clients in self._clients.values():
            clients.consent_refusals.clear()

    def connection_of(self, tenant: Tenant) -> Connection:
        connection = self.connections.get(tenant.connection or "")
        if connection is None:
            raise SkipTenant(
                f"tenant {tenant.tenant_id} came from connection {tenant.connection!r}, which is "
                "no longer in the config: its records are kept as they are"
            )
        return connection


_sessions: weakref.WeakKeyDictionary[HttpClient, CspSession] = weakref.WeakKeyDictionary()


def session(context: ModuleContext) -> CspSession:
    """The session of this run (one per HTTP client, which the host makes per engine)."""
    found = _sessions.get(context.http) if context.http is not None else None
    if found is None or found._context.settings is not context.settings:
        found = CspSession(context)
        _sessions[context.http] = found
    return found


@contextlib.contextmanager
def _explained(api: str, tenant: str, app: str) -> Iterator[None]:
    """Microsoft's refusals of the calls inside, as the guide explains them (`call_error`).

    A 401 or 403 may mean a token MSAL holds good no longer is (a login service that forgot
    it) or carries the permissions of before a change: the app's tokens for the tenant are
    dropped (`auth.forget_refused`), so the next call or run asks for new ones.
    """
    try:
        yield
    except HttpError as exc:
        if exc.status in (401, 403):
            forget_refused(tenant, app)
        raise call_error(exc, api=api, tenant=tenant, app=app) from None


# --- tenants -------------------------------------------------------------------------------


def fetch_tenants(context: ModuleContext) -> Iterator[Any]:
    csp = session(context)
    complete = True
    for connection in csp.connections.values():
        with structlog.contextvars.bound_contextvars(connection=connection.name):
            try:
                whole = yield from _tenants_of(csp, connection)
                complete = complete and whole
            except (HttpError, MicrosoftAuthError, ValueProblem) as exc:
                # This connection's tenants stay as stored; the other connections go on.
                complete = False
                yield RecordError(entity_id=None, reason=f"connection {connection.name}: {exc}")
    yield Checkpoint(bookmark=None, complete=complete)


def _tenants_of(csp: CspSession, connection: Connection) -> Generator[Any, None, bool]:
    """The connection's tenants, and the reasons of the records that could not be read;
    returns whether the listing was whole.

    A customer or relationship that cannot be read leaves its tenant as stored (not yielded
    with a part of what is known of it: without its customer record a tenant would lose its
    reseller relationship, so its subscriptions) and the listing not whole, so that no
    tenant is taken for gone from it."""
    clients = csp.clients(connection)
    partner = str(connection.tenant_id)
    resellers: dict[str, PartnerCenterCustomer] = {}
    unread: set[str] = set()
    whole = True
    if connection.relationship_mode is RelationshipMode.GDAP_AND_DAP:
        headers = clients.partner_center_headers()
        with _explained("partner_center", partner, clients.partner_center.app_name):
            pages = partner_center_pages(
                csp.http,
                csp.endpoints.url("partner_center"),
                "/v1/customers",
                params={"size": CUSTOMERS_PAGE},
                headers=headers,
            )
            for page in pages:
                for item in page.items:
                    customer = translate(item, PartnerCenterCustomer)
                    if isinstance(customer, RecordError):
                        whole = False
                        unread |= _tenant_of_unread(item, "companyProfile")
                        yield customer
                    else:
                        resellers[customer.company_profile.tenant_id.lower()] = customer

    relationships: dict[str, list[DelegatedAdminRelationship]] = {}
    headers = clients.partner_center.headers(partner, GRAPH_RESOURCE)
    with _explained("graph", partner, clients.partner_center.app_name):
        url = csp.url("graph", "/v1.0/tenantRelationships/delegatedAdminRelationships")
        for page in odata_pages(csp.http, url, headers=headers):
            for item in page.items:
                relationship = translate(item, DelegatedAdminRelationship)
                if isinstance(relationship, RecordError):
                    whole = False
                    unread |= _tenant_of_unread(item, "customer")
                    yield relationship
                else:
                    relationships.setdefault(relationship.customer.tenant_id.lower(), []).append(
                        relationship
                    )

    tenant_ids = sorted((set(relationships) | set(resellers)) - unread)
    refusals = _consent_checks(
        csp, connection, [t for t in tenant_ids if _active(relationships.get(t, []))]
    )
    for tenant_id in tenant_ids:
        yield _tenant(
            csp,
            connection,
            tenant_id,
            resellers.get(tenant_id),
            relationships.get(tenant_id, []),
            refusals.get(tenant_id),
        )
    return whole


def _tenant_of_unread(item: Any, holder: str) -> set[str]:
    """The tenant ID a record that could not be read names, if it names one."""
    found = item.get(holder) if isinstance(item, dict) else None
    tenant_id = found.get("tenantId") if isinstance(found, dict) else None
    return {tenant_id.lower()} if isinstance(tenant_id, str) else set()


def _active(relationships: list[DelegatedAdminRelationship]) -> list[DelegatedAdminRelationship]:
    return [r for r in relationships if r.status in ("active", "expiring")]


#: Consent checks at once per tenant synced at once (`integrator.parallel_tenants`).
CONSENT_CHECKS_PER_TENANT_SLOT = 8


def _consent_checks(
    csp: CspSession, connection: Connection, tenant_ids: list[str]
) -> dict[str, MicrosoftAuthError]:
    """Ask for the GDAP app's token in each tenant (whether its consent holds), as many at
    once as the run syncs tenants: one after another, they took two round trips a tenant
    before any tenant could start. The refusals, by tenant."""
    gdap = csp.clients(connection).gdap

    def check(tenant_id: str) -> MicrosoftAuthError | None:
        try:
            gdap.token(tenant_id, GRAPH_RESOURCE)
        except MicrosoftAuthError as exc:
            return exc
        return None

    if not tenant_ids:
        return {}
    # A token request is light for Entra ID, which limits it per tenant: more at once than
    # the tenants synced side by side, so that a cold start is not held up by them.
    workers = max(
        1, min(CONSENT_CHECKS_PER_TENANT_SLOT * csp.parallel_tenants, 64, len(tenant_ids))
    )
    with ThreadPoolExecutor(workers, thread_name_prefix="halo-consent") as pool:
        # Each check in this run's log context (the request log names the connection).
        outcomes = list(pool.map(lambda t: contextvars.copy_context().run(check, t), tenant_ids))
    refusals = {t: refusal for t, refusal in zip(tenant_ids, outcomes, strict=True) if refusal}
    csp.clients(connection).consent_refusals.update(
        (t, r) for t, r in refusals.items() if isinstance(r, ConsentMissing | ApplicationNotFound)
    )
    return refusals


def _tenant(
    csp: CspSession,
    connection: Connection,
    tenant_id: str,
    reseller: PartnerCenterCustomer | None,
    relationships: list[DelegatedAdminRelationship],
    refusal: MicrosoftAuthError | None,
) -> Tenant:
    """The tenant as the sync stores it; ``refusal``: why the GDAP app's token was refused
    in it, if it was (`_consent_checks`)."""
    active = _active(relationships)
    roles = {role.role_definition_id for r in active for role in r.access_details.unified_roles}
    details: list[str] = []
    if active:
        access = TenantAccess.RESELLER_AND_GDAP if reseller else TenantAccess.GDAP_ONLY
    elif relationships:
        access = TenantAccess.GDAP_EXPIRED
        statuses = sorted({r.status for r in relationships})
        details.append(
            f"the GDAP relationship is {' / '.join(statuses)}: users and devices cannot be read "
            "until a new relationship is approved"
        )
    else:
        access = TenantAccess.RESELLER_ONLY
        details.append("no GDAP relationship: licences and subscriptions only")
    if active and not roles & NEEDED_ROLES.keys():
        details.append(
            "the GDAP relationship grants none of the roles the modules need (one of "
            + ", ".join(NEEDED_ROLES.values())
            + "): add one to the relationship and to the AdminAgents group's access assignment"
        )
    if active and refusal is not None:
        exc = refusal
        if isinstance(exc, ConsentMissing | ApplicationNotFound):
            access = TenantAccess.CONSENT_MISSING
            url = consent_url(
                csp.endpoints,
                str(connection.gdap_app.client_id),
                tenant_id,
                DEFAULT_CONSENT_REDIRECT_URI,
                # Stable, so the tenant's record does not change on every sync; `csp consent`
                # makes a URL with a fresh state and waits for the answer.
                state=f"halo-consent-{tenant_id}",
            )
            details.append(
                f"consent needed: {exc} — grant it at {url} (or run `halo-integrator csp consent "
                f"{tenant_id}`, which waits for the answer and records it)"
            )
        else:
            details.append(f"token refused: {exc}")
    name = (
        reseller.company_profile.company_name
        if reseller
        else next(
            (r.customer.display_name for r in relationships if r.customer.display_name), tenant_id
        )
    )
    return Tenant(
        tenant_id=tenant_id,
        name=name,
        connection=connection.name,
        default_domain=reseller.company_profile.domain if reseller else None,
        access=access,
        access_detail="; ".join(details) or None,
        attributes={
            "reseller": reseller is not None,
            "gdapStatus": sorted({r.status for r in relationships}) or None,
            "gdapRelationships": sorted(r.id for r in relationships),
            "gdapRoles": sorted(ROLE_NAMES.get(role, role) for role in roles),
            "missingRoles": bool(active) and not roles & NEEDED_ROLES.keys(),
        },
    )


# --- licences and subscriptions ------------------------------------------------------------


def _import_type(connection: Connection, tenant: Tenant) -> LicenceImportType:
    """The connection's licence import type, unless the tenant's mapping overrides it."""
    override = _mapping_override(tenant, "licence_import_type")
    return LicenceImportType(override) if override else connection.licence_import_type


def _relationship(connection: Connection, tenant: Tenant) -> RelationshipMode:
    """The connection's relationship type, unless the tenant's mapping overrides it."""
    override = _mapping_override(tenant, "relationship_type")
    return RelationshipMode(override) if override else connection.relationship_mode


def _mapping_override(tenant: Tenant, key: str) -> str | None:
    return tenant.attributes.get("mapping", {}).get(key)


def fetch_licences(context: ModuleContext, tenant: Tenant) -> Iterator[Any]:
    csp = session(context)
    connection = csp.connection_of(tenant)
    if _import_type(connection, tenant) is LicenceImportType.SUBSCRIPTIONS:
        # "Your subscriptions": no SKUs; any stored before are marked inactive.
        yield Checkpoint(bookmark=None, complete=True)
        return
    headers = _customer_graph_headers(csp, connection, tenant)
    url = csp.url("graph", "/v1.0/subscribedSkus")
    with _explained("graph", tenant.tenant_id, csp.clients(connection).gdap.app_name):
        body = csp.http.json("GET", url, headers=headers)
    for item in body.get("value", []):
        sku = translate(
            item, SubscribedSku, entity_id=item.get("skuId") if isinstance(item, dict) else None
        )
        if isinstance(sku, RecordError):
            yield sku
            continue
        yield Licence(
            sku_id=sku.sku_id,
            sku_part_number=sku.sku_part_number,
            name=product_name(sku.sku_part_number),
            total_units=sku.prepaid_units.enabled,
            consumed_units=sku.consumed_units,
            suspended_units=sku.prepaid_units.suspended,
            warning_units=sku.prepaid_units.warning,
            capability_status=sku.capability_status,
            attributes={
                "appliesTo": sku.applies_to,
                "lockedOutUnits": sku.prepaid_units.locked_out,
            },
        )
    yield Checkpoint(bookmark=None, complete=True)


def _customer_graph_headers(
    csp: CspSession, connection: Connection, tenant: Tenant
) -> Mapping[str, str]:
    if tenant.access in (TenantAccess.RESELLER_ONLY, TenantAccess.GDAP_EXPIRED):
        raise SkipTenant(
            f"no active GDAP relationship with tenant {tenant.tenant_id}: its directory "
            "(licences, users, devices) cannot be read"
        )
    clients = csp.clients(connection)
    refusal = clients.consent_refusals.get(tenant.tenant_id.lower())
    if refusal is None:
        try:
            return clients.gdap.headers(tenant.tenant_id, GRAPH_RESOURCE)
        except (ConsentMissing, ApplicationNotFound) as exc:
            refusal = clients.consent_refusals[tenant.tenant_id.lower()] = exc
    raise SkipTenant(
        f"consent needed: {refusal} — the consent URL: `halo-integrator csp consent-url {tenant.tenant_id}`"
    )


def run_finished(context: ModuleContext) -> None:
    """The run is over: the session forgets its per-run refusals (`CspSession.end_run`)."""
    found = _sessions.get(context.http) if context.http is not None else None
    if found is not None:
        found.end_run()


def fetch_subscriptions(context: ModuleContext, tenant: Tenant) -> Iterator[Any]:
    csp = session(context)
    connection = csp.connection_of(tenant)
    if _import_type(connection, tenant) is LicenceImportType.SKUS:
        yield Checkpoint(bookmark=None, complete=True)
        return
    if _relationship(connection, tenant) is RelationshipMode.GDAP_ONLY:
        raise SkipTenant(
            f"tenant {tenant.tenant_id} is imported as GDAP only: subscriptions come from the "
            "reseller relationship, which this tenant's relationship type leaves out"
        )
    if not tenant.attributes.get("reseller"):
        raise SkipTenant(
            f"tenant {tenant.tenant_id} has no reseller relationship with the partner: its "
            "subscriptions are not the partner's to import (licence import type "
            f"{_import_type(connection, tenant).value} of connection {connection.name})"
        )
    clients = csp.clients(connection)
    headers = clients.partner_center_headers()
    path = f"/v1/customers/{tenant.tenant_id}/subscriptions"
    with _explained("partner_center", tenant.tenant_id, clients.partner_center.app_name):
        for page in partner_center_pages(
            csp.http, csp.endpoints.url("partner_center"), path, headers=headers
        ):
            for item in page.items:
                subscription = translate(item, PartnerCenterSubscription)
                if isinstance(subscription, RecordError):
                    yield subscription
                    continue
                yield _subscription(subscription)
    yield Checkpoint(bookmark=None, complete=True)


def _subscription(payload: PartnerCenterSubscription) -> Subscription:
    product_id, sku_id = None, None
    if payload.offer_id and payload.offer_id.count(":") == 2:
        product_id, sku_id, _ = payload.offer_id.split(":")
    return Subscription(
        subscription_id=payload.id,
        offer_id=payload.offer_id,
        name=payload.friendly_name or payload.offer_name or payload.id,
        quantity=payload.quantity,
        unit_type=payload.unit_type,
        status=payload.status,
        # Term and billing cycle are Partner Center's own words, never date arithmetic.
        billing_cycle=payload.billing_cycle,
        term_duration=payload.term_duration,
        auto_renew=payload.auto_renew_enabled,
        created_at=payload.creation_date,
        effective_start=payload.effective_start_date,
        commitment_end=payload.commitment_end_date,
        attributes={
            "offerName": payload.offer_name,
            "productId": product_id,
            "skuId": sku_id,
            "billingType": payload.billing_type,
            "orderId": payload.order_id,
        },
    )
