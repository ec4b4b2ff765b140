"""What the CSP module fetches of a tenant's directory users (guide section 6).

Users come from Graph's delta query (api-reference/v1.0/api/user-delta.md): a first round
lists everyone, later rounds follow its ``@odata.deltaLink`` and list only what changed. On
top of that, `UserQuery` asks for three things the delta query does not give:

- **Group memberships** (site mappings, service accounts), transitive. Each run reads the
  transitive user ids of the groups asked for (those sets are all it keeps in memory) and
  annotates every user it yields. A user whose membership changed while the user object did
  not is not in the users round; each group's own delta link (group-delta.md, ``members``
  selected) names such users, and they are fetched and yielded too. The groups nested in a
  requested group are tracked the same way, since their members are members too.
- **Extra properties**, added to ``$select`` and handed over in ``attributes``.
- **Sign-in dates**: delta refuses ``signInActivity`` (the live service answers 400
  "$expand/$select is not supported for the following properties: signInActivity";
  microsoft-graph-explorer-v4#3189; user-delta.md does not list it), so they are read per
  page with ``/users?$filter=id in (...)&$select=id,signInActivity``, fifteen ids at a time
  (Graph allows no more values in an ``in`` without advanced queries).

The bookmark is JSON holding the users link, one link per tracked group and the query it
was made for, every link relative to the Graph endpoint. A plain link (what the module
stored before groups were tracked) is still read as the users link.
"""

from __future__ import annotations

import json
from collections import ChainMap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import structlog

from halo_integrator_core import (
    LATEST_BOOKMARK,
    Checkpoint,
    DirectoryUser,
    ModuleContext,
    Notice,
    RecordError,
    Removed,
    Tenant,
    UserQuery,
)
from halo_integrator_core.errors import Gone, NotFound, NotSupported, PermissionDenied
from halo_integrator_core.paging import ODataPage, odata_pages
from halo_integrator_core.translation import parse_timestamp, translator

from .auth import forget_refused
from .directory import CspSession, _customer_graph_headers, _explained, session
from .payloads import AssignedLicense, GraphUser

log = structlog.get_logger(__name__)

#: What a delta round asks for: what the PSA's user fields and licences need, no more.
USER_SELECT = (
    "id,userPrincipalName,displayName,givenName,surname,mail,jobTitle,department,"
    "officeLocation,businessPhones,mobilePhone,employeeId,accountEnabled,userType,"
    "usageLocation,assignedLicenses"
)
#: A group's delta query tracks its membership only (group-delta.md: "$select=members").
GROUP_DELTA_SELECT = "displayName,members"
#: Values one ``in (...)`` filter may hold: "Too many child clauses ... Max allowed: 15"
#: (microsoftgraph/microsoft-graph-docs#21098).
IDS_PER_FILTER = 15
#: Page size of the transitive member listings (group-list-transitivemembers.md: 1..999).
MEMBERS_PAGE = 999
#: What an advanced query (aad-advanced-queries.md), such as an OData cast, must send with
#: each of its requests, besides ``$count=true``.
ADVANCED_QUERY = {"ConsistencyLevel": "eventual"}
BOOKMARK_VERSION = 1

#: Graph's refusals of signInActivity (code → cause, fix), which leave sign-in dates empty
#: rather than fail the listing.
SIGN_IN_REFUSALS: Mapping[str, tuple[str, str]] = {
    "authentication_msgraphpermissionmissing": (
        "the GDAP app {app} lacks the Microsoft Graph application permission "
        "AuditLog.Read.All, which sign-in activity needs",
        "add AuditLog.Read.All (Application) to the GDAP app's API permissions, grant admin "
        "consent, then consent again in tenant {tenant_id} "
        "(`halo-integrator csp consent-url {tenant_id}`)",
    ),
    "authentication_requestfromnonpremiumtenantorb2ctenant": (
        "tenant {tenant} has no Microsoft Entra ID P1 or P2 licence, which sign-in activity needs",
        "the tenant needs Entra ID P1 or P2 (on its own or in a suite such as Microsoft 365 "
        "Business Premium or E3); sign-in dates stay empty until then",
    ),
}


def fetch_users(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: UserQuery | None = None
) -> Iterator[Any]:
    """The tenant's users, in full (no bookmark) or as changes since ``bookmark``."""
    csp = session(context)
    connection = csp.connection_of(tenant)
    headers = _customer_graph_headers(csp, connection, tenant)
    app = csp.clients(connection).gdap.app_name
    run = _UsersRun(csp, tenant, headers, app, query or UserQuery())
    with _explained("graph", tenant.tenant_id, app):
        yield from run.stream(bookmark)


@attrs.frozen
class UsersBookmark:
    """Where the next round starts: the users link, each tracked group's link, and what
    the round was asked for (a different query needs a full round to fill every user)."""

    users: str
    groups: Mapping[str, str] = attrs.field(factory=dict)
    #: Each requested group name and the group ids it named; ``None`` for a legacy bookmark.
    names: Mapping[str, tuple[str, ...]] | None = None
    properties: tuple[str, ...] = ()
    sign_ins: bool = False

    def dump(self) -> str:
        return json.dumps(
            {
                "v": BOOKMARK_VERSION,
                "users": self.users,
                "groups": dict(self.groups),
                "names": {name: list(ids) for name, ids in (self.names or {}).items()},
                "properties": list(self.properties),
                "signIns": self.sign_ins,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def load(cls, text: str) -> UsersBookmark | None:
        """The bookmark ``text`` holds, or ``None`` if it cannot be read."""
        if not text.lstrip().startswith("{"):
            return cls(users=text)  # a plain users link, as stored before groups were tracked
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != BOOKMARK_VERSION:
            return None
        users, groups, names = data.get("users"), data.get("groups"), data.get("names")
        if not isinstance(users, str) or not isinstance(groups, dict):
            return None
        if not isinstance(names, dict) or not all(isinstance(v, list) for v in names.values()):
            return None
        return cls(
            users=users,
            groups={str(k): str(v) for k, v in groups.items()},
            names={str(k): tuple(str(i) for i in v) for k, v in names.items()},
            properties=tuple(str(p) for p in data.get("properties") or ()),
            sign_ins=bool(data.get("signIns")),
        )

    def made_for(self, names: Mapping[str, tuple[str, ...]], query: UserQuery) -> bool:
        """Whether this bookmark's rounds gave what ``query`` asks for, with the groups its
        names name now. A legacy bookmark is taken as fitting any query."""
        if self.names is None:
            return True
        return (
            dict(self.names) == dict(names)
            and set(self.properties) == _property_key(query.properties)
            and self.sign_ins == query.sign_in_activity
        )


def _property_key(properties: Iterable[str]) -> set[str]:
    return {p.lower() for p in properties}


class _UsersRun:
    """One call of ``fetch_users`` for one tenant."""

    def __init__(
        self,
        csp: CspSession,
        tenant: Tenant,
        headers: Mapping[str, str],
        app: str,
        query: UserQuery,
    ) -> None:
        self.csp = csp
        self.tenant = tenant
        self.headers = headers
        self.app = app
        self.query = query
        self.select = _user_select(query.properties)
        #: Users pages come typed (`odata_pages`) unless extra properties are read, which
        #: only a page's JSON objects hold.
        self.typed = None if query.properties else GraphUser
        #: Turned off by the first refusal, so the tenant gets one notice.
        self.sign_ins = query.sign_in_activity
        #: Each requested group name → the ids of the groups of that name.
        self.names: dict[str, tuple[str, ...]] = {}
        #: Each requested group name → the ids of its users, nesting flattened.
        self.members: dict[str, set[str]] = {}
        #: ``members`` the other way round: each member's group names, in the query's order.
        self._groups_by_user: dict[str, tuple[str, ...]] | None = None
        #: Users whose membership changed (group delta rounds), not yet yielded this run.
        self.candidates: set[str] = set()

    # -- the run ---------------------------------------------------------------------------

    def stream(self, bookmark: str | None) -> Iterator[Any]:
        if bookmark == LATEST_BOOKMARK:
            yield from self._from_now()
            return
        saved = UsersBookmark.load(bookmark) if bookmark else None
        if bookmark and saved is None:
            log.warning("csp.users_bookmark_unreadable", tenant=self.tenant.tenant_id)
        yield from self._resolve_groups()
        if saved is not None and not saved.made_for(self.names, self.query):
            log.info("csp.users_query_changed", tenant=self.tenant.tenant_id)
            saved = None
        # Group links move before the member sets are read, so a membership change between
        # the two is in the sets now and in the links' next round, never in neither.
        group_links = self._follow_groups(saved)
        self._read_members()
        if saved is not None:
            try:
                users_link = yield from self._round(self._absolute(saved.users), None)
            except Gone:
                log.warning("csp.users_delta_expired", tenant=self.tenant.tenant_id)
            else:
                yield from self._membership_changes()
                yield Checkpoint(bookmark=self._bookmark(users_link, group_links), complete=False)
                return
        try:
            users_link = yield from self._round(
                self.csp.url("graph", "/v1.0/users/delta"), {"$select": self.select}
            )
        except NotSupported as exc:
            raise self._unsupported(exc) from None
        yield Checkpoint(bookmark=self._bookmark(users_link, group_links), complete=True)

    def _unsupported(self, exc: NotSupported) -> NotSupported:
        """Graph's 501 to a listing: with extra properties asked for, most likely one kept
        outside the directory, which Graph serves in no listing or delta
        (delta-query-overview.md: ``$select=skills`` answers 501, "This operation target is
        not yet supported."). Its answer names none, so the error names the suspects."""
        extra = sorted(set(self.query.properties), key=str.lower)
        if not extra:
            return exc
        return NotSupported(
            f"{exc.detail} The users were asked for with extra properties "
            f"{', '.join(extra)}: Graph serves no property kept outside the directory (such "
            "as skills, aboutMe or interests) in a users listing or delta. Fix: remove that "
            "property from the user field mappings, or map it from a directory property",
            method=exc.method,
            url=exc.url,
            status=exc.status,
            code=exc.code,
            request_id=exc.request_id,
            attempts=exc.attempts,
            body=exc.body,
        )

    def _from_now(self) -> Iterator[Any]:
        """`LATEST_BOOKMARK`: links that see what changes from now on, and no users
        (delta-query-overview.md: "Append $deltaToken=latest ... no resource data")."""
        yield from self._resolve_groups()
        group_links = self._follow_groups(None)
        users_link = self._latest_link("/v1.0/users/delta", {"$select": self.select})
        yield Checkpoint(bookmark=self._bookmark(users_link, group_links), complete=False)

    def _bookmark(self, users_link: str | None, group_links: Mapping[str, str]) -> str | None:
        if users_link is None:
            return None  # no link to resume from: the next run lists everyone again
        return UsersBookmark(
            users=users_link,
            groups=group_links,
            names=self.names,
            properties=tuple(sorted(_property_key(self.query.properties))),
            sign_ins=self.query.sign_in_activity,
        ).dump()

    # -- groups ----------------------------------------------------------------------------

    def _resolve_groups(self) -> Iterator[Notice]:
        """Each requested name's group ids (group-list.md, ``$filter`` on displayName)."""
        for name in dict.fromkeys(self.query.groups):
            quoted = name.replace("'", "''")  # OData: a quote inside a string is doubled
            ids: set[str] = set()
            for page in self._pages(
                "/v1.0/groups",
                {"$filter": f"displayName eq '{quoted}'", "$select": "id,displayName"},
            ):
                ids.update(str(item["id"]) for item in page.items if _has_id(item))
            if not ids:
                yield Notice(
                    code="group_not_found",
                    message=f"tenant {self.tenant.name} ({self.tenant.tenant_id}) has no group "
                    f"named {name!r}: none of its users counts as a member of it. Check the "
                    "group name in the site mappings and service account rules",
                )
            self.names[name] = tuple(sorted(ids))

    def _tracked_groups(self) -> set[str]:
        """The requested groups and every group nested in them."""
        tracked = {group_id for ids in self.names.values() for group_id in ids}
        for group_id in sorted(tracked):
            tracked.update(self._transitive(group_id, "microsoft.graph.group"))
        return tracked

    def _follow_groups(self, saved: UsersBookmark | None) -> dict[str, str]:
        """Each tracked group's next link; its membership changes go to ``candidates``."""
        links: dict[str, str] = {}
        for group_id in sorted(self._tracked_groups()):
            link = saved.groups.get(group_id) if saved is not None else None
            new_link = None
            if link:
                try:
                    new_link = self._group_changes(link)
                except Gone:
                    # Users are annotated from the member sets anyway; only the changes of
                    # users not otherwise yielded are missed, until the next round.
                    log.info(
                        "csp.group_delta_expired", tenant=self.tenant.tenant_id, group=group_id
                    )
            if new_link is None:
                new_link = self._latest_link(
                    "/v1.0/groups/delta",
                    {"$filter": f"id eq '{group_id}'", "$select": GROUP_DELTA_SELECT},
                )
            if new_link is not None:
                links[group_id] = new_link
        return links

    def _group_changes(self, link: str) -> str | None:
        """Follow one group's link: members added or removed since (delta-query-groups.md:
        "members@delta contains any changes to membership")."""
        delta_link = None
        for page in odata_pages(self.csp.http, self._absolute(link), headers=self.headers):
            for item in page.items:
                if not isinstance(item, dict) or "@removed" in item:
                    continue  # a deleted group: the next resolution of its name tells
                for member in item.get("members@delta") or ():
                    if not _has_id(member):
                        continue
                    kind = str(member.get("@odata.type") or "")
                    if kind.endswith(".group"):
                        # A group nested in or taken out: all its users changed membership.
                        self.candidates.update(self._transitive(str(member["id"])))
                    elif not kind or kind.endswith(".user"):
                        self.candidates.add(str(member["id"]))
            delta_link = page.delta_link or delta_link
        return self._relative(delta_link)

    def _read_members(self) -> None:
        self._groups_by_user = None
        for name, ids in self.names.items():
            members: set[str] = set()
            for group_id in ids:
                members.update(self._transitive(group_id))
            self.members[name] = members

    def _transitive(self, group_id: str, cast: str = "microsoft.graph.user") -> Iterator[str]:
        """The ids of a group's users (or nested groups), nesting flattened; none if the
        group is gone. The OData cast to one type is an advanced query: Graph serves it only
        with ``ConsistencyLevel: eventual`` and ``$count=true`` (group-list-transitivemembers.md),
        the header sent with every page (it is not carried into the next link)."""
        path = f"/v1.0/groups/{group_id}/transitiveMembers/{cast}"
        params = {"$select": "id", "$top": str(MEMBERS_PAGE), "$count": "true"}
        try:
            for page in self._pages(path, params, headers=ADVANCED_QUERY):
                yield from (str(item["id"]) for item in page.items if _has_id(item))
        except NotFound:
            return

    def _groups_of(self, user_id: str) -> tuple[str, ...]:
        if self._groups_by_user is None:
            found: dict[str, list[str]] = {}
            for name, members in self.members.items():
                for member in members:
                    found.setdefault(member, []).append(name)
            self._groups_by_user = {member: tuple(names) for member, names in found.items()}
        return self._groups_by_user.get(user_id, ())

    # -- users -----------------------------------------------------------------------------

    def _round(self, url: str, params: dict[str, str] | None) -> Iterator[Any]:
        """One users delta round, page by page; returns its relative delta link.

        Every item of a round carries every selected property, its old value if unchanged:
        without ``Prefer: return=minimal`` (user-delta.md, v1.0), which is never sent, a
        property is left out only when it was never set, so an absent one is read as its
        default. With that header an absent property would mean "unchanged", and reading
        it as its default would clear fields and licences."""
        delta_link = None
        for page in odata_pages(
            self.csp.http, url, params=params, headers=self.headers, typed=self.typed
        ):
            yield from self._with_sign_ins(page.translated(self._round_record))
            delta_link = page.delta_link or delta_link
        return self._relative(delta_link)

    def _round_record(self, item: Any) -> Any:
        """A delta round's item as a record: a removal, a user, or why it is neither."""
        if isinstance(item, dict) and "@removed" in item:
            entity_id = str(item.get("id"))
            self.candidates.discard(entity_id)
            reason = (item.get("@removed") or {}).get("reason", "deleted")
            return Removed(entity_id=entity_id, reason=reason)
        record = self._user(item)
        if isinstance(record, DirectoryUser):
            self.candidates.discard(record.object_id)
        return record

    def _membership_changes(self) -> Iterator[Any]:
        """The users whose group membership changed but who were not in the users round."""
        for batch in _batches(sorted(self.candidates), IDS_PER_FILTER):
            records = [
                record
                for page in self._pages(
                    "/v1.0/users",
                    {"$filter": _id_in(batch), "$select": self.select},
                    typed=self.typed,
                )
                for record in page.translated(self._user)
            ]
            # A user deleted since is simply not listed: the users round said so.
            yield from self._with_sign_ins(records)
        self.candidates.clear()

    def _user(self, item: Any) -> DirectoryUser | RecordError:
        return _translate_user(item, self)

    # -- sign-in activity ------------------------------------------------------------------

    def _with_sign_ins(self, records: list[Any]) -> Iterator[Any]:
        """``records`` in their order, the users with their last sign-in when asked for."""
        users = [r.object_id for r in records if isinstance(r, DirectoryUser)]
        if not (self.sign_ins and users):
            yield from records
            return
        found = yield from self._sign_ins(users)
        for record in records:
            if isinstance(record, DirectoryUser):
                record = attrs.evolve(record, last_sign_in_at=found.get(record.object_id))
            yield record

    def _sign_ins(self, user_ids: list[str]) -> Iterator[Notice]:
        """Each user's last sign-in (user-list.md, signInActivity); returns them by id."""
        found: dict[str, datetime | None] = {}
        try:
            for batch in _batches(user_ids, IDS_PER_FILTER):
                for page in self._pages(
                    "/v1.0/users", {"$filter": _id_in(batch), "$select": "id,signInActivity"}
                ):
                    for item in page.items:
                        if _has_id(item):
                            found[str(item["id"])] = self._last_sign_in(item)
        except PermissionDenied as exc:
            refusal = SIGN_IN_REFUSALS.get((exc.code or "").lower())
            if refusal is None:
                raise
            self.sign_ins = False
            if exc.code and exc.code.lower() == "authentication_msgraphpermissionmissing":
                # Handled here, not by `_explained`: the held token lacks the permission and
                # would be served until it ends, after the admin had added it.
                forget_refused(self.tenant.tenant_id, self.app)
            cause, fix = refusal
            where = {
                "app": self.app,
                "tenant": f"{self.tenant.name} ({self.tenant.tenant_id})",
                "tenant_id": self.tenant.tenant_id,
            }
            log.warning(
                "csp.sign_in_activity_unavailable", tenant=self.tenant.tenant_id, code=exc.code
            )
            yield Notice(
                code="sign_in_activity_unavailable",
                message=f"tenant {where['tenant']}: users are imported without their last "
                f"sign-in: {cause.format(**where)} ({exc.code}). Fix: {fix.format(**where)}",
            )
            return {}
        return found

    def _last_sign_in(self, item: dict[str, Any]) -> datetime | None:
        """The later of the last interactive and non-interactive sign-ins; "never"
        (``0001-01-01T00:00:00Z``) is None."""
        activity = item.get("signInActivity")
        if not isinstance(activity, dict):
            return None
        moments = []
        for key in ("lastSignInDateTime", "lastNonInteractiveSignInDateTime"):
            try:
                moment = parse_timestamp(activity.get(key))
            except ValueError:
                log.warning(
                    "csp.sign_in_unreadable",
                    tenant=self.tenant.tenant_id,
                    user=item.get("id"),
                    value=activity.get(key),
                )
                continue
            if moment is not None:
                moments.append(moment)
        return max(moments, default=None)

    # -- links -----------------------------------------------------------------------------

    def _pages(
        self,
        path: str,
        params: dict[str, str],
        *,
        typed: type | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[ODataPage]:
        return odata_pages(
            self.csp.http,
            self.csp.url("graph", path),
            params=params,
            # A chain, not a copy: the token header is read for each request (BearerHeaders).
            headers=ChainMap(headers, self.headers) if headers else self.headers,
            typed=typed,
        )

    def _latest_link(self, path: str, params: dict[str, str]) -> str | None:
        """A delta link from now, with no listing (``$deltatoken=latest``)."""
        delta_link = None
        for page in self._pages(path, {**params, "$deltatoken": "latest"}):
            delta_link = page.delta_link or delta_link
        return self._relative(delta_link)

    def _relative(self, link: str | None) -> str | None:
        """A delta link kept relative to the Graph endpoint, so a changed endpoint setting (a
        sovereign cloud, the emulator on another port) does not strand the stored bookmarks."""
        base = self.csp.endpoints.url("graph").rstrip("/")
        return link[len(base) :] if link and link.startswith(base + "/") else link

    def _absolute(self, link: str) -> str:
        base = self.csp.endpoints.url("graph").rstrip("/")
        return base + link if link.startswith("/") else link


def _user_select(properties: Iterable[str]) -> str:
    """`USER_SELECT` and the extra properties it does not name already. signInActivity is
    left out: delta refuses it, and it is read separately."""
    chosen = USER_SELECT.split(",")
    known = {name.lower() for name in chosen} | {"signinactivity"}
    for name in properties:
        if name and name.lower() not in known:
            chosen.append(name)
            known.add(name.lower())
    return ",".join(chosen)


def _directory_user(
    run: _UsersRun,
    item: dict[str, Any],
    *,
    id: str,
    user_principal_name: str,
    display_name: str | None,
    given_name: str | None,
    surname: str | None,
    mail: str | None,
    job_title: str | None,
    department: str | None,
    office_location: str | None,
    business_phones: list[str],
    mobile_phone: str | None,
    employee_id: str | None,
    account_enabled: bool | None,
    user_type: str | None,
    usage_location: str | None,
    assigned_licenses: list[AssignedLicense],
) -> DirectoryUser:
    """The `DirectoryUser` of a Graph user (the fields of a `GraphUser`), with its groups
    and the extra properties ``run`` asks for."""
    return DirectoryUser(
        object_id=id,
        user_principal_name=user_principal_name,
        display_name=display_name,
        given_name=given_name,
        surname=surname,
        mail=mail,
        job_title=job_title,
        department=department,
        office_location=office_location,
        business_phones=tuple(business_phones),
        mobile_phone=mobile_phone,
        employee_id=employee_id,
        account_enabled=account_enabled,
        user_type=user_type,
        assigned_sku_ids=tuple([licence.sku_id for licence in assigned_licenses]),
        groups=run._groups_of(id),
        attributes=_properties(item, run.query.properties, {"usageLocation": usage_location}),
    )


#: A Graph user payload → its `DirectoryUser` (or a `RecordError`), given the run.
_translate_user = translator(GraphUser, _directory_user)


def _properties(item: Any, names: Sequence[str], found: dict[str, Any]) -> dict[str, Any]:
    """``found`` with the extra properties of ``item`` by their Microsoft names, each
    ``None`` when absent or empty. A name ``item`` lacks (or holds null) is looked for
    ignoring case."""
    if not names:
        return found
    if not isinstance(item, dict):
        found.update(dict.fromkeys(names))
        return found
    folded: dict[str, str] | None = None
    for name in names:
        value = item.get(name)
        if value is None:
            lowered = name.lower()
            if folded is None:
                folded = _folded_keys(item)
            if folded is None:
                value = next((v for k, v in item.items() if k.lower() == lowered), None)
            elif (key := folded.get(lowered)) is not None:
                value = item[key]
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is float:
            found[name] = value
        elif kind is str:
            found[name] = value or None
        else:
            found[name] = None if value in ("", [], {}) else value
    return found


#: Each layout of keys, by lower case (the first of the keys that fold alike): the items of
#: a page share a layout, so a null property does not lower every key of every item.
_KEY_LAYOUTS: dict[tuple[Any, ...], dict[str, str]] = {}
_KEY_LAYOUTS_KEPT = 64


def _folded_keys(item: dict[Any, Any]) -> dict[str, str] | None:
    """``item``'s keys by lower case; ``None`` if one is not a string."""
    layout = tuple(item)
    folded = _KEY_LAYOUTS.get(layout)
    if folded is None:
        if not all(type(key) is str for key in layout):
            return None
        folded = {}
        for key in layout:
            folded.setdefault(key.lower(), key)
        if len(_KEY_LAYOUTS) >= _KEY_LAYOUTS_KEPT:
            _KEY_LAYOUTS.clear()
        _KEY_LAYOUTS[layout] = folded
    return folded


def _has_id(item: Any) -> bool:
    return isinstance(item, dict) and bool(item.get("id"))


def _id_in(ids: list[str]) -> str:
    return "id in (" + ",".join(f"'{i}'" for i in ids) + ")"


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
