"""Microsoft's refusals as typed errors naming the tenant, the app, the cause and the fix."""

from __future__ import annotations

import pytest

from halo_integrator_core import errors
from halo_microsoft_csp import errors as csp_errors

TENANT = "50612dbb-0237-4969-b378-8d42590f9c00"
APP = "MSP Service Sync (78b9b9b6-6a3d-4c8f-9a53-95701700b726)"


def entra(code: int, error: str, text: str) -> dict:
    """An MSAL error result, as the identity platform's bodies give it (API notes §5.3)."""
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2025-09-18 01:17:37Z",
        "error_codes": [code],
    }


@pytest.mark.parametrize(
    ("result", "error_type", "in_message"),
    [
        (
            entra(
                7000229,
                "invalid_client",
                "The client application x is missing service principal in the tenant y.",
            ),
            csp_errors.ConsentMissing,
            [
                "no service principal in tenant " + TENANT,
                "grant admin consent for tenant " + TENANT,
                "AdminAgents",
            ],
        ),
        (
            entra(
                700016,
                "unauthorized_client",
                "Application with identifier 'x' was not found in the directory 'y'.",
            ),
            csp_errors.ApplicationNotFound,
            ["was not found in the directory of tenant " + TENANT],
        ),
        (
            entra(7000222, "invalid_client", "The provided client secret keys are expired."),
            csp_errors.SecretExpired,
            ["has expired", "create a new client secret", "csp disconnect"],
        ),
        (
            entra(7000215, "invalid_client", "Invalid client secret provided."),
            csp_errors.SecretInvalid,
            ["the secret's Value, not its Secret ID"],
        ),
        (
            entra(
                50011, "invalid_client", "The reply url specified in the request does not match."
            ),
            csp_errors.RedirectUriMismatch,
            ["Redirect URIs"],
        ),
        (
            entra(
                65001,
                "invalid_grant",
                "The user or administrator has not consented to use the application.",
            ),
            csp_errors.ConsentRequired,
            ["has not been consented"],
        ),
        (
            {"error": "invalid_client", "error_description": "AADSTS7000999: Something new."},
            csp_errors.ClientInvalid,
            ["invalid_client", "Something new."],
        ),
        (
            {"error": "interaction_required", "error_description": "AADSTS50076: MFA needed."},
            csp_errors.TokenRequestFailed,
            ["interaction_required", "MFA needed."],
        ),
    ],
)
def test_each_token_refusal_has_its_type_cause_and_fix(result, error_type, in_message):
    error = csp_errors.token_error(result, tenant=TENANT, app=APP)
    assert type(error) is error_type
    assert error.tenant == TENANT and error.app == APP
    message = str(error)
    assert "Fix: " in message
    assert "Trace ID" not in message  # Microsoft's trace lines stay out of the one-line reason
    assert APP in message and TENANT in message
    for fragment in in_message:
        assert fragment in message


def test_partner_center_forbidden_and_graph_denied_are_explained():
    forbidden = errors.PermissionDenied(
        "The partner ID p has no commerce relationship with the customer ID c.",
        method="GET",
        url="https://api.partnercenter.microsoft.com/v1/customers/c",
        status=403,
        code="20002",
    )
    explained = csp_errors.call_error(
        forbidden, api="partner_center", tenant=TENANT, app="Partner Center app"
    )
    assert isinstance(explained, csp_errors.ResellerRelationshipMissing)
    assert "reseller relationship" in str(explained) and "Customer list" in str(explained)

    denied = errors.PermissionDenied(
        "Insufficient privileges to complete the operation.",
        status=403,
        code="Authorization_RequestDenied",
    )
    explained = csp_errors.call_error(denied, api="graph", tenant=TENANT, app=APP)
    assert isinstance(explained, csp_errors.InsufficientPrivileges)
    assert "Application (not Delegated) permissions" in str(explained) and TENANT in str(explained)

    other = errors.NotFound("gone", status=404)
    assert csp_errors.call_error(other, api="graph", tenant=TENANT, app=APP) is other
