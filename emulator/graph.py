"""Microsoft Graph v1.0, under ``/graph`` (standing for ``https://graph.microsoft.com``).

What an MSP integrator reads from Graph, served from the `World` for the tenant of the
caller's token, following Microsoft's documented samples field for field:

| route (after ``/graph/v1.0``) | doc page (microsoftgraph/microsoft-graph-docs-contrib) |
|---|---|
| ``/tenantRelationships/delegatedAdminRelationships`` | api/tenantrelationship-list-delegatedadminrelationships.md |
| ``/tenantRelationships/delegatedAdminRelationships/{id}/accessAssignments`` | api/delegatedadminrelationship-list-accessassignments.md |
| ``/users``, ``/users/{id or userPrincipalName}`` | api/user-list.md, api/user-get.md |
| ``/users/delta`` | api/user-delta.md, concepts/delta-query-overview.md |
| ``/users/{id}/assignLicense`` | api/user-assignlicense.md |
| ``/subscribedSkus`` | api/subscribedsku-list.md |
| ``/groups``, ``/groups/{id}``, ``/groups/delta`` | api/group-list.md, api/group-get.md, api/group-delta.md |
| ``/groups/{id}/transitiveMembers[/microsoft.graph.user]`` | api/group-list-transitivemembers.md |
| ``/deviceManagement/managedDevices[/{id}]`` | api/intune-devices-manageddevice-list.md |
| ``/users/{id or userPrincipalName}/managedDevices`` | api/intune-devices-manageddevice-list.md (its older revisions list ``GET /users/{usersId}/managedDevices``) |
| ``/organization`` | api/organization-list.md |

``@odata.context`` keeps Graph's own host, as Graph writes it; ``@odata.nextLink`` and
``@odata.deltaLink`` point at this emulator so that clients follow them here. Page and delta
tokens are opaque to clients but stateless here: base64url JSON naming the tenant, the
collection, the position (the last id served: pages are keyset-ordered by id, so following a
link never skips or repeats an object that stays put) and, for delta, the tenant's
``delta_epoch``, the change-log sequence number and the ``$select``.

Choices where the docs are silent or disagree are noted at the constants below and in the
``note`` of each sample under ``tests/data/microsoft_docs/graph/``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Request, Response

from . import app
from . import world as world_module
from .app import Emulator, Token, graph_error, json_response
from .world import EPOCH, Customer, Device, Group, Partner, User

ROOT = "https://graph.microsoft.com/v1.0"
METADATA = ROOT + "/$metadata#"
#: Never signed in, as signInActivity reports it (user-list.md, example "signInActivity").
NEVER = "0001-01-01T00:00:00Z"

#: Default and maximum page sizes: users and groups 100/999 (group-list.md; the 1..999 error
#: text is Graph's own, "Invalid page size specified: '1000'. Must be between 1 and 999
#: inclusive."); 120 with signInActivity selected (user-list.md: larger $top is capped, not
#: refused); GDAP 300 max (the list pages: "$top supports up to 300 objects"; the default is
#: not documented, 100 chosen); Intune 1000 (a Microsoft reply in
#: microsoftgraph/powershell-intune-samples#2: "a default limit of 1000 items").
DIRECTORY_PAGE = (100, 999)
SIGN_IN_PAGE_MAX = 120
GDAP_PAGE = (100, 300)
DEVICE_PAGE = 1000
#: Objects per delta page: not documented; a Graph engineer mentions pages of 200 users
#: (microsoftgraph/microsoft-graph-docs#5566).
DELTA_PAGE = 200
#: Scoping filters of a delta query: "There is a limit of 50 filtered objects" (user-delta.md).
DELTA_FILTER_MAX = 50

_NAMESPACE = uuid.UUID("6f1c1b8e-5b0e-4d5c-9a53-1d2f7c8e0a11")
_LINK_SAFE = "$,()'=:/@*"


# -- errors ------------------------------------------------------------------------------------


class GraphFailure(Exception):
    """A request Graph refuses; carries the answer in Graph's error shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.response = graph_error(status, code, message, headers)


def _guarded(handler: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(handler)
    def run(emu: Emulator, request: Request, **values: Any) -> Response:
        try:
            return handler(emu, request, **values)
        except GraphFailure as failure:
            return failure.response

    return run


def _denied() -> GraphFailure:
    return GraphFailure(
        403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
    )


def _not_found(key: str) -> GraphFailure:
    return GraphFailure(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def _expired_page_token() -> GraphFailure:
    return GraphFailure(
        400,
        "Directory_ExpiredPageToken",
        "The specified page token value has expired and can no longer be included in your request.",
    )


# -- permissions and tenants ------------------------------------------------------------------

READ_USERS = (
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
READ_GROUPS = (
    "GroupMember.Read.All",
    "Group.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
READ_SKUS = (
    "LicenseAssignment.Read.All",
    "LicenseAssignment.ReadWrite.All",
    "Organization.Read.All",
    "Organization.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
ASSIGN_LICENSES = (
    "LicenseAssignment.ReadWrite.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
)
READ_DEVICES = (
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
)
READ_ORGANIZATION = (
    "Organization.Read.All",
    "Organization.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
READ_GDAP = ("DelegatedAdminRelationship.Read.All", "DelegatedAdminRelationship.ReadWrite.All")
AUDIT_LOG = "AuditLog.Read.All"


def _granted(token: Token) -> set[str] | None:
    """The permissions a token carries; None for a delegated ``.default`` token (all consented)."""
    if token.app_only:
        return set(token.roles)
    scopes = {scope.rsplit("/", 1)[-1] for scope in token.scopes}
    if ".default" in scopes and not token.roles:
        return None
    return scopes | set(token.roles)


def _require(token: Token, allowed: Iterable[str]) -> None:
    granted = _granted(token)
    if granted is not None and not granted.intersection(allowed):
        raise _denied()


def _has(token: Token, permission: str) -> bool:
    granted = _granted(token)
    return granted is None or permission in granted


def _customer(emu: Emulator, request: Request, allowed: Iterable[str]) -> tuple[Token, Customer]:
    """The caller's token and the customer directory it is for."""
    token = emu.authorize(request, app.GRAPH)
    _require(token, allowed)
    customer = emu.world.customers.get(token.tenant)
    if customer is None:
        if token.tenant in emu.world.partners:
            # The emulator models no directory for partner tenants.
            raise _denied()
        raise GraphFailure(401, "InvalidAuthenticationToken", "Access token validation failure.")
    return token, customer


# -- query options ------------------------------------------------------------------------------

_OPTIONS = (
    "select",
    "filter",
    "top",
    "skip",
    "skiptoken",
    "deltatoken",
    "expand",
    "orderby",
    "count",
    "search",
)


def _options(request: Request) -> dict[str, str]:
    """System query options, keyed ``$name`` in lower case (Graph takes them with or without ``$``)."""
    options: dict[str, str] = {}
    for key, value in request.args.items():
        name = key.lower().lstrip("$")
        if name in _OPTIONS:
            options["$" + name] = value
    return options


def _top(options: dict[str, str], bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    raw = options.get("$top")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= maximum:
        if maximum == DIRECTORY_PAGE[1]:
            raise GraphFailure(
                400,
                "Request_UnsupportedQuery",
                f"Invalid page size specified: '{raw}'. Must be between 1 and {maximum} inclusive.",
            )
        raise GraphFailure(
            400,
            "BadRequest",
            f"The $top query parameter must be between 1 and {maximum}; '{raw}' was given.",
        )
    return value


class _Property:
    """Lookup of a resource's property names, case-insensitively, to their getters."""

    def __init__(self, type_name: str, getters: dict[str, Callable[..., Any]]):
        self.type_name = type_name
        self.getters = getters
        self.by_lower = {name.lower(): name for name in getters}


def _select(
    options: dict[str, str],
    properties: _Property,
    default: tuple[str, ...],
    *,
    extra: tuple[str, ...] = (),
    not_in_collections: frozenset[str] = frozenset(),
) -> tuple[list[str], bool]:
    """The properties to return, and whether ``$select`` chose them."""
    raw = options.get("$select")
    if not raw:
        return list(default), False
    chosen: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if name.lower() in not_in_collections:
            raise GraphFailure(501, "NotImplemented", "This operation target is not yet supported.")
        canonical = properties.by_lower.get(name.lower()) or next(
            (e for e in extra if e.lower() == name.lower()), None
        )
        if canonical is None:
            raise GraphFailure(
                400,
                "Request_BadRequest",
                f"Could not find a property named '{name}' on type '{properties.type_name}'.",
            )
        if canonical not in chosen:
            chosen.append(canonical)
    return chosen, True


def _context(
    collection: str, selected: list[str] | None, *, entity: bool = False, prefix: str = METADATA
) -> str:
    context = prefix + collection
    if selected:
        context += "(" + ",".join(selected) + ")"
    return context + ("/$entity" if entity else "")


#: ``prop eq literal`` and ``prop in (literal, ...)`` clauses joined by ``and`` (what the
#: collections here support; user.md and group.md list ``in`` for id and most string keys).
_LITERAL = r"'(?:[^']|'')*'|true|false|null|[0-9A-Za-z.-]+"
_CLAUSE = re.compile(rf"\s*([A-Za-z][\w/]*)\s+eq\s+({_LITERAL})\s*", re.IGNORECASE)
_IN_CLAUSE = re.compile(
    rf"\s*([A-Za-z][\w/]*)\s+in\s+\(\s*((?:{_LITERAL})(?:\s*,\s*(?:{_LITERAL}))*)\s*\)\s*",
    re.IGNORECASE,
)
_LITERALS = re.compile(_LITERAL, re.IGNORECASE)
_AND = re.compile(r"and\b", re.IGNORECASE)
#: "Too many child clauses specified in search filter expression containing 'OR' operators:
#: 16. Max allowed: 15." is the live answer to an ``in`` list of 16 values without advanced
#: queries (microsoftgraph/microsoft-graph-docs#21098; the docs name no limit).
IN_VALUES_MAX = 15


class _AnyOf(tuple):
    """The values of an ``in (...)`` clause."""


def _literal(text: str) -> Any:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def _parse_filter(text: str, resource: str) -> list[tuple[str, Any]]:
    """``(name, value)`` per clause; an ``in`` clause's value is an `_AnyOf`."""
    clauses: list[tuple[str, Any]] = []
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        value: Any
        if match is not None:
            value = _literal(match.group(2))
        else:
            match = _IN_CLAUSE.match(text, position)
            if match is None:
                word = text[position:].strip().split("(")[0].split(" ")[0] or text
                raise GraphFailure(
                    400,
                    "Request_UnsupportedQuery",
                    f"Unsupported or invalid query filter clause specified for property '{word}' of resource '{resource}'.",
                )
            value = _AnyOf(_literal(v) for v in _LITERALS.findall(match.group(2)))
            if len(value) > IN_VALUES_MAX:
                raise GraphFailure(
                    400,
                    "Request_UnsupportedQuery",
                    "Too many child clauses specified in search filter expression containing "
                    f"'OR' operators: {len(value)}. Max allowed: {IN_VALUES_MAX}.",
                )
        clauses.append((match.group(1), value))
        position = match.end()
        if position >= len(text):
            return clauses
        following = _AND.match(text, position)
        if following is None:
            raise GraphFailure(
                400,
                "BadRequest",
                f"Invalid filter clause: syntax error at position {position} in '{text}'.",
            )
        position = following.end()


def _folded(value: Any) -> Any:
    """A filter value compared case-insensitively, as the directory compares strings."""
    if isinstance(value, _AnyOf):
        return frozenset(_folded(v) for v in value)
    return value.lower() if isinstance(value, str) else value


def _satisfies(actual: Any, expected: Any) -> bool:
    """Whether a property value meets a folded ``eq`` or ``in`` value."""
    actual = actual.lower() if isinstance(actual, str) else actual
    if isinstance(expected, frozenset):
        return actual in expected
    return actual == expected


def _predicate(
    options: dict[str, str],
    properties: _Property,
    filterable: frozenset[str],
    resource: str,
    context: Any = None,
) -> Callable[[Any], bool]:
    """A test for ``$filter`` (``eq`` clauses joined by ``and``; strings compare case-insensitively)."""
    text = options.get("$filter")
    if not text:
        return lambda obj: True
    tests: list[tuple[Callable[..., Any], Any]] = []
    for name, value in _parse_filter(text, resource):
        canonical = properties.by_lower.get(name.lower())
        if canonical is None or canonical not in filterable:
            raise GraphFailure(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause specified for property '{name}' of resource '{resource}'.",
            )
        tests.append((properties.getters[canonical], _folded(value)))

    def matches(obj: Any) -> bool:
        return all(_satisfies(getter(obj, context), expected) for getter, expected in tests)

    return matches


# -- opaque tokens and links ---------------------------------------------------------------------


def _encode(state: dict[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _link(emu: Emulator, path: str, params: Iterable[tuple[str, str]]) -> str:
    query = "&".join(f"{key}={quote(value, safe=_LINK_SAFE)}" for key, value in params)
    return emu.url("graph", f"/v1.0{path}" + (f"?{query}" if query else ""))


def _next_link(emu: Emulator, path: str, options: dict[str, str], state: dict[str, Any]) -> str:
    params = [(k, v) for k, v in options.items() if k != "$skiptoken"]
    return _link(emu, path, [*params, ("$skiptoken", _encode(state))])


def _page_after(options: dict[str, str], collection: str, tenant: str) -> str | None:
    raw = options.get("$skiptoken")
    if raw is None:
        return None
    state = _decode(raw)
    if (
        state is None
        or state.get("c") != collection
        or state.get("t") != tenant
        or not isinstance(state.get("a"), str)
    ):
        raise _expired_page_token()
    return state["a"]


def _collection(
    emu: Emulator,
    path: str,
    options: dict[str, str],
    *,
    context: str,
    collection: str,
    tenant: str,
    ids: list[str],
    accept: Callable[[str], Any],
    render: Callable[[Any], dict[str, Any]],
    size: int,
    count: Callable[[], int] | None = None,
) -> Response:
    """One page of a keyset-paged collection (ids sorted), with ``@odata.nextLink`` if more."""
    after = _page_after(options, collection, tenant)
    start = bisect_right(ids, after) if after is not None else 0
    page: list[Any] = []
    more = False
    for index in range(start, len(ids)):
        obj = accept(ids[index])
        if obj is None:
            continue
        if len(page) == size:
            more = True
            break
        page.append(obj)
    body: dict[str, Any] = {"@odata.context": context}
    if count is not None and after is None:
        body["@odata.count"] = count()
    if more:
        body["@odata.nextLink"] = _next_link(
            emu, path, options, {"c": collection, "t": tenant, "a": _id_of(page[-1])}
        )
    body["value"] = [render(obj) for obj in page]
    return json_response(body)


def _id_of(obj: Any) -> str:
    return obj["id"] if isinstance(obj, dict) else obj.id


# -- indexes (cached per collection, rebuilt when it changes) ------------------------------------


def _sorted_ids(emu: Emulator, tenant: str, name: str, items: dict[str, Any]) -> list[str]:
    """The ids of ``items`` in order. Call under ``world.lock``.

    Objects are only ever appended to a collection (users and groups are marked removed, not
    dropped) or, for devices, added at the end and deleted; the (size, newest key) pair
    changes with every such change, so it keys the cache.
    """
    cache: dict[tuple[str, str], tuple[Any, list[str]]] = emu.state.setdefault("graph.sorted", {})
    key = (len(items), next(reversed(items), None))
    entry = cache.get((tenant, name))
    if entry is not None and entry[0] == key:
        return entry[1]
    ids = sorted(items)
    cache[(tenant, name)] = (key, ids)
    return ids


def _change_mark(customer: Customer) -> tuple[int, int]:
    return (len(customer.changes), customer.changes[-1][0] if customer.changes else 0)


def _find_user(emu: Emulator, customer: Customer, key: str) -> User:
    """A live user by id or userPrincipalName (case-insensitive). Call under ``world.lock``."""
    user = customer.users.get(key) or customer.users.get(key.lower())
    if user is None and "@" in key:
        cache: dict[str, tuple[Any, dict[str, str]]] = emu.state.setdefault("graph.upn", {})
        mark = (len(customer.users), next(reversed(customer.users), None), _change_mark(customer))
        entry = cache.get(customer.tenant_id)
        if entry is None or entry[0] != mark:
            entry = (mark, {u.userPrincipalName.lower(): u.id for u in customer.users.values()})
            cache[customer.tenant_id] = entry
        user_id = entry[1].get(key.lower())
        user = customer.users.get(user_id) if user_id else None
    if user is None or user.removed is not None:
        raise _not_found(key)
    return user


# -- stable derived values -------------------------------------------------------------------------


def _stamp(value: datetime | None) -> str | None:
    """`app.iso`, faster (a page of 999 users formats thousands of timestamps)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"


def _stable_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def _stable_uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def _days_before(moment: datetime, span: int, *parts: str) -> datetime:
    return moment - timedelta(
        days=_stable_int(*parts) % span, seconds=_stable_int("s", *parts) % 86400
    )


def _sid(object_id: str) -> str:
    """The ``S-1-12-1-…`` security identifier Entra ID derives from an object id."""
    raw = uuid.UUID(object_id).bytes_le
    parts = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]
    return "S-1-12-1-" + "-".join(str(p) for p in parts)


# -- licences: service plans of the SKUs the world sells ------------------------------------------

#: (servicePlanId, servicePlanName, appliesTo) of each SKU, from the world's one table.
SERVICE_PLANS: dict[str, tuple[tuple[str, str, str], ...]] = {
    part: tuple((plan.id, plan.name, plan.applies_to) for plan in plans)
    for part, plans in world_module.SERVICE_PLANS.items()
}


def _plans(customer: Customer, sku_id: str) -> tuple[tuple[str, str, str], ...]:
    sku = customer.skus.get(sku_id)
    return SERVICE_PLANS.get(sku.skuPartNumber, ()) if sku else ()


def _service_name(plan_name: str) -> str:
    for prefix, service in (
        ("EXCHANGE", "exchange"),
        ("SHAREPOINT", "SharePoint"),
        ("TEAMS", "TeamspaceAPI"),
        ("INTUNE", "SCO"),
        ("AAD", "AADPremiumService"),
        ("MFA", "MultiFactorService"),
        ("FLOW", "ProcessSimple"),
    ):
        if plan_name.startswith(prefix):
            return service
    return "MicrosoftOffice"


def _assigned_plans(user: User, customer: Customer) -> list[dict[str, Any]]:
    plans = []
    for licence in user.assignedLicenses:
        disabled = set(licence.get("disabledPlans") or ())
        for plan_id, name, applies in _plans(customer, licence["skuId"]):
            if applies == "User":
                plans.append(
                    {
                        "assignedDateTime": _stamp(user.createdDateTime),
                        "capabilityStatus": "Deleted" if plan_id in disabled else "Enabled",
                        "service": _service_name(name),
                        "servicePlanId": plan_id,
                    }
                )
    return plans


# -- users -------------------------------------------------------------------------------------------

USER_DEFAULT = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
#: "Certain properties cannot be returned within a user collection" (user-list.md): 501 there.
USER_SINGLE_ONLY_NAMES = (
    "aboutMe",
    "birthday",
    "hireDate",
    "interests",
    "mySite",
    "pastProjects",
    "preferredName",
    "responsibilities",
    "schools",
    "skills",
    "mailboxSettings",
)
USER_SINGLE_ONLY = frozenset(name.lower() for name in USER_SINGLE_ONLY_NAMES)


def _none(obj: Any, ctx: Any) -> None:
    return None


def _empty(obj: Any, ctx: Any) -> list[Any]:
    return []


_none.constant = None  # type: ignore[attr-defined]


def _attr(name: str) -> Callable[[Any, Any], Any]:
    """A getter of a plain attribute (the renderer reads these in bulk with ``attrgetter``)."""
    get = lambda obj, ctx: getattr(obj, name)  # noqa: E731
    get.attribute = name  # type: ignore[attr-defined]
    return get


def _is_guest(user: User) -> bool:
    return user.userType == "Guest"


def _licence_states(user: User, customer: Customer) -> list[dict[str, Any]]:
    return [
        {
            "assignedByGroup": None,
            "disabledPlans": list(licence.get("disabledPlans") or ()),
            "error": "None",
            "lastUpdatedDateTime": _stamp(user.createdDateTime),
            "skuId": licence["skuId"],
            "state": "Active",
        }
        for licence in user.assignedLicenses
    ]


USER = _Property(
    "Microsoft.DirectoryServices.User",
    {
        "id": _attr("id"),
        "accountEnabled": _attr("accountEnabled"),
        "ageGroup": _none,
        "assignedLicenses": lambda u, c: [
            {"disabledPlans": list(a.get("disabledPlans") or ()), "skuId": a["skuId"]}
            for a in u.assignedLicenses
        ],
        "assignedPlans": _assigned_plans,
        "businessPhones": _attr("businessPhones"),
        "city": _none,
        "companyName": _none,
        "consentProvidedForMinor": _none,
        "country": _none,
        "createdDateTime": lambda u, c: _stamp(u.createdDateTime),
        "creationType": lambda u, c: "Invitation" if _is_guest(u) else None,
        "deletedDateTime": _none,
        "department": _attr("department"),
        "displayName": _attr("displayName"),
        "employeeHireDate": _none,
        "employeeId": _attr("employeeId"),
        "employeeOrgData": _none,
        "employeeType": _none,
        "externalUserState": lambda u, c: "Accepted" if _is_guest(u) else None,
        "externalUserStateChangeDateTime": lambda u, c: (
            _stamp(u.createdDateTime) if _is_guest(u) else None
        ),
        "faxNumber": _none,
        "givenName": _attr("givenName"),
        "identities": lambda u, c: [
            {
                "signInType": "userPrincipalName",
                "issuer": c.domain,
                "issuerAssignedId": u.userPrincipalName,
            }
        ],
        "imAddresses": _empty,
        "isResourceAccount": _none,
        "jobTitle": _attr("jobTitle"),
        "lastPasswordChangeDateTime": lambda u, c: _stamp(u.createdDateTime),
        "legalAgeGroupClassification": _none,
        "licenseAssignmentStates": _licence_states,
        "mail": _attr("mail"),
        "mailNickname": lambda u, c: u.userPrincipalName.split("@", 1)[0],
        "mobilePhone": _attr("mobilePhone"),
        "officeLocation": _attr("officeLocation"),
        "onPremisesDistinguishedName": _none,
        "onPremisesDomainName": _none,
        "onPremisesExtensionAttributes": lambda u, c: {
            f"extensionAttribute{i}": None for i in range(1, 16)
        },
        "onPremisesImmutableId": _none,
        "onPremisesLastSyncDateTime": _none,
        "onPremisesProvisioningErrors": _empty,
        "onPremisesSamAccountName": _none,
        "onPremisesSecurityIdentifier": _none,
        "onPremisesSyncEnabled": _none,
        "onPremisesUserPrincipalName": _none,
        "otherMails": _empty,
        "passwordPolicies": _none,
        "passwordProfile": _none,
        "postalCode": _none,
        "preferredDataLocation": _none,
        "preferredLanguage": _none,
        "provisionedPlans": _empty,
        "proxyAddresses": lambda u, c: [f"SMTP:{u.mail}"] if u.mail else [],
        "securityIdentifier": lambda u, c: _sid(u.id),
        "showInAddressList": _none,
        "signInActivity": lambda u, c: _sign_in_activity(u),
        "signInSessionsValidFromDateTime": lambda u, c: _stamp(u.createdDateTime),
        "state": _none,
        "streetAddress": _none,
        "surname": _attr("surname"),
        "usageLocation": _attr("usageLocation"),
        "userPrincipalName": _attr("userPrincipalName"),
        "userType": _attr("userType"),
        **{name: _none for name in USER_SINGLE_ONLY_NAMES},
    },
)
USER_FILTERABLE = frozenset(
    (
        "id",
        "userPrincipalName",
        "mail",
        "displayName",
        "givenName",
        "surname",
        "userType",
        "accountEnabled",
        "department",
        "jobTitle",
        "usageLocation",
        "employeeId",
        "officeLocation",
        "mobilePhone",
        "mailNickname",
        "creationType",
        "externalUserState",
    )
)


def _sign_in_activity(user: User) -> dict[str, Any]:
    """signInActivity as v1.0 has it; never signed in = ``0001-01-01T00:00:00Z`` and ``""``."""
    when = user.lastSignInDateTime
    if when is None:
        return {
            "lastSignInDateTime": NEVER,
            "lastSignInRequestId": "",
            "lastNonInteractiveSignInDateTime": NEVER,
            "lastNonInteractiveSignInRequestId": "",
            "lastSuccessfulSignInDateTime": NEVER,
            "lastSuccessfulSignInRequestId": "",
        }
    interactive = _stamp(when)
    background = when + timedelta(minutes=_stable_int(user.id, "noninteractive") % 600)
    return {
        "lastSignInDateTime": interactive,
        "lastSignInRequestId": _stable_uuid(user.id, interactive),
        "lastNonInteractiveSignInDateTime": _stamp(background),
        "lastNonInteractiveSignInRequestId": _stable_uuid(user.id, _stamp(background) or ""),
        "lastSuccessfulSignInDateTime": interactive,
        "lastSuccessfulSignInRequestId": _stable_uuid(user.id, interactive),
    }


def _check_sign_in(emu: Emulator, token: Token, customer: Customer) -> None:
    """signInActivity needs AuditLog.Read.All and an Entra ID P1/P2 tenant (user-list.md).

    The answers are the live service's (microsoft-graph-explorer-v4#2731 for the permission,
    microsoft-graph-docs#12772 for the licence). Tenants listed in
    ``emulator.state["graph.non_premium_tenants"]`` have no P1/P2.
    """
    if not _has(token, AUDIT_LOG):
        raise GraphFailure(
            403,
            "Authentication_MSGraphPermissionMissing",
            "Calling principal does not have required MSGraph permissions AuditLog.Read.All",
        )
    if customer.tenant_id in emu.state.get("graph.non_premium_tenants", ()):
        raise GraphFailure(
            403,
            "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
            "Neither tenant is B2C or tenant doesn't have premium license",
        )


_RENDERERS: dict[tuple[int, tuple[str, ...]], Callable[[Any, Any], dict[str, Any]]] = {}


def _renderer(properties: Iterable[str], table: _Property) -> Callable[[Any, Any], dict[str, Any]]:
    """A function rendering the chosen properties of an object, compiled once per choice.

    Pages of 999 users must serialize in milliseconds: constants come from a template dict,
    plain attributes from one ``attrgetter`` call, and only derived values call a getter.
    """
    key = (id(table), tuple(properties))
    render = _RENDERERS.get(key)
    if render is not None:
        return render
    names = list(key[1])
    if "id" not in names:
        names.append("id")  # "The id property is always returned" (user-delta.md)
    getters = {name: table.getters[name] if name != "id" else _attr("id") for name in names}
    template = {name: getattr(getters[name], "constant", None) for name in names}
    plain = [name for name in names if hasattr(getters[name], "attribute")]
    derived = [
        (name, getters[name])
        for name in names
        if not hasattr(getters[name], "attribute") and not hasattr(getters[name], "constant")
    ]
    fetch = attrgetter(*(getters[name].attribute for name in plain)) if plain else None  # type: ignore[attr-defined]

    def render(obj: Any, ctx: Any) -> dict[str, Any]:
        body = template.copy()
        if fetch is not None:
            values = fetch(obj)
            if len(plain) == 1:
                body[plain[0]] = values
            else:
                body.update(zip(plain, values, strict=True))
        for name, getter in derived:
            body[name] = getter(obj, ctx)
        return body

    _RENDERERS[key] = render
    return render


def _render(obj: Any, properties: list[str], table: _Property, ctx: Any) -> dict[str, Any]:
    return _renderer(properties, table)(obj, ctx)


def list_users(emu: Emulator, request: Request) -> Response:
    token, customer = _customer(emu, request, READ_USERS)
    options = _options(request)
    if "$skip" in options:
        raise GraphFailure(400, "Request_BadRequest", "'$skip' is not supported by the service.")
    selected, chose = _select(options, USER, USER_DEFAULT, not_in_collections=USER_SINGLE_ONLY)
    size = _top(options, DIRECTORY_PAGE)
    if "signInActivity" in selected:
        _check_sign_in(emu, token, customer)
        size = min(size, SIGN_IN_PAGE_MAX)
    matches = _predicate(options, USER, USER_FILTERABLE, "User", customer)
    count = _counter(request, options)
    with emu.world.lock:
        users = customer.users

        def accept(user_id: str) -> User | None:
            user = users[user_id]
            return user if user.removed is None and matches(user) else None

        return _collection(
            emu,
            "/users",
            options,
            context=_context("users", selected if chose else None),
            collection="users",
            tenant=customer.tenant_id,
            ids=_sorted_ids(emu, customer.tenant_id, "users", users),
            accept=accept,
            render=functools.partial(_renderer(selected, USER), ctx=customer),
            size=size,
            count=(lambda: sum(1 for u in users.values() if u.removed is None and matches(u)))
            if count
            else None,
        )


def _counter(request: Request, options: dict[str, str]) -> bool:
    """Whether ``$count=true`` was asked for; it needs ``ConsistencyLevel: eventual`` (aad-advanced-queries.md)."""
    if options.get("$count", "").lower() != "true":
        return False
    if request.headers.get("ConsistencyLevel", "").lower() != "eventual":
        raise GraphFailure(400, "Request_BadRequest", "$count is not currently supported.")
    return True


def get_user(emu: Emulator, request: Request, user_key: str) -> Response:
    token, customer = _customer(emu, request, READ_USERS)
    options = _options(request)
    selected, chose = _select(options, USER, USER_DEFAULT)
    if "signInActivity" in selected:
        _check_sign_in(emu, token, customer)
    with emu.world.lock:
        user = _find_user(emu, customer, user_key)
        body = {"@odata.context": _context("users", selected if chose else None, entity=True)}
        body.update(_render(user, selected, USER, customer))
    return json_response(body)


# -- assignLicense ---------------------------------------------------------------------------------

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: What assignLicense answers with: the default user properties plus those of the doc's sample
#: (user-assignlicense.md shows accountEnabled, assignedLicenses, assignedPlans, city, companyName).
ASSIGN_LICENSE_RESULT = (
    *USER_DEFAULT[:-1],
    "accountEnabled",
    "assignedLicenses",
    "assignedPlans",
    "city",
    "companyName",
    "id",
)


def _guid(value: Any) -> str:
    if not isinstance(value, str) or not _GUID.match(value):
        raise GraphFailure(
            400,
            "Request_BadRequest",
            "Cannot convert a primitive value to the expected type 'Edm.Guid'. See the inner exception for more details",
        )
    return value.lower()


def assign_license(emu: Emulator, request: Request, user_key: str) -> Response:
    """Add and remove licences (user-assignlicense.md); errors as the live service words them."""
    _token, customer = _customer(emu, request, ASSIGN_LICENSES)
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise GraphFailure(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    missing = [name for name in ("addLicenses", "removeLicenses") if body.get(name) is None]
    if missing:
        raise GraphFailure(
            400,
            "Request_BadRequest",
            "One or more parameters of the operation 'assignLicense' are missing from the request payload. "
            f"The missing parameters are: {', '.join(missing)}.",
        )
    add, remove = body["addLicenses"], body["removeLicenses"]
    if (
        not isinstance(add, list)
        or not isinstance(remove, list)
        or not all(isinstance(a, dict) for a in add)
    ):
        raise GraphFailure(
            400, "Request_BadRequest", "Invalid request payload for the operation 'assignLicense'."
        )
    additions = [
        (_guid(a.get("skuId")), [_guid(p) for p in a.get("disabledPlans") or ()]) for a in add
    ]
    removals = [_guid(r) for r in remove]
    world = emu.world
    with world.lock:
        user = _find_user(emu, customer, user_key)
        for sku_id in [s for s, _ in additions] + removals:
            if sku_id not in customer.skus:
                raise GraphFailure(
                    400,
                    "Request_BadRequest",
                    f"License {sku_id} does not correspond to a valid company License.",
                )
        held = {a["skuId"].lower(): a for a in user.assignedLicenses}
        for sku_id in removals:
            if sku_id not in held:
                raise GraphFailure(
                    400, "Request_BadRequest", "User does not have a corresponding license."
                )
        if additions and not user.usageLocation:
            raise GraphFailure(
                400,
                "Request_BadRequest",
                "License assignment cannot be done for user with invalid usage location.",
            )
        consumed = _consumed(customer)
        for sku_id, _ in additions:
            sku = customer.skus[sku_id]
            if sku_id not in held and consumed.get(sku_id, 0) >= sku.enabled + sku.warning:
                raise GraphFailure(
                    400,
                    "Request_BadRequest",
                    f"Subscription with SKU {sku_id} does not have any available licenses.",
                )
        licences = [a for a in user.assignedLicenses if a["skuId"].lower() not in removals]
        for sku_id, disabled in additions:
            existing = next((a for a in licences if a["skuId"].lower() == sku_id), None)
            if existing is not None:
                licences[licences.index(existing)] = {"disabledPlans": disabled, "skuId": sku_id}
            else:
                licences.append({"disabledPlans": disabled, "skuId": sku_id})
        user = world.modify_user(customer.tenant_id, user.id, assignedLicenses=licences)
        answer = {"@odata.context": _context("users", None, entity=True)}
        answer.update(_render(user, list(ASSIGN_LICENSE_RESULT), USER, customer))
    return json_response(answer)


def _consumed(customer: Customer) -> dict[str, int]:
    """Assigned units per SKU, as `Customer.consumed` counts them, in one pass over the users."""
    counts: dict[str, int] = {}
    for user in customer.users.values():
        if user.removed is None:
            for sku_id in {a["skuId"].lower() for a in user.assignedLicenses}:
                counts[sku_id] = counts.get(sku_id, 0) + 1
    return counts


# -- subscribedSkus ------------------------------------------------------------------------------------

SKU_FIELDS = (
    "accountName",
    "accountId",
    "appliesTo",
    "capabilityStatus",
    "consumedUnits",
    "id",
    "prepaidUnits",
    "servicePlans",
    "skuId",
    "skuPartNumber",
    "subscriptionIds",
)
SKU = _Property("microsoft.graph.subscribedSku", {name: _none for name in SKU_FIELDS})


def subscribed_skus(emu: Emulator, request: Request) -> Response:
    _token, customer = _customer(emu, request, READ_SKUS)
    options = _options(request)
    if "$filter" in options:  # "It does not support $filter." (subscribedsku-list.md)
        raise GraphFailure(
            400,
            "Request_UnsupportedQuery",
            "Unsupported query: $filter is not supported on subscribedSkus.",
        )
    selected, chose = _select(options, SKU, SKU_FIELDS)
    account = _stable_uuid(customer.tenant_id, "billing-account")
    values = []
    with emu.world.lock:
        consumed = _consumed(customer)
        for sku in customer.skus.values():
            suspended = sku.capabilityStatus != "Enabled"
            full = {
                "accountName": customer.name,
                "accountId": account,
                "appliesTo": "User",
                "capabilityStatus": sku.capabilityStatus,
                "consumedUnits": consumed.get(sku.skuId.lower(), 0),
                "id": f"{customer.tenant_id}_{sku.skuId}",
                "prepaidUnits": {
                    "enabled": sku.enabled,
                    "lockedOut": 0,
                    "suspended": sku.suspended,
                    "warning": sku.warning,
                },
                "servicePlans": [
                    {
                        "servicePlanId": plan_id,
                        "servicePlanName": name,
                        "provisioningStatus": "Disabled" if suspended else "Success",
                        "appliesTo": applies,
                    }
                    for plan_id, name, applies in SERVICE_PLANS.get(sku.skuPartNumber, ())
                ],
                "skuId": sku.skuId,
                "skuPartNumber": sku.skuPartNumber,
                "subscriptionIds": list(sku.subscriptionIds),
            }
            item = {name: full[name] for name in selected}
            item.setdefault("id", full["id"])
            values.append(item)
    return json_response(
        {"@odata.context": _context("subscribedSkus", selected if chose else None), "value": values}
    )


# -- groups ---------------------------------------------------------------------------------------------

GROUP_DEFAULT = (
    "id",
    "deletedDateTime",
    "classification",
    "createdDateTime",
    "creationOptions",
    "description",
    "displayName",
    "expirationDateTime",
    "groupTypes",
    "isAssignableToRole",
    "mail",
    "mailEnabled",
    "mailNickname",
    "membershipRule",
    "membershipRuleProcessingState",
    "onPremisesDomainName",
    "onPremisesLastSyncDateTime",
    "onPremisesNetBiosName",
    "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled",
    "preferredDataLocation",
    "preferredLanguage",
    "proxyAddresses",
    "renewedDateTime",
    "resourceBehaviorOptions",
    "resourceProvisioningOptions",
    "securityEnabled",
    "securityIdentifier",
    "theme",
    "visibility",
    "onPremisesProvisioningErrors",
    "serviceProvisioningErrors",
)


def _group_created(group: Group, customer: Customer) -> str | None:
    return _stamp(_days_before(EPOCH, 1500, group.id, "created"))


def _nickname(group: Group) -> str:
    if group.mail:
        return group.mail.split("@", 1)[0]
    return re.sub(r"[^A-Za-z0-9]", "", group.displayName) or group.id[:8]


GROUP = _Property(
    "Microsoft.DirectoryServices.Group",
    {
        **{name: _none for name in GROUP_DEFAULT},
        "id": _attr("id"),
        "createdDateTime": _group_created,
        "creationOptions": _empty,
        "displayName": _attr("displayName"),
        "groupTypes": _empty,
        "mail": _attr("mail"),
        "mailEnabled": lambda g, c: g.mail is not None,
        "mailNickname": lambda g, c: _nickname(g),
        "proxyAddresses": lambda g, c: [f"SMTP:{g.mail}"] if g.mail else [],
        "renewedDateTime": _group_created,
        "resourceBehaviorOptions": _empty,
        "resourceProvisioningOptions": _empty,
        "securityEnabled": _attr("securityEnabled"),
        "securityIdentifier": lambda g, c: _sid(g.id),
        "onPremisesProvisioningErrors": _empty,
        "serviceProvisioningErrors": _empty,
    },
)
GROUP_FILTERABLE = frozenset(
    ("id", "displayName", "mail", "mailEnabled", "mailNickname", "securityEnabled")
)


def list_groups(emu: Emulator, request: Request) -> Response:
    _token, customer = _customer(emu, request, READ_GROUPS)
    options = _options(request)
    if "$skip" in options:
        raise GraphFailure(400, "Request_BadRequest", "'$skip' is not supported by the service.")
    selected, chose = _select(options, GROUP, GROUP_DEFAULT)
    size = _top(options, DIRECTORY_PAGE)
    matches = _predicate(options, GROUP, GROUP_FILTERABLE, "Group", customer)
    count = _counter(request, options)
    with emu.world.lock:
        groups = customer.groups

        def accept(group_id: str) -> Group | None:
            group = groups[group_id]
            return group if group.removed is None and matches(group) else None

        return _collection(
            emu,
            "/groups",
            options,
            context=_context("groups", selected if chose else None),
            collection="groups",
            tenant=customer.tenant_id,
            ids=_sorted_ids(emu, customer.tenant_id, "groups", groups),
            accept=accept,
            render=functools.partial(_renderer(selected, GROUP), ctx=customer),
            size=size,
            count=(lambda: sum(1 for g in groups.values() if g.removed is None and matches(g)))
            if count
            else None,
        )


def get_group(emu: Emulator, request: Request, group_id: str) -> Response:
    _token, customer = _customer(emu, request, READ_GROUPS)
    selected, chose = _select(_options(request), GROUP, GROUP_DEFAULT)
    with emu.world.lock:
        group = customer.groups.get(group_id)
        if group is None or group.removed is not None:
            raise _not_found(group_id)
        body = {"@odata.context": _context("groups", selected if chose else None, entity=True)}
        body.update(_render(group, selected, GROUP, customer))
    return json_response(body)


def _transitive_ids(emu: Emulator, customer: Customer, group: Group) -> list[str]:
    """Every live user and group inside ``group`` (nesting flattened), sorted. Under the lock."""
    cache: dict[tuple[str, str], tuple[Any, list[str]]] = emu.state.setdefault(
        "graph.transitive", {}
    )
    mark = (_change_mark(customer), len(customer.users), len(customer.groups))
    entry = cache.get((customer.tenant_id, group.id))
    if entry is not None and entry[0] == mark:
        return entry[1]
    found: set[str] = set()
    pending = [group.id]
    visited = {group.id}
    while pending:
        current = customer.groups.get(pending.pop())
        if current is None or current.removed is not None:
            continue
        for member in current.members:
            user = customer.users.get(member)
            if user is not None:
                if user.removed is None:
                    found.add(member)
                continue
            inner = customer.groups.get(member)
            if inner is not None and inner.removed is None and member != group.id:
                found.add(member)
                if member not in visited:
                    visited.add(member)
                    pending.append(member)
    ids = sorted(found)
    cache[(customer.tenant_id, group.id)] = (mark, ids)
    return ids


def transitive_members(
    emu: Emulator, request: Request, group_id: str, cast: str | None = None
) -> Response:
    """Users and nested groups, flattened (group-list-transitivemembers.md); OData cast to one
    type, which is an advanced query: "To filter the results on the OData type, such as
    `microsoft.graph.user` or `microsoft.graph.group`, you must use the advanced query
    parameters. That is, the ConsistencyLevel header set to `eventual` and the `$count=true`
    query string." Graph answers a cast without them 400 (a report against these docs:
    the cast to groups "just returns a bad request"); its code here is the one Graph gives
    other queries it cannot serve, ``Request_UnsupportedQuery``."""
    _token, customer = _customer(emu, request, READ_GROUPS)
    options = _options(request)
    size = _top(options, DIRECTORY_PAGE)
    counted = _counter(request, options)
    if cast and not counted:
        raise GraphFailure(
            400,
            "Request_UnsupportedQuery",
            f"An OData cast to microsoft.graph.{cast} needs the advanced query parameters: "
            "the ConsistencyLevel: eventual header and $count=true.",
        )
    raw_select = options.get("$select")
    with emu.world.lock:
        group = customer.groups.get(group_id)
        if group is None or group.removed is not None:
            raise _not_found(group_id)
        ids = _transitive_ids(emu, customer, group)

        def accept(object_id: str) -> User | Group | None:
            obj: User | Group | None = customer.users.get(object_id) or customer.groups.get(
                object_id
            )
            if cast == "user" and not isinstance(obj, User):
                return None
            if cast == "group" and not isinstance(obj, Group):
                return None
            return obj

        def render(obj: User | Group) -> dict[str, Any]:
            table, default = (
                (USER, USER_DEFAULT) if isinstance(obj, User) else (GROUP, GROUP_DEFAULT)
            )
            if raw_select:
                wanted = [
                    table.by_lower[p.strip().lower()]
                    for p in raw_select.split(",")
                    if p.strip().lower() in table.by_lower
                ]
            else:
                wanted = list(default)
            body = (
                {}
                if cast
                else {
                    "@odata.type": "#microsoft.graph."
                    + ("user" if isinstance(obj, User) else "group")
                }
            )
            body.update(_render(obj, wanted, table, customer))
            return body

        if cast:
            selected = (
                [p.strip() for p in raw_select.split(",") if p.strip()] if raw_select else None
            )
            context = _context("users" if cast == "user" else "groups", selected)
        else:
            context = METADATA + "directoryObjects"
        path = f"/groups/{group_id}/transitiveMembers" + (
            f"/microsoft.graph.{cast}" if cast else ""
        )
        return _collection(
            emu,
            path,
            options,
            context=context,
            collection=f"transitive:{group_id}:{cast or ''}",
            tenant=customer.tenant_id,
            ids=ids,
            accept=accept,
            render=render,
            size=size,
            count=(lambda: sum(1 for i in ids if accept(i) is not None)) if counted else None,
        )


# -- delta (users and groups) -----------------------------------------------------------------------------


class _DeltaKind:
    def __init__(
        self,
        kind: str,
        collection: str,
        table: _Property,
        default: tuple[str, ...],
        permissions: tuple[str, ...],
    ):
        self.kind = kind
        self.collection = collection
        self.table = table
        self.default = default
        self.permissions = permissions

    def items(self, customer: Customer) -> dict[str, Any]:
        return customer.users if self.kind == "user" else customer.groups


USER_DELTA = _DeltaKind("user", "users", USER, USER_DEFAULT, READ_USERS)
GROUP_DELTA = _DeltaKind("group", "groups", GROUP, GROUP_DEFAULT, READ_GROUPS)
_ID_CLAUSE = re.compile(r"^\s*id\s+eq\s+'([^']+)'\s*$", re.IGNORECASE)
_OR = re.compile(r"\s+or\s+", re.IGNORECASE)


def _delta_filter(text: str | None, resource: str) -> list[str] | None:
    """``id eq '…' or id eq '…'``: the only filter delta takes, for up to 50 objects (user-delta.md)."""
    if not text:
        return None
    ids = []
    for part in _OR.split(text.strip()):
        match = _ID_CLAUSE.match(part)
        if match is None:
            raise GraphFailure(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause specified for property 'id' of resource '{resource}'.",
            )
        ids.append(match.group(1).lower())
    if len(ids) > DELTA_FILTER_MAX:
        raise GraphFailure(
            400,
            "Request_UnsupportedQuery",
            f"A delta query can filter on at most {DELTA_FILTER_MAX} objects.",
        )
    return ids


def _delta_expired(emu: Emulator, kind: _DeltaKind, state: dict[str, Any] | None) -> GraphFailure:
    """An expired or unknown state token: 410 Gone, ``syncStateNotFound``, and a Location to start over.

    delta-query-overview.md: "In case of an expired token, the service should respond with a
    40X-series error with error codes such as syncStateNotFound" and, under "Synchronization
    reset", "a response code of 410 (gone) and a Location header containing a request URL with
    an empty $deltaToken (same as the initial query)". The wording is errors.md's.
    """
    params: list[tuple[str, str]] = []
    if state and isinstance(state.get("s"), list):
        params.append(("$select", ",".join(state["s"])))
    if state and isinstance(state.get("f"), list):
        params.append(("$filter", " or ".join(f"id eq '{i}'" for i in state["f"])))
    location = _link(emu, f"/{kind.collection}/delta", params)
    return GraphFailure(
        410,
        "syncStateNotFound",
        "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        {"Location": location},
    )


def delta(emu: Emulator, request: Request, kind: _DeltaKind) -> Response:
    """One page of a delta round (user-delta.md, group-delta.md, delta-query-overview.md)."""
    _token, customer = _customer(emu, request, kind.permissions)
    options = _options(request)
    for option in ("$top", "$expand", "$orderby"):
        if option in options:
            # "$expand is not supported. $top is not supported. $orderby is not supported."
            raise GraphFailure(
                400,
                "Request_UnsupportedQuery",
                f"The query option '{option}' is not supported in a delta query on {kind.collection}.",
            )
    extra = ("members",) if kind.kind == "group" else ()
    # A delta round is a users collection: the properties "only supported when retrieving a
    # single user" (user-list.md), kept outside the directory, are answered 501 here too
    # (delta-query-overview.md: they are "not supported as part of change tracking").
    single_only = USER_SINGLE_ONLY if kind.kind == "user" else frozenset()
    world = emu.world
    raw_delta, raw_skip = options.get("$deltatoken"), options.get("$skiptoken")
    with world.lock:
        if raw_delta and raw_delta.lower() == "latest":
            selected, _ = _select(
                options, kind.table, kind.default, extra=extra, not_in_collections=single_only
            )
            state = {
                "k": kind.kind,
                "t": customer.tenant_id,
                "e": customer.delta_epoch,
                "p": "delta",
                "q": world.sequence,
                "s": selected if options.get("$select") else None,
                "f": _delta_filter(options.get("$filter"), kind.table.type_name.rsplit(".", 1)[-1]),
            }
            return _delta_page(emu, kind, state, [], more=False)
        if raw_delta or raw_skip:
            state = _decode(raw_delta or raw_skip or "")
            if (
                state is None
                or state.get("k") != kind.kind
                or state.get("t") != customer.tenant_id
                or state.get("e") != customer.delta_epoch
                or state.get("p") not in ("init", "delta")
                or not isinstance(state.get("q"), int)
            ):
                raise _delta_expired(emu, kind, state)
            if raw_delta and options.get("$select"):
                # "$select and $deltaLink ... so that customers can change the properties they track"
                state["s"], _ = _select(
                    options, kind.table, kind.default, extra=extra, not_in_collections=single_only
                )
        else:
            selected, chose = _select(
                options, kind.table, kind.default, extra=extra, not_in_collections=single_only
            )
            state = {
                "k": kind.kind,
                "t": customer.tenant_id,
                "e": customer.delta_epoch,
                "p": "init",
                "q": world.sequence,
                "a": None,
                "s": selected if chose else None,
                "f": _delta_filter(options.get("$filter"), kind.table.type_name.rsplit(".", 1)[-1]),
            }
        if "signInActivity" in (state.get("s") or ()):
            # Not in user-delta.md; the live service's answer (microsoft-graph-explorer-v4#3189).
            raise GraphFailure(
                400,
                "BadRequest",
                "Invalid request for delta query: for this entity set, $expand/$select is not "
                "supported for the following properties: signInActivity",
            )
        if state["p"] == "init":
            return _initial_page(emu, kind, customer, state)
        return _changes_page(emu, kind, customer, state)


def _initial_page(
    emu: Emulator, kind: _DeltaKind, customer: Customer, state: dict[str, Any]
) -> Response:
    """The full listing that starts a round: live objects in id order, DELTA_PAGE at a time."""
    items = kind.items(customer)
    only = set(state["f"]) if state.get("f") else None
    ids = _sorted_ids(emu, customer.tenant_id, kind.collection, items)
    after = state.get("a")
    start = bisect_right(ids, after) if isinstance(after, str) else 0
    page: list[Any] = []
    more = False
    for index in range(start, len(ids)):
        obj = items[ids[index]]
        if obj.removed is not None or (only is not None and obj.id.lower() not in only):
            continue
        if len(page) == DELTA_PAGE:
            more = True
            break
        page.append(obj)
    values = [_delta_item(kind, customer, obj, state, None) for obj in page]
    if more:
        return _delta_page(emu, kind, {**state, "a": page[-1].id}, values, more=True)
    final = {key: value for key, value in state.items() if key != "a"}
    return _delta_page(emu, kind, {**final, "p": "delta"}, values, more=False)


def _changes_page(
    emu: Emulator, kind: _DeltaKind, customer: Customer, state: dict[str, Any]
) -> Response:
    """Objects changed since the token's sequence number, up to the round's mark, in log order."""
    since = state["q"]
    upto = state.get("h")
    if not isinstance(upto, int):
        upto = emu.world.sequence
    offset = state.get("o") if isinstance(state.get("o"), int) else 0
    changes = customer.changes
    changed: dict[str, None] = {}
    for seq, what, object_id in changes[bisect_right(changes, since, key=itemgetter(0)) :]:
        if seq > upto:
            break
        if what == kind.kind:
            changed.setdefault(object_id, None)
    # "members@delta contains any changes to membership" (delta-query-groups.md): the
    # members added or taken out in this round, not the whole list.
    member_changes: dict[str, dict[str, None]] = {}
    if kind.kind == "group":
        log = customer.member_changes
        for seq, group_id, member_id in log[bisect_right(log, since, key=itemgetter(0)) :]:
            if seq > upto:
                break
            member_changes.setdefault(group_id, {}).setdefault(member_id, None)
    only = set(state["f"]) if state.get("f") else None
    ids = [i for i in changed if only is None or i.lower() in only]
    items = kind.items(customer)
    page = ids[offset : offset + DELTA_PAGE]
    values = []
    for object_id in page:
        obj = items.get(object_id)
        if obj is None:
            continue
        if obj.removed is not None:
            values.append({"id": object_id, "@removed": {"reason": obj.removed}})
        else:
            values.append(
                _delta_item(kind, customer, obj, state, list(member_changes.get(object_id, ())))
            )
    if offset + DELTA_PAGE < len(ids):
        return _delta_page(
            emu, kind, {**state, "h": upto, "o": offset + DELTA_PAGE}, values, more=True
        )
    final = {key: value for key, value in state.items() if key not in ("h", "o")}
    return _delta_page(emu, kind, {**final, "q": upto}, values, more=False)


def _delta_item(
    kind: _DeltaKind,
    customer: Customer,
    obj: Any,
    state: dict[str, Any],
    changed_members: list[str] | None,
) -> dict[str, Any]:
    """One object of a round; a group's ``members@delta`` lists every member in the initial
    listing and, in later rounds (``changed_members`` given), the members added or removed."""
    selected = state.get("s") or list(kind.default)
    properties = [p for p in selected if p != "members"]
    body = _render(obj, properties, kind.table, customer)
    if kind.kind == "group" and (state.get("s") is None or "members" in selected):
        members = []
        current = set(obj.members)
        for member in obj.members if changed_members is None else changed_members:
            user = customer.users.get(member)
            entry = {
                "@odata.type": "#microsoft.graph.user"
                if user is not None
                else "#microsoft.graph.group",
                "id": member,
            }
            gone = member not in current or (user is not None and user.removed is not None)
            if gone:
                if changed_members is None:
                    continue
                # "either by removing the membership or by deleting the user object itself"
                entry["@removed"] = {"reason": "deleted"}
            members.append(entry)
        if members or changed_members is None:
            body["members@delta"] = members
    return body


def _delta_page(
    emu: Emulator,
    kind: _DeltaKind,
    state: dict[str, Any],
    values: list[dict[str, Any]],
    *,
    more: bool,
) -> Response:
    selected = state.get("s")
    body: dict[str, Any] = {"@odata.context": _context(kind.collection, selected)}
    path = f"/{kind.collection}/delta"
    if more:
        body["@odata.nextLink"] = _link(emu, path, [("$skiptoken", _encode(state))])
    else:
        body["@odata.deltaLink"] = _link(emu, path, [("$deltatoken", _encode(state))])
    body["value"] = values
    return json_response(body)


# -- Intune managed devices -------------------------------------------------------------------------------


def _storage(device: Device) -> tuple[int, int]:
    total = (64, 128, 256, 512)[_stable_int(device.id, "disk") % 4] * 1024**3
    return total, total * (15 + _stable_int(device.id, "free") % 70) // 100


def _device_name_for_intune(device: Device) -> str:
    owner = device.userPrincipalName.split("@", 1)[0] if device.userPrincipalName else "userless"
    return f"{owner}_{device.operatingSystem}_{device.enrolledDateTime:%m/%d/%Y_%I:%M %p}"


_WINDOWS = frozenset(("Windows",))
DEVICE_FIELDS: dict[str, Callable[[Device, Any], Any]] = {
    "id": _attr("id"),
    "userId": _attr("userId"),
    "deviceName": _attr("deviceName"),
    "managedDeviceOwnerType": lambda d, c: (
        "company" if d.operatingSystem in ("Windows", "macOS") else "personal"
    ),
    "deviceActionResults": _empty,
    "enrolledDateTime": lambda d, c: _stamp(d.enrolledDateTime),
    "lastSyncDateTime": lambda d, c: _stamp(d.lastSyncDateTime) or NEVER,
    "operatingSystem": _attr("operatingSystem"),
    "complianceState": _attr("complianceState"),
    "jailBroken": lambda d, c: "False" if d.operatingSystem in ("iOS", "Android") else "Unknown",
    "managementAgent": _attr("managementAgent"),
    "osVersion": _attr("osVersion"),
    "easActivated": lambda d, c: False,
    "easDeviceId": lambda d, c: "",
    "easActivationDateTime": lambda d, c: NEVER,
    "azureADRegistered": lambda d, c: True,
    "deviceEnrollmentType": lambda d, c: (
        "windowsAzureADJoin" if d.operatingSystem in _WINDOWS else "userEnrollment"
    ),
    "activationLockBypassCode": _none,
    "emailAddress": _attr("emailAddress"),
    "azureADDeviceId": _attr("azureADDeviceId"),
    "deviceRegistrationState": lambda d, c: "registered",
    "deviceCategoryDisplayName": lambda d, c: "Unknown Category",
    "isSupervised": lambda d, c: False,
    "exchangeLastSuccessfulSyncDateTime": lambda d, c: NEVER,
    "exchangeAccessState": lambda d, c: "none",
    "exchangeAccessStateReason": lambda d, c: "none",
    "remoteAssistanceSessionUrl": _none,
    "remoteAssistanceSessionErrorDetails": _none,
    "isEncrypted": lambda d, c: d.complianceState == "compliant",
    "userPrincipalName": _attr("userPrincipalName"),
    "model": _attr("model"),
    "manufacturer": _attr("manufacturer"),
    "imei": _attr("imei"),
    "complianceGracePeriodExpirationDateTime": lambda d, c: "9999-12-31T23:59:59Z",
    "serialNumber": _attr("serialNumber"),
    "phoneNumber": lambda d, c: "",
    "androidSecurityPatchLevel": lambda d, c: (
        "2025-12-01" if d.operatingSystem == "Android" else ""
    ),
    "userDisplayName": _attr("userDisplayName"),
    "configurationManagerClientEnabledFeatures": _none,
    "wiFiMacAddress": _attr("wiFiMacAddress"),
    "deviceHealthAttestationState": _none,
    "subscriberCarrier": lambda d, c: "",
    "meid": lambda d, c: "",
    "totalStorageSpaceInBytes": lambda d, c: _storage(d)[0],
    "freeStorageSpaceInBytes": lambda d, c: _storage(d)[1],
    "managedDeviceName": lambda d, c: _device_name_for_intune(d),
    "partnerReportedThreatState": lambda d, c: "unknown",
    "requireUserEnrollmentApproval": _none,
    "managementCertificateExpirationDate": lambda d, c: _stamp(
        d.enrolledDateTime + timedelta(days=365)
    ),
    "iccid": _none,
    "udid": _none,
    "notes": _none,
    "ethernetMacAddress": _none,
    "physicalMemoryInBytes": lambda d, c: 0,
}
DEVICE = _Property("microsoft.graph.managedDevice", DEVICE_FIELDS)
DEVICE_DEFAULT = tuple(DEVICE_FIELDS)
DEVICE_FILTERABLE = frozenset(
    (
        "id",
        "userId",
        "deviceName",
        "operatingSystem",
        "complianceState",
        "managementAgent",
        "osVersion",
        "serialNumber",
        "manufacturer",
        "model",
        "azureADDeviceId",
        "userPrincipalName",
        "emailAddress",
        "managedDeviceOwnerType",
        "deviceEnrollmentType",
    )
)


def _render_device(device: Device, selected: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"@odata.type": "#microsoft.graph.managedDevice"}
    body.update(_render(device, selected, DEVICE, None))
    return body


#: Intune's own words for a token without a device permission (its 403 "Forbidden", whose
#: message is a JSON document: mondoohq/cnspec#1708, maester365/maester#1395), rather than
#: the directory's Authorization_RequestDenied.
INTUNE_HOST = "https://fef.msua06.manage.microsoft.com/DeviceFE/StatelessDeviceFEService"
INTUNE_API_VERSION = "2024-06-14"


def _intune_denied(path: str) -> GraphFailure:
    message = {
        "_version": 3,
        "Message": "Application is not authorized to perform this operation. Application must "
        f"have one of the following scopes: {', '.join(READ_DEVICES)} - Operation ID (for "
        "customer support): 00000000-0000-0000-0000-000000000000 - Activity ID: "
        f"{uuid.uuid4()} - Url: {INTUNE_HOST}{path}?api-version={INTUNE_API_VERSION}",
        "CustomApiErrorPhrase": "",
        "RetryAfter": None,
        "ErrorSourceService": "",
        "HttpHeaders": "{}",
    }
    return GraphFailure(403, "Forbidden", json.dumps(message, indent=2).replace("\n", "\r\n"))


def _intune_customer(emu: Emulator, request: Request, path: str) -> Customer:
    token = emu.authorize(request, app.GRAPH)
    granted = _granted(token)
    if granted is not None and not granted.intersection(READ_DEVICES):
        raise _intune_denied(path)
    _token, customer = _customer(emu, request, READ_DEVICES)
    if not customer.has_intune:
        # What Graph answers a tenant without an Intune licence (intune-devices-manageddevice-list.md:
        # "requires an active Intune license"; the words are the live service's, see the sample note).
        raise GraphFailure(400, "BadRequest", "Request not applicable to target tenant.")
    return customer


def _device_page_size(emu: Emulator, options: dict[str, str]) -> int:
    """``$top`` capped at the page size (`DEVICE_PAGE`, or ``emu.state["graph.device_page"]``
    when a test wants several pages of a small tenant)."""
    largest = int(emu.state.get("graph.device_page", DEVICE_PAGE))
    raw_top = options.get("$top")
    if raw_top is None:
        return largest
    if not raw_top.isdigit() or int(raw_top) < 1:
        raise GraphFailure(
            400, "BadRequest", f"Invalid value '{raw_top}' for the $top query option."
        )
    return min(int(raw_top), largest)


def _device_collection(
    emu: Emulator,
    request: Request,
    customer: Customer,
    *,
    path: str,
    context: str,
    collection: str,
    keep: Callable[[Device], bool],
) -> Response:
    options = _options(request)
    selected, chose = _select(options, DEVICE, DEVICE_DEFAULT)
    size = _device_page_size(emu, options)
    matches = _predicate(options, DEVICE, DEVICE_FILTERABLE, "managedDevice")
    with emu.world.lock:
        devices = customer.devices

        def accept(device_id: str) -> Device | None:
            device = devices.get(device_id)
            return device if device is not None and keep(device) and matches(device) else None

        return _collection(
            emu,
            path,
            options,
            context=_context(context, selected if chose else None),
            collection=collection,
            tenant=customer.tenant_id,
            ids=_sorted_ids(emu, customer.tenant_id, "devices", devices),
            accept=accept,
            render=lambda device: _render_device(device, selected),
            size=size,
        )


def list_managed_devices(emu: Emulator, request: Request) -> Response:
    path = "/deviceManagement/managedDevices"
    customer = _intune_customer(emu, request, path)
    return _device_collection(
        emu,
        request,
        customer,
        path=path,
        context="deviceManagement/managedDevices",
        collection="managedDevices",
        keep=lambda device: True,
    )


def user_managed_devices(emu: Emulator, request: Request, user_key: str) -> Response:
    """A user's devices: those whose primary user the user is, and shared ones listing them
    (``Device.sharedWith``). The page's context names the user as Graph does for a
    navigation (``$metadata#users('{id}')/managedDevices``)."""
    customer = _intune_customer(emu, request, f"/users('{user_key}')/managedDevices")
    with emu.world.lock:
        user = _find_user(emu, customer, user_key)
    return _device_collection(
        emu,
        request,
        customer,
        path=f"/users/{user.id}/managedDevices",
        context=f"users('{user.id}')/managedDevices",
        collection=f"users/{user.id}/managedDevices",
        keep=lambda device: device.userId == user.id or user.id in device.sharedWith,
    )


def get_managed_device(emu: Emulator, request: Request, device_id: str) -> Response:
    customer = _intune_customer(emu, request, f"/deviceManagement/managedDevices('{device_id}')")
    selected, chose = _select(_options(request), DEVICE, DEVICE_DEFAULT)
    with emu.world.lock:
        device = customer.devices.get(device_id)
        if device is None:
            raise GraphFailure(
                404,
                "ResourceNotFound",
                f"Resource not found for the segment 'managedDevices'. Id: '{device_id}'.",
            )
        body = {
            "@odata.context": _context(
                "deviceManagement/managedDevices", selected if chose else None, entity=True
            )
        }
        body.update(_render_device(device, selected))
    return json_response(body)


# -- organization ---------------------------------------------------------------------------------------------

ORGANIZATION_FIELDS = (
    "id",
    "deletedDateTime",
    "businessPhones",
    "city",
    "country",
    "countryLetterCode",
    "createdDateTime",
    "defaultUsageLocation",
    "displayName",
    "isMultipleDataLocationsForServicesEnabled",
    "marketingNotificationEmails",
    "onPremisesLastSyncDateTime",
    "onPremisesSyncEnabled",
    "partnerTenantType",
    "postalCode",
    "preferredLanguage",
    "securityComplianceNotificationMails",
    "securityComplianceNotificationPhones",
    "state",
    "street",
    "technicalNotificationMails",
    "tenantType",
    "directorySizeQuota",
    "assignedPlans",
    "privacyProfile",
    "provisionedPlans",
    "verifiedDomains",
)
ORGANIZATION = _Property(
    "microsoft.graph.organization", {name: _none for name in ORGANIZATION_FIELDS}
)


def _organization(
    tenant_id: str, name: str, domain: str, customer: Customer | None, partner: Partner | None
) -> dict[str, Any]:
    created = _days_before(EPOCH, 3000, tenant_id, "tenant-created")
    plans: dict[str, tuple[str, str]] = {}
    if customer is not None:
        for sku in customer.skus.values():
            for plan_id, plan_name, _ in SERVICE_PLANS.get(sku.skuPartNumber, ()):
                plans.setdefault(
                    plan_id,
                    (plan_name, "Enabled" if sku.capabilityStatus == "Enabled" else "Suspended"),
                )
    objects = (len(customer.users) + len(customer.groups)) if customer is not None else 1
    return {
        "id": tenant_id,
        "deletedDateTime": None,
        "businessPhones": [],
        "city": None,
        "country": None,
        "countryLetterCode": "GB",
        "createdDateTime": _stamp(created),
        "defaultUsageLocation": "GB",
        "displayName": name,
        "isMultipleDataLocationsForServicesEnabled": None,
        "marketingNotificationEmails": [],
        "onPremisesLastSyncDateTime": None,
        "onPremisesSyncEnabled": None,
        # organization-list.md's sample writes the partner type in this casing.
        "partnerTenantType": "ResellerPartnerDelegatedAdmin" if partner is not None else None,
        "postalCode": None,
        "preferredLanguage": "en",
        "securityComplianceNotificationMails": [],
        "securityComplianceNotificationPhones": [],
        "state": None,
        "street": None,
        "technicalNotificationMails": [f"admin@{domain}"],
        "tenantType": "AAD",
        "directorySizeQuota": {"used": objects, "total": 300000},
        "assignedPlans": [
            {
                "assignedDateTime": _stamp(created),
                "capabilityStatus": status,
                "service": _service_name(plan_name),
                "servicePlanId": plan_id,
            }
            for plan_id, (plan_name, status) in plans.items()
        ],
        "privacyProfile": {"contactEmail": "", "statementUrl": ""},
        "provisionedPlans": [
            {
                "capabilityStatus": status,
                "provisioningStatus": "Success",
                "service": _service_name(plan_name),
            }
            for plan_name, status in plans.values()
        ],
        "verifiedDomains": [
            {
                "capabilities": "Email, OfficeCommunicationsOnline",
                "isDefault": True,
                "isInitial": True,
                "name": domain,
                "type": "Managed",
            }
        ],
    }


def organization(emu: Emulator, request: Request, org_id: str | None = None) -> Response:
    """The tenant's organization (organization-list.md); the partner's own tenant is served too."""
    token = emu.authorize(request, app.GRAPH)
    _require(token, READ_ORGANIZATION)
    world = emu.world
    customer = world.customers.get(token.tenant)
    partner = world.partners.get(token.tenant)
    if customer is None and partner is None:
        raise GraphFailure(401, "InvalidAuthenticationToken", "Access token validation failure.")
    selected, chose = _select(_options(request), ORGANIZATION, ORGANIZATION_FIELDS)
    with world.lock:
        if customer is not None:
            full = _organization(customer.tenant_id, customer.name, customer.domain, customer, None)
        else:
            assert partner is not None
            full = _organization(partner.tenant_id, partner.name, partner.domain, None, partner)
    item = {name: full[name] for name in selected}
    item.setdefault("id", full["id"])
    if org_id is not None:
        if org_id.lower() != full["id"]:
            raise _not_found(org_id)
        return json_response(
            {
                "@odata.context": _context(
                    "organization", selected if chose else None, entity=True
                ),
                **item,
            }
        )
    return json_response(
        {"@odata.context": _context("organization", selected if chose else None), "value": [item]}
    )


# -- GDAP relationships (partner tenant) ----------------------------------------------------------------------

GDAP_CONTEXT = ROOT + "/tenantRelationships/$metadata#"
GDAP_FIELDS = (
    "@odata.type",
    "@odata.etag",
    "id",
    "displayName",
    "duration",
    "customer",
    "accessDetails",
    "status",
    "autoExtendDuration",
    "createdDateTime",
    "lastModifiedDateTime",
    "activatedDateTime",
    "endDateTime",
)
GDAP = _Property(
    "microsoft.graph.delegatedAdminRelationship",
    {name: _none for name in GDAP_FIELDS if not name.startswith("@")},
)
ASSIGNMENT_FIELDS = (
    "@odata.type",
    "@odata.etag",
    "id",
    "status",
    "createdDateTime",
    "lastModifiedDateTime",
    "accessContainer",
    "accessDetails",
)
ASSIGNMENT = _Property(
    "microsoft.graph.delegatedAdminAccessAssignment",
    {name: _none for name in ASSIGNMENT_FIELDS if not name.startswith("@")},
)


def _etag(*parts: str) -> str:
    inner = '"' + _stable_uuid(*parts) + '"'
    return 'W/"' + base64.b64encode(("'" + inner + "'").encode()).decode() + '"'


def _relationship(customer: Customer) -> dict[str, Any]:
    now = EPOCH
    created = _days_before(now - timedelta(days=30), 600, customer.relationship_id, "created")
    activated = created + timedelta(
        minutes=2 + _stable_int(customer.relationship_id, "approve") % 600
    )
    status = customer.gdap_status or "active"
    if status == "expired":
        created = now - timedelta(days=731 + _stable_int(customer.relationship_id, "age") % 200)
        activated = created + timedelta(minutes=5)
        end = created + timedelta(days=730)
        modified = end
    elif status == "terminated":
        end = activated + timedelta(days=30 + _stable_int(customer.relationship_id, "end") % 200)
        modified = end
    else:
        end = created + timedelta(days=730)
        modified = activated
    return {
        "@odata.type": "#microsoft.graph.delegatedAdminRelationship",
        "@odata.etag": _etag(customer.relationship_id, status),
        "id": customer.relationship_id,
        "displayName": f"GDAP {customer.name}"[:50],
        "duration": "P730D",
        "customer": {"tenantId": customer.tenant_id, "displayName": customer.name},
        "accessDetails": {
            "unifiedRoles": [{"roleDefinitionId": role} for role in customer.gdap_roles]
        },
        "status": status,
        "autoExtendDuration": "P180D" if status == "active" else "PT0S",
        "createdDateTime": _stamp(created),
        "lastModifiedDateTime": _stamp(modified),
        "activatedDateTime": _stamp(activated),
        "endDateTime": _stamp(end),
    }


def _partner(emu: Emulator, request: Request) -> tuple[Token, Partner | None]:
    token = emu.authorize(request, app.GRAPH)
    _require(token, READ_GDAP)
    if token.tenant in emu.world.partners:
        return token, emu.world.partners[token.tenant]
    if token.tenant in emu.world.customers:
        return token, None  # a customer tenant is nobody's partner: no relationships
    raise GraphFailure(401, "InvalidAuthenticationToken", "Access token validation failure.")


def _pick(full: dict[str, Any], selected: list[str], chose: bool) -> dict[str, Any]:
    if not chose:
        return full
    picked = {key: full[key] for key in ("@odata.type", "@odata.etag") if key in full}
    picked.update({name: full[name] for name in selected})
    picked.setdefault("id", full["id"])
    return picked


def _dict_filter(
    options: dict[str, str], properties: _Property, resource: str
) -> Callable[[dict[str, Any]], bool]:
    """``$filter`` over rendered objects (paths such as ``customer/tenantId``)."""
    text = options.get("$filter")
    if not text:
        return lambda item: True
    clauses = _parse_filter(text, resource)
    for name, _ in clauses:
        if name.split("/", 1)[0] not in properties.getters:
            raise GraphFailure(
                400,
                "BadRequest",
                f"Invalid filter clause: could not find a property named '{name}' on type '{properties.type_name}'.",
            )

    folded = [(name, _folded(expected)) for name, expected in clauses]

    def matches(item: dict[str, Any]) -> bool:
        for name, expected in folded:
            value: Any = item
            for part in name.split("/"):
                value = value.get(part) if isinstance(value, dict) else None
            if not _satisfies(value, expected):
                return False
        return True

    return matches


def delegated_admin_relationships(emu: Emulator, request: Request) -> Response:
    """The partner's GDAP relationships, one per customer that has one."""
    token, partner = _partner(emu, request)
    options = _options(request)
    selected, chose = _select(options, GDAP, tuple(f for f in GDAP_FIELDS if not f.startswith("@")))
    size = _top(options, GDAP_PAGE)
    matches = _dict_filter(options, GDAP, "delegatedAdminRelationship")
    world = emu.world
    with world.lock:
        customers = [
            c
            for c in world.customers.values()
            if partner is not None and c.partner_tenant == partner.tenant_id and c.gdap_status
        ]
        items = sorted((_relationship(c) for c in customers), key=itemgetter("id"))
    kept = {item["id"]: item for item in items if matches(item)}
    return _collection(
        emu,
        "/tenantRelationships/delegatedAdminRelationships",
        options,
        context=_context(
            "delegatedAdminRelationships", selected if chose else None, prefix=GDAP_CONTEXT
        ),
        collection="gdap",
        tenant=token.tenant,
        ids=[item["id"] for item in items],
        accept=kept.get,
        render=lambda item: _pick(item, selected, chose),
        size=size,
    )


def access_assignments(emu: Emulator, request: Request, relationship_id: str) -> Response:
    """The access assignments of one relationship: the partner's security group and its roles."""
    token, partner = _partner(emu, request)
    options = _options(request)
    selected, chose = _select(
        options, ASSIGNMENT, tuple(f for f in ASSIGNMENT_FIELDS if not f.startswith("@"))
    )
    size = _top(options, GDAP_PAGE)
    matches = _dict_filter(options, ASSIGNMENT, "delegatedAdminAccessAssignment")
    world = emu.world
    with world.lock:
        customer = next(
            (
                c
                for c in world.customers.values()
                if partner is not None
                and c.partner_tenant == partner.tenant_id
                and c.gdap_status
                and c.relationship_id == relationship_id
            ),
            None,
        )
        if customer is None:
            raise GraphFailure(
                404,
                "NotFound",
                f"The delegated admin relationship with id '{relationship_id}' was not found.",
            )
        relationship = _relationship(customer)
    items = []
    if customer.gdap_status == "active":
        items.append(
            {
                "@odata.type": "#microsoft.graph.delegatedAdminAccessAssignment",
                "@odata.etag": _etag(relationship_id, "assignment"),
                "id": _stable_uuid(relationship_id, "assignment"),
                "status": "active",
                "createdDateTime": relationship["activatedDateTime"],
                "lastModifiedDateTime": relationship["activatedDateTime"],
                "accessContainer": {
                    "accessContainerId": _stable_uuid(customer.partner_tenant, "AdminAgents"),
                    "accessContainerType": "securityGroup",
                },
                "accessDetails": {
                    "unifiedRoles": [{"roleDefinitionId": role} for role in customer.gdap_roles]
                },
            }
        )
    kept = {item["id"]: item for item in items if matches(item)}
    return _collection(
        emu,
        f"/tenantRelationships/delegatedAdminRelationships/{relationship_id}/accessAssignments",
        options,
        context=_context("accessAssignments", selected if chose else None, prefix=GDAP_CONTEXT),
        collection=f"assignments:{relationship_id}",
        tenant=token.tenant,
        ids=sorted(kept),
        accept=kept.get,
        render=lambda item: _pick(item, selected, chose),
        size=size,
    )


# -- routes ----------------------------------------------------------------------------------------------------

DOCS = "api-reference/v1.0/api/"


def register(emulator: Emulator) -> None:
    def add(
        rules: tuple[str, ...],
        endpoint: str,
        handler: Callable[..., Response],
        doc: str,
        methods: tuple[str, ...] = ("GET",),
    ) -> None:
        guarded = _guarded(handler)
        for rule in rules:
            emulator.route(
                "/graph/v1.0" + rule, endpoint=endpoint, methods=methods, doc=DOCS + doc
            )(guarded)

    add(
        ("/tenantRelationships/delegatedAdminRelationships",),
        "graph.delegated_admin_relationships",
        delegated_admin_relationships,
        "tenantrelationship-list-delegatedadminrelationships.md",
    )
    add(
        ("/tenantRelationships/delegatedAdminRelationships/<relationship_id>/accessAssignments",),
        "graph.access_assignments",
        access_assignments,
        "delegatedadminrelationship-list-accessassignments.md",
    )
    add(("/users",), "graph.users", list_users, "user-list.md")
    add(
        (
            "/users/delta",
            "/users/delta()",
            "/users/microsoft.graph.delta",
            "/users/microsoft.graph.delta()",
        ),
        "graph.users_delta",
        functools.partial(delta, kind=USER_DELTA),
        "user-delta.md",
    )
    add(("/users/<user_key>",), "graph.user", get_user, "user-get.md")
    add(
        ("/users/<user_key>/assignLicense", "/users/<user_key>/microsoft.graph.assignLicense"),
        "graph.assign_license",
        assign_license,
        "user-assignlicense.md",
        methods=("POST",),
    )
    add(("/subscribedSkus",), "graph.subscribed_skus", subscribed_skus, "subscribedsku-list.md")
    add(("/groups",), "graph.groups", list_groups, "group-list.md")
    add(
        (
            "/groups/delta",
            "/groups/delta()",
            "/groups/microsoft.graph.delta",
            "/groups/microsoft.graph.delta()",
        ),
        "graph.groups_delta",
        functools.partial(delta, kind=GROUP_DELTA),
        "group-delta.md",
    )
    add(("/groups/<group_id>",), "graph.group", get_group, "group-get.md")
    add(
        ("/groups/<group_id>/transitiveMembers",),
        "graph.transitive_members",
        transitive_members,
        "group-list-transitivemembers.md",
    )
    add(
        ("/groups/<group_id>/transitiveMembers/microsoft.graph.user",),
        "graph.transitive_member_users",
        functools.partial(transitive_members, cast="user"),
        "group-list-transitivemembers.md",
    )
    add(
        ("/groups/<group_id>/transitiveMembers/microsoft.graph.group",),
        "graph.transitive_member_groups",
        functools.partial(transitive_members, cast="group"),
        "group-list-transitivemembers.md",
    )
    add(
        ("/deviceManagement/managedDevices",),
        "graph.managed_devices",
        list_managed_devices,
        "intune-devices-manageddevice-list.md",
    )
    add(
        ("/users/<user_key>/managedDevices",),
        "graph.user_managed_devices",
        user_managed_devices,
        "intune-devices-manageddevice-list.md",
    )
    add(
        ("/deviceManagement/managedDevices/<device_id>",),
        "graph.managed_device",
        get_managed_device,
        "intune-devices-manageddevice-get.md",
    )
    add(("/organization",), "graph.organization", organization, "organization-list.md")
    add(("/organization/<org_id>",), "graph.organization_get", organization, "organization-get.md")
