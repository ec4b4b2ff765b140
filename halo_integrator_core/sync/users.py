"""User import rules (guide 6): site mappings, field mappings, matching, service accounts.

A directory user becomes a PSA user of its tenant's customer, at the site of the first site
mapping (by sequence, ties in file order) that accepts it; a user no mapping accepts is
counted and listed, not imported. A user finds its PSA user by object ID, or by email or
network login when the config says so; a user deleted and recreated with the same UPN finds
the PSA user of the deleted one. A match that is not one PSA user is reported, never guessed.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from ..config import (
    VALUELESS_OPERATORS,
    Config,
    FilterOperator,
    PropertyFilter,
    SiteMapping,
    SiteMappingType,
    UserMatching,
    UserSettings,
)
from ..models import DirectoryUser, UserQuery
from ..store import schema
from ..store.prepared import by_external_id, free_to_take, in_list, prepared, unseen
from .mapping import (
    MAIN_SITE,
    SiteFinder,
    TenantTarget,
    _json_safe,
    record_getter,
    text_value,
    utc,
)

#: Directory properties every `DirectoryUser` carries in a field of its own.
STANDARD_PROPERTIES: Mapping[str, str] = {
    "id": "object_id",
    "userPrincipalName": "user_principal_name",
    "displayName": "display_name",
    "givenName": "given_name",
    "surname": "surname",
    "mail": "mail",
    "jobTitle": "job_title",
    "department": "department",
    "officeLocation": "office_location",
    "businessPhones": "business_phones",
    "mobilePhone": "mobile_phone",
    "employeeId": "employee_id",
    "accountEnabled": "account_enabled",
    "userType": "user_type",
}

#: Longest value a PSA text field keeps (the store's columns are 255 wide at most).
_TEXT_LIMIT = 255


def property_value(user: DirectoryUser, name: str) -> Any:
    """The value of directory property ``name`` on ``user`` (``None`` when it has none)."""
    field = STANDARD_PROPERTIES.get(name)
    if field is not None:
        return getattr(user, field)
    return user.attributes.get(name)


def property_getter(name: str) -> Callable[[DirectoryUser], Any]:
    """`property_value` of ``name`` as a function of the user: rules resolve the names they
    read once, not for every user."""
    return record_getter(STANDARD_PROPERTIES, name)


def _texts(value: Any) -> list[str]:
    """Every text of a property value, lower-cased, for filters (a list has several)."""
    if type(value) is str:  # the common case, first
        text = value.strip()
        return [text.lower()] if text else []
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [t.lower() for item in values if (t := text_value(item)) is not None]


#: Each operator that compares with a value: whether it holds of a property's texts.
_COMPARISONS: Mapping[FilterOperator, Callable[[list[str], str], bool]] = {
    FilterOperator.EQUALS: lambda texts, wanted: wanted in texts,
    FilterOperator.NOT_EQUALS: lambda texts, wanted: wanted not in texts,
    FilterOperator.CONTAINS: lambda texts, wanted: any(wanted in t for t in texts),
    FilterOperator.NOT_CONTAINS: lambda texts, wanted: not any(wanted in t for t in texts),
    FilterOperator.STARTS_WITH: lambda texts, wanted: any(t.startswith(wanted) for t in texts),
    FilterOperator.ENDS_WITH: lambda texts, wanted: any(t.endswith(wanted) for t in texts),
}


def filter_holds(condition: PropertyFilter, user: DirectoryUser) -> bool:
    return compile_filter(condition)(user)


def compile_filter(condition: PropertyFilter) -> Callable[[DirectoryUser], bool]:
    """`filter_holds` of ``condition`` as a function of the user, its property and value
    resolved once."""
    get, operator = property_getter(condition.field), condition.operator
    if operator in VALUELESS_OPERATORS:
        empty = operator is FilterOperator.IS_EMPTY
        return lambda user: (not _texts(get(user))) == empty
    compare = _COMPARISONS.get(operator)
    if compare is None:  # pragma: no cover
        raise AssertionError(f"unhandled operator {operator}")
    wanted = (condition.value or "").strip().lower()
    return lambda user: compare(_texts(get(user)), wanted)


def is_external(user: DirectoryUser) -> bool:
    """A guest (B2B) user: ``userType`` Guest, or an ``#EXT#`` UPN."""
    return (user.user_type or "").lower() == "guest" or "#ext#" in user.user_principal_name.lower()


@attrs.frozen
class Placement:
    """Where a mapping puts a user, and what it sets on it."""

    site_id: int
    label: str
    role: str | None
    values: Mapping[str, str]


@attrs.define
class _CompiledMapping:
    index: int
    spec: SiteMapping
    customer_id: int
    #: The site of a ``site`` mapping; ``None`` until created (``create_site``) or if missing.
    site_id: int | None = None
    broken: str | None = None
    label: str = attrs.field(init=False)
    #: The spec's group, lower-cased; ``None`` when it names none.
    group: str | None = attrs.field(init=False)
    filters: tuple[Callable[[DirectoryUser], bool], ...] = attrs.field(init=False)
    #: A ``field`` mapping's site field, as a function of the user.
    site_value: Callable[[DirectoryUser], Any] | None = attrs.field(init=False)
    #: What it puts at each site: one `Placement` a site, not one a user.
    placements: dict[int, Placement] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        spec = self.spec
        self.label = spec.label(self.index)[:_TEXT_LIMIT]
        self.group = spec.group.lower() if spec.group else None
        self.filters = tuple(compile_filter(condition) for condition in spec.filters)
        self.site_value = None if spec.site_field is None else property_getter(spec.site_field)

    def placement(self, site_id: int) -> Placement:
        placement = self.placements.get(site_id)
        if placement is None:
            spec = self.spec
            placement = Placement(site_id, self.label, spec.role, spec.values)
            self.placements[site_id] = placement
        return placement


class UserRules:
    """The config's user rules, compiled against the store once per run."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings: UserSettings = config.users
        self.field_map = self.settings.field_map()
        self.custom_map = dict(self.settings.custom_fields)
        self.clear_when_blank = frozenset(self.settings.clear_when_blank)
        self.service = self.settings.service_accounts
        self._by_customer: dict[int, list[_CompiledMapping]] | None = None
        #: `applicable`, by customer and tenant.
        self._applicable: dict[tuple[int | None, str], tuple[_CompiledMapping, ...]] = {}
        self.sites = SiteFinder()
        self._reported: set[int] = set()
        # What `columns` and `is_service_account` read, resolved once.
        self._field_sources = tuple(
            (
                field,
                property_getter(source),
                100 if field in ("phone", "mobile") else _TEXT_LIMIT,
                field not in self.clear_when_blank,
            )
            for field, source in self.field_map.items()
        )
        self._custom_sources = tuple(
            (name, property_getter(source), f"custom_fields.{name}" in self.clear_when_blank)
            for name, source in self.custom_map.items()
        )
        service = self.service
        self._service_rules = service.any
        self._licence_exceptions = frozenset(
            exception.strip().lower() for exception in service.licence_exceptions
        )
        self._upn_pattern = _patterns(service.upn_patterns)
        self._display_name_pattern = _patterns(service.display_name_patterns)
        self._service_groups = frozenset(g.lower() for g in service.groups)

    # -- mappings --------------------------------------------------------------------------

    def mappings_of(self, connection: Connection, customer_id: int) -> list[_CompiledMapping]:
        if self._by_customer is None:
            self._by_customer = self._compile(connection)
        return self._by_customer.get(customer_id, [])

    def _compile(self, connection: Connection) -> dict[int, list[_CompiledMapping]]:
        customers = schema.customers
        names = {m.customer for m in self.config.site_mappings}
        ids = dict(
            connection.execute(
                sa.select(customers.c.name, customers.c.id).where(customers.c.name.in_(names))
            ).all()
        )
        compiled: dict[int, list[_CompiledMapping]] = {}
        for index, spec in enumerate(self.config.site_mappings):
            customer_id = ids.get(spec.customer)
            if customer_id is None:
                continue  # a customer no tenant is mapped to yet: nothing to place
            mapping = _CompiledMapping(index, spec, customer_id)
            if spec.type is SiteMappingType.SITE:
                name = spec.site or MAIN_SITE
                mapping.site_id = self._site(connection, customer_id, name, create=False)
                if mapping.site_id is None and not spec.create_site:
                    mapping.broken = (
                        f"site_mappings[{index}]: customer {spec.customer!r} has no site "
                        f"{name!r}: name one of its sites, or set create_site = true"
                    )
            compiled.setdefault(customer_id, []).append(mapping)
        for mappings in compiled.values():
            mappings.sort(key=lambda m: (m.spec.sequence, m.index))
        return compiled

    def applicable(self, connection: Connection, target: TenantTarget) -> list[_CompiledMapping]:
        """The mappings tried for the tenant's users, in order: its customer's, less those
        filtered to other tenants."""
        if target.customer_id is None:
            return []
        tenant_id = target.tenant.tenant_id.lower()
        return [
            mapping
            for mapping in self.mappings_of(connection, target.customer_id)
            if mapping.spec.tenant_id is None or str(mapping.spec.tenant_id) == tenant_id
        ]

    def has_mappings(self, connection: Connection, target: TenantTarget) -> bool:
        return bool(self.applicable(connection, target)) or (
            self.config.integrator.create_site_mappings_for_new_tenants
        )

    def broken_mappings(self, connection: Connection, target: TenantTarget) -> list[str]:
        """Reasons of the tenant's mappings that cannot place anyone (said once a run)."""
        found = []
        for mapping in self.applicable(connection, target):
            if mapping.broken and mapping.index not in self._reported:
                self._reported.add(mapping.index)
                found.append(mapping.broken)
        return found

    def place(
        self, connection: Connection, target: TenantTarget, user: DirectoryUser
    ) -> Placement | None:
        """The first mapping of the tenant's customer that accepts ``user``, if any.

        A tenant none of whose customer's mappings apply to it gets the catch-all of
        ``create_site_mappings_for_new_tenants`` when that is on.
        """
        key = (target.customer_id, target.tenant.tenant_id)
        mappings = self._applicable.get(key)
        if mappings is None:
            mappings = self._applicable[key] = tuple(self.applicable(connection, target))
        if not mappings:
            if self.config.integrator.create_site_mappings_for_new_tenants and not is_external(
                user
            ):
                assert target.main_site_id is not None
                return Placement(target.main_site_id, "generated: all users to Main", None, {})
            return None
        # Worked out once a user, when a mapping first asks.
        external: bool | None = None
        groups: set[str] | None = None
        for mapping in mappings:
            if mapping.broken:
                continue
            if not mapping.spec.include_external_users:
                if external is None:
                    external = is_external(user)
                if external:
                    continue
            if mapping.group is not None:
                if groups is None:
                    groups = {g.lower() for g in user.groups}
                if mapping.group not in groups:
                    continue
            for holds in mapping.filters:
                if not holds(user):
                    break
            else:  # every filter holds
                site_id = self._site_of(connection, mapping, user)
                if site_id is not None:
                    return mapping.placement(site_id)
        return None

    def _site_of(
        self, connection: Connection, mapping: _CompiledMapping, user: DirectoryUser
    ) -> int | None:
        """The site ``mapping`` puts ``user`` at, which it accepts otherwise."""
        if mapping.spec.type is SiteMappingType.FIELD:
            assert mapping.site_value is not None
            name = text_value(mapping.site_value(user))
            if name is None:
                return None  # no value to name a site after: the next mapping may take it
            return self._site(connection, mapping.customer_id, name[:_TEXT_LIMIT], create=True)
        if mapping.site_id is None:
            mapping.site_id = self._site(
                connection, mapping.customer_id, mapping.spec.site or MAIN_SITE, create=True
            )
        return mapping.site_id

    def _site(self, connection: Connection, customer_id: int, name: str, *, create: bool) -> Any:
        return self.sites.find(connection, customer_id, name, create=create)

    # -- what to ask the plugin for --------------------------------------------------------

    def query(self, connection: Connection, target: TenantTarget) -> UserQuery:
        """The groups, extra properties and sign-ins this tenant's users are judged by."""
        mappings = [m.spec for m in self.applicable(connection, target)]
        groups = [m.group for m in mappings if m.group] + list(self.service.groups)
        properties = [
            *self.field_map.values(),
            *self.custom_map.values(),
            *(c.field for m in mappings for c in m.filters),
            *(m.site_field for m in mappings if m.site_field),
        ]
        return UserQuery(
            groups=_unique(groups, fold=True),
            properties=_unique(p for p in properties if p not in STANDARD_PROPERTIES),
            sign_in_activity=self.settings.import_last_sign_in,
        )

    # -- columns ---------------------------------------------------------------------------

    def is_service_account(self, user: DirectoryUser, sku_names: Mapping[str, str]) -> bool:
        rules = self.service
        if not self._service_rules:
            return False
        skus, exceptions = user.assigned_sku_ids, self._licence_exceptions
        if exceptions:
            for sku in skus:  # held by its SKU ID or its part number
                if sku.lower() in exceptions or (
                    sku in sku_names and sku_names[sku].lower() in exceptions
                ):
                    return False
        if rules.no_licence and not skus:
            return True
        upn_pattern, name_pattern = self._upn_pattern, self._display_name_pattern
        if upn_pattern is not None and upn_pattern(user.user_principal_name.lower()):
            return True
        if name_pattern is not None and name_pattern((user.display_name or "").lower()):
            return True
        if groups := self._service_groups:
            for group in user.groups:
                if group.lower() in groups:
                    return True
        return bool(rules.sign_in_blocked and user.account_enabled is False)

    def columns(
        self,
        user: DirectoryUser,
        placement: Placement,
        row: Row[Any] | None,
        *,
        service_account: bool,
    ) -> dict[str, Any]:
        """The PSA user's columns for ``user``; a blank never clears what ``row`` holds
        unless the config says so."""
        values: dict[str, Any] = {}
        for field, get, width, keep in self._field_sources:
            value = get(user)
            # `text_value`, its common case (text) first, here in the loop: 12 fields a user.
            if type(value) is str:
                value = value.strip()[:width] or None
            elif value is not None and (value := text_value(value)) is not None:
                value = value[:width]
            if value is None and keep and row is not None:
                value = getattr(row, field)
            values[field] = value
        custom = dict(row.custom_fields or {}) if row is not None else {}
        for name, get, clears in self._custom_sources:
            value = text_value(get(user))
            if value is not None or clears:
                custom[name] = value
        for field, value in placement.values.items():
            if field.startswith("custom_fields."):
                custom[field.removeprefix("custom_fields.")] = value
            else:
                values[field] = value
        values["site_id"] = placement.site_id
        values["site_mapping"] = placement.label
        values["role"] = placement.role
        values["custom_fields"] = custom
        values["user_principal_name"] = user.user_principal_name
        values["account_enabled"] = user.account_enabled
        values["user_type"] = user.user_type
        values["is_service_account"] = service_account
        values["attributes"] = _json_safe(
            {**user.attributes, "assignedSkuIds": user.assigned_sku_ids, "groups": user.groups}
        )
        if self.settings.import_last_sign_in:
            values["last_sign_in_at"] = utc(user.last_sign_in_at)
        return values

    def active(self, user: DirectoryUser) -> bool:
        """The PSA user's active flag for a user present in the directory."""
        return not (self.settings.set_active_from_account_enabled and user.account_enabled is False)


def _patterns(patterns: Iterable[str]) -> Callable[[str], Any] | None:
    """Whether a lower-cased name matches any of the shell-style ``patterns`` ignoring case
    (`fnmatch.fnmatchcase`), as one compiled expression; ``None`` for no patterns."""
    expressions = [fnmatch.translate(pattern.lower()) for pattern in patterns]
    if not expressions:
        return None
    return re.compile("|".join(f"(?:{expression})" for expression in expressions)).match


def _unique(values: Iterable[str], *, fold: bool = False) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for value in values:
        seen.setdefault(value.lower() if fold else value, value)
    return tuple(seen.values())


# --- matching ----------------------------------------------------------------------------


@attrs.frozen
class Match:
    """The PSA user a directory user is, or why it cannot be told."""

    row: Row[Any] | None
    ambiguous: str | None = None


def find_matches(
    connection: Connection,
    target: TenantTarget,
    users: Sequence[DirectoryUser],
    *,
    matching: UserMatching,
    run_id: int,
) -> dict[str, Match]:
    """The PSA user of each of ``users`` (a batch), by object ID, then by the config's
    matching field, then by UPN for a user recreated in the directory.

    A PSA user is a candidate for a second match only if no directory user of this run holds
    it already: it is not linked yet, or linked to an object of this tenant not seen this run
    (deleted, or about to be). Two candidates for one user are reported as ambiguous.
    """
    table = schema.users
    ids = [user.object_id for user in users]
    by_object_id = {
        row.external_id: row
        for row in connection.execute(
            by_external_id(table), {"b_tenant": target.tenant_ref, "b_ids": ids}
        )
    }
    matches = {oid: Match(row) for oid, row in by_object_id.items()}
    missing = [user for user in users if user.object_id not in by_object_id]
    if not missing:
        return matches
    # Without a PSA user of the customer that is unlinked, or of the tenant and unseen this
    # run (a new tenant's first batches), no candidate can exist: their queries are not made.
    maybe_free = prepared(
        "users maybe free",
        lambda: (
            sa.select(table.c.id)
            .where(
                table.c.customer_id == sa.bindparam("b_customer"),
                sa.or_(
                    table.c.external_id.is_(None),
                    sa.and_(table.c.tenant_ref == sa.bindparam("b_tenant"), unseen(table)),
                ),
            )
            .limit(1)
        ),
    )
    values = {"b_customer": target.customer_id, "b_tenant": target.tenant_ref, "b_run": run_id}
    if connection.execute(maybe_free, values).first() is None:
        return matches
    claimed: set[int] = set()

    def candidates(
        column: sa.Column[Any], keys: dict[str, str], *, of_tenant: bool = False
    ) -> dict[str, list[Any]]:
        """The customer's free PSA users (unlinked, or of this tenant, not of this batch and
        not seen this run) whose ``column``, lowercased, is one of ``keys``, by ID; with
        ``of_tenant``, only those linked to this tenant."""
        if not keys:
            return {}

        def build() -> sa.Select[Any]:
            # With ``of_tenant`` the customer is checked below, not here: SQLite, without
            # statistics, may otherwise walk the customer's index (all its users) instead of
            # searching ix_users_upn. Ordered below too: ORDER BY id favours that walk.
            where = [
                in_list(sa.func.lower(column, type_=column.type), "b_keys"),
                free_to_take(table),
            ]
            if of_tenant:
                where.append(table.c.tenant_ref == sa.bindparam("b_tenant"))
            else:
                where.append(table.c.customer_id == sa.bindparam("b_customer"))
            return sa.select(table).where(*where)

        statement = prepared(("user candidates by", column.key, of_tenant), build)
        found: dict[str, list[Any]] = {}
        rows = connection.execute(
            statement, values | {"b_keys": sorted(set(keys.values())), "b_ids": ids}
        ).all()
        for row in sorted(rows, key=operator.attrgetter("id")):
            if row.customer_id == target.customer_id:
                found.setdefault(str(getattr(row, column.key)).lower(), []).append(row)
        return found

    if matching is not UserMatching.OBJECT_ID:
        column = table.c.email if matching is UserMatching.EMAIL else table.c.network_login
        keys = {
            u.object_id: key.lower()
            for u in missing
            if (key := (u.mail if matching is UserMatching.EMAIL else u.user_principal_name))
        }
        found = candidates(column, keys)
        for user in missing:
            rows = found.get(keys.get(user.object_id, ""), [])
            if len(rows) > 1:
                listed = ", ".join(str(row.id) for row in rows)
                matches[user.object_id] = Match(
                    None,
                    f"{len(rows)} PSA users of the customer have the {matching.value} "
                    f"{keys[user.object_id]!r} (IDs {listed}): merge or correct them, then sync",
                )
            elif rows:
                _claim(matches, claimed, user, rows[0])
    # A user deleted and recreated with the same UPN: the PSA user of the old object.
    relink = {
        u.object_id: u.user_principal_name.lower() for u in missing if u.object_id not in matches
    }
    found = candidates(table.c.user_principal_name, relink, of_tenant=True)
    for user in missing:
        if user.object_id in matches:
            continue
        rows = [row for row in found.get(relink[user.object_id], []) if row.id not in claimed]
        if len(rows) == 1:
            _claim(matches, claimed, user, rows[0])
    return matches


def _claim(matches: dict[str, Match], claimed: set[int], user: DirectoryUser, row: Any) -> None:
    if row.id in claimed:
        other = next(oid for oid, m in matches.items() if m.row is not None and m.row.id == row.id)
        matches[user.object_id] = Match(
            None, f"PSA user {row.id} is already matched to directory user {other} in this batch"
        )
        return
    claimed.add(row.id)
    matches[user.object_id] = Match(row)
