"""Translating an API's JSON into typed payload classes, leniently, with clear reasons.

The one lenient converter for Microsoft JSON (and any camelCase JSON API): attrs classes
with snake_case attributes read camelCase keys (``tenant_id`` ← ``tenantId``), keys the class
does not name are ignored (APIs add fields), ``@odata.*`` keys are named explicitly with
`field_key`, and timestamps are read as the APIs write them (``Z``, seven fraction digits,
or no zone at all, which means UTC). A payload that does not fit is not an exception in the
middle of a page: `translate` turns it into a `RecordError` whose reason names the JSON path.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from .models import RecordError

T = TypeVar("T")

#: Microsoft's way of saying "never" (signInActivity and others).
NEVER = datetime(1, 1, 1, tzinfo=UTC)

_FRACTION = re.compile(r"(\.\d{6})\d+")


def field_key(key: str) -> dict[str, Any]:
    """attrs field metadata naming the JSON key explicitly (for ``@odata.*`` and oddities)."""
    return {"json_key": key}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as the APIs write it; no zone means UTC; never means None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip())
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    else:
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return None if moment == NEVER else moment


def _decimal(value: Any, _: type) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} ({value!r})")
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__} ({value!r})")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean, got {type(value).__name__} ({value!r})")
    return value


def make_json_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(datetime, lambda v, _: parse_timestamp(v))
    converter.register_structure_hook(Decimal, _decimal)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)

    def factory(cls: type) -> Any:
        overrides = {
            field.name: override(rename=field.metadata.get("json_key") or camel(field.name))
            for field in attrs.fields(cls)
        }
        structure_object = make_dict_structure_fn(cls, converter, **overrides)

        def structure(value: Any, _: type) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"expected an object, got {type(value).__name__}")
            return structure_object(value, cls)

        return structure

    converter.register_structure_hook_factory(attrs.has, factory)
    return converter


json_converter = make_json_converter()


def _json_key(cls: type, attribute: str) -> str:
    for field in attrs.fields(cls):
        if field.name == attribute:
            return field.metadata.get("json_key") or camel(attribute)
    return attribute


def _problems(exc: BaseException, path: str) -> list[str]:
    if isinstance(exc, cattrs.BaseValidationError):
        found: list[str] = []
        noted, bare = exc.group_exceptions()
        for sub, note in noted:
            if isinstance(note, cattrs.AttributeValidationNote):
                cls = getattr(exc, "cl", None)
                key = _json_key(cls, note.name) if cls is not None and attrs.has(cls) else note.name
                found += _problems(sub, f"{path}.{key}")
            elif isinstance(note, cattrs.IterableValidationNote):
                found += _problems(
                    sub,
                    f"{path}[{note.index!r}]"
                    if not isinstance(note.index, int)
                    else f"{path}[{note.index}]",
                )
            else:
                found += _problems(sub, path)
        for sub in bare:
            found += _problems(sub, path)
        return found
    if isinstance(exc, KeyError):
        return [f"{path}: required, missing"]
    return [f"{path}: {exc}"]


def reason(exc: BaseException) -> str:
    """One line: each problem with its JSON path (``$.prepaidUnits.enabled: ...``)."""
    return "; ".join(_problems(exc, "$"))


def translate(payload: Any, cls: type[T], *, entity_id: str | None = None) -> T | RecordError:
    """``payload`` as a ``cls``, or a `RecordError` saying where it did not fit."""
    if entity_id is None and isinstance(payload, dict):
        raw_id = payload.get("id")
        entity_id = str(raw_id) if raw_id is not None else None
    try:
        return json_converter.structure(payload, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return RecordError(entity_id=entity_id, reason=reason(exc))
