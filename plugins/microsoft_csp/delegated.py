"""The Partner Center (App+User) authorization of a connection, and its token cache.

Partner Center accepts, for most of what a CSP integration reads, only a token issued to a
user of the partner tenant through the single-tenant Partner Center app: the guide's
*Authorize Application* (section 2.3). `DelegatedTokens` runs MSAL's authorization-code
flow with PKCE and state for the ``user_impersonation`` scope, keeps the resulting refresh
token in a per-connection MSAL cache file and hands out access tokens from it, refreshed
silently, for as long as the refresh token lives.

The cache file holds a refresh token, a secret: it is written atomically, only when MSAL
says it changed, readable by its owner only (mode 0600 in a 0700 folder, on POSIX). A
process that finds the file changed by another (the command line authorizing while the
daemon runs) reads it again before its next token.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msal
import structlog

from halo_integrator_core.config import EndpointSettings, ValueProblem
from halo_integrator_core.http import HttpClient, MsalHttpClient

from .auth import (
    PARTNER_API_RESOURCE,
    PARTNER_CENTER_RESOURCE,
    HttpCache,
    http_cache_file,
    write_private,
)
from .errors import AADSTS, MicrosoftAuthError, token_error
from .settings import Connection

log = structlog.get_logger(__name__)

#: The delegated Partner Center permission (API fa3d9a0c-3fb0-42cc-9193-47c7ecd2edbd);
#: MSAL adds ``openid profile offline_access`` itself.
PARTNER_CENTER_SCOPE = f"{PARTNER_CENTER_RESOURCE}/user_impersonation"
#: Resources whose delegated permission is ``user_impersonation``; others get ``/.default``.
IMPERSONATION_RESOURCES = (PARTNER_CENTER_RESOURCE, PARTNER_API_RESOURCE)
TOKENS_FOLDER = "tokens"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class NotAuthorized(MicrosoftAuthError):
    """The connection has no (usable) Partner Center authorization: run `csp authorize`."""


class AuthorizationFailed(MicrosoftAuthError):
    """The answer that came back from the sign-in does not complete the flow it started."""


class SecretUnreadable(MicrosoftAuthError):
    """The Partner Center app's client secret cannot be read where the config points."""


class AuthorizationStatus(NamedTuple):
    """What `DelegatedTokens.status` reports."""

    authorized: bool
    #: The user who authorized (their user principal name), if authorized.
    username: str | None
    #: When the cached Partner Center access token expires (it is renewed silently with the
    #: refresh token after that), or ``None`` when there is none.
    expires_at: datetime | None


def cache_file(state_dir: Path, connection_name: str) -> Path:
    """Where the token cache of connection ``connection_name`` is kept."""
    safe = _UNSAFE.sub("_", connection_name) or "_"
    return Path(state_dir) / TOKENS_FOLDER / f"{safe}.json"


def delegated_scope(resource: str) -> str:
    """The delegated scope to ask for ``resource`` (``https://host``) with."""
    resource = resource.rstrip("/")
    suffix = "user_impersonation" if resource in IMPERSONATION_RESOURCES else ".default"
    return f"{resource}/{suffix}"


class DelegatedTokens:
    """The delegated (App+User) tokens of one connection's Partner Center app.

    ``state_dir`` is the folder the token cache lives under (the config file's folder,
    `Config.directory`); the file is ``state_dir/tokens/<connection name>.json``. Nothing is
    read from the network or the secret until a method needs it: `status` and `disconnect`
    work offline and without the secret.
    """

    def __init__(
        self,
        connection: Connection,
        endpoints: EndpointSettings,
        http: HttpClient,
        state_dir: Path,
        *,
        http_cache: HttpCache | None = None,
    ) -> None:
        self.connection = connection
        #: Where MSAL keeps the partner tenant's OpenID configuration between runs (the
        #: connection's `auth.HttpCache`, shared with its apps' clients); without it every
        #: process asks the login service for it again.
        self.http_cache = http_cache
        self.endpoints = endpoints
        self.http = http
        self.path = cache_file(state_dir, connection.name)
        self.client_id = str(connection.partner_center_app.client_id)
        self.tenant_id = str(connection.tenant_id)
        self.app_name = f"{self.client_id} (Partner Center app of connection {connection.name!r})"
        self.authority = f"{endpoints.url('login').rstrip('/')}/{self.tenant_id}"
        #: MSAL's ``environment`` of the accounts this login host issues (its host name).
        self.environment = (urlsplit(self.authority).hostname or "").lower()
        self.cache = msal.SerializableTokenCache()
        self._stamp: tuple[int, int] | None = None
        self._client: msal.ConfidentialClientApplication | None = None
        self._lock = threading.RLock()
        #: Where a damaged cache file was moved (`_reload`), until a good one is read.
        self.damaged: Path | None = None

    @classmethod
    def keeping_discovery(
        cls, connection: Connection, endpoints: EndpointSettings, http: HttpClient, state_dir: Path
    ) -> DelegatedTokens:
        """Tokens of a sign-in (`csp authorize`) that leave the partner tenant's OpenID
        configuration in the connection's ``tokens/<connection>.http-cache`` for the runs
        that follow."""
        cache = HttpCache(http_cache_file(state_dir, connection.name))
        return cls(connection, endpoints, http, state_dir, http_cache=cache)

    # -- the flow --------------------------------------------------------------------------

    def begin(self, redirect_uri: str) -> dict[str, Any]:
        """Start a sign-in: MSAL's auth-code flow (PKCE, state, nonce) for ``redirect_uri``.

        Send the user to ``flow["auth_uri"]``; hand the flow and the query the browser brings
        back to `complete`. The flow holds the PKCE verifier: keep it in memory only.
        """
        client = self._msal()
        with warnings.catch_warnings():
            # MSAL nudges towards response_mode=form_post. The answer goes to a loopback
            # endpoint of ours, and the code in it is single-use and bound to the PKCE
            # verifier that never leaves this process, so the query serves as well.
            warnings.filterwarnings("ignore", message="response_mode='form_post'")
            return client.initiate_auth_code_flow(
                scopes=[PARTNER_CENTER_SCOPE],
                redirect_uri=redirect_uri,
                prompt="select_account",
            )

    def complete(self, flow: Mapping[str, Any], query: Mapping[str, str]) -> AuthorizationStatus:
        """Finish the sign-in with the answer that reached the redirect URI.

        Redeems the code, keeps the new account (and only it) in the cache and writes the
        cache. Raises `AuthorizationFailed` for an answer that does not belong to ``flow``,
        or the typed error of `errors.token_error` for a refusal (a wrong secret is
        `SecretInvalid`, a redirect URI not registered `RedirectUriMismatch`, ...).
        """
        with self._lock:
            self._reload()
            client = self._msal()
            try:
                result = client.acquire_token_by_auth_code_flow(dict(flow), dict(query))
            except ValueError as exc:  # state mismatch, or neither code nor error
                raise AuthorizationFailed(
                    cause=f"the answer that reached the redirect URI does not complete the "
                    f"sign-in of connection {self.connection.name!r} ({exc})",
                    fix=f"run `halo-integrator csp authorize {self.connection.name}` again and "
                    "finish the sign-in in the browser window it opens, once",
                    code="state_mismatch",
                    tenant=self.tenant_id,
                    app=self.app_name,
                ) from None
            if "access_token" not in result:
                raise token_error(result, tenant=self.tenant_id, app=self.app_name)
            signed_in = result.get("id_token_claims", {}).get("oid")
            for account in client.get_accounts():
                if signed_in and account.get("local_account_id") != signed_in:
                    client.remove_account(account)  # one connection, one authorized user
            self._save()
        status = self.status()
        log.info(
            "csp.authorized",
            connection=self.connection.name,
            username=status.username,
            expires_at=status.expires_at.isoformat() if status.expires_at else None,
        )
        return status

    # -- using it --------------------------------------------------------------------------

    def status(self) -> AuthorizationStatus:
        """Whether the connection is authorized, as whom, and until when (offline)."""
        with self._lock:
            self._reload()
            accounts = [
                a
                for a in self.cache.search(msal.TokenCache.CredentialType.ACCOUNT)
                if a.get("environment", "").lower() == self.environment
            ]
            refresh_tokens = list(
                self.cache.search(
                    msal.TokenCache.CredentialType.REFRESH_TOKEN,
                    query={"client_id": self.client_id},
                )
            )
            if not accounts or not refresh_tokens:
                return AuthorizationStatus(False, None, None)
            account = accounts[0]
            expiries = [
                int(at["expires_on"])
                for at in self.cache.search(
                    msal.TokenCache.CredentialType.ACCESS_TOKEN,
                    query={
                        "client_id": self.client_id,
                        "home_account_id": account.get("home_account_id"),
                    },
                    now=0,  # see expired ones too (and leave them be: MSAL would delete them)
                )
                if PARTNER_CENTER_SCOPE.lower() in str(at.get("target", "")).lower().split()
                and str(at.get("expires_on", "")).isdigit()
            ]
            expires_at = datetime.fromtimestamp(max(expiries), UTC) if expiries else None
            return AuthorizationStatus(True, account.get("username"), expires_at)

    def token(self, resource: str = PARTNER_CENTER_RESOURCE, *, force_refresh: bool = False) -> str:
        """A delegated access token for ``resource``, from the cache or refreshed silently.

        ``resource`` is the canonical resource (`auth.PARTNER_CENTER_RESOURCE`, ...), not
        the endpoint a call goes to. ``force_refresh`` asks for a new token even if the
        cached one is still valid (after an API answered 401 to it). Raises `NotAuthorized`
        when the connection was never authorized, was disconnected, or its refresh token no
        longer works; the typed error of `errors.token_error` for other refusals.
        """
        scope = delegated_scope(resource)
        with self._lock:
            self._reload()
            client = self._msal()
            accounts = client.get_accounts()
            if not accounts:
                raise self._not_authorized(
                    f"its token cache file was damaged and was moved to {self.damaged}"
                    if self.damaged
                    else "it has not been authorized yet, or was disconnected"
                )
            result = client.acquire_token_silent_with_error(
                [scope], account=accounts[0], force_refresh=force_refresh
            )
            self._save()
        if not result:
            raise self._not_authorized("the token cache holds no refresh token for it")
        if "access_token" in result:
            return result["access_token"]
        code = _aadsts(result)
        if result.get("error") in ("invalid_grant", "interaction_required") and code not in AADSTS:
            description = str(result.get("error_description") or "").split("\r\n")[0]
            raise self._not_authorized(
                f"its refresh token was refused ({description or result.get('error')})",
                code=f"AADSTS{code}" if code else str(result.get("error")),
            )
        raise token_error(result, tenant=self.tenant_id, app=self.app_name)

    def headers(self, resource: str = PARTNER_CENTER_RESOURCE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(resource)}"}

    def disconnect(self) -> bool:
        """Forget the authorization: remove the account and delete the cache file.

        Returns whether there was anything to remove. The guide's way to replace the Partner
        Center app's secret: disconnect, change the secret, authorize again.
        """
        with self._lock:
            self._reload()
            had = self.status().authorized or self.path.exists()
            # The cache holds this connection's account alone: emptying it removes the
            # account with its refresh, access and ID tokens, here and in MSAL's client.
            self.cache.deserialize(None)
            self.path.unlink(missing_ok=True)
            self._stamp = None
        log.info("csp.disconnected", connection=self.connection.name)
        return had

    # -- internals -------------------------------------------------------------------------

    def _msal(self) -> msal.ConfidentialClientApplication:
        if self._client is None:
            try:
                secret = self.connection.partner_center_app.client_secret.resolve()
            except ValueProblem as exc:
                raise SecretUnreadable(
                    cause=f"the client secret of app {self.app_name} cannot be read: {exc}",
                    fix="put the secret's Value (not its Secret ID) where the connection's "
                    "partner_center_app.client_secret reference points, then run "
                    "`halo-integrator config check`",
                    code=None,
                    tenant=self.tenant_id,
                    app=self.app_name,
                ) from None
            try:
                self._client = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=secret,
                    authority=self.authority,
                    # The login host is a setting (sovereign clouds, the emulator).
                    instance_discovery=False,
                    http_client=MsalHttpClient(self.http),
                    token_cache=self.cache,
                    http_cache=(
                        self.http_cache.partition(f"{self.client_id} {self.tenant_id} delegated")
                        if self.http_cache
                        else None
                    ),
                )
                if self.http_cache:
                    self.http_cache.save()
            except ValueError as exc:  # MSAL could not discover the tenant's endpoints
                raise token_error(
                    {"error": "invalid_tenant", "error_description": str(exc)},
                    tenant=self.tenant_id,
                    app=self.app_name,
                ) from None
        return self._client

    def _not_authorized(self, why: str, *, code: str | None = None) -> NotAuthorized:
        return NotAuthorized(
            cause=f"connection {self.connection.name!r} is not authorized with Partner "
            f"Center: {why}",
            fix=f"run `halo-integrator csp authorize {self.connection.name}` and sign in as a "
            "Partner Center user with access to the Customer list",
            code=code,
            tenant=self.tenant_id,
            app=self.app_name,
        )

    def _reload(self) -> None:
        """Read the cache file if it changed since this process last read or wrote it."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:  # removed by another process: forget it here too
                self.cache.deserialize(None)
                self._stamp = None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        if stat.st_mode & 0o077:
            log.warning("csp.token_cache_permissions_fixed", path=str(self.path))
            os.chmod(self.path, 0o600)
        try:
            text = self.path.read_text(encoding="utf-8") or None
            if text is not None and not isinstance(json.loads(text), dict):
                raise ValueError("not a token cache (a JSON object)")
        except ValueError as exc:  # not UTF-8, not JSON, or not a cache's JSON
            self._set_aside(exc)
            return
        # In place: the MSAL client holds this very cache object.
        self.cache.deserialize(text)
        self._stamp = stamp
        self.damaged = None

    def _set_aside(self, reason: ValueError) -> None:
        """Move a damaged cache file out of the way (kept, for a look) and hold nothing:
        the connection is not authorized until someone signs in again."""
        aside = self.path.with_name(self.path.name + ".damaged")
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.replace(self.path, aside)
        self.cache.deserialize(None)
        self._stamp = None
        self.damaged = aside
        log.warning(
            "csp.authorization_file_damaged",
            connection=self.connection.name,
            path=str(self.path),
            moved_to=str(aside),
            reason=str(reason),
            fix=f"run `halo-integrator csp authorize {self.connection.name}`",
        )

    def _save(self) -> None:
        if not self.cache.has_state_changed:
            return
        write_private(self.path, self.cache.serialize().encode("utf-8"), durable=True)
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        self.damaged = None


def _aadsts(result: Mapping[str, Any]) -> int | None:
    codes = result.get("error_codes") or []
    if codes:
        return int(codes[0])
    match = re.search(r"AADSTS(\d+)", str(result.get("error_description") or ""))
    return int(match.group(1)) if match else None
