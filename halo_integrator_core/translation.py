"""Translating an API's JSON into typed payload classes, leniently, with clear reasons.

The one lenient converter for Microsoft JSON (and any camelCase JSON API): attrs classes
with snake_case attributes read camelCase keys (``tenant_id`` ← ``tenantId``), keys the class
does not name are ignored (APIs add fields), ``@odata.*`` keys are named explicitly with
`field_key`, and timestamps are read as the APIs write them (``Z``, seven fraction digits,
or no zone at all, which means UTC). A payload that does not fit is not an exception in the
middle of a page: `translate` turns it into a `RecordError` whose reason names the JSON path.

Nearly every payload fits, so `translate` first tries a reader compiled once per class: the
converter's code calls a hook per field (``str | None`` through cattrs' optional dispatch,
then `_strict_str`), which is most of a record's cost at thousands of records a second. The
reader does the same checks inline; a payload it is not sure of goes to the converter, which
either translates it or says why not, so results and reasons are the converter's. Where each
payload becomes a record of the plugin's own at once, `translator` hands the payload's fields
straight to the function that makes the record, without the payload object in between.

Faster still, a page of payloads can be decoded from its bytes straight into the class's
*typed form* (`typed_form`: a msgspec ``Struct`` of the same JSON keys and types, checked as
strictly), which `translator` turns into records too. Decoding either takes the whole page
or refuses it, so a page holding any payload the typed form refuses (or one whose fields do
not make a record: `TypedMisfit`) is translated from its JSON as above, payload by payload,
with the same records and reasons.
"""

from __future__ import annotations

import re
import threading
import types
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from inspect import Parameter, signature
from typing import Any, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
import msgspec
from cattrs.gen import make_dict_structure_fn, override

from .models import RecordError

T = TypeVar("T")
R = TypeVar("R")

#: Microsoft's way of saying "never" (signInActivity and others).
NEVER = datetime(1, 1, 1, tzinfo=UTC)

_FRACTION = re.compile(r"(\.\d{6})\d+")


def field_key(key: str) -> dict[str, Any]:
    """attrs field metadata naming the JSON key explicitly (for ``@odata.*`` and oddities)."""
    return {"json_key": key}


def _key(field: attrs.Attribute[Any]) -> str:
    """The JSON key of an attrs field: its `field_key`, or its name in camelCase."""
    return field.metadata.get("json_key") or camel(field.name)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as the APIs write it; no zone means UTC; never means None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if "." in text:  # the regular expression costs more than the parse
            text = _FRACTION.sub(r"\1", text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return None if moment == NEVER else moment


def _timestamp(value: Any, _: type) -> datetime | None:
    return parse_timestamp(value)


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
    converter.register_structure_hook(datetime, _timestamp)
    converter.register_structure_hook(Decimal, _decimal)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)

    def factory(cls: type) -> Any:
        overrides = {field.name: override(rename=_key(field)) for field in attrs.fields(cls)}
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
            return _key(field)
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
    read = _READERS.get(cls, _UNREAD)
    if read is _UNREAD:
        read = _reader(cls)
    if read is not None:
        try:
            return read(payload)
        except Exception:
            pass  # not one the reader is sure of: the converter translates it, or says why not
    if entity_id is None and isinstance(payload, dict):
        raw_id = payload.get("id")
        entity_id = str(raw_id) if raw_id is not None else None
    try:
        return json_converter.structure(payload, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return RecordError(entity_id=entity_id, reason=reason(exc))


def translator(cls: type, into: Callable[..., R]) -> Callable[[Any, Any], R | RecordError]:
    """`translate` to ``cls`` for a payload that becomes a record of another kind at once.

    The function returned, called with ``(payload, context)``, checks ``payload`` as
    `translate` does (a `RecordError` for one that does not fit) and returns
    ``into(context, payload, **fields)``: the fields a ``cls`` would hold, by attribute
    name, without the ``cls`` built. ``into`` must take each of them by keyword. A payload
    of the class's typed form (`typed_form`) is read from its attributes (``payload`` is then
    ``None`` for ``into``), or raises `TypedMisfit` when its fields make no ``cls``.
    """
    names = [field.name for field in attrs.fields(cls)]
    parameters = signature(into).parameters
    takes_any = any(p.kind is Parameter.VAR_KEYWORD for p in parameters.values())
    if missing := [name for name in names if name not in parameters and not takes_any]:
        raise TypeError(f"{into.__qualname__} takes no {', '.join(missing)} of {cls.__qualname__}")
    read = _compile_reader(cls, into)
    typed = _typed(cls)
    build = None if typed is None else _compile_typed_build(typed, cls, into)
    form = None if typed is None else typed.form

    def translate_into(payload: Any, context: Any) -> R | RecordError:
        if form is not None and isinstance(payload, form):
            return build(payload, context)  # type: ignore[misc]
        if read is not None:
            made = read(payload, context)
            if made is not _MISFIT:
                return made
        found = translate(payload, cls)
        if isinstance(found, RecordError):
            return found
        return into(context, payload, **{name: getattr(found, name) for name in names})

    return translate_into


# --- the readers ---------------------------------------------------------------------------


class _Misfit(Exception):
    """Raised by a reader for a payload it leaves to the converter."""


_UNREAD: Any = object()
#: What a reader for `translator` returns for a payload it leaves to the converter.
_MISFIT: Any = object()
#: Each class's reader, or ``None`` for a class the converter always translates.
_READERS: dict[type, Callable[[Any], Any] | None] = {}
#: Held while a reader compiles, so each class is compiled once whichever thread asks.
_COMPILING = threading.RLock()
#: The checks a reader makes inline, for the hooks `make_json_converter` registers.
_INLINE: dict[type, tuple[Callable[..., Any], str]] = {
    str: (_strict_str, "not isinstance({v}, str)"),
    int: (_strict_int, "{v}.__class__ is not int"),  # a subclass goes to the converter
    bool: (_strict_bool, "{v} is not True and {v} is not False"),
}


def _reader(cls: type) -> Callable[[Any], Any] | None:
    read = _READERS.get(cls, _UNREAD)
    if read is _UNREAD:
        with _COMPILING:
            read = _READERS.get(cls, _UNREAD)
            if read is _UNREAD:
                _READERS[cls] = None  # while it compiles: a class holding itself is not read
                read = _READERS[cls] = _compile_reader(cls)
    return read


def _compile_reader(cls: type, into: Callable[..., Any] | None = None) -> Any:
    """Straight-line code reading a ``cls`` from a JSON object as `json_converter` would,
    raising `_Misfit` (or whatever a hook raises) where the converter might not agree;
    ``None`` for a class it does not read (a field with a converter, say).

    With ``into``, the code is ``read(o, context)``: it returns ``into(context, o, **fields)``
    for a payload that fits and `_MISFIT` for one that may not (what ``into`` raises is not
    taken for a misfit).
    """
    compiled = _compiled_fields(cls)
    if compiled is None:
        return None
    names: dict[str, Any] = {"cls": cls, "into": into, "_Misfit": _Misfit, "_MISFIT": _MISFIT}
    lines = ["    if not isinstance(o, dict):", "        raise _Misfit"]
    arguments, fields = [], []
    for index, field in enumerate(compiled):
        default = field.default
        value = f"v{index}"
        checks = _checks(field.type, value, names)
        if checks is None:
            return None
        key = _key(field)
        if default is attrs.NOTHING:
            lines += [f"    {value} = o[{key!r}]", *_indented(checks)]
        else:
            factory = isinstance(default, attrs.Factory)
            names[f"d_{value}"] = default.factory if factory else default
            lines += [f"    if {key!r} in o:", f"        {value} = o[{key!r}]"]
            lines += _indented(_indented(checks))
            lines += ["    else:", f"        {value} = d_{value}{'()' if factory else ''}"]
        arguments.append(f"{field.alias}={value}" if field.kw_only else value)
        fields.append(f"{field.name}={value}")
    if into is None:
        lines = ["def read(o):", *lines, f"    return cls({', '.join(arguments)})"]
    else:
        lines = [
            "def read(o, context):",
            "    try:",
            *_indented(lines),
            "    except Exception:",
            "        return _MISFIT",
            f"    return into(context, o, {', '.join(fields)})",
        ]
    return _function(lines, f"<reader of {cls.__qualname__}>", names)


def _compiled_fields(cls: type) -> tuple[attrs.Attribute[Any], ...] | None:
    """The fields of the attrs class ``cls``, types resolved, when compiled code can make a
    ``cls`` from them as its ``__init__`` would: none with a converter, left out of
    ``__init__``, or with a default made from the instance. ``None`` otherwise."""
    if not attrs.has(cls):
        return None
    attrs.resolve_types(cls)
    fields = attrs.fields(cls)
    for field in fields:
        default = field.default
        if field.converter is not None or not field.init:
            return None
        if isinstance(default, attrs.Factory) and default.takes_self:
            return None
    return fields


def _checks(kind: Any, value: str, names: dict[str, Any]) -> list[str] | None:
    """Statements making the variable ``value`` a ``kind`` as the converter's hook for
    ``kind`` would; ``None`` when a reader cannot."""
    misfit = _misfit(kind, value)
    if misfit is not None:
        return [f"if {misfit}:", "    raise _Misfit"]
    origin, arguments = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType) and len(arguments) == 2 and type(None) in arguments:
        [inner] = [argument for argument in arguments if argument is not type(None)]
        checks = _checks(inner, value, names)
        return None if checks is None else [f"if {value} is not None:", *_indented(checks)]
    if origin is list and len(arguments) == 1:
        # A list of its own, as the converter makes; of plain values or of classes only.
        lines = [f"if {value}.__class__ is not list:", "    raise _Misfit"]
        item, [item_kind] = f"{value}_item", arguments
        misfit = _misfit(item_kind, item)
        if misfit is not None:
            return [
                *lines,
                f"for {item} in {value}:",
                f"    if {misfit}:",
                "        raise _Misfit",
                f"{value} = list({value})",
            ]
        read = _reader(item_kind) if attrs.has(item_kind) else None
        if read is None:
            return None
        names[f"r_{item}"] = read
        return [*lines, f"{value} = [r_{item}({item}) for {item} in {value}]"]
    if attrs.has(kind):
        read = _reader(kind)
        if read is None:
            return None
        names[f"r_{value}"] = read
        return [f"{value} = r_{value}({value})"]
    hook = json_converter.get_structure_hook(kind)
    if hook is _timestamp:
        names["parse_timestamp"] = parse_timestamp
        return [f"{value} = parse_timestamp({value})"]
    # Anything else (decimals, say): the converter's own hook for it.
    names[f"h_{value}"], names[f"t_{value}"] = hook, kind
    return [f"{value} = h_{value}({value}, t_{value})"]


def _misfit(kind: Any, value: str) -> str | None:
    """An expression true when ``value`` may not be read as ``kind`` the way the converter's
    hook does, for the kinds read inline (``str``, ``str | None``, ...)."""
    inline = _INLINE.get(kind)
    if inline is not None and json_converter.get_structure_hook(kind) is inline[0]:
        return inline[1].format(v=value)
    arguments = get_args(kind)
    if get_origin(kind) in (Union, types.UnionType) and len(arguments) == 2:
        inner = _misfit(arguments[0], value) if arguments[1] is type(None) else None
        return None if inner is None else f"{value} is not None and ({inner})"
    return None


def _indented(lines: list[str]) -> list[str]:
    return [f"    {line}" for line in lines]


# --- typed forms --------------------------------------------------------------------------


class TypedMisfit(Exception):
    """A payload of a typed form whose fields make no record (a timestamp that is not
    one): its page is to be translated from its JSON instead, which says why."""


#: Each class's `_Typed`, or ``None`` (`_COMPILING` while one is compiled).
_TYPED: dict[type, Any] = {}


def typed_form(cls: type) -> type[msgspec.Struct] | None:
    """A msgspec ``Struct`` decoding the JSON of a ``cls`` as strictly as `translate` reads
    it: the same keys, strings only as strings, integers only as integers (not booleans or
    floats), booleans only as booleans, lists as lists, nested classes as their own typed
    forms; a timestamp as its text (`parse_timestamp` reads it when the record is made).
    Keys it does not name are ignored, as `translate` ignores them. ``None`` for a class a
    typed form cannot follow exactly (a decimal, a union, a field with a converter), whose
    payloads are only ever translated from JSON."""
    typed = _typed(cls)
    return None if typed is None else typed.form


@attrs.frozen
class _Typed:
    """A class's typed form, ``build(struct) -> cls``, and the statements (with the names
    they use) that read each ``v<i>`` from a struct ``s``, for `translator`'s own build."""

    form: type[msgspec.Struct]
    build: Callable[[Any], Any]
    lines: list[str]
    names: dict[str, Any]


def _typed(cls: type) -> _Typed | None:
    found = _TYPED.get(cls, _UNREAD)
    if found is _UNREAD or found is _COMPILING:
        # Another thread compiling it: wait for its result rather than take "none".
        with _COMPILING:
            found = _TYPED.get(cls, _UNREAD)
            if found is _COMPILING:
                return None  # this thread's own, under way: a class holding itself has none
            if found is _UNREAD:
                _TYPED[cls] = _COMPILING
                found = _TYPED[cls] = _compile_typed(cls)
    return found  # type: ignore[no-any-return]


def _compile_typed(cls: type) -> _Typed | None:
    shaped = _typed_fields(cls)
    if shaped is None:
        return None
    fields, lines, names = shaped
    try:
        form = msgspec.defstruct(f"{cls.__qualname__}Typed", fields, module=__name__, kw_only=True)
    except (TypeError, ValueError):  # a field name msgspec does not take
        return None
    arguments = ", ".join(f"{field.alias}=v{i}" for i, field in enumerate(attrs.fields(cls)))
    code = ["def build(s):", *lines, f"    return cls({arguments})"]
    build = _function(code, f"<typed build of {cls.__qualname__}>", {**names, "cls": cls})
    return _Typed(form, build, lines, names)


def _compile_typed_build(typed: _Typed, cls: type, into: Callable[..., Any]) -> Any:
    """``build(struct, context)``: ``into(context, None, **fields)`` from a typed form of
    ``cls``, raising `TypedMisfit` where a field's value makes no ``cls`` field."""
    fields = ", ".join(f"{field.name}=v{i}" for i, field in enumerate(attrs.fields(cls)))
    code = [
        "def build(s, context):",
        "    try:",
        *_indented(typed.lines),
        "    except Exception as exc:",
        "        raise TypedMisfit from exc",
        f"    return into(context, None, {fields})",
    ]
    names = {**typed.names, "into": into, "TypedMisfit": TypedMisfit}
    return _function(code, f"<typed build of {cls.__qualname__}>", names)


def _function(code: list[str], filename: str, names: dict[str, Any]) -> Any:
    """The one function ``code`` defines, compiled with ``names`` as its globals."""
    exec(compile("\n".join(code), filename, "exec"), names)
    return names[code[0].removeprefix("def ").split("(", 1)[0]]


def _typed_fields(cls: type) -> tuple[list[tuple[Any, ...]], list[str], dict[str, Any]] | None:
    """The typed form's fields of ``cls`` (for `msgspec.defstruct`), and the statements
    making each ``v<i>`` the value of the ``cls`` field ``i`` from the struct ``s``."""
    compiled = _compiled_fields(cls)
    if compiled is None:
        return None
    names: dict[str, Any] = {"UNSET": msgspec.UNSET}
    fields: list[tuple[Any, ...]] = []
    lines: list[str] = []
    for index, field in enumerate(compiled):
        default = field.default
        value = f"v{index}"
        shape = _typed_shape(field.type, value, names)
        if shape is None:
            return None
        kind, convert = shape
        key = _key(field)
        lines.append(f"    {value} = s.{field.name}")
        if default is attrs.NOTHING:
            fields.append((field.name, kind, msgspec.field(name=key)))
            lines += convert
        elif not convert and not isinstance(default, attrs.Factory) and _immutable(default):
            fields.append((field.name, kind, msgspec.field(default=default, name=key)))
        else:
            # Left out of the JSON: the field's own default, as the reader gives it.
            factory = isinstance(default, attrs.Factory)
            names[f"d_{value}"] = default.factory if factory else default
            fields.append(
                (
                    field.name,
                    kind | msgspec.UnsetType,
                    msgspec.field(default=msgspec.UNSET, name=key),
                )
            )
            lines += [
                f"    if {value} is UNSET:",
                f"        {value} = d_{value}{'()' if factory else ''}",
            ]
            if convert:
                lines += ["    else:", *_indented(convert)]
    return fields, lines, names


def _typed_shape(kind: Any, value: str, names: dict[str, Any]) -> tuple[Any, list[str]] | None:
    """The typed form's type for a field of ``kind``, and the statements making the
    variable ``value`` (the struct's value) the field's; ``None`` when none is exact."""
    inline = _INLINE.get(kind)
    if inline is not None:
        # Exact only while the converter's hook is our strict one for the kind.
        return (kind, []) if json_converter.get_structure_hook(kind) is inline[0] else None
    if json_converter.get_structure_hook(kind) is _timestamp:
        names["parse_timestamp"] = parse_timestamp
        return str, [f"    {value} = parse_timestamp({value})"]
    origin, arguments = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType) and len(arguments) == 2 and type(None) in arguments:
        [inner] = [argument for argument in arguments if argument is not type(None)]
        shape = _typed_shape(inner, value, names)
        if shape is None:
            return None
        inner_kind, convert = shape
        return inner_kind | None, (
            [f"    if {value} is not None:", *_indented(convert)] if convert else []
        )
    if origin is list and len(arguments) == 1:
        [item_kind] = arguments
        if item_kind in _INLINE:
            shape = _typed_shape(item_kind, f"{value}_item", names)
            if shape is None or shape[1]:
                return None
            return list[item_kind], []  # type: ignore[valid-type]
        if attrs.has(item_kind):
            typed = _typed(item_kind)
            if typed is None:
                return None
            names[f"b_{value}"] = typed.build
            return list[typed.form], [  # type: ignore[valid-type]
                f"    {value} = [b_{value}(item) for item in {value}]"
            ]
        return None
    if attrs.has(kind):
        typed = _typed(kind)
        if typed is None:
            return None
        names[f"b_{value}"] = typed.build
        return typed.form, [f"    {value} = b_{value}({value})"]
    return None


def _immutable(value: Any) -> bool:
    return value is None or type(value) in (str, int, bool, float)
