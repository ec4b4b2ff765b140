"""The guide's common-errors table (section 12.2), row by row, replayed from cassettes.

Each test meets Microsoft's actual answer for one row (recorded from the emulator, whose
answers follow Microsoft's documented bodies) through the CSP module's own code, and checks
the one message it becomes: the cause, the fix, and the connection, tenant and app
registration involved. Re-record with ``pytest tests/test_guide_errors.py --record-mode=rewrite``.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from cassette_support import Microsoft

from halo_integrator_core import ModuleContext, RecordError, Tenant, TenantAccess
from halo_integrator_core.config import IntegratorSettings, SecretRef
from halo_microsoft_csp import directory
from halo_microsoft_csp import errors as csp_errors
from halo_microsoft_csp.auth import PARTNER_CENTER_RESOURCE
from halo_microsoft_csp.settings import AppRegistration, Connection, MicrosoftCspSettings

pytestmark = [
    pytest.mark.vcr,
    pytest.mark.block_network(allowed_hosts=["127.0.0.1", "localhost", "::1"]),
]


@pytest.fixture
def context(microsoft: Microsoft, monkeypatch, tmp_path):
    partner = next(iter(microsoft.world.partners.values()))
    monkeypatch.setenv("GUIDE_PC_SECRET", partner.partner_center_app.secret)
    monkeypatch.setenv("GUIDE_GDAP_SECRET", partner.gdap_app.secret)
    connection = Connection(
        name="main",
        tenant_id=partner.tenant_id,
        partner_center_app=AppRegistration(
            client_id=partner.partner_center_app.client_id,
            client_secret=SecretRef(env="GUIDE_PC_SECRET"),
        ),
        gdap_app=AppRegistration(
            client_id=partner.gdap_app.client_id, client_secret=SecretRef(env="GUIDE_GDAP_SECRET")
        ),
    )
    with microsoft.http() as http:
        yield ModuleContext(
            module="microsoft_csp",
            settings=MicrosoftCspSettings(connections=(connection,)),
            integrator=IntegratorSettings(),
            log=structlog.get_logger("test"),
            endpoints=microsoft.endpoints,
            http=http,
            state_dir=tmp_path,
        )


def tenants_of(context: ModuleContext) -> list[Any]:
    return list(directory.fetch_tenants(context))


def names_everyone(message: str, microsoft: Microsoft, tenant: str | None = None) -> None:
    partner = next(iter(microsoft.world.partners.values()))
    assert "connection main" in message
    assert "Fix:" in message or "fix" in message.lower()
    if tenant:
        assert tenant in message
    assert partner.partner_center_app.client_id in message or partner.gdap_app.client_id in message


def test_row_wrong_user_impersonation_api(microsoft: Microsoft, context, vcr):
    microsoft.inject("aadsts650057", endpoint="login.token")
    clients = directory.session(context).clients(context.settings.connections[0])
    with pytest.raises(csp_errors.WrongPartnerCenterPermission) as caught:
        clients.partner_center.token(microsoft.partner, PARTNER_CENTER_RESOURCE)
    assert "fa3d9a0c-3fb0-42cc-9193-47c7ecd2edbd" in str(caught.value)
    assert "Access Partner Center" in str(caught.value)
    names_everyone(str(caught.value), microsoft, microsoft.partner)


def test_row_forbidden_or_customers_missing(microsoft: Microsoft, context, vcr):
    microsoft.inject("forbidden", endpoint="partner_center.customers")
    found = tenants_of(context)
    [error] = [item for item in found if isinstance(item, RecordError)]
    assert "reseller relationship" in error.reason and "Customer list" in error.reason
    names_everyone(error.reason, microsoft, microsoft.partner)
    assert found[-1].complete is False  # the stored tenants are kept, not deactivated


def test_row_redirect_uri_mismatch(microsoft: Microsoft, context, vcr):
    microsoft.inject("aadsts50011", endpoint="login.token")
    found = tenants_of(context)
    [error] = [item for item in found if isinstance(item, RecordError)]
    assert "AADSTS50011" in error.reason and "Redirect URIs" in error.reason
    names_everyone(error.reason, microsoft)


def test_row_insufficient_privileges(microsoft: Microsoft, context, vcr):
    customer = microsoft.consented()
    microsoft.inject("denied", endpoint="graph.subscribed_skus")
    tenant = Tenant(
        tenant_id=customer.tenant_id,
        name=customer.name,
        connection="main",
        access=TenantAccess.RESELLER_AND_GDAP,
        attributes={"reseller": True},
    )
    with pytest.raises(csp_errors.InsufficientPrivileges) as caught:
        list(directory.fetch_licences(context, tenant))
    message = str(caught.value)
    assert "Application (not Delegated) permissions" in message and "AdminAgents" in message
    names_everyone(message, microsoft, customer.tenant_id)


def test_row_missing_service_principal_or_application_not_found(microsoft: Microsoft, context, vcr):
    unconsented = next(
        c
        for c in microsoft.world.customers.values()
        if c.gdap_status == "active" and not c.consented
    )
    consented = microsoft.consented()
    microsoft.inject("aadsts700016", endpoint="login.token", tenant=consented.tenant_id)
    tenants = {t.tenant_id: t for t in tenants_of(context) if isinstance(t, Tenant)}
    missing = tenants[unconsented.tenant_id]
    assert missing.access is TenantAccess.CONSENT_MISSING
    assert (
        "AADSTS7000229" in missing.access_detail and "/v2.0/adminconsent?" in missing.access_detail
    )
    assert (
        f"{microsoft.endpoints.url('login')}/{unconsented.tenant_id}/v2.0/adminconsent?"
        in missing.access_detail
    )
    names_everyone(missing.access_detail, microsoft, unconsented.tenant_id)
    not_found = tenants[consented.tenant_id]
    assert not_found.access is TenantAccess.CONSENT_MISSING
    assert (
        "AADSTS700016" in not_found.access_detail
        and "was not found in the directory" in not_found.access_detail
    )


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [("aadsts7000222", "has expired"), ("aadsts7000215", "is wrong")],
    ids=["expired_secret", "invalid_secret"],
)
def test_row_token_expiry_or_invalid_secret(microsoft: Microsoft, context, vcr, fault, fragment):
    microsoft.inject(fault, endpoint="login.token")
    found = tenants_of(context)
    [error] = [item for item in found if isinstance(item, RecordError)]
    assert fragment in error.reason and "client secret" in error.reason
    if fault == "aadsts7000222":
        assert "csp disconnect" in error.reason
    names_everyone(error.reason, microsoft)
