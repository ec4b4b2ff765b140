"""`translate` reads a fitting payload with its compiled reader, and leaves anything else to
the converter, whose results and reasons stay the word."""

from __future__ import annotations

import pytest

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
