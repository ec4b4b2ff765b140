"""Asset import rules (guide 7): asset types, user matching, field mappings, statuses, and
the global matching field that keeps one device one asset across integrations.

A device finds its asset by Intune device ID; failing that, by the global matching field
(serial number by default) among the customer's assets that no device of this run holds,
so an asset another integration imported is updated rather than duplicated. Placeholder
serials never match. Two devices of one tenant with one serial are reported, and each
keeps an asset of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from operator import attrgetter
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from ..config import (
    JUNK_SERIALS,
    AssetMatchingField,
    AssetSettings,
    AssetTypeMethod,
    AssetUserMatching,
    DeviceCondition,
    DeviceOperator,
    DeviceUserField,
    UnmappedTypeValue,
    UnmatchedDevice,
)
from ..models import AssetQuery, ManagedDevice
from ..store import schema, utcnow
from ..store.prepared import by_external_id, free_to_take, in_list, prepared
from .mapping import MAIN_SITE, SiteFinder, TenantTarget, _json_safe, record_getter, text_value, utc

#: Intune properties every `ManagedDevice` carries in a field of its own.
STANDARD_PROPERTIES: Mapping[str, str] = {
    "id": "device_id",
    "deviceName": "device_name",
    "serialNumber": "serial_number",
    "manufacturer": "manufacturer",
    "model": "model",
    "operatingSystem": "operating_system",
    "osVersion": "os_version",
    "complianceState": "compliance_state",
    "lastSyncDateTime": "last_sync_at",
    "enrolledDateTime": "enrolled_at",
    "imei": "imei",
    "wiFiMacAddress": "wifi_mac",
    "azureADDeviceId": "azure_ad_device_id",
    "managementAgent": "management_agent",
    "userId": "user_id",
    "userPrincipalName": "user_principal_name",
    "emailAddress": "email_address",
}

#: The ``managementAgent`` of devices managed by Microsoft Defender for Endpoint
#: (resources/intune-devices-managementagenttype.md: "msSense").
SENSE_AGENT = "mssense"

_DATE_FIELDS = frozenset({"last_sync_at", "enrolled_at"})
_WIDTHS = {
    "operating_system": 100,
    "os_version": 100,
    "compliance_state": 40,
    "imei": 40,
    "wifi_mac": 40,
    "azure_ad_device_id": 64,
    "management_agent": 100,
}


def device_value(device: ManagedDevice, name: str) -> Any:
    field = STANDARD_PROPERTIES.get(name)
    if field is not None:
        return getattr(device, field)
    return device.attributes.get(name)


def device_getter(name: str) -> Callable[[ManagedDevice], Any]:
    """`device_value` of ``name`` as a function of the device: rules resolve the names they
    read once, not for every device."""
    return record_getter(STANDARD_PROPERTIES, name)


def _date(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return utc(value)
    text = text_value(value)
    if text is None:
        return None
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def condition_holds(condition: DeviceCondition, device: ManagedDevice) -> bool:
    return compile_condition(condition)(device)


def compile_condition(condition: DeviceCondition) -> Callable[[ManagedDevice], bool]:
    """`condition_holds` of ``condition`` as a function of the device, its property and value
    resolved (and a regular expression compiled) once."""
    get, operator = device_getter(condition.field), condition.operator

    def text(device: ManagedDevice) -> str:
        return (text_value(get(device)) or "").lower()

    if operator is DeviceOperator.MATCHES:
        try:
            search = re.compile(condition.value, re.IGNORECASE).search
        except re.error:  # said when a device meets it, as `re.search` would
            return lambda device: (
                re.search(condition.value, text(device), re.IGNORECASE) is not None
            )
        return lambda device: search(text(device)) is not None
    wanted = condition.value.strip().lower()
    if operator is DeviceOperator.EQUALS:
        return lambda device: text(device) == wanted
    if operator is DeviceOperator.NOT_EQUALS:
        return lambda device: text(device) != wanted
    if operator is DeviceOperator.CONTAINS:
        return lambda device: wanted in text(device)
    if operator is DeviceOperator.STARTS_WITH:
        return lambda device: text(device).startswith(wanted)
    raise AssertionError(f"unhandled operator {operator}")  # pragma: no cover


def is_sense(device: ManagedDevice) -> bool:
    return (device.management_agent or "").lower() == SENSE_AGENT


@attrs.frozen
class Placement:
    site_id: int
    user_id: int | None


class AssetRules:
    """The config's asset rules, compiled against the store once per run."""

    def __init__(self, settings: AssetSettings) -> None:
        self.settings = settings
        self.field_map = settings.field_map()
        self.custom_map = dict(settings.custom_fields)
        self.junk = frozenset(
            serial.casefold() for serial in (*JUNK_SERIALS, *settings.junk_serials)
        )
        self.type_values = {k.strip().lower(): v for k, v in settings.type_values.items()}
        self._types: dict[str, int] = {}
        self.sites = SiteFinder()
        # What the rules read of a device, resolved once.
        self._type_field = (
            None if settings.type_field is None else device_getter(settings.type_field)
        )
        self._type_rules = tuple(
            (rule.type, tuple(compile_condition(c) for c in rule.conditions))
            for rule in settings.type_rules
        )
        self._field_sources = tuple(
            (field, device_getter(source), field in _DATE_FIELDS, _WIDTHS.get(field, 255))
            for field, source in self.field_map.items()
        )
        self._custom_sources = tuple(
            (name, device_getter(source)) for name, source in self.custom_map.items()
        )
        matching = settings.matching_field
        self._match_value = (
            None if matching is AssetMatchingField.NONE else attrgetter(matching.value)
        )

    def query(self) -> AssetQuery:
        settings = self.settings
        names = [
            *self.field_map.values(),
            *self.custom_map.values(),
            *([settings.type_field] if settings.type_field else []),
            *(c.field for rule in settings.type_rules for c in rule.conditions),
        ]
        extra = tuple(dict.fromkeys(n for n in names if n not in STANDARD_PROPERTIES))
        return AssetQuery(
            properties=extra, per_user=settings.user_matching is AssetUserMatching.USER
        )

    # -- types -----------------------------------------------------------------------------

    def type_name(self, device: ManagedDevice) -> str | None:
        """The asset type's name for ``device``; ``None`` when the rules exclude it."""
        settings = self.settings
        if settings.type_method is AssetTypeMethod.FIELD:
            assert self._type_field is not None
            value = text_value(self._type_field(device))
            if value is not None and value.lower() in self.type_values:
                return self.type_values[value.lower()]
            if value is not None and settings.unmapped_values is UnmappedTypeValue.CREATE:
                return value[:255]
            return settings.type
        if settings.type_method is AssetTypeMethod.RULES:
            for type_name, conditions in self._type_rules:
                for holds in conditions:
                    if not holds(device):
                        break
                else:  # every condition holds
                    return type_name
            return None if settings.unmatched is UnmatchedDevice.EXCLUDE else settings.type
        return settings.type

    def type_id(self, connection: Connection, name: str) -> int:
        key = name.strip().lower()
        if key not in self._types:
            table = schema.asset_types
            found = connection.execute(
                sa.select(table.c.id)
                .where(sa.func.lower(table.c.name) == key)
                .order_by(table.c.id)
                .limit(1)
            ).scalar_one_or_none()
            if found is None:
                found = connection.execute(
                    sa.insert(table).values(name=name.strip(), created_at=utcnow())
                ).inserted_primary_key[0]
            self._types[key] = found
        return self._types[key]

    # -- sites and users ---------------------------------------------------------------------

    def default_site(self, connection: Connection, target: TenantTarget) -> int:
        name = self.settings.default_site
        if not name or name.lower() == MAIN_SITE.lower():
            assert target.main_site_id is not None
            return target.main_site_id
        assert target.customer_id is not None
        site_id = self.sites.find(connection, target.customer_id, name, create=True)
        assert site_id is not None
        return site_id

    def owners(
        self, connection: Connection, target: TenantTarget, devices: Sequence[ManagedDevice]
    ) -> dict[str, Row[Any]]:
        """The PSA user of each device that has one, by the configured user field."""
        users = schema.users
        if self.settings.user_matching is AssetUserMatching.USER:
            field, column, scope = "user_id", users.c.external_id, users.c.tenant_ref
        else:
            field, column, scope = {
                DeviceUserField.USER_PRINCIPAL_NAME: (
                    "user_principal_name",
                    users.c.user_principal_name,
                    users.c.tenant_ref,
                ),
                DeviceUserField.USER_ID: ("user_id", users.c.external_id, users.c.tenant_ref),
                DeviceUserField.EMAIL_ADDRESS: (
                    "email_address",
                    users.c.email,
                    users.c.customer_id,
                ),
            }[self.settings.user_field]
        keys = {
            device.device_id: key.lower()
            for device in devices
            if (key := text_value(getattr(device, field)))
        }
        if not keys:
            return {}
        scope_value = target.tenant_ref if scope is users.c.tenant_ref else target.customer_id
        statement = prepared(
            ("device owners by", column.key, scope.key),
            lambda: (
                sa.select(users.c.id, users.c.site_id, column.label("key"))
                .where(
                    scope == sa.bindparam("b_scope"),
                    users.c.active.is_(True),
                    in_list(sa.func.lower(column, type_=column.type), "b_keys"),
                )
                .order_by(users.c.id)
            ),
        )
        found: dict[str, list[Row[Any]]] = {}
        for row in connection.execute(
            statement, {"b_scope": scope_value, "b_keys": sorted(set(keys.values()))}
        ):
            found.setdefault(str(row.key).lower(), []).append(row)
        # A user field two PSA users share names no one: the device goes to the default site.
        return {
            device_id: rows[0]
            for device_id, key in keys.items()
            if len(rows := found.get(key, [])) == 1
        }

    # -- matching keys and columns -----------------------------------------------------------

    def match_key(self, device: ManagedDevice) -> str | None:
        """The global matching field's value, normalised; ``None`` if it identifies nothing."""
        if self._match_value is None:
            return None
        value = text_value(self._match_value(device))
        if value is None:
            return None
        key = value.casefold()
        if self.settings.matching_field is AssetMatchingField.SERIAL_NUMBER and self.junk_serial(
            key
        ):
            return None
        return key[:255]

    def junk_serial(self, key: str) -> bool:
        # Placeholders, and a serial of one repeated character ("0000000", "xxxx").
        return key in self.junk or not key or key.count(key[0]) == len(key)

    def columns(
        self, device: ManagedDevice, row: Row[Any] | None, *, match_key: str | None
    ) -> dict[str, Any]:
        """The asset's columns for ``device``, whose `match_key` the caller has already."""
        values: dict[str, Any] = {}
        for field, get, is_date, width in self._field_sources:
            value = get(device)
            if is_date:
                values[field] = _date(value)
            elif type(value) is str:  # `text_value`'s common case, here in the loop
                values[field] = value.strip()[:width] or None
            else:
                text = text_value(value)
                values[field] = text[:width] if text else None
        custom = dict(row.custom_fields or {}) if row is not None else {}
        for name, get in self._custom_sources:
            custom[name] = text_value(get(device))  # text or None: JSON as it is
        values["custom_fields"] = custom
        values["attributes"] = _json_safe(device.attributes)
        values["match_key"] = match_key
        return values

    @cached_property
    def statuses(self) -> tuple[str, str]:
        return self.settings.new_status, self.settings.deleted_status


# --- matching ----------------------------------------------------------------------------


def find_assets(
    connection: Connection,
    target: TenantTarget,
    devices: Mapping[str, ManagedDevice],
    keys: Mapping[str, str | None],
    *,
    run_id: int,
) -> tuple[dict[str, Row[Any]], dict[str, str]]:
    """The asset of each device (by Intune device ID, then by matching key), and the
    devices whose key another device of this tenant claims in this run (with why)."""
    table = schema.assets
    ids = list(devices)
    values = {
        "b_tenant": target.tenant_ref,
        "b_customer": target.customer_id,
        "b_run": run_id,
        "b_ids": ids,
    }
    matched = {row.external_id: row for row in connection.execute(by_external_id(table), values)}
    wanted = {key for key in keys.values() if key}
    if not wanted:
        return matched, {}
    values["b_keys"] = sorted(wanted)
    # Devices of this tenant seen already this run, holding one of these keys.
    claimed = {
        row.match_key: row.external_id
        for row in connection.execute(
            prepared(
                "assets claiming keys",
                lambda: sa.select(table.c.match_key, table.c.external_id).where(
                    table.c.tenant_ref == sa.bindparam("b_tenant"),
                    in_list(table.c.match_key, "b_keys"),
                    table.c.seen_run_id == sa.bindparam("b_run"),
                    in_list(table.c.external_id, negate=True),
                ),
            ),
            values,
        )
    }
    duplicates: dict[str, str] = {}
    first_in_batch: dict[str, str] = {}
    for device_id, key in keys.items():
        if not key:
            continue
        other = claimed.get(key) or first_in_batch.get(key)
        if other is not None and other != device_id:
            duplicates[device_id] = (
                f"device {device_id} has the serial or matching value {key!r} of device "
                f"{other}: each keeps its own asset; correct the value in Intune"
            )
        else:
            first_in_batch.setdefault(key, device_id)
    # The customer's assets free to take with one of these keys.
    candidates: dict[str, list[Row[Any]]] = {}
    for row in connection.execute(
        prepared(
            "assets free with keys",
            lambda: (
                sa.select(table)
                .where(
                    table.c.customer_id == sa.bindparam("b_customer"),
                    in_list(table.c.match_key, "b_keys"),
                    free_to_take(table),
                )
                .order_by(table.c.id)
            ),
        ),
        values,
    ):
        candidates.setdefault(row.match_key, []).append(row)
    taken = {row.id for row in matched.values()}
    for device_id, key in keys.items():
        if device_id in matched or not key or device_id in duplicates:
            continue
        rows = [row for row in candidates.get(key, []) if row.id not in taken]
        if len(rows) == 1:
            matched[device_id] = rows[0]
            taken.add(rows[0].id)
    return matched, duplicates
