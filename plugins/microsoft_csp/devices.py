"""What the CSP module fetches of a tenant's Intune managed devices (guide section 7).

Devices are always listed in full (Intune has no delta query for them), from
``/deviceManagement/managedDevices`` (api-reference/v1.0/api/intune-devices-manageddevice-list.md),
or, for the guide's older "user method", from each directory user's own
``/users/{id}/managedDevices``. Either way `DEVICE_SELECT` and the extra properties of the
`AssetQuery` are all that is asked for, and every page is translated and yielded before the
next is fetched.

What Graph answers that is not a device listing:

- a token without ``DeviceManagementManagedDevices.Read.All``: Intune's 403 ``Forbidden``
  ("Application is not authorized to perform this operation. Application must have one of
  the following scopes: ..."; mondoohq/cnspec#1708), or the directory's
  ``Authorization_RequestDenied``: an `InsufficientPrivileges` naming the permission, the
  GDAP app and the tenant;
- a tenant without an Intune licence (the list page: "requires an active Intune license"):
  400 ``BadRequest`` "Request not applicable to target tenant." (msgraph-beta-sdk-go#198;
  Microsoft365DSC reads it as "not registered for Intune"): `SkipTenant`, the tenant's stored
  assets kept as they are;
- an extra property that v1.0 does not know (``deviceType`` and ``chassisType`` are beta
  only): 400 "Could not find a property named 'deviceType' on type
  'microsoft.graph.managedDevice'.": the property is dropped for the rest of the run, left
  empty in ``attributes``, and one `Notice` says so.

Intune reports unknown text as ``""`` (serial numbers, IMEIs of PCs, the user of a userless
device) and "never" as ``0001-01-01T00:00:00Z``; both become ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import attrs
import structlog

from halo_integrator_core import (
    AssetQuery,
    Checkpoint,
    ManagedDevice,
    ModuleContext,
    Notice,
    RecordError,
    SkipTenant,
    Tenant,
)
from halo_integrator_core.errors import BadRequest, HttpError, NotFound, PermissionDenied
from halo_integrator_core.paging import ODataPage, odata_pages
from halo_integrator_core.translation import translator

from .auth import forget_refused
from .directory import CspSession, _customer_graph_headers, _explained, session
from .errors import InsufficientPrivileges
from .payloads import GraphManagedDevice
from .users import _properties

log = structlog.get_logger(__name__)

#: What every device is asked for: the fields of `ManagedDevice`, by their v1.0 names
#: (resources/intune-devices-manageddevice.md).
DEVICE_SELECT = (
    "id,deviceName,serialNumber,manufacturer,model,operatingSystem,osVersion,complianceState,"
    "lastSyncDateTime,enrolledDateTime,imei,wiFiMacAddress,azureADDeviceId,managementAgent,"
    "userId,userPrincipalName,emailAddress"
)
#: The permission the GDAP app needs (intune-devices-manageddevice-list.md, Application).
DEVICE_PERMISSION = "DeviceManagementManagedDevices.Read.All"
#: The user method lists users a page at a time, with no more than it needs (user-list.md:
#: ``$top`` 1..999).
USER_SELECT = "id,userPrincipalName"
USERS_PAGE = 999

#: Graph's words for a tenant without Intune.
_NO_INTUNE = "not applicable to target tenant"
#: Graph's words for a ``$select`` naming a property the type does not have.
_UNKNOWN_PROPERTY = re.compile(r"could not find a property named '([^']+)'", re.IGNORECASE)


def fetch_assets(
    context: ModuleContext, tenant: Tenant, bookmark: str | None, query: AssetQuery | None = None
) -> Iterator[Any]:
    """Every managed device of the tenant, then ``Checkpoint(bookmark=None, complete=True)``.
    ``bookmark`` is not used: devices are always listed in full."""
    csp = session(context)
    connection = csp.connection_of(tenant)
    headers = _customer_graph_headers(csp, connection, tenant)
    app = csp.clients(connection).gdap.app_name
    run = _DevicesRun(csp, tenant, headers, app, query or AssetQuery())
    with _explained("graph", tenant.tenant_id, app):
        yield from run.stream()


class _DevicesRun:
    """One call of ``fetch_assets`` for one tenant."""

    def __init__(
        self,
        csp: CspSession,
        tenant: Tenant,
        headers: Mapping[str, str],
        app: str,
        query: AssetQuery,
    ) -> None:
        self.csp = csp
        self.tenant = tenant
        self.headers = headers
        self.app = app
        self.query = query
        #: The extra properties still asked for (one Graph refuses is dropped).
        self.extra = _extra_properties(query.properties)

    def stream(self) -> Iterator[Any]:
        if self.query.per_user:
            yield from self._per_user()
        else:
            for page in self._device_pages("/v1.0/deviceManagement/managedDevices"):
                if isinstance(page, Notice):
                    yield page
                    continue
                yield from page.translated(self._device)
        yield Checkpoint(bookmark=None, complete=True)

    # -- the user method -------------------------------------------------------------------

    def _per_user(self) -> Iterator[Any]:
        """Each user's devices, the device's ``user_id`` the user whose list held it; a device
        listed under several users (a shared one) is yielded under the first only."""
        seen: set[str] = set()
        users = odata_pages(
            self.csp.http,
            self.csp.url("graph", "/v1.0/users"),
            params={"$select": USER_SELECT, "$top": str(USERS_PAGE)},
            headers=self.headers,
        )
        for users_page in users:
            for user in users_page.items:
                if not isinstance(user, dict) or not user.get("id"):
                    log.warning("csp.user_without_id", tenant=self.tenant.tenant_id)
                    continue
                yield from self._devices_of(str(user["id"]), user.get("userPrincipalName"), seen)

    def _devices_of(self, user_id: str, upn: Any, seen: set[str]) -> Iterator[Any]:
        upn = upn if isinstance(upn, str) and upn.strip() else None
        try:
            for page in self._device_pages(f"/v1.0/users/{user_id}/managedDevices"):
                if isinstance(page, Notice):
                    yield page
                    continue
                records = []
                for record in page.translated(self._device):
                    key = (
                        record.device_id if isinstance(record, ManagedDevice) else record.entity_id
                    )
                    if key is not None and key in seen:
                        continue
                    if key is not None:
                        seen.add(key)
                    if isinstance(record, ManagedDevice):
                        record = attrs.evolve(
                            record,
                            user_id=user_id,
                            user_principal_name=record.user_principal_name or upn,
                        )
                    records.append(record)
                yield from records
        except NotFound:
            # Deleted since its page of users was read: it has no devices to list any more.
            log.info("csp.device_user_gone", tenant=self.tenant.tenant_id, user=user_id)

    # -- pages -----------------------------------------------------------------------------

    def _device_pages(self, path: str) -> Iterator[ODataPage | Notice]:
        """The pages of one device listing, and a `Notice` for each extra property Graph
        refuses (the listing starts again without it). Refusals are explained."""
        while True:
            params = {"$select": ",".join([DEVICE_SELECT, *self.extra])}
            started = False
            try:
                for page in odata_pages(
                    self.csp.http,
                    self.csp.url("graph", path),
                    params=params,
                    headers=self.headers,
                    # Typed pages hold no extra properties: with any, the JSON objects do.
                    typed=None if self.extra else GraphManagedDevice,
                ):
                    started = True
                    yield page
                return
            except (BadRequest, PermissionDenied) as exc:
                unknown = None if started else self._unknown_property(exc)
                if unknown is None:
                    raise self._explain(exc) from None
                self.extra.remove(unknown)
                log.warning(
                    "csp.device_property_unknown", tenant=self.tenant.tenant_id, property=unknown
                )
                yield Notice(
                    code="device_property_unknown",
                    message=f"tenant {self._where}: Graph v1.0 has no managed-device property "
                    f"{unknown!r}, so it is left empty on every device. Fix: use a property of "
                    "resources/intune-devices-manageddevice.md (v1.0) in the asset type rules and "
                    "field mappings; deviceType, chassisType and enrollmentProfileName are beta only",
                )

    def _unknown_property(self, exc: HttpError) -> str | None:
        """The extra property a 400 says the device type does not have, if it says so."""
        if not isinstance(exc, BadRequest):
            return None
        match = _UNKNOWN_PROPERTY.search(exc.detail or "")
        if match is None:
            return None
        return next((p for p in self.extra if p.lower() == match.group(1).lower()), None)

    def _explain(self, exc: HttpError) -> Exception:
        """What a refusal of a device listing means, and what to do about it."""
        if _NO_INTUNE in (exc.detail or "").lower():
            return SkipTenant(
                f"tenant {self._where} has no Intune licence: Graph answers its managed "
                f"devices with {exc.status} {exc.code} 'Request not applicable to target "
                "tenant.'. Its assets are left as they are. Fix: if it should have Intune, "
                "assign a licence that includes Microsoft Intune (Intune Plan 1, Microsoft 365 "
                "Business Premium, E3 or E5) and set its MDM authority to Intune"
            )
        if isinstance(exc, PermissionDenied):
            tenant_id = self.tenant.tenant_id
            # Raised as our own error, which `_explained` does not see: the token held for
            # the tenant lacks the permission and would be served until it ends (an hour),
            # after the admin had added it, so it is dropped here.
            forget_refused(tenant_id, self.app)
            return InsufficientPrivileges(
                cause=f"{self.app} may not read the Intune managed devices of "
                f"tenant {self._where}: it lacks the Microsoft Graph application permission "
                f"{DEVICE_PERMISSION}",
                fix=f"add {DEVICE_PERMISSION} (Application, not Delegated) to the GDAP app's API "
                "permissions and grant admin consent in the partner tenant, then consent again "
                f"in tenant {tenant_id} (`halo-integrator csp consent-url {tenant_id}`) so that "
                "its service principal there gets the permission",
                code=exc.code,
                tenant=tenant_id,
                app=self.app,
                detail=exc.detail,
            )
        return exc

    @property
    def _where(self) -> str:
        return f"{self.tenant.name} ({self.tenant.tenant_id})"

    # -- translation -----------------------------------------------------------------------

    def _device(self, item: Any) -> ManagedDevice | RecordError:
        return _translate_device(item, self)


def _managed_device(
    run: _DevicesRun,
    item: dict[str, Any],
    *,
    id: str,
    device_name: str | None,
    serial_number: str | None,
    manufacturer: str | None,
    model: str | None,
    operating_system: str | None,
    os_version: str | None,
    compliance_state: str | None,
    last_sync_date_time: datetime | None,
    enrolled_date_time: datetime | None,
    imei: str | None,
    wi_fi_mac_address: str | None,
    azure_ad_device_id: str | None,
    management_agent: str | None,
    user_id: str | None,
    user_principal_name: str | None,
    email_address: str | None,
) -> ManagedDevice | RecordError:
    """The `ManagedDevice` of an Intune device (the fields of a `GraphManagedDevice`), with
    the extra properties ``run`` asks for."""
    if not id.strip():
        return RecordError(entity_id=None, reason="$.id: empty")
    return ManagedDevice(
        device_id=id,
        device_name=_text(device_name),
        serial_number=_text(serial_number),
        manufacturer=_text(manufacturer),
        model=_text(model),
        operating_system=_text(operating_system),
        os_version=_text(os_version),
        compliance_state=_text(compliance_state),
        last_sync_at=last_sync_date_time,
        enrolled_at=enrolled_date_time,
        imei=_text(imei),
        wifi_mac=_text(wi_fi_mac_address),
        azure_ad_device_id=_text(azure_ad_device_id),
        management_agent=_text(management_agent),
        user_id=_text(user_id),
        user_principal_name=_text(user_principal_name),
        email_address=_text(email_address),
        attributes=_properties(item, run.query.properties, {}),
    )


#: An Intune device payload → its `ManagedDevice` (or a `RecordError`), given the run.
_translate_device = translator(GraphManagedDevice, _managed_device)


def _text(value: str | None) -> str | None:
    """Intune's "unknown" (an empty or blank string) as ``None``."""
    return value if value is not None and value.strip() else None


def _extra_properties(properties: Iterable[str]) -> list[str]:
    """The asked-for properties `DEVICE_SELECT` does not name already, each once."""
    known = {name.lower() for name in DEVICE_SELECT.split(",")}
    extra = []
    for name in properties:
        if name and name.lower() not in known:
            extra.append(name)
            known.add(name.lower())
    return extra
