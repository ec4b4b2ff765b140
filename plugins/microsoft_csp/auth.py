"""App-only tokens (client credentials) through MSAL and the shared HTTP client.

One MSAL confidential client per (app, tenant), built lazily: MSAL discovers the tenant's
endpoints in its constructor, and keeps tokens in its cache until shortly before they
expire. A lock per (app, tenant, resource) keeps two threads from fetching the same token
at once. A refusal becomes a typed error naming the tenant and the app (`errors`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import msal

from halo_integrator_core.http import HttpClient, MsalHttpClient

from .errors import token_error

GRAPH_RESOURCE = "https://graph.microsoft.com"
PARTNER_CENTER_RESOURCE = "https://api.partnercenter.microsoft.com"
PARTNER_API_RESOURCE = "https://api.partner.microsoft.com"


class AppTokens:
    """Client-credentials tokens of one app registration, per tenant and resource.

    ``authority`` is the login host (``[endpoints] login``); ``secret`` is called when a
    client is first built, so a secret is read only when needed and never kept elsewhere.
    """

    def __init__(
        self,
        *,
        client_id: str,
        secret: Callable[[], str],
        authority: str,
        http: HttpClient,
        app_name: str,
    ) -> None:
        self.client_id = client_id
        self._secret = secret
        self.authority = authority.rstrip("/")
        self.http = MsalHttpClient(http)
        self.app_name = app_name
        self._clients: dict[str, msal.ConfidentialClientApplication] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _client(self, tenant: str) -> msal.ConfidentialClientApplication:
        client = self._clients.get(tenant)
        if client is None:
            client = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self._secret(),
                authority=f"{self.authority}/{tenant}",
                # The login host is a setting (sovereign clouds, the emulator): ask it for
                # its endpoints directly rather than validating it with the public cloud.
                instance_discovery=False,
                http_client=self.http,
            )
            self._clients[tenant] = client
        return client

    def _lock(self, tenant: str, resource: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((tenant, resource), threading.Lock())

    def token(self, tenant: str, resource: str) -> str:
        """An access token for ``resource`` (e.g. `GRAPH_RESOURCE`) in ``tenant``."""
        with self._lock(tenant, resource):
            try:
                client = self._client(tenant)
            except ValueError as exc:  # MSAL could not discover the tenant's endpoints
                raise token_error(
                    {"error": "invalid_tenant", "error_description": str(exc)},
                    tenant=tenant,
                    app=self.app_name,
                ) from None
            result = client.acquire_token_for_client([f"{resource}/.default"])
        if "access_token" not in result:
            raise token_error(result, tenant=tenant, app=self.app_name)
        return result["access_token"]

    def headers(self, tenant: str, resource: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, resource)}"}
