"""`translate` reads a fitting payload with its compiled reader, and leaves anything else to
the converter, whose results and reasons stay the word."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import attrs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_integrator_core import translation
from halo_integrator_core.models import RecordError
from halo_microsoft_csp.payloads import GraphManagedDevice, GraphUser

USER = {
    "id": "0d1b4f0e-7f3a-4c8e-9a43-1f0f0e6a2b11",
    "userPrincipalName": "adele@contoso.com",
    "displayName": "Adele Vance",
    "mail": "adele@contoso.com",
    "businessPhones": ["+44 20 7946 0000"],
    "accountEnabled": True,
    "assignedLicenses": [{"skuId": "05e9a617-0261-4cee-bb44-138d3ef5d965", "disabledPlans": []}],
}


@pytest.fixture
def converter_refuses(monkeypatch):
    """The converter made to fail: what still translates went by the compiled reader."""

    class Refusing:
        def structure(self, payload, cls):
            raise AssertionError("the converter was asked")

    translation.translate(USER, GraphUser)  # the reader compiled, with the real converter
    monkeypatch.setattr(translation, "json_converter", Refusing())


def test_a_fitting_payload_takes_the_compiled_reader(converter_refuses):
    user = translation.translate(USER, GraphUser)
    assert isinstance(user, GraphUser)
    assert user.user_principal_name == "adele@contoso.com"
    assert user.business_phones == ["+44 20 7946 0000"]


def test_the_reader_gives_what_the_converter_gives():
    fast = translation.translate(USER, GraphUser)
    assert fast == translation.json_converter.structure(USER, GraphUser)
    device = {"id": "d-1", "deviceName": "PC-1", "lastSyncDateTime": "2026-01-05T10:00:00.1234567Z"}
    assert translation.translate(device, GraphManagedDevice) == (
        translation.json_converter.structure(device, GraphManagedDevice)
    )


def test_a_payload_that_does_not_fit_gets_the_converters_reason():
    bad = {**USER, "displayName": 42}
    found = translation.translate(bad, GraphUser)
    assert isinstance(found, RecordError)
    assert found.entity_id == USER["id"]
    assert "displayName" in found.reason or "display_name" in found.reason


# --- typed forms ---------------------------------------------------------------------------


@attrs.frozen
class _Plan:
    service_plan_id: str
    enabled: bool = True


@attrs.frozen
class _Payload:
    """Every kind of field a typed form follows."""

    id: str
    seats: int
    name: str | None = None
    active: bool | None = None
    tags: list[str] = attrs.field(factory=list)
    plans: list[_Plan] = attrs.field(factory=list)
    main_plan: _Plan | None = None
    renews_at: datetime | None = None
    odata_type: str | None = attrs.field(
        default=None, metadata=translation.field_key("@odata.type")
    )


@attrs.frozen
class _Node:
    id: str
    children: list[_Node] = attrs.field(factory=list)


def _through_typed(payload: dict, cls: type, into=None):
    """``payload`` the typed way: decoded from its bytes, then made a record. ``None`` where
    the typed way leaves it to the JSON way (a refusal, or `TypedMisfit`)."""
    try:
        typed = msgspec.json.decode(json.dumps(payload).encode(), type=translation.typed_form(cls))
    except msgspec.MsgspecError:  # not every value fits, or not JSON (json.dumps of a NaN)
        return None
    translate = translation.translator(cls, into or (lambda _context, _payload, **fields: fields))
    try:
        return translate(typed, None)
    except translation.TypedMisfit:
        return None


def _mostly(valid, *invalid):
    """``valid`` values seven times in eight, else one of ``invalid``: a good part of the
    payloads fit, and most that do not, fail in one place."""
    return st.integers(0, 7).flatmap(lambda k: st.one_of(*invalid) if k == 7 else valid)


_odd = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.none(), max_size=1))
_text = _mostly(st.one_of(st.none(), st.text(max_size=5)), _odd)
_stamp = _mostly(
    st.sampled_from(
        [
            None,
            "",
            "2026-01-05T10:00:00.1234567Z",
            "2026-01-05T10:00:00",
            "2026-01-05T10:00:00+02:00",
            "0001-01-01T00:00:00Z",
        ]
    ),
    st.just("not a time"),
    st.integers(),
)
_plan = st.fixed_dictionaries(
    {"servicePlanId": _mostly(st.text(max_size=3), st.none(), st.integers())},
    optional={"enabled": _mostly(st.booleans(), st.none(), st.integers(0, 1))},
)
_payloads = st.fixed_dictionaries(
    {
        "id": _mostly(st.text(max_size=5), st.integers(), st.none()),
        "seats": _mostly(st.integers(-5, 10**20), st.booleans(), st.floats(), st.text(max_size=2)),
    },
    optional={
        "name": _text,
        "active": _mostly(
            st.one_of(st.none(), st.booleans()), st.integers(0, 1), st.text(max_size=2)
        ),
        "tags": _mostly(
            st.lists(st.text(max_size=3), max_size=3),
            st.none(),
            st.lists(_odd, min_size=1, max_size=2),
        ),
        "plans": _mostly(
            st.lists(_plan, max_size=2),
            st.none(),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        ),
        "mainPlan": _mostly(st.one_of(st.none(), _plan), st.integers()),
        "renewsAt": _stamp,
        "@odata.type": _text,
        "unknownKey": _odd,
    },
)


@settings(max_examples=400, deadline=None)
@given(_payloads)
def test_the_typed_way_gives_what_the_json_way_gives_or_leaves_the_payload_to_it(payload):
    typed = _through_typed(payload, _Payload)
    by_json = translation.translate(payload, _Payload)
    if typed is not None:
        assert not isinstance(by_json, RecordError), (payload, by_json)
        assert typed == attrs.asdict(by_json, recurse=False)
    device = {
        **payload,
        "deviceName": payload.get("name"),
        "lastSyncDateTime": payload.get("renewsAt"),
    }
    for cls, item in ((GraphUser, {**USER, **payload}), (GraphManagedDevice, device)):
        typed = _through_typed(item, cls)
        if typed is not None:
            assert typed == attrs.asdict(translation.translate(item, cls), recurse=False)


def test_a_typed_payload_is_made_a_record_from_its_fields():
    user = _through_typed(USER, GraphUser)
    assert user == attrs.asdict(translation.translate(USER, GraphUser), recurse=False)
    assert user["assigned_licenses"] == [
        translation.translate(
            USER["assignedLicenses"][0],
            GraphUser.__attrs_attrs__.assigned_licenses.type.__args__[0],
        )
    ]  # the nested payloads as their own class, not their typed form
    device = {"id": "d-1", "lastSyncDateTime": "2026-01-05T10:00:00.1234567Z"}
    made = _through_typed(device, GraphManagedDevice)
    assert made["last_sync_date_time"] == datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)


def test_a_typed_payload_whose_fields_make_no_record_is_a_misfit():
    device = {"id": "d-1", "lastSyncDateTime": "yesterday"}
    assert _through_typed(device, GraphManagedDevice) is None
    found = translation.translate(device, GraphManagedDevice)
    assert isinstance(found, RecordError) and "lastSyncDateTime" in found.reason


def test_a_class_with_a_field_no_typed_form_follows_has_none():
    @attrs.frozen
    class Priced:
        id: str
        price: Decimal

    assert translation.typed_form(Priced) is None
    assert translation.typed_form(_Node) is None  # a class holding itself
    assert translation.typed_form(_Payload) is not None
